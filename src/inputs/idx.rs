//! IDX files (MNIST / Fashion-MNIST), optionally gzip-compressed: images and labels.

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::{bad, Preprocess, Sample};
use crate::error::{Error, Result};

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::onnx::io::read_regular(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        // A few kB of gzip can inflate to gigabytes: stop one byte past the budget.
        let limit = crate::limits::max_inflated_bytes();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("cannot gunzip: {e}")))?;
        if out.len() as u64 > limit {
            return Err(Error::Limit {
                what: format!("{} inflates to more than", path.display()),
                unit: "bytes",
                value: out.len() as u128,
                limit: u128::from(limit),
                raise: "set ISQUANT_MAX_ELEMENTS to allow more",
            });
        }
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
    if header.checked_add(count).is_none_or(|end| b.len() < end) {
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
                tensor: ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
                    // [1, H, W] or [H, W, 1]: the pixel at (y, x).
                    let (y, x) = if p.nhwc {
                        (ix[0], ix[1])
                    } else {
                        (ix[1], ix[2])
                    };
                    v[y * w + x]
                }),
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

#[cfg(test)]
mod tests {
    use super::*;

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
