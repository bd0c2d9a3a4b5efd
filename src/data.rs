//! User-supplied input tensors (`.npy`) for calibration and validation.
//!
//! NumPy's `.npy` format v1–v3: magic `\x93NUMPY`, version, header length, a Python-dict
//! header (`descr`, `fortran_order`, `shape`), then the raw array. Accepted: little-endian
//! `<f4` (float32), `<f8` (converted), `|u1` (converted, no scaling), C order.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Model {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Reads one `.npy` file as f32.
///
/// # Errors
/// Not an `.npy` file, an unsupported dtype, Fortran order, or a length that disagrees with
/// the header's shape.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = crate::onnx::io::read_regular(path)?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not a .npy file (missing \\x93NUMPY magic)"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!(".npy version {v} is not supported"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(path, ".npy header is truncated"))?;
    let header = String::from_utf8_lossy(&bytes[start..end]).into_owned();
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        let colon = rest.find(':')?;
        Some(rest[colon + 1..].trim_start().to_string())
    };
    let descr = field("descr").ok_or_else(|| bad(path, ".npy header has no descr"))?;
    let descr = descr
        .trim_start_matches(['\'', '"'])
        .split(['\'', '"'])
        .next()
        .unwrap_or("")
        .to_string();
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad(path, "Fortran-ordered .npy arrays are not supported"));
    }
    let shape_txt = field("shape").ok_or_else(|| bad(path, ".npy header has no shape"))?;
    let inner = shape_txt
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("");
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(path, format!("cannot read .npy shape {shape_txt:?}")))?;
    let count = crate::limits::elements(
        &format!("{} (.npy shape {shape:?})", path.display()),
        1,
        &shape,
    )?;
    let data = &bytes[end..];
    // Exactly the elements the shape names: a longer file is an error too, not a shape
    // mismatch deep in ndarray.
    let values: Vec<f32> = match descr.as_str() {
        "<f4" | "=f4" => {
            check(path, data.len(), count.saturating_mul(4))?;
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" | "=f8" => {
            check(path, data.len(), count.saturating_mul(8))?;
            data.chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect()
        }
        "|u1" => {
            check(path, data.len(), count)?;
            data.iter().map(|&b| f32::from(b)).collect()
        }
        other => {
            return Err(bad(
                path,
                format!(".npy dtype {other} is not supported (use float32)"),
            ))
        }
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| bad(path, e.to_string()))
}

/// Writes a float32 C-order `.npy` file (atomically).
///
/// # Errors
/// The file cannot be written.
pub fn write_npy(path: &Path, a: &ArrayD<f32>) -> Result<()> {
    let dims: Vec<String> = a.shape().iter().map(ToString::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut out = npy_header("<f4", &shape);
    for v in a.iter() {
        out.extend(v.to_le_bytes());
    }
    crate::onnx::io::write_atomic(path, &out)
}

/// The `.npy` v1 magic, version and header (padded to 64 bytes) for `descr` and a Python
/// shape tuple such as `(2, 3)`.
fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out
}

fn check(path: &Path, got: usize, want: usize) -> Result<()> {
    if got != want {
        Err(bad(
            path,
            format!(".npy data has {got} bytes, the shape needs {want}"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut out = npy_header(descr, shape);
        out.extend(data);
        out
    }

    #[test]
    fn reads_float32_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("isquant-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&p, npy("<f4", "(2, 3)", &data)).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a[[1, 2]], 6.0);
        std::fs::write(&p, npy("<i8", "(1,)", &[0; 8])).unwrap();
        assert!(read_npy(&p).unwrap_err().to_string().contains("dtype <i8"));
        std::fs::write(&p, npy("<f4", "(4,)", &[0; 8])).unwrap();
        assert!(read_npy(&p).unwrap_err().to_string().contains("needs 16"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(read_npy(&p).unwrap_err().to_string().contains("not a .npy"));
        let back = dir.join("b.npy");
        let arr =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        write_npy(&back, &arr).unwrap();
        assert_eq!(read_npy(&back).unwrap(), arr);
        std::fs::remove_file(&back).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
