//! Loading the inputs of `validate` and `--calibrate` from what the user names: files and
//! folders of images, `.npy` and IDX files (or nothing: seeded synthetic inputs), with labels
//! from file names, a labels file or an IDX labels file; checked against the model's input
//! shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use super::{
    expand, kind, label_from_name, load_idx_images, load_idx_labels, load_image, synthetic,
};
use super::{Kind, Preprocess, Sample};
use crate::error::{Error, Result};

/// Where inputs come from and how they are labeled.
#[derive(Debug, Clone, Copy)]
pub struct InputSource<'a> {
    /// Files and folders (none: synthetic inputs).
    pub paths: &'a [PathBuf],
    /// How images become tensors.
    pub preprocess: &'a Preprocess,
    /// Labels from file names: the first capture group of this regex.
    pub label_regex: Option<&'a str>,
    /// A labels file: IDX labels, or text with one label per line or `FILE LABEL` lines.
    pub labels: Option<&'a Path>,
    /// Use at most this many inputs.
    pub limit: Option<usize>,
    /// How many synthetic inputs to make when no paths are given.
    pub synthetic: usize,
    /// The range synthetic inputs are drawn from (uniform).
    pub synthetic_range: (f32, f32),
}

/// Loaded inputs.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The samples, in file order.
    pub samples: Vec<Sample>,
    /// Whether they are synthetic.
    pub synthetic: bool,
}

/// The model's fixed (H, W), when its input is 4-D with both known (NCHW, or NHWC).
fn model_hw(dims: &[Option<usize>], p: &Preprocess) -> Option<(u32, u32)> {
    if dims.len() != 4 {
        return None;
    }
    let (h, w) = if p.nhwc {
        (dims[1], dims[2])
    } else {
        (dims[2], dims[3])
    };
    h.zip(w).map(|(h, w)| (h as u32, w as u32))
}

/// Loads inputs (or makes synthetic ones when no path is given), applies the limit and the
/// labels, and checks them against the model input's dimensions `dims` (`None`: open).
///
/// # Errors
/// Unreadable or unknown files, a bad label regex or labels file, open dimensions with
/// synthetic inputs, inputs whose shape differs from the model's.
pub fn load_samples(src: &InputSource<'_>, dims: &[Option<usize>]) -> Result<Loaded> {
    let p = src.preprocess;
    let hw = model_hw(dims, p);
    let files = expand(src.paths)?;
    let is_synthetic = files.is_empty();
    let mut samples = Vec::new();
    if is_synthetic {
        if dims.iter().skip(1).any(Option::is_none) || dims.is_empty() {
            return Err(Error::Config(
                "the model input has open dimensions: give inputs, or --input-shape to quantize"
                    .into(),
            ));
        }
        let shape: Vec<usize> = dims.iter().skip(1).map(|d| d.unwrap_or(1)).collect();
        let n = crate::limits::count("--synthetic", src.synthetic, crate::limits::MAX_SYNTHETIC)?;
        crate::limits::elements(
            &format!("{n} synthetic inputs of shape {shape:?}"),
            n,
            &shape,
        )?;
        let (lo, hi) = src.synthetic_range;
        samples = synthetic(&shape, src.synthetic.max(1), lo, hi);
    }
    let re = src
        .label_regex
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| Error::Config(format!("--label-regex: {e}")))?;
    let label = |name: &str| re.as_ref().and_then(|re| label_from_name(name, re));
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match kind(f) {
            Some(Kind::Image) => samples.push(Sample {
                tensor: load_image(f, p, hw)?,
                label: label(&name),
                name,
            }),
            Some(Kind::Npy) => {
                let t = crate::data::read_npy(f)?;
                let t = if t.ndim() == dims.len() && t.shape().first() == Some(&1) {
                    t.index_axis_move(ndarray::Axis(0), 0)
                } else {
                    t
                };
                samples.push(Sample {
                    tensor: t,
                    label: label(&name),
                    name,
                });
            }
            Some(Kind::Idx) => samples.extend(load_idx_images(f, p, src.limit)?),
            None => {
                return Err(Error::Config(format!(
                    "{} is not an image (.jpg/.png), .npy or IDX file",
                    f.display()
                )))
            }
        }
    }
    finish(samples, src, dims, is_synthetic)
}

/// Samples already in memory (the Python API's arrays), limited, labeled and checked as
/// [`load_samples`] does with the ones it loads (`src.paths` is not read).
///
/// # Errors
/// A bad labels file; inputs whose shape differs from the model's; NaN or infinite values.
pub fn given_samples(
    samples: Vec<Sample>,
    src: &InputSource<'_>,
    dims: &[Option<usize>],
) -> Result<Loaded> {
    finish(samples, src, dims, false)
}

/// Applies the limit and the labels file, and checks the samples against `dims`.
fn finish(
    mut samples: Vec<Sample>,
    src: &InputSource<'_>,
    dims: &[Option<usize>],
    is_synthetic: bool,
) -> Result<Loaded> {
    if let Some(l) = src.limit {
        samples.truncate(l);
    }
    if let Some(lp) = src.labels {
        let labels = load_labels(lp, &samples)?;
        for (s, l) in samples.iter_mut().zip(labels) {
            if l.is_some() {
                s.label = l;
            }
        }
    }
    let expected: Vec<usize> = dims.iter().skip(1).filter_map(|d| *d).collect();
    if let Some(s) = samples.first() {
        let open = dims.iter().skip(1).any(Option::is_none);
        if !open && s.tensor.shape() != expected.as_slice() {
            return Err(Error::Config(format!(
                "input `{}` has shape {:?} after preprocessing, but the model expects {:?} (check --resize/--crop/--gray/--layout)",
                s.name,
                s.tensor.shape(),
                expected
            )));
        }
    }
    // A NaN input makes every comparison of float and int8 meaningless (SQNR over the finite
    // elements only read 36.8 dB on an all-NaN image): refuse it by name.
    if let Some((s, bad)) = samples
        .iter()
        .map(|s| (s, s.tensor.iter().filter(|v| !v.is_finite()).count()))
        .find(|(_, bad)| *bad > 0)
    {
        return Err(Error::Config(format!(
            "input `{}` holds {bad} NaN or infinite value(s) of {}",
            s.name,
            s.tensor.len()
        )));
    }
    Ok(Loaded {
        samples,
        synthetic: is_synthetic,
    })
}

/// Labels for `samples` from a labels file: IDX labels (by position), or text with one label
/// per line (by position) or `FILE LABEL` lines (by file name).
///
/// # Errors
/// Unreadable files, lines that are not labels.
pub fn load_labels(path: &Path, samples: &[Sample]) -> Result<Vec<Option<usize>>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("idx1") {
        let l = load_idx_labels(path)?;
        return Ok((0..samples.len()).map(|i| l.get(i).copied()).collect());
    }
    let text = String::from_utf8(crate::onnx::io::read_regular(path)?).map_err(|e| {
        Error::io(
            "read",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let mut by_name = HashMap::new();
    let mut in_order = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| {
            s.parse::<usize>().map_err(|_| Error::Model {
                path: path.into(),
                reason: format!("line {}: `{s}` is not a class index", n + 1),
            })
        };
        match parts.as_slice() {
            [l] => in_order.push(parse(l)?),
            [f, l] => {
                by_name.insert(f.to_string(), parse(l)?);
            }
            _ => {
                return Err(Error::Model {
                    path: path.into(),
                    reason: format!("line {}: expected `LABEL` or `FILE LABEL`", n + 1),
                })
            }
        }
    }
    Ok(samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            by_name
                .get(&s.name)
                .copied()
                .or_else(|| in_order.get(i).copied())
        })
        .collect())
}

/// Calibration inputs as batches: of the model's fixed batch size, else of 8.
///
/// # Errors
/// As [`load_samples`]; no inputs found; inputs of different shapes.
pub fn calibration_batches(
    src: &InputSource<'_>,
    dims: &[Option<usize>],
) -> Result<Vec<Vec<ArrayD<f32>>>> {
    let loaded = load_samples(src, dims)?;
    if loaded.synthetic || loaded.samples.is_empty() {
        let shown: Vec<String> = src.paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Config(format!(
            "{} holds no calibration inputs (images, .npy or IDX files)",
            shown.join(", ")
        )));
    }
    let per = match dims.first() {
        Some(Some(b)) => (*b).max(1),
        _ => 8,
    };
    loaded
        .samples
        .chunks(per)
        .map(|c| {
            let views: Vec<_> = c.iter().map(|s| s.tensor.view()).collect();
            ndarray::stack(ndarray::Axis(0), &views)
                .map(|b| vec![b])
                .map_err(|e| Error::Config(format!("calibration inputs differ in shape: {e}")))
        })
        .collect()
}
