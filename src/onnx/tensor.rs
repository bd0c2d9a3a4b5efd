//! `TensorProto` ⇄ ndarray.
//!
//! ONNX stores tensor values in one of several places (onnx.proto, `TensorProto`):
//!
//! | type | `raw_data` (little-endian) | typed field |
//! |---|---|---|
//! | FLOAT | 4 bytes/elem | `float_data` |
//! | DOUBLE | 8 bytes/elem | `double_data` |
//! | FLOAT16 | 2 bytes/elem (read only, widened to f32) | `int32_data` (bit pattern) |
//! | INT8, UINT8, BOOL | 1 byte/elem | `int32_data` (one entry per element) |
//! | INT32 | 4 bytes/elem | `int32_data` |
//! | INT64 | 8 bytes/elem | `int64_data` |
//!
//! Reading accepts both; writing always uses `raw_data`. External data must already have been
//! resolved into `raw_data` by [`crate::onnx::io`]. Every length is checked against the shape:
//! a mismatch is an error naming the tensor, never a panic. Element and byte counts computed
//! from `dims` use checked arithmetic (a negative dimension, or a count or byte size that
//! overflows `usize`, is an error naming the tensor: a `[2^62]` FLOAT tensor never passes
//! as 0 bytes).

use bytes::Bytes;
use ndarray::{ArrayD, IxDyn};

use super::pb::{self, tensor_proto::DataLocation};
use super::{data_type_name, DataType};
use crate::error::{Error, Result};

/// A decoded tensor of one of the element types isquant computes with.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// FLOAT (and FLOAT16 widened on read).
    F32(ArrayD<f32>),
    /// DOUBLE.
    F64(ArrayD<f64>),
    /// INT8.
    I8(ArrayD<i8>),
    /// UINT8.
    U8(ArrayD<u8>),
    /// INT32.
    I32(ArrayD<i32>),
    /// INT64.
    I64(ArrayD<i64>),
    /// BOOL.
    Bool(ArrayD<bool>),
}

impl TensorData {
    /// The ONNX data type this tensor is written as.
    pub fn data_type(&self) -> DataType {
        match self {
            TensorData::F32(_) => DataType::Float,
            TensorData::F64(_) => DataType::Double,
            TensorData::I8(_) => DataType::Int8,
            TensorData::U8(_) => DataType::Uint8,
            TensorData::I32(_) => DataType::Int32,
            TensorData::I64(_) => DataType::Int64,
            TensorData::Bool(_) => DataType::Bool,
        }
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            TensorData::F32(a) => a.shape(),
            TensorData::F64(a) => a.shape(),
            TensorData::I8(a) => a.shape(),
            TensorData::U8(a) => a.shape(),
            TensorData::I32(a) => a.shape(),
            TensorData::I64(a) => a.shape(),
            TensorData::Bool(a) => a.shape(),
        }
    }

    /// The values as f32 (integers and doubles converted), for numeric work.
    pub fn to_f32(&self) -> ArrayD<f32> {
        match self {
            TensorData::F32(a) => a.clone(),
            TensorData::F64(a) => a.mapv(|v| v as f32),
            TensorData::I8(a) => a.mapv(f32::from),
            TensorData::U8(a) => a.mapv(f32::from),
            TensorData::I32(a) => a.mapv(|v| v as f32),
            TensorData::I64(a) => a.mapv(|v| v as f32),
            TensorData::Bool(a) => a.mapv(|v| if v { 1.0 } else { 0.0 }),
        }
    }

    /// The values as i64, for shape-like tensors; `None` for floating-point data.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match self {
            TensorData::I8(a) => Some(a.iter().map(|&v| i64::from(v)).collect()),
            TensorData::U8(a) => Some(a.iter().map(|&v| i64::from(v)).collect()),
            TensorData::I32(a) => Some(a.iter().map(|&v| i64::from(v)).collect()),
            TensorData::I64(a) => Some(a.iter().copied().collect()),
            TensorData::Bool(a) => Some(a.iter().map(|&v| i64::from(v)).collect()),
            TensorData::F32(_) | TensorData::F64(_) => None,
        }
    }
}

/// Size in bytes of one element of `data_type` in `raw_data`, for fixed-width types.
pub fn element_size(data_type: i32) -> Option<usize> {
    Some(match DataType::try_from(data_type).ok()? {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64 => 8,
        DataType::Complex128 => 16,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Int8 | DataType::Uint8 | DataType::Bool => 1,
        DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz
        | DataType::Float8e8m0 => 1,
        _ => return None,
    })
}

/// The tensor's name, or `<unnamed>`.
pub fn tensor_name(t: &pb::TensorProto) -> &str {
    t.name.as_deref().unwrap_or("<unnamed>")
}

/// Shape of a tensor as `usize`s, checking that no dimension is negative and that the element
/// count does not overflow.
///
/// # Errors
/// A negative dimension or an element count that overflows `usize`.
pub fn shape_of(t: &pb::TensorProto) -> Result<Vec<usize>> {
    let mut count: usize = 1;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| Error::tensor(tensor_name(t), format!("negative dimension {d}")))?;
        count = count.checked_mul(d).ok_or_else(|| {
            Error::tensor(tensor_name(t), format!("shape {:?} is too large", t.dims))
        })?;
        shape.push(d);
    }
    Ok(shape)
}

/// Number of elements of a tensor (checked: never wraps).
///
/// # Errors
/// As [`shape_of`].
pub fn element_count(t: &pb::TensorProto) -> Result<usize> {
    let shape = shape_of(t)?;
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::tensor(tensor_name(t), format!("shape {:?} is too large", t.dims)))
}

/// True when the tensor's values live in an external file (not yet resolved).
pub fn is_external(t: &pb::TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

/// Number of bytes `count` elements of `N` bytes take, as an error naming the tensor when
/// it overflows `usize` (a `[2^62]` FLOAT tensor must not pass as 0 bytes).
fn byte_count(t: &pb::TensorProto, count: usize, size: usize) -> Result<usize> {
    count.checked_mul(size).ok_or_else(|| {
        Error::tensor(
            tensor_name(t),
            format!(
                "shape {:?} of {} is too large ({count} elements of {size} bytes overflow)",
                t.dims,
                data_type_name(t.data_type.unwrap_or(0))
            ),
        )
    })
}

/// Number of bytes the tensor's values take (raw or typed), for size reports (saturating:
/// a shape too large to count reports `usize::MAX`; [`check`] rejects such tensors).
pub fn payload_bytes(t: &pb::TensorProto) -> usize {
    if let Some(raw) = &t.raw_data {
        return raw.len();
    }
    let count = element_count(t).unwrap_or(0);
    count.saturating_mul(element_size(t.data_type.unwrap_or(0)).unwrap_or(0))
}

fn check_len(t: &pb::TensorProto, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::tensor(
            tensor_name(t),
            format!(
                "{what} holds {got} values/bytes but shape {:?} of {} needs {expected}",
                t.dims,
                data_type_name(t.data_type.unwrap_or(0))
            ),
        ))
    }
}

fn raw_chunks<'a, const N: usize>(
    t: &pb::TensorProto,
    raw: &'a Bytes,
    count: usize,
) -> Result<impl Iterator<Item = [u8; N]> + 'a> {
    check_len(t, "raw_data", raw.len(), byte_count(t, count, N)?)?;
    Ok(raw.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }))
}

fn array<T>(t: &pb::TensorProto, shape: &[usize], values: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map_err(|e| Error::tensor(tensor_name(t), format!("cannot shape values: {e}")))
}

/// Converts IEEE-754 half-precision bits to f32.
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: value = f * 2^-24
            let v = f as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7fc0_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Checks a tensor without decoding it: a known element type, a valid shape, and a value
/// count (in `raw_data` or the typed field) that matches the shape.
///
/// # Errors
/// Names the tensor and the mismatch.
pub fn check(t: &pb::TensorProto) -> Result<()> {
    let name = tensor_name(t);
    let code = t.data_type.unwrap_or(0);
    match DataType::try_from(code) {
        Ok(DataType::Undefined) | Err(_) => {
            return Err(Error::tensor(
                name,
                format!("unsupported tensor data type code {code}"),
            ))
        }
        Ok(_) => {}
    }
    let count = element_count(t)?;
    if is_external(t) {
        return Ok(());
    }
    if let Some(raw) = &t.raw_data {
        if let Some(size) = element_size(code) {
            check_len(t, "raw_data", raw.len(), byte_count(t, count, size)?)?;
        }
        return Ok(());
    }
    let typed = match DataType::try_from(code) {
        Ok(DataType::Float) => Some(t.float_data.len()),
        Ok(DataType::Double) => Some(t.double_data.len()),
        Ok(DataType::Int64) => Some(t.int64_data.len()),
        Ok(
            DataType::Int32
            | DataType::Int8
            | DataType::Uint8
            | DataType::Int16
            | DataType::Uint16
            | DataType::Bool
            | DataType::Float16
            | DataType::Bfloat16,
        ) => Some(t.int32_data.len()),
        _ => None,
    };
    match typed {
        Some(n) => check_len(t, "the typed data field", n, count),
        None => Ok(()),
    }
}

/// Decodes a tensor's values.
///
/// # Errors
/// Unsupported element types, unresolved external data, and any length that disagrees with
/// the shape, each naming the tensor.
pub fn to_array(t: &pb::TensorProto) -> Result<TensorData> {
    let name = tensor_name(t);
    if is_external(t) {
        return Err(Error::tensor(
            name,
            "values are in external data that was not loaded (load the model from its file path)",
        ));
    }
    let shape = shape_of(t)?;
    let count = element_count(t)?;
    let code = t.data_type.unwrap_or(0);
    let dt = DataType::try_from(code)
        .map_err(|_| Error::tensor(name, format!("unknown data type code {code}")))?;
    let raw = t.raw_data.as_ref();
    let i32s = |what: &str| -> Result<&[i32]> {
        check_len(t, what, t.int32_data.len(), count)?;
        Ok(&t.int32_data)
    };
    Ok(match dt {
        DataType::Float => {
            let v: Vec<f32> = match raw {
                Some(r) => raw_chunks::<4>(t, r, count)?
                    .map(f32::from_le_bytes)
                    .collect(),
                None => {
                    check_len(t, "float_data", t.float_data.len(), count)?;
                    t.float_data.clone()
                }
            };
            TensorData::F32(array(t, &shape, v)?)
        }
        DataType::Float16 => {
            let v: Vec<f32> = match raw {
                Some(r) => raw_chunks::<2>(t, r, count)?
                    .map(|b| f16_bits_to_f32(u16::from_le_bytes(b)))
                    .collect(),
                None => i32s("int32_data")?
                    .iter()
                    .map(|&b| f16_bits_to_f32(b as u16))
                    .collect(),
            };
            TensorData::F32(array(t, &shape, v)?)
        }
        DataType::Double => {
            let v: Vec<f64> = match raw {
                Some(r) => raw_chunks::<8>(t, r, count)?
                    .map(f64::from_le_bytes)
                    .collect(),
                None => {
                    check_len(t, "double_data", t.double_data.len(), count)?;
                    t.double_data.clone()
                }
            };
            TensorData::F64(array(t, &shape, v)?)
        }
        DataType::Int8 => {
            let v: Vec<i8> = match raw {
                Some(r) => raw_chunks::<1>(t, r, count)?
                    .map(i8::from_le_bytes)
                    .collect(),
                None => i32s("int32_data")?.iter().map(|&x| x as i8).collect(),
            };
            TensorData::I8(array(t, &shape, v)?)
        }
        DataType::Uint8 => {
            let v: Vec<u8> = match raw {
                Some(r) => {
                    check_len(t, "raw_data", r.len(), count)?;
                    r.to_vec()
                }
                None => i32s("int32_data")?.iter().map(|&x| x as u8).collect(),
            };
            TensorData::U8(array(t, &shape, v)?)
        }
        DataType::Bool => {
            let v: Vec<bool> = match raw {
                Some(r) => {
                    check_len(t, "raw_data", r.len(), count)?;
                    r.iter().map(|&b| b != 0).collect()
                }
                None => i32s("int32_data")?.iter().map(|&x| x != 0).collect(),
            };
            TensorData::Bool(array(t, &shape, v)?)
        }
        DataType::Int32 => {
            let v: Vec<i32> = match raw {
                Some(r) => raw_chunks::<4>(t, r, count)?
                    .map(i32::from_le_bytes)
                    .collect(),
                None => i32s("int32_data")?.to_vec(),
            };
            TensorData::I32(array(t, &shape, v)?)
        }
        DataType::Int64 => {
            let v: Vec<i64> = match raw {
                Some(r) => raw_chunks::<8>(t, r, count)?
                    .map(i64::from_le_bytes)
                    .collect(),
                None => {
                    check_len(t, "int64_data", t.int64_data.len(), count)?;
                    t.int64_data.clone()
                }
            };
            TensorData::I64(array(t, &shape, v)?)
        }
        other => {
            return Err(Error::tensor(
                name,
                format!("unsupported data type {}", other.as_str_name()),
            ))
        }
    })
}

/// Decodes a floating-point tensor (FLOAT, FLOAT16 or DOUBLE) as f32.
///
/// # Errors
/// As [`to_array`], plus a non-floating element type.
pub fn to_f32(t: &pb::TensorProto) -> Result<ArrayD<f32>> {
    match to_array(t)? {
        TensorData::F32(a) => Ok(a),
        TensorData::F64(a) => Ok(a.mapv(|v| v as f32)),
        other => Err(Error::tensor(
            tensor_name(t),
            format!(
                "expected a floating-point tensor, found {}",
                other.data_type().as_str_name()
            ),
        )),
    }
}

/// Encodes values as a `TensorProto` named `name`, with the values in `raw_data`.
pub fn from_array(name: &str, data: &TensorData) -> pb::TensorProto {
    fn le<T: Copy, const N: usize>(a: &ArrayD<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        // Fixed-size chunks of a preallocated buffer: compiles to straight copies.
        let mut out = vec![0u8; a.len() * N];
        for (dst, &v) in out.chunks_exact_mut(N).zip(a.iter()) {
            dst.copy_from_slice(&f(v));
        }
        out
    }
    let raw = match data {
        TensorData::F32(a) => le(a, f32::to_le_bytes),
        TensorData::F64(a) => le(a, f64::to_le_bytes),
        TensorData::I8(a) => le(a, i8::to_le_bytes),
        TensorData::U8(a) => a.iter().copied().collect(),
        TensorData::I32(a) => le(a, i32::to_le_bytes),
        TensorData::I64(a) => le(a, i64::to_le_bytes),
        TensorData::Bool(a) => a.iter().map(|&b| u8::from(b)).collect(),
    };
    pb::TensorProto {
        dims: data.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(data.data_type() as i32),
        name: Some(name.to_string()),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

/// A FLOAT tensor from little-endian f32 bytes (`raw.len() = 4 · Π shape`, not checked).
pub fn from_f32_le_bytes(name: &str, shape: &[usize], raw: Vec<u8>) -> pb::TensorProto {
    from_f32_le_raw(name, shape, Bytes::from(raw))
}

/// A FLOAT tensor around `raw` (little-endian f32 values, not checked against `shape`).
pub fn from_f32_le_raw(name: &str, shape: &[usize], raw: Bytes) -> pb::TensorProto {
    pb::TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// Encodes f32 values as a FLOAT tensor.
pub fn from_f32(name: &str, a: ArrayD<f32>) -> pb::TensorProto {
    from_array(name, &TensorData::F32(a))
}

/// Moves the values of a tensor stored in typed fields into `raw_data` (same values, same
/// type). Used before spilling a tensor to external data.
///
/// # Errors
/// As [`to_array`].
pub fn to_raw(t: &pb::TensorProto) -> Result<pb::TensorProto> {
    if t.raw_data.is_some() {
        return Ok(t.clone());
    }
    let code = t.data_type.unwrap_or(0);
    let raw: Vec<u8> = if code == DataType::Float16 as i32 {
        check_len(t, "int32_data", t.int32_data.len(), element_count(t)?)?;
        t.int32_data
            .iter()
            .flat_map(|&b| (b as u16).to_le_bytes())
            .collect()
    } else {
        let encoded = from_array("", &to_array(t)?);
        encoded.raw_data.map(|b| b.to_vec()).unwrap_or_default()
    };
    let mut out = t.clone();
    out.float_data.clear();
    out.int32_data.clear();
    out.int64_data.clear();
    out.double_data.clear();
    out.raw_data = Some(Bytes::from(raw));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    fn typed(dt: DataType, dims: &[i64]) -> pb::TensorProto {
        pb::TensorProto {
            name: Some("t".into()),
            dims: dims.to_vec(),
            data_type: Some(dt as i32),
            ..Default::default()
        }
    }

    #[test]
    fn every_type_round_trips_through_raw_data() {
        let cases = vec![
            TensorData::F32(arr1(&[1.5f32, -2.0, 0.0]).into_dyn()),
            TensorData::F64(arr1(&[1.5f64, -2.0]).into_dyn()),
            TensorData::I8(arr1(&[-128i8, 0, 127]).into_dyn()),
            TensorData::U8(arr1(&[0u8, 255]).into_dyn()),
            TensorData::I32(arr1(&[i32::MIN, 7]).into_dyn()),
            TensorData::I64(arr1(&[i64::MAX, -1]).into_dyn()),
            TensorData::Bool(arr1(&[true, false]).into_dyn()),
        ];
        for data in cases {
            let t = from_array("x", &data);
            assert_eq!(to_array(&t).unwrap(), data);
            // raw -> typed fields are not written, but to_raw is identity on raw tensors
            assert_eq!(to_raw(&t).unwrap(), t);
        }
    }

    #[test]
    fn typed_fields_are_read() {
        let mut t = typed(DataType::Float, &[2]);
        t.float_data = vec![1.0, 2.0];
        assert_eq!(to_f32(&t).unwrap().as_slice().unwrap(), &[1.0, 2.0]);

        let mut t = typed(DataType::Int8, &[3]);
        t.int32_data = vec![-5, 0, 127];
        assert_eq!(
            to_array(&t).unwrap(),
            TensorData::I8(arr1(&[-5i8, 0, 127]).into_dyn())
        );
        let raw = to_raw(&t).unwrap();
        assert!(raw.int32_data.is_empty());
        assert_eq!(to_array(&raw).unwrap(), to_array(&t).unwrap());

        let mut t = typed(DataType::Int64, &[2]);
        t.int64_data = vec![3, -4];
        assert_eq!(to_array(&t).unwrap().to_i64(), Some(vec![3, -4]));

        let mut t = typed(DataType::Double, &[1]);
        t.double_data = vec![0.25];
        assert_eq!(to_f32(&t).unwrap().as_slice().unwrap(), &[0.25]);
    }

    #[test]
    fn float16_is_widened() {
        // 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), +inf
        let bits: [u16; 5] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00];
        let mut t = typed(DataType::Float16, &[5]);
        t.raw_data = Some(Bytes::from(
            bits.iter()
                .flat_map(|b| b.to_le_bytes())
                .collect::<Vec<_>>(),
        ));
        let a = to_f32(&t).unwrap();
        assert_eq!(a[[0]], 1.0);
        assert_eq!(a[[1]], -2.0);
        assert_eq!(a[[2]], 65504.0);
        assert_eq!(a[[3]], 2f32.powi(-24));
        assert!(a[[4]].is_infinite());
        let mut t2 = typed(DataType::Float16, &[5]);
        t2.int32_data = bits.iter().map(|&b| i32::from(b)).collect();
        assert_eq!(to_f32(&t2).unwrap(), a);
    }

    #[test]
    fn wrong_lengths_and_types_are_errors_naming_the_tensor() {
        let mut t = typed(DataType::Float, &[3]);
        t.raw_data = Some(Bytes::from_static(&[0; 8]));
        let e = to_array(&t).unwrap_err().to_string();
        assert!(e.contains("tensor `t`") && e.contains("needs 12"), "{e}");

        let t = typed(DataType::Float, &[-1]);
        assert!(to_array(&t).unwrap_err().to_string().contains("negative"));

        let t = typed(DataType::String, &[1]);
        assert!(to_array(&t)
            .unwrap_err()
            .to_string()
            .contains("unsupported data type STRING"));

        let t = typed(DataType::Float, &[i64::MAX, i64::MAX]);
        assert!(to_array(&t).unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn byte_counts_that_wrap_are_errors() {
        // 2^62 FLOAT elements are 2^64 bytes: wraps to 0 in unchecked arithmetic.
        let mut t = typed(DataType::Float, &[1 << 62]);
        t.raw_data = Some(Bytes::new());
        let e = check(&t).unwrap_err().to_string();
        assert!(e.contains("tensor `t`") && e.contains("too large"), "{e}");
        assert!(to_array(&t).unwrap_err().to_string().contains("too large"));
        let t = typed(DataType::Float, &[1 << 62]);
        assert!(check(&t).unwrap_err().to_string().contains("tensor `t`"));
        let mut t = typed(DataType::Double, &[1 << 61, 2]);
        t.raw_data = Some(Bytes::new());
        assert!(check(&t).unwrap_err().to_string().contains("too large"));
        let t = typed(DataType::Float, &[3, -1]);
        assert!(check(&t).unwrap_err().to_string().contains("negative"));
    }
}
