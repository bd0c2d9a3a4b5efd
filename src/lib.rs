//! isquant: data-free int8 quantization of ONNX CNNs.
//!
//! Read a model ([`load`]: [`onnx::io`] → the editable [`graph`]), quantize it
//! ([`pipeline::quantize`], which runs the [`passes`]), write it ([`save`]) and compare it with
//! the float model in tract ([`validate`]). `docs/architecture.md` has the module map. The
//! command line is here too ([`cli`]): the `isquant` binary and the Python binding run it.
//!
//! ```no_run
//! use std::path::Path;
//! let input = Path::new("fixtures/fmnist-small-bn.onnx");
//! let loaded = isquant::load(input)?;
//! let mut model = loaded.model.clone();
//! let cfg = isquant::pipeline::QuantizeConfig::default();
//! let report = isquant::pipeline::quantize(&mut model, &cfg, None, &mut |_| {})?;
//! isquant::save(&model, Path::new("int8.onnx"), false, &loaded.source_files(input))?;
//! println!("{} layers quantized", report.layers.len());
//! # Ok::<(), isquant::Error>(())
//! ```

pub mod check;
pub mod cli;
pub mod data;
pub mod deploy;
pub mod error;
pub mod graph;
pub mod guard;
pub mod inputs;
pub mod inspect;
pub mod latency;
pub mod limits;
pub mod metrics;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod rng;
pub mod runtime;
pub mod squant;
pub mod stats;
pub mod validate;

pub use error::{Error, Result};

use std::path::{Path, PathBuf};

/// A model loaded from disk, with what the reader found about its storage.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The editable model.
    pub model: graph::Model,
    /// Where weights were stored.
    pub info: onnx::io::LoadInfo,
}

impl LoadedModel {
    /// The files this model was read from: `path` and the external data files beside it.
    /// Outputs may overwrite none of them ([`save`], [`write_file`]).
    #[must_use]
    pub fn source_files(&self, path: &Path) -> Vec<PathBuf> {
        let dir = path.parent().unwrap_or(Path::new(""));
        std::iter::once(path.to_path_buf())
            .chain(self.info.external_files.iter().map(|f| dir.join(f)))
            .collect()
    }
}

/// Writes `model` to `output` atomically (temporary file + rename), never over one of
/// `protected` (see [`LoadedModel::source_files`]). With `external_data`, initializers of
/// 1 kB or more go to a fresh `<output>.<random>.data` (done anyway past protobuf's 2 GiB
/// limit); see [`onnx::io`] for how the pair is committed.
///
/// # Errors
/// `output` is protected or not a regular file; the directory is not writable; the model is
/// too large.
pub fn save(
    model: &graph::Model,
    output: &Path,
    external_data: bool,
    protected: &[PathBuf],
) -> Result<onnx::io::Written> {
    let external = if external_data {
        onnx::io::ExternalData::Always
    } else {
        onnx::io::ExternalData::Auto
    };
    let protected: Vec<&Path> = protected.iter().map(PathBuf::as_path).collect();
    onnx::io::write_model(&model.to_proto(), output, external, &protected)
}

/// The files [`save`] may write for `output` that another path could name: the model. (Its
/// external data file gets a fresh `<output>.<random>.data` name no other path names.)
#[must_use]
pub fn output_files(output: &Path) -> Vec<PathBuf> {
    vec![output.to_path_buf()]
}

/// Refuses `path` as the destination of a report or metrics file when it is one of `protected`
/// (the input model, its data files, the output model and its data file), whatever path names
/// it. Call it before the work, so that nothing is written when it fails.
///
/// # Errors
/// `path` is one of `protected`.
pub fn check_destination(path: &Path, protected: &[PathBuf]) -> Result<()> {
    if let Some(p) = protected.iter().find(|p| onnx::io::same_file(path, p)) {
        return Err(Error::Config(format!(
            "refusing to write {} over {} (an input model, its data, or the output model of this run; choose another path)",
            path.display(),
            p.display()
        )));
    }
    Ok(())
}

/// Writes a file other than a model (a report, JSON metrics) atomically, never over one of
/// `protected` ([`check_destination`]).
///
/// # Errors
/// `path` is protected, or cannot be written.
pub fn write_file(path: &Path, bytes: &[u8], protected: &[PathBuf]) -> Result<()> {
    check_destination(path, protected)?;
    onnx::io::write_atomic(path, bytes)
}

/// The command-line name of a choice (`clap::ValueEnum`): the one spelling of `--format`,
/// `--rounding`, ... values, also used in reports and metadata.
#[must_use]
pub fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// The serialized name of a unit enum variant (as in the JSON report).
#[must_use]
pub fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Reads a model file (resolving external data), builds the editable graph and checks it
/// (every input defined, no value produced twice, no cycle; tensors consistent with their
/// shapes; node arity, attributes and opset per [`graph::validate`]), before any pass or
/// tract sees it.
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
    graph::validate::validate(&model).map_err(|e| in_file(path, e))?;
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
