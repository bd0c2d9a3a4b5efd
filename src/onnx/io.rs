//! Reading and writing `ModelProto`s.
//!
//! **Reading.** The whole file is read into one [`Bytes`] buffer and decoded by prost; because
//! `build.rs` maps `bytes` fields to [`Bytes`], every `raw_data` is a zero-copy slice of that
//! buffer. Tensors stored as external data (`data_location = EXTERNAL`, keys `location`,
//! `offset`, `length`) are resolved relative to the model's directory: each data file is read
//! once and every tensor gets a zero-copy slice of it. Locations that are absolute or leave the
//! model's directory are refused, as ONNX Runtime and tract do.
//!
//! **Writing.** [`write_model`] encodes to memory, then writes a temporary file in the target
//! directory and renames it over the destination, so a reader never sees half a model and a
//! failure leaves nothing behind. The output may never be the input file. Initializers of at
//! least [`EXTERNAL_THRESHOLD`] bytes are moved to `<model file name>.data` (4096-byte aligned
//! offsets) when asked, and automatically when the encoded model would exceed the 2 GiB
//! protobuf limit.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::pb::{self, tensor_proto::DataLocation};
use super::tensor;
use crate::error::{Error, Result};

/// Tensors of at least this many bytes go to the external data file when spilling.
pub const EXTERNAL_THRESHOLD: usize = 1024;

/// Protobuf's hard limit on one message (2 GiB − 1), with some headroom for the header.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - (1 << 20);

/// Alignment of tensors in an external data file (lets readers mmap them).
const EXTERNAL_ALIGN: usize = 4096;

/// What the reader found about where weights were stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadInfo {
    /// Number of tensors that were read from external data files.
    pub external_tensors: usize,
    /// The external data files that were read (as written in the model).
    pub external_files: Vec<String>,
}

/// A decoded model plus what the reader learnt while loading it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The model, with every external tensor resolved into `raw_data`.
    pub model: pb::ModelProto,
    /// Where the weights came from.
    pub info: LoadInfo,
}

/// Reads a model from a file, resolving external data next to it.
///
/// # Errors
/// The path is a directory or cannot be read; the bytes are empty or not a `ModelProto`; the
/// model has no graph; an external data file is missing, escapes the model directory or is too
/// short.
pub fn read_model(path: &Path) -> Result<Loaded> {
    if path.is_dir() {
        return Err(Error::Model {
            path: path.into(),
            reason: "is a directory, not an ONNX file".into(),
        });
    }
    let buf = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    decode_model(Bytes::from(buf), path, Some(&dir))
}

/// Decodes a model from bytes. External data is resolved against `base_dir`; with `None`, a
/// model that uses external data is an error.
///
/// # Errors
/// As [`read_model`].
pub fn decode_model(bytes: Bytes, path: &Path, base_dir: Option<&Path>) -> Result<Loaded> {
    if bytes.is_empty() {
        return Err(Error::Model {
            path: path.into(),
            reason: "file is empty".into(),
        });
    }
    let mut model = pb::ModelProto::decode(bytes).map_err(|source| Error::Decode {
        path: path.into(),
        source,
    })?;
    let Some(graph) = model.graph.as_mut() else {
        return Err(Error::Model {
            path: path.into(),
            reason: "has no graph (not an ONNX model, or a truncated one)".into(),
        });
    };
    if model.ir_version.is_none() && model.opset_import.is_empty() {
        return Err(Error::Model {
            path: path.into(),
            reason: "has neither ir_version nor opset_import (not an ONNX model)".into(),
        });
    }
    let mut resolver = ExternalResolver {
        base_dir,
        files: HashMap::new(),
        info: LoadInfo::default(),
    };
    resolver.resolve_graph(graph).map_err(|e| Error::Model {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let info = resolver.info;
    Ok(Loaded { model, info })
}

struct ExternalResolver<'a> {
    base_dir: Option<&'a Path>,
    files: HashMap<String, Bytes>,
    info: LoadInfo,
}

impl ExternalResolver<'_> {
    fn resolve_graph(&mut self, graph: &mut pb::GraphProto) -> Result<()> {
        for t in &mut graph.initializer {
            self.resolve_tensor(t)?;
        }
        for node in &mut graph.node {
            for attr in &mut node.attribute {
                if let Some(t) = attr.t.as_mut() {
                    self.resolve_tensor(t)?;
                }
                for t in &mut attr.tensors {
                    self.resolve_tensor(t)?;
                }
                if let Some(g) = attr.g.as_mut() {
                    self.resolve_graph(g)?;
                }
                for g in &mut attr.graphs {
                    self.resolve_graph(g)?;
                }
            }
        }
        Ok(())
    }

    fn resolve_tensor(&mut self, t: &mut pb::TensorProto) -> Result<()> {
        if !tensor::is_external(t) {
            return Ok(());
        }
        let name = tensor::tensor_name(t).to_string();
        let key = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let location = key("location")
            .ok_or_else(|| Error::tensor(&name, "external data without a `location` entry"))?;
        let parse = |k: &str| -> Result<Option<usize>> {
            key(k)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::tensor(&name, format!("external data `{k}` is not a number: {v:?}"))
                    })
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?;
        let data = self.file(&name, &location)?;
        let end = match length {
            Some(len) => offset.checked_add(len),
            None => Some(data.len()),
        }
        .filter(|&end| end <= data.len() && offset <= end)
        .ok_or_else(|| {
            Error::tensor(
                &name,
                format!(
                    "external data `{location}` has {} bytes, but the tensor needs bytes {offset}..{}",
                    data.len(),
                    length.map_or("end".to_string(), |l| (offset.saturating_add(l)).to_string())
                ),
            )
        })?;
        t.raw_data = Some(data.slice(offset..end));
        t.external_data.clear();
        t.data_location = None;
        self.info.external_tensors += 1;
        Ok(())
    }

    fn file(&mut self, tensor_name: &str, location: &str) -> Result<Bytes> {
        if let Some(b) = self.files.get(location) {
            return Ok(b.clone());
        }
        let Some(base) = self.base_dir else {
            return Err(Error::tensor(
                tensor_name,
                format!("uses external data `{location}` but the model was not loaded from a file"),
            ));
        };
        let rel = Path::new(location);
        let escapes = rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(Error::tensor(
                tensor_name,
                format!("external data location `{location}` leaves the model's directory"),
            ));
        }
        let full = base.join(rel);
        let bytes = fs::read(&full).map_err(|e| {
            Error::tensor(
                tensor_name,
                format!("cannot read external data file {}: {e}", full.display()),
            )
        })?;
        let bytes = Bytes::from(bytes);
        self.files.insert(location.to_string(), bytes.clone());
        self.info.external_files.push(location.to_string());
        Ok(bytes)
    }
}

/// Whether large initializers go to an external data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Only when the model would not fit the 2 GiB protobuf limit otherwise.
    #[default]
    Auto,
    /// Always, for every initializer of at least [`EXTERNAL_THRESHOLD`] bytes.
    Always,
}

/// What [`write_model`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes in the model file.
    pub model_bytes: usize,
    /// The external data file and its size, if one was written.
    pub external: Option<(PathBuf, usize)>,
}

/// Encodes a model to bytes, with every tensor inline.
pub fn encode_model(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `model` to `path` atomically (temporary file + rename), spilling initializers to
/// `<file name>.data` beside it as `external` asks.
///
/// # Errors
/// `path` is one of `inputs` (the files the model was read from); the directory is not
/// writable; a tensor cannot be moved to raw form. On error nothing is left at `path`.
pub fn write_model(
    model: &pb::ModelProto,
    path: &Path,
    external: ExternalData,
    inputs: &[&Path],
) -> Result<Written> {
    refuse_overwriting(path, inputs)?;
    let spill = match external {
        ExternalData::Always => true,
        ExternalData::Auto => model.encoded_len() > PROTOBUF_LIMIT,
    };
    if !spill {
        let bytes = encode_model(model);
        write_atomic(path, &bytes)?;
        return Ok(Written {
            model_bytes: bytes.len(),
            external: None,
        });
    }
    let file_name = path
        .file_name()
        .map(|n| format!("{}.data", n.to_string_lossy()))
        .ok_or_else(|| Error::Config(format!("{} has no file name", path.display())))?;
    let data_path = path.with_file_name(&file_name);
    refuse_overwriting(&data_path, inputs)?;
    let mut model = model.clone();
    let mut data = Vec::new();
    if let Some(graph) = model.graph.as_mut() {
        for t in &mut graph.initializer {
            if tensor::payload_bytes(t) < EXTERNAL_THRESHOLD {
                continue;
            }
            let raw_t = tensor::to_raw(t)?;
            let raw = raw_t.raw_data.clone().unwrap_or_default();
            let offset = data.len().div_ceil(EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
            data.resize(offset, 0);
            data.extend_from_slice(&raw);
            *t = raw_t;
            t.raw_data = None;
            t.data_location = Some(DataLocation::External as i32);
            t.external_data = vec![
                entry("location", &file_name),
                entry("offset", &offset.to_string()),
                entry("length", &raw.len().to_string()),
            ];
        }
    }
    let bytes = encode_model(&model);
    if bytes.len() > PROTOBUF_LIMIT {
        return Err(Error::Config(format!(
            "{} would be {} bytes even with external data, over the 2 GiB protobuf limit",
            path.display(),
            bytes.len()
        )));
    }
    write_atomic(&data_path, &data)?;
    if let Err(e) = write_atomic(path, &bytes) {
        let _ = fs::remove_file(&data_path);
        return Err(e);
    }
    Ok(Written {
        model_bytes: bytes.len(),
        external: Some((data_path, data.len())),
    })
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value.into()),
    }
}

/// Where a path points: the canonical path of an existing file, or of its existing directory
/// joined with its file name (a file about to be written).
fn resolved(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = fs::canonicalize(p) {
        return Some(c);
    }
    let name = p.file_name()?;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::canonicalize(dir).ok().map(|d| d.join(name))
}

/// Whether two paths name the same file (through links, `..`, relative paths), whether it
/// exists yet or not.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Refuses a write to `path` when it is one of `inputs` (the same file, through any path).
///
/// # Errors
/// `path` names one of `inputs`.
pub fn refuse_overwriting(path: &Path, inputs: &[&Path]) -> Result<()> {
    if let Some(input) = inputs.iter().find(|i| same_file(path, i)) {
        return Err(Error::Config(format!(
            "refusing to overwrite the input {} (choose another output path)",
            input.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
///
/// # Errors
/// Any I/O failure; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Config(format!(
            "output {} is a directory",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.isquant-tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io("write", path, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        let p = Path::new("x.onnx");
        let e = decode_model(Bytes::new(), p, None).unwrap_err().to_string();
        assert!(e.contains("x.onnx: file is empty"), "{e}");
        let e = decode_model(Bytes::from_static(b"\xff\xff\xff\xff"), p, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid ONNX model"), "{e}");
        // valid protobuf (field 1 varint) but no graph
        let e = decode_model(Bytes::from_static(&[0x08, 0x07]), p, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no graph"), "{e}");
    }

    #[test]
    fn external_location_may_not_escape() {
        let mut t = pb::TensorProto {
            name: Some("w".into()),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![entry("location", "../secret.bin")],
            ..Default::default()
        };
        let mut r = ExternalResolver {
            base_dir: Some(Path::new(".")),
            files: HashMap::new(),
            info: LoadInfo::default(),
        };
        let e = r.resolve_tensor(&mut t).unwrap_err().to_string();
        assert!(e.contains("leaves the model's directory"), "{e}");
    }
}
