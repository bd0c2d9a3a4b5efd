//! Inputs for validation and calibration, in the forms users have: image files (JPEG/PNG,
//! with preprocessing), `.npy` tensors, IDX files (MNIST / Fashion-MNIST), or nothing
//! (seeded synthetic inputs). Labels come from file names (`--label-regex`), a labels file,
//! or an IDX labels file.
//!
//! Image preprocessing, in order: decode → RGB (or BGR with `bgr`, or one gray channel with
//! `gray`) → resize (shorter side to N, or exactly H×W; bilinear with antialiasing) →
//! centre crop H×W → `x·scale` (default 1/255) → `(x − mean_c) / std_c` → NCHW (or NHWC).
//! Presets ([`Preset`]) name common preprocessings. Without resize/crop flags, an image whose
//! size differs from a fixed model input is resized to it exactly.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::error::{Error, Result};

mod idx;
mod images;
mod load;
mod preset;

pub use idx::{load_idx_images, load_idx_labels, read_idx};
pub use images::load_image;
pub use load::{
    calibration_batches, given_samples, load_labels, load_samples, InputSource, Loaded,
};
pub use preset::{Layout, Preset};

/// How images become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Shorter side to this size (keeping the aspect ratio).
    pub resize_shorter: Option<u32>,
    /// Resize exactly to (height, width).
    pub resize_exact: Option<(u32, u32)>,
    /// Centre crop (height, width).
    pub crop: Option<(u32, u32)>,
    /// Multiplier applied to 0..255 pixel values.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (one value, or one per channel).
    pub mean: Vec<f32>,
    /// Per-channel std divided by (one value, or one per channel).
    pub std: Vec<f32>,
    /// BGR channel order.
    pub bgr: bool,
    /// One gray channel.
    pub gray: bool,
    /// NHWC instead of NCHW.
    pub nhwc: bool,
    /// Crop before resizing (default: resize, then crop, as torchvision's eval transform).
    pub crop_first: bool,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            resize_shorter: None,
            resize_exact: None,
            crop: None,
            scale: 1.0 / 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            bgr: false,
            gray: false,
            nhwc: false,
            crop_first: false,
        }
    }
}

/// One input sample (without the batch dimension) and its label, if known.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Where it came from (file name, `file#index`, or `synthetic#k`).
    pub name: String,
    /// The tensor, shaped like the model input without the batch dimension.
    pub tensor: ArrayD<f32>,
    /// Class label.
    pub label: Option<usize>,
}

pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Model {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Expands files and directories into a sorted list of image / `.npy` / IDX files.
///
/// # Errors
/// A path that does not exist or a directory that cannot be read.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io("read directory", p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && kind(f).is_some())
                .collect();
            files.sort();
            out.extend(files);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::io(
                "read",
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    Ok(out)
}

/// The kind of an input file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JPEG / PNG.
    Image,
    /// NumPy array.
    Npy,
    /// IDX images.
    Idx,
}

/// Classifies a file by extension (`.idx*`/`-idx3-ubyte[.gz]` are IDX images).
pub fn kind(p: &Path) -> Option<Kind> {
    let name = p.file_name()?.to_string_lossy().to_lowercase();
    if name.ends_with(".jpg") || name.ends_with(".jpeg") || name.ends_with(".png") {
        Some(Kind::Image)
    } else if name.ends_with(".npy") {
        Some(Kind::Npy)
    } else if name.contains("idx3") {
        Some(Kind::Idx)
    } else {
        None
    }
}

/// Extracts an integer label from a file name: the first capture group of `re` (or the whole
/// match), e.g. `_(\d+)\.(jpg|png)$` for `imagenet_07_609.jpg` → 609.
pub fn label_from_name(name: &str, re: &regex::Regex) -> Option<usize> {
    let caps = re.captures(name)?;
    caps.get(1).or_else(|| caps.get(0))?.as_str().parse().ok()
}

/// Seeded synthetic samples, uniform in `[lo, hi)`.
pub fn synthetic(shape: &[usize], count: usize, lo: f32, hi: f32) -> Vec<Sample> {
    (0..count)
        .map(|k| Sample {
            name: format!("synthetic#{k}"),
            tensor: crate::rng::seeded_uniform(shape, 1000 + k as u64, lo, hi),
            label: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_names() {
        let re = regex::Regex::new(r"_(\d+)\.\w+$").unwrap();
        assert_eq!(label_from_name("imagenet_07_609.jpg", &re), Some(609));
        assert_eq!(label_from_name("cifar10_00_3.png", &re), Some(3));
        assert_eq!(label_from_name("cat.png", &re), None);
    }
}
