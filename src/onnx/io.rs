//! Reading and writing `ModelProto`s, and the file rules every command follows.
//!
//! **Reading.** Every file isquant reads (a model, an external data file, an input, a labels
//! file: [`read_regular`]) must be a regular file: it is opened non-blocking on unix and the
//! opened file's metadata checked, so a FIFO, a device or a socket is an error instead of a
//! hang or an endless read. The model file is read into one [`Bytes`] buffer and decoded by
//! prost; because `build.rs` maps `bytes` fields to [`Bytes`], every inline `raw_data` is a
//! zero-copy slice of that buffer. Tensors stored as external data (`data_location =
//! EXTERNAL`, keys `location`, `offset`, `length`) are resolved inside the model's directory:
//! a location that is absolute or has a `..` is refused, and so is one whose canonical path
//! (symbolic links resolved, of the file and of every directory on the way) is not inside the
//! canonical model directory. Only the bytes a tensor needs are read (`length` bytes at
//! `offset`, to the end of the file without `length`), after checking them against the file's
//! size, so a 432-byte tensor never reads a 2 GB file.
//!
//! **Writing.** [`write_model`] and [`write_atomic`] encode to memory, then write a temporary
//! file in the target directory and rename it over the destination, so a reader never sees
//! half a file and a failure leaves nothing behind. Temporaries are named
//! `.NAME.PID.RANDOM.isquant-tmp` (64 random bits) and created with `create_new` (`O_EXCL`):
//! a file or symbolic link planted at that name is never opened, and another name is tried.
//! An existing destination must be a regular file or a symbolic link: a directory, FIFO,
//! device or socket is refused, never replaced. A symbolic link at the destination is replaced
//! by the rename (the link, not the file it points to, is what changes), unless it points at
//! one of the run's inputs. The output may never be an input file.
//!
//! **External data.** Initializers of at least [`EXTERNAL_THRESHOLD`] bytes are moved to an
//! external data file (4096-byte aligned offsets) when asked, and automatically when the
//! encoded model would exceed the 2 GiB protobuf limit. The data file gets a fresh name,
//! `<model file name>.<16 hex digits>.data`, is written through a temporary and renamed into
//! place first; the model is renamed into place last. Only then is the data file the previous
//! model at that path referenced removed, and only when its name follows that pattern for this
//! model name (or is the `<model file name>.data` earlier versions wrote) and it is not an
//! input. A failure at any step removes only this run's temporaries and new data file. So a
//! model is never paired with another run's data, whatever runs at the same time or is killed:
//! a killed run leaves at most an unreferenced data file or temporary behind.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prost::Message;

use super::pb::{self, tensor_proto::DataLocation};
use super::tensor;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Tensors of at least this many bytes go to the external data file when spilling.
pub const EXTERNAL_THRESHOLD: usize = 1024;

/// Protobuf's hard limit on one message (2 GiB − 1), with some headroom for the header.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - (1 << 20);

/// Alignment of tensors in an external data file (lets readers mmap them).
const EXTERNAL_ALIGN: usize = 4096;

/// Names tried for a temporary or a new data file before giving up.
const NAME_ATTEMPTS: usize = 16;

/// What a file that is not a regular file is, for messages.
fn kind_of(ft: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading, only if it is a regular file (after following links). On unix the
/// file is opened non-blocking, so a FIFO is refused instead of waiting for a writer.
///
/// # Errors
/// The file cannot be opened, or is a directory, FIFO, device or socket ([`Error::File`]).
pub fn open_regular(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = match options.open(path) {
        Ok(f) => f,
        // Windows refuses to open a directory for reading: say what it is.
        Err(_) if path.is_dir() => return Err(not_regular(path, "a directory")),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io("read", path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, kind_of(meta.file_type())));
    }
    Ok(file)
}

fn not_regular(path: &Path, kind: &str) -> Error {
    Error::File {
        path: path.into(),
        reason: format!("is {kind}, not a regular file (refused)"),
    }
}

/// Reads a whole regular file ([`open_regular`]).
///
/// # Errors
/// As [`open_regular`], or a read failure.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let mut buf = Vec::new();
    if let Ok(m) = file.metadata() {
        buf.reserve(usize::try_from(m.len()).unwrap_or(0));
    }
    file.read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}

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
/// The path is not a regular file or cannot be read; the bytes are empty or not a
/// `ModelProto`; the model has no graph; an external data file is missing, not a regular
/// file, outside the model directory (after resolving links) or too short.
pub fn read_model(path: &Path) -> Result<Loaded> {
    if path.is_dir() {
        return Err(Error::Model {
            path: path.into(),
            reason: "is a directory, not an ONNX file".into(),
        });
    }
    let buf = read_regular(path)?;
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
        canonical_base: None,
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

/// An open external data file.
struct DataFile {
    file: File,
    len: u64,
}

struct ExternalResolver<'a> {
    base_dir: Option<&'a Path>,
    canonical_base: Option<PathBuf>,
    files: HashMap<String, DataFile>,
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
        let parse = |k: &str| -> Result<Option<u64>> {
            key(k)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        Error::tensor(&name, format!("external data `{k}` is not a number: {v:?}"))
                    })
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?;
        let data = self.file(&name, &location)?;
        let file_len = data.len;
        let end = match length {
            Some(len) => offset.checked_add(len),
            None => Some(file_len),
        }
        .filter(|&end| end <= file_len && offset <= end)
        .ok_or_else(|| {
            Error::tensor(
                &name,
                format!(
                    "external data `{location}` has {file_len} bytes, but the tensor needs bytes {offset}..{}",
                    length.map_or("end".to_string(), |l| (offset.saturating_add(l)).to_string())
                ),
            )
        })?;
        // Within the file's size, so the allocation is bounded by a file that exists.
        let n = usize::try_from(end - offset).map_err(|_| {
            Error::tensor(
                &name,
                format!(
                    "external data `{location}`: {} bytes do not fit in memory",
                    end - offset
                ),
            )
        })?;
        let read_err = |e: std::io::Error| {
            Error::tensor(
                &name,
                format!("cannot read bytes {offset}..{end} of external data `{location}`: {e}"),
            )
        };
        let mut buf = vec![0u8; n];
        data.file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
        data.file.read_exact(&mut buf).map_err(read_err)?;
        t.raw_data = Some(Bytes::from(buf));
        t.external_data.clear();
        t.data_location = None;
        self.info.external_tensors += 1;
        Ok(())
    }

    fn file(&mut self, tensor_name: &str, location: &str) -> Result<&mut DataFile> {
        if !self.files.contains_key(location) {
            let opened = self.open(tensor_name, location)?;
            self.info.external_files.push(location.to_string());
            self.files.insert(location.to_string(), opened);
        }
        self.files.get_mut(location).ok_or_else(|| {
            Error::tensor(
                tensor_name,
                format!("external data `{location}` was not opened"),
            )
        })
    }

    fn open(&mut self, tensor_name: &str, location: &str) -> Result<DataFile> {
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
        let cannot = |e: String| {
            Error::tensor(
                tensor_name,
                format!("cannot read external data file {}: {e}", full.display()),
            )
        };
        // Symbolic links resolved: the file must still be inside the model's directory.
        let base_dir = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        if self.canonical_base.is_none() {
            let c = fs::canonicalize(base_dir).map_err(|e| cannot(e.to_string()))?;
            self.canonical_base = Some(c);
        }
        let canonical = fs::canonicalize(&full).map_err(|e| cannot(e.to_string()))?;
        if !self
            .canonical_base
            .as_ref()
            .is_some_and(|b| canonical.starts_with(b))
        {
            return Err(Error::tensor(
                tensor_name,
                format!(
                    "external data location `{location}` leads outside the model's directory through a symbolic link (refused)"
                ),
            ));
        }
        let file = open_regular(&canonical).map_err(|e| match e {
            Error::File { reason, .. } => cannot(reason),
            Error::Io { source, .. } => cannot(source.to_string()),
            other => cannot(other.to_string()),
        })?;
        let len = file.metadata().map_err(|e| cannot(e.to_string()))?.len();
        Ok(DataFile { file, len })
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

/// The file name of an output path.
fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Config(format!("{} has no file name", path.display())))
}

/// The directory an output path is written in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `model` to `path` atomically (temporary file + rename), spilling initializers to a
/// fresh `<file name>.<random>.data` beside it as `external` asks; the data file is in place
/// before the model is renamed, and the data file the replaced model referenced is removed
/// after (see the module docs).
///
/// # Errors
/// `path` is one of `inputs` (the files the model was read from) or exists and is not a
/// regular file; the directory is not writable; a tensor cannot be moved to raw form. On error
/// nothing of this run is left, and what was at `path` is untouched.
pub fn write_model(
    model: &pb::ModelProto,
    path: &Path,
    external: ExternalData,
    inputs: &[&Path],
) -> Result<Written> {
    refuse_overwriting(path, inputs)?;
    check_destination_kind(path)?;
    let name = file_name(path)?;
    let dir = parent_dir(path);
    let spill = match external {
        ExternalData::Always => true,
        ExternalData::Auto => model.encoded_len() > PROTOBUF_LIMIT,
    };
    if !spill {
        return write_inline(model, path, &name, &dir, inputs);
    }
    let data_path = fresh_data_path(path, &name)?;
    let data_name = file_name(&data_path)?;
    let mut model = model.clone();
    let mut data = Vec::new();
    let mut moved = 0usize;
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
                entry("location", &data_name),
                entry("offset", &offset.to_string()),
                entry("length", &raw.len().to_string()),
            ];
            moved += 1;
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
    if moved == 0 {
        // Nothing large enough to move: no data file (it would be referenced by nothing).
        return write_inline(&model, path, &name, &dir, inputs);
    }
    // The data first, under its fresh name: nothing refers to it until the model is renamed.
    write_new(&data_path, &data)?;
    let previous = previous_data_files(path, &name, &dir);
    if let Err(e) = write_atomic_checked(path, &bytes) {
        let _ = fs::remove_file(&data_path);
        return Err(e);
    }
    remove_replaced(&previous, Some(&data_path), inputs);
    Ok(Written {
        model_bytes: bytes.len(),
        external: Some((data_path, data.len())),
    })
}

/// Writes `model` with every tensor inline, then removes the data file the replaced model
/// referenced.
fn write_inline(
    model: &pb::ModelProto,
    path: &Path,
    name: &str,
    dir: &Path,
    inputs: &[&Path],
) -> Result<Written> {
    let bytes = encode_model(model);
    let previous = previous_data_files(path, name, dir);
    write_atomic_checked(path, &bytes)?;
    remove_replaced(&previous, None, inputs);
    Ok(Written {
        model_bytes: bytes.len(),
        external: None,
    })
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value.into()),
    }
}

/// 64 unpredictable bits: the system's random source where there is one (`/dev/urandom`),
/// mixed with the time, the process id and a counter through [`SplitMix64`].
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut seed = nanos ^ (u64::from(std::process::id()) << 32) ^ count.rotate_left(17);
    if let Ok(mut f) = File::open("/dev/urandom") {
        let mut b = [0u8; 8];
        if f.read_exact(&mut b).is_ok() {
            seed ^= u64::from_le_bytes(b);
        }
    }
    SplitMix64::new(seed).next_u64()
}

/// Whether `file` is a data file [`write_model`] writes for a model named `model_name`:
/// `<model_name>.<16 hex digits>.data`, or `<model_name>.data` (earlier versions).
fn is_our_data_name(file: &str, model_name: &str) -> bool {
    let Some(rest) = file
        .strip_prefix(model_name)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    if rest == "data" {
        return true;
    }
    rest.strip_suffix(".data")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A data file name for the model `path` (file name `name`) that does not exist yet.
fn fresh_data_path(path: &Path, name: &str) -> Result<PathBuf> {
    for _ in 0..NAME_ATTEMPTS {
        let p = path.with_file_name(format!("{name}.{:016x}.data", random_u64()));
        if fs::symlink_metadata(&p).is_err() {
            return Ok(p);
        }
    }
    Err(Error::Config(format!(
        "cannot find a free name for the external data of {}",
        path.display()
    )))
}

/// The data files of our naming pattern that the model now at `path` references (read before
/// it is replaced). Empty when there is no such file in `dir` (then the model is not read) or
/// the model cannot be read or decoded: nothing is removed on a guess.
fn previous_data_files(path: &Path, name: &str, dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let candidates: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|f| is_our_data_name(f, name))
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let Ok(bytes) = read_regular(path) else {
        return Vec::new();
    };
    let Ok(old) = pb::ModelProto::decode(bytes.as_slice()) else {
        return Vec::new();
    };
    let mut referenced = Vec::new();
    if let Some(g) = &old.graph {
        for t in g.initializer.iter().filter(|t| tensor::is_external(t)) {
            for e in &t.external_data {
                if e.key.as_deref() == Some("location") {
                    if let Some(v) = &e.value {
                        if candidates.contains(v) && !referenced.contains(v) {
                            referenced.push(v.clone());
                        }
                    }
                }
            }
        }
    }
    referenced.into_iter().map(|f| dir.join(f)).collect()
}

/// Removes the data files the replaced model referenced, except the one just written and any
/// input. Best effort: the new model no longer needs them.
fn remove_replaced(previous: &[PathBuf], written: Option<&Path>, inputs: &[&Path]) {
    for p in previous {
        if written.is_some_and(|w| same_file(p, w)) || inputs.iter().any(|i| same_file(p, i)) {
            continue;
        }
        let _ = fs::remove_file(p);
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

/// A file a command reads or writes, with what names it on the command line (`-o`,
/// `--report`, `the input model`, ...), for [`check_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPath {
    /// The flag or argument that names the file, as printed in messages.
    pub flag: String,
    /// The path as given.
    pub path: PathBuf,
}

impl NamedPath {
    /// A path and the flag that names it.
    pub fn new(flag: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        NamedPath {
            flag: flag.into(),
            path: path.into(),
        }
    }
}

/// The one rule for the files of a command: no output may be an input or another output,
/// whatever paths name them (links, `..`, relative paths, files not written yet). Directories
/// of inputs are given as the files in them the command reads. Call it before any work, so
/// that nothing is written when it fails.
///
/// # Errors
/// [`Error::Config`] naming both flags and the file.
pub fn check_files(inputs: &[NamedPath], outputs: &[NamedPath]) -> Result<()> {
    let inputs: Vec<(&NamedPath, PathBuf)> = inputs
        .iter()
        .filter_map(|i| resolved(&i.path).map(|r| (i, r)))
        .collect();
    let mut seen: Vec<(&NamedPath, PathBuf)> = Vec::new();
    for o in outputs {
        let Some(r) = resolved(&o.path) else {
            continue;
        };
        if let Some((i, _)) = inputs.iter().find(|(_, p)| *p == r) {
            let same = if i.path == o.path {
                String::new()
            } else {
                format!(" {}", i.path.display())
            };
            return Err(Error::Config(format!(
                "refusing to write {} {}: it is also {}{same} (an output may not be an input of the same command; choose another path)",
                o.flag,
                o.path.display(),
                i.flag,
            )));
        }
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == r) {
            return Err(Error::Config(format!(
                "refusing to write {} {}: {} writes the same file (give each output its own path)",
                o.flag,
                o.path.display(),
                other.flag
            )));
        }
        seen.push((o, r));
    }
    Ok(())
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

/// Refuses a destination that exists and is neither a regular file nor a symbolic link (a
/// directory, FIFO, device or socket is never replaced).
///
/// # Errors
/// [`Error::File`] naming what the destination is.
pub fn check_destination_kind(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
        Ok(m) => Err(Error::File {
            path: path.into(),
            reason: format!(
                "is {}, not a regular file: refusing to replace it (choose a file path)",
                kind_of(m.file_type())
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

/// Creates a new temporary file beside `path` (`.NAME.PID.RANDOM.isquant-tmp`) with
/// `create_new`, which never opens an existing file or follows a symbolic link.
fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    create_temp_with(path, &mut random_u64)
}

/// [`create_temp`] with the random part of the names drawn from `random`.
fn create_temp_with(path: &Path, random: &mut dyn FnMut() -> u64) -> Result<(PathBuf, File)> {
    let dir = parent_dir(path);
    // Keep the temporary's name within the 255-byte limit of most file systems.
    let name: String = file_name(path)?.chars().take(120).collect();
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}.isquant-tmp",
            std::process::id(),
            random()
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io("write", path, e)),
        }
    }
    Err(Error::io(
        "create a temporary file for",
        path,
        last.unwrap_or_else(|| std::io::Error::other("every name tried exists")),
    ))
}

/// Writes `bytes` to a new temporary beside `path`, syncs it and renames it to `path`
/// (`replace`: over whatever is there; otherwise `path` must not exist yet). The temporary is
/// removed on any failure; errors name `path`.
fn write_through_temp(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let (tmp, mut f) = create_temp(path)?;
    let result = (|| {
        f.write_all(bytes)
            .map_err(|e| Error::io("write", path, e))?;
        f.sync_all().map_err(|e| Error::io("sync", path, e))?;
        drop(f);
        if !replace && fs::symlink_metadata(path).is_ok() {
            return Err(Error::io(
                "create",
                path,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a file that must not exist yet (a fresh data file) through a temporary.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    write_through_temp(path, bytes, false)
}

/// [`write_atomic`] once the destination has been checked.
fn write_atomic_checked(path: &Path, bytes: &[u8]) -> Result<()> {
    write_through_temp(path, bytes, true)
}

/// Writes `bytes` to `path` through a new temporary file in the same directory and a rename.
/// An existing `path` must be a regular file or a symbolic link (which the rename replaces).
///
/// # Errors
/// `path` is a directory, FIFO, device or socket; any I/O failure (the temporary is removed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_destination_kind(path)?;
    file_name(path)?;
    write_atomic_checked(path, bytes)
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
            canonical_base: None,
            files: HashMap::new(),
            info: LoadInfo::default(),
        };
        let e = r.resolve_tensor(&mut t).unwrap_err().to_string();
        assert!(e.contains("leaves the model's directory"), "{e}");
    }

    /// S2: a symbolic link planted at the temporary name the writer draws is never followed;
    /// the writer takes the next name and the link's target is untouched.
    #[cfg(unix)]
    #[test]
    fn a_planted_link_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let out = dir.path().join("out.onnx");
        let planted = dir.path().join(format!(
            ".out.onnx.{}.{:016x}.isquant-tmp",
            std::process::id(),
            1
        ));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut next = 0u64;
        let (tmp, mut f) = create_temp_with(&out, &mut || {
            next += 1;
            next
        })
        .unwrap();
        assert_ne!(tmp, planted);
        assert!(tmp
            .to_string_lossy()
            .ends_with(".0000000000000002.isquant-tmp"));
        f.write_all(b"model").unwrap();
        drop(f);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        // Every name taken: an error, still nothing written through the link.
        let e = create_temp_with(&out, &mut || 1).unwrap_err().to_string();
        assert!(e.contains("out.onnx"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn temporary_names_are_not_predictable() {
        let a = random_u64();
        let b = random_u64();
        assert_ne!(a, b);
    }

    #[test]
    fn data_file_names_are_ours_only_for_this_model() {
        assert!(is_our_data_name("q.onnx.0123456789abcdef.data", "q.onnx"));
        assert!(is_our_data_name("q.onnx.data", "q.onnx"));
        assert!(!is_our_data_name("q.onnx.0123456789abcdeg.data", "q.onnx"));
        assert!(!is_our_data_name("q.onnx.0123.data", "q.onnx"));
        assert!(!is_our_data_name("p.onnx.0123456789abcdef.data", "q.onnx"));
        assert!(!is_our_data_name("weights.bin", "q.onnx"));
    }

    /// S3: a directory (and, on unix, a FIFO) at the destination is refused, never replaced.
    #[test]
    fn non_regular_destinations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let e = write_atomic(&sub, b"x").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        assert!(sub.is_dir());
        let file = dir.path().join("f.json");
        write_atomic(&file, b"1").unwrap();
        write_atomic(&file, b"2").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"2");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }

    #[test]
    fn outputs_may_be_neither_inputs_nor_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.onnx");
        fs::write(&m, b"x").unwrap();
        let inputs = [NamedPath::new("the input model", &m)];
        let e = check_files(&inputs, &[NamedPath::new("--report", &m)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--report") && e.contains("the input model"),
            "{e}"
        );
        let r = dir.path().join("r.json");
        let via_dotdot = dir.path().join("sub").join("..").join("r.json");
        fs::create_dir(dir.path().join("sub")).unwrap();
        let e = check_files(
            &inputs,
            &[
                NamedPath::new("--report", &r),
                NamedPath::new("--json", &via_dotdot),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--json") && e.contains("--report"), "{e}");
        check_files(&inputs, &[NamedPath::new("-o", dir.path().join("q.onnx"))]).unwrap();
    }
}
