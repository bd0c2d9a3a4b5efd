//! Image files (JPEG/PNG) to tensors: decode, channel order, resize, centre crop, scale,
//! normalise, layout (module docs of [`super`]).

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::{bad, Preprocess};
use crate::error::Result;

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
    // A regular file only (a FIFO would block): the reader of `onnx::io`. The header's size
    // is checked before anything is decoded: a 241-byte PNG may declare 1×40000 pixels, and
    // resizing it to a shorter side of 256 would ask for 7.9 GB.
    let reader = |path: &Path| -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        let file = crate::onnx::io::open_regular(path)?;
        let mut reader = image::ImageReader::new(std::io::BufReader::new(file));
        match image::ImageFormat::from_path(path) {
            Ok(format) => reader.set_format(format),
            Err(_) => {
                reader = reader
                    .with_guessed_format()
                    .map_err(|e| bad(path, format!("cannot read image: {e}")))?;
            }
        }
        Ok(reader)
    };
    let (hw, hh) = reader(path)?
        .into_dimensions()
        .map_err(|e| bad(path, format!("cannot decode image: {e}")))?;
    crate::limits::image(
        &format!("image {}", path.display()),
        u64::from(hw),
        u64::from(hh),
    )?;
    let img = reader(path)?
        .decode()
        .map_err(|e| bad(path, format!("cannot decode image: {e}")))?;
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
        crate::limits::image(
            &format!("image {} resized to {nw}×{nh}", path.display()),
            u64::from(nw),
            u64::from(nh),
        )?;
        rgb = resize(&rgb, nw.max(1), nh.max(1), FilterType::Triangle);
    } else if let Some((rh, rw)) = p.resize_exact {
        crate::limits::image(
            &format!("image {} resized to {rw}×{rh}", path.display()),
            u64::from(rw),
            u64::from(rh),
        )?;
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
