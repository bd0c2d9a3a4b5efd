//! isquant: data-free int8 quantization of ONNX CNNs.
//!
//! The pipeline (see `docs/architecture.md`): read a model ([`onnx::io`]) → editable graph
//! ([`graph`]) → passes ([`passes`]) → write ([`onnx::io::write_model`]) → validate in tract.
//!
//! ```no_run
//! use std::path::Path;
//! let loaded = isquant::load(Path::new("fixtures/fmnist-small-bn.onnx"))?;
//! println!("{} nodes", loaded.model.graph.nodes.len());
//! # Ok::<(), isquant::Error>(())
//! ```

pub mod check;
pub mod data;
pub mod error;
pub mod graph;
pub mod inputs;
pub mod inspect;
pub mod onnx;
pub mod passes;
pub mod squant;
pub mod stats;
pub mod validate;

pub use error::{Error, Result};

use std::path::Path;

/// A model loaded from disk, with what the reader found about its storage.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The editable model.
    pub model: graph::Model,
    /// Where weights were stored.
    pub info: onnx::io::LoadInfo,
}

/// Reads a model file (resolving external data), builds the editable graph and checks it
/// (every input defined, no value produced twice, no cycle).
///
/// # Errors
/// Unreadable or invalid files and malformed graphs; every error names the file, node or
/// tensor involved.
pub fn load(path: &Path) -> Result<LoadedModel> {
    build(onnx::io::read_model(path)?, path)
}

/// As [`load`], from bytes already in memory. `label` names the model in messages;
/// `base_dir` is where external data files are looked for (`None`: external data is an error).
///
/// # Errors
/// As [`load`].
pub fn load_bytes(
    bytes: bytes::Bytes,
    label: &Path,
    base_dir: Option<&Path>,
) -> Result<LoadedModel> {
    build(onnx::io::decode_model(bytes, label, base_dir)?, label)
}

fn build(loaded: onnx::io::Loaded, path: &Path) -> Result<LoadedModel> {
    let model = graph::Model::from_proto(loaded.model).map_err(|e| in_file(path, e))?;
    model.graph.check().map_err(|e| in_file(path, e))?;
    check_tensors(&model).map_err(|e| in_file(path, e))?;
    Ok(LoadedModel {
        model,
        info: loaded.info,
    })
}

/// Checks every initializer and `Constant`-node tensor (type known, length matches shape).
fn check_tensors(model: &graph::Model) -> Result<()> {
    for t in model.graph.initializers() {
        onnx::tensor::check(t)?;
    }
    for n in model.graph.nodes.iter().filter(|n| n.is("Constant")) {
        if let Ok(Some(t)) = onnx::attrs::tensor(&n.attributes, "value") {
            onnx::tensor::check(t).map_err(|e| n.error(e.to_string()))?;
        }
    }
    Ok(())
}

/// Wraps a graph-level error with the file it came from.
fn in_file(path: &Path, e: Error) -> Error {
    Error::Model {
        path: path.into(),
        reason: e.to_string(),
    }
}
