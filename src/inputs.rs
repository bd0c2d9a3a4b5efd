//! Inputs for validation and calibration, in the forms users have: image files (JPEG/PNG,
//! with preprocessing), `.npy` tensors, IDX files (MNIST / Fashion-MNIST), or nothing
//! (seeded synthetic inputs). Labels come from file names (`--label-regex`), a labels file,
//! or an IDX labels file.
//!
//! Image preprocessing, in order: decode → RGB (or BGR with `bgr`, or one gray channel with
//! `gray`) → resize (shorter side to N, or exactly H×W; bilinear with antialiasing) →
//! centre crop H×W → `x·scale` (default 1/255) → `(x − mean_c) / std_c` → NCHW (or NHWC).
//! The `imagenet` preset is: shorter side 256, centre crop 224, mean (0.485, 0.456, 0.406),
//! std (0.229, 0.224, 0.225). Without resize/crop flags, an image whose size differs from a
//! fixed model input is resized to it exactly.

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};

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

impl Preprocess {
    /// The ImageNet preset (torchvision's evaluation transform).
    pub fn imagenet() -> Self {
        Preprocess {
            resize_shorter: Some(256),
            crop: Some((224, 224)),
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            ..Preprocess::default()
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

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Model {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Decodes and preprocesses one image. `model_hw` is the model's fixed (H, W), if any.
///
/// # Errors
/// The file does not decode, or preprocessing produces a size that cannot be cropped.
pub fn load_image(
    path: &Path,
    p: &Preprocess,
    model_hw: Option<(u32, u32)>,
) -> Result<ArrayD<f32>> {
    use image::imageops::{resize, FilterType};
    let img = image::open(path).map_err(|e| bad(path, format!("cannot decode image: {e}")))?;
    let mut rgb = img.to_rgb8();
    if p.crop_first {
        rgb = center_crop(path, rgb, p.crop)?;
    }
    let (w, h) = rgb.dimensions();
    if let Some(s) = p.resize_shorter {
        let (nw, nh) = if w <= h {
            (
                s,
                ((u64::from(h) * u64::from(s)) / u64::from(w.max(1))) as u32,
            )
        } else {
            (
                ((u64::from(w) * u64::from(s)) / u64::from(h.max(1))) as u32,
                s,
            )
        };
        rgb = resize(&rgb, nw.max(1), nh.max(1), FilterType::Triangle);
    } else if let Some((rh, rw)) = p.resize_exact {
        rgb = resize(&rgb, rw, rh, FilterType::Triangle);
    } else if p.crop.is_none() || p.crop_first {
        if let Some((mh, mw)) = model_hw {
            if (h, w) != (mh, mw) {
                rgb = resize(&rgb, mw, mh, FilterType::Triangle);
            }
        }
    }
    if !p.crop_first {
        rgb = center_crop(path, rgb, p.crop)?;
    }
    let (w, h) = rgb.dimensions();
    let (w, h) = (w as usize, h as usize);
    let channels = if p.gray { 1 } else { 3 };
    let pick = |v: &[f32], c: usize| v.get(c).or_else(|| v.first()).copied().unwrap_or(0.0);
    let mut out = if p.nhwc {
        ArrayD::zeros(IxDyn(&[h, w, channels]))
    } else {
        ArrayD::zeros(IxDyn(&[channels, h, w]))
    };
    for (x, y, px) in rgb.enumerate_pixels() {
        let [r, g, b] = px.0;
        let vals: [f32; 3] = if p.bgr {
            [f32::from(b), f32::from(g), f32::from(r)]
        } else {
            [f32::from(r), f32::from(g), f32::from(b)]
        };
        let gray = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
        for c in 0..channels {
            let raw = if p.gray { gray } else { vals[c] };
            let v = (raw * p.scale - pick(&p.mean, c)) / pick(&p.std, c);
            let (x, y) = (x as usize, y as usize);
            if p.nhwc {
                out[[y, x, c]] = v;
            } else {
                out[[c, y, x]] = v;
            }
        }
    }
    Ok(out)
}

fn center_crop(
    path: &Path,
    rgb: image::RgbImage,
    crop: Option<(u32, u32)>,
) -> Result<image::RgbImage> {
    let Some((ch, cw)) = crop else {
        return Ok(rgb);
    };
    let (w, h) = rgb.dimensions();
    if ch > h || cw > w {
        return Err(bad(
            path,
            format!("cannot crop {ch}x{cw} from a {h}x{w} image"),
        ));
    }
    let top = ((f64::from(h - ch)) / 2.0).round() as u32;
    let left = ((f64::from(w - cw)) / 2.0).round() as u32;
    Ok(image::imageops::crop_imm(&rgb, left, top, cw, ch).to_image())
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("cannot gunzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads an IDX file (optionally gzip-compressed): `(dims, u8 values)`.
///
/// # Errors
/// A bad magic number, a non-u8 element type, or a short file.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let b = read_maybe_gz(path)?;
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err(bad(path, "not an IDX file (bad magic number)"));
    }
    if b[2] != 0x08 {
        return Err(bad(
            path,
            format!("IDX element type 0x{:02x} is not unsigned byte", b[2]),
        ));
    }
    let n_dims = usize::from(b[3]);
    let header = 4 + 4 * n_dims;
    if b.len() < header {
        return Err(bad(path, "IDX header is truncated"));
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|k| {
            u32::from_be_bytes([b[4 + 4 * k], b[5 + 4 * k], b[6 + 4 * k], b[7 + 4 * k]]) as usize
        })
        .collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let count = count.ok_or_else(|| bad(path, "IDX dimensions overflow"))?;
    if b.len() < header + count {
        return Err(bad(
            path,
            format!(
                "IDX data has {} bytes, dimensions need {count}",
                b.len() - header
            ),
        ));
    }
    Ok((dims, b[header..header + count].to_vec()))
}

/// Reads IDX images `[N, H, W]` as N samples `[1, H, W]` with `scale`, `mean`, `std`
/// applied (first values only: IDX images are gray).
///
/// # Errors
/// As [`read_idx`], plus a rank other than 3.
pub fn load_idx_images(path: &Path, p: &Preprocess, limit: Option<usize>) -> Result<Vec<Sample>> {
    let (dims, data) = read_idx(path)?;
    let [n, h, w] = dims[..] else {
        return Err(bad(
            path,
            format!("IDX images must be [N, H, W], found {dims:?}"),
        ));
    };
    let n = limit.map_or(n, |l| l.min(n));
    let mean = p.mean.first().copied().unwrap_or(0.0);
    let std = p.std.first().copied().unwrap_or(1.0);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((0..n)
        .map(|i| {
            let v: Vec<f32> = data[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&b| (f32::from(b) * p.scale - mean) / std)
                .collect();
            let shape = if p.nhwc { [h, w, 1] } else { [1, h, w] };
            Sample {
                name: format!("{name}#{i}"),
                tensor: ArrayD::from_shape_vec(IxDyn(&shape), v)
                    .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&shape))),
                label: None,
            }
        })
        .collect())
}

/// Reads IDX labels.
///
/// # Errors
/// As [`read_idx`], plus a rank other than 1.
pub fn load_idx_labels(path: &Path) -> Result<Vec<usize>> {
    let (dims, data) = read_idx(path)?;
    if dims.len() != 1 {
        return Err(bad(path, format!("IDX labels must be 1-D, found {dims:?}")));
    }
    Ok(data.into_iter().map(usize::from).collect())
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
            tensor: crate::validate::seeded_uniform(shape, 1000 + k as u64, lo, hi),
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

    #[test]
    fn idx_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("isquant-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x-idx3-ubyte");
        let mut b = vec![0, 0, 8, 3];
        for d in [2u32, 2, 3] {
            b.extend(d.to_be_bytes());
        }
        b.extend(0u8..12);
        std::fs::write(&p, &b).unwrap();
        let s = load_idx_images(&p, &Preprocess::default(), None).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].tensor.shape(), &[1, 2, 3]);
        assert!((s[1].tensor[[0, 1, 2]] - 11.0 / 255.0).abs() < 1e-6);
        std::fs::write(&p, &b[..20]).unwrap();
        assert!(load_idx_images(&p, &Preprocess::default(), None)
            .unwrap_err()
            .to_string()
            .contains("need 12"));
        std::fs::write(&p, b"garbage!").unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("bad magic"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
