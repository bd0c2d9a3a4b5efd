//! The library's error type.
//!
//! Every variant names what is wrong (the file, the node, the tensor) so that a message printed
//! by the CLI is enough to find the problem. Messages are lowercase without a trailing period;
//! the cause chain is printed by `main.rs` ("caused by: ...").

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, rewriting, writing or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done ("read", "write", "rename", ...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a protobuf-encoded `ModelProto`.
    #[error("{} is not a valid ONNX model (protobuf decoding failed)", .path.display())]
    Decode {
        /// The file (or `<bytes>` for in-memory input).
        path: PathBuf,
        /// prost's description of the failure.
        #[source]
        source: prost::DecodeError,
    },
    /// The protobuf decoded but the model is not usable (no graph, empty file, ...).
    #[error("{}: {reason}", .path.display())]
    Model {
        /// The file (or `<bytes>`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file isquant refuses to read or write as given: not a regular file (a directory,
    /// FIFO, device or socket), so it would hang, never end or be replaced.
    #[error("{}: {reason}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A node is malformed or refers to something that does not exist.
    #[error("node `{node}` ({op_type}): {reason}")]
    Node {
        /// The node's name (or `#index` when it has none).
        node: String,
        /// The node's `op_type`.
        op_type: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor (initializer, Constant value, external data) is malformed or unsupported.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The graph as a whole is invalid (cycle, duplicate outputs, ...).
    #[error("graph: {0}")]
    Graph(String),
    /// A request that cannot be carried out as given: an option out of range or inconsistent
    /// (the message names the flag), inputs that do not fit the model, models that do not fit
    /// each other, a report that cannot be written. The message stands alone (no prefix: most
    /// of these are not about an option).
    #[error("{0}")]
    Config(String),
    /// A size taken from the model, a file or the command line is over one of the limits of
    /// [`crate::limits`] (the allocation it would need was refused before it was made).
    #[error("{what}: {value} {unit}, over the limit of {limit} ({raise})")]
    Limit {
        /// What would have been allocated.
        what: String,
        /// What `value` counts ("elements", "bytes", "pixels", "inputs").
        unit: &'static str,
        /// The size asked for (elements, bytes or a count, as `what` says).
        value: u128,
        /// The limit.
        limit: u128,
        /// How to raise it, or why it cannot be raised.
        raise: &'static str,
    },
    /// tract failed to load, optimize or run a model.
    #[error("tract could not {action}")]
    Tract {
        /// What tract was asked to do.
        action: String,
        /// tract's error chain, flattened to text.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Builds an [`Error::Tensor`].
    pub fn tensor(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Tensor {
            name: shown(name.into()),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Node`].
    pub fn node(
        node: impl Into<String>,
        op_type: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Node {
            node: shown(node.into()),
            op_type: op_type.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// A name for a message: an empty one (ONNX allows unnamed tensors and nodes) would print as
/// "``", which reads like a formatting bug.
fn shown(name: String) -> String {
    if name.is_empty() {
        "(unnamed)".into()
    } else {
        name
    }
}
