//! Per-tensor symmetric weight quantization with SQuant rounding.
//!
//! For one layer with float weights `W` and `b` bits:
//! `qmax = 2^(b−1) − 1`, `s_w = max|W| / qmax` (f64, stored f32; `s_w = 1` when `W = 0`),
//! `x = W / s_w` computed from the stored f32 scale, `q = squant(view(x), −qmax, qmax)`,
//! zero-point 0. The `[O, I, K]` view SQuant works on depends on the layout
//! (`docs/algorithm.md` §4.1):
//!
//! | op | ONNX weight | `[O, I, K]` view |
//! |---|---|---|
//! | Conv (1-D/2-D/3-D, grouped, depthwise) | `[O, I/g, k…]` | `[O, I/g, Πk]` |
//! | ConvTranspose | `[C_in, C_out/g, k…]` | `[g·C_out/g, C_in/g, Πk]`, output channel `grp·(C_out/g) + j` |
//! | Gemm `transB = 1` | `[N, K]` | `[N, K, 1]` |
//! | Gemm `transB = 0`, MatMul | `[K, N]` | `[N, K, 1]` (transposed) |
//!
//! The integers are mapped back to the ONNX layout before they are returned.
//!
//! Preconditions: finite weights (NaN/Inf is an error naming the tensor); `2 ≤ b ≤ 8`.

use ndarray::{Array3, ArrayD, IxDyn};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::squant::{self, FlipStats, Rounding};

/// How a weight tensor is laid out, i.e. which axis holds output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Conv weight `[O, I/g, k…]`.
    Conv,
    /// ConvTranspose weight `[C_in, C_out/g, k…]` with `group` groups.
    ConvTranspose {
        /// The `group` attribute.
        group: usize,
    },
    /// Matrix `[N, K]` (Gemm with `transB = 1`).
    RowsAreOutputs,
    /// Matrix `[K, N]` (Gemm with `transB = 0`, MatMul).
    ColumnsAreOutputs,
}

/// A quantized weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// Integers in the ONNX layout of the original weight.
    pub q: ArrayD<i8>,
    /// The per-tensor scale `s_w` (per-channel: the largest channel scale, for reports).
    pub scale: f32,
    /// Per-channel scales `s_w[o] = max|W_o| / qmax`, one per output channel, with
    /// `--granularity per-channel`.
    pub channel_scales: Option<Vec<f32>>,
    /// SQuant's flip counts.
    pub flips: FlipStats,
    /// Non-zero float weights that became integer 0: most of a tensor there means one
    /// outlier set the scale (reported as a warning).
    pub rounded_to_zero: usize,
}

/// Maps flat ONNX index → flat `[O, I, K]` index (`None`: identity) and gives the view's
/// shape.
fn view_map(shape: &[usize], layout: Layout) -> Result<([usize; 3], Option<Vec<usize>>)> {
    let n: usize = shape.iter().product();
    match layout {
        Layout::Conv => {
            if shape.len() < 3 {
                return Err(Error::Config(format!("conv weight of shape {shape:?}")));
            }
            let k: usize = shape[2..].iter().product();
            Ok(([shape[0], shape[1], k], None))
        }
        Layout::ConvTranspose { group } => {
            if shape.len() < 3 || group == 0 || !shape[0].is_multiple_of(group) {
                return Err(Error::Config(format!(
                    "ConvTranspose weight of shape {shape:?} with group {group}"
                )));
            }
            let (c_in, per_out) = (shape[0], shape[1]);
            let k: usize = shape[2..].iter().product();
            let in_per_group = c_in / group;
            // ONNX index (c, j, kk) → view (o = grp·per_out + j, i = c mod in_per_group, kk)
            let map = (0..n)
                .map(|idx| {
                    let kk = idx % k;
                    let j = (idx / k) % per_out;
                    let c = idx / (k * per_out);
                    let grp = c / in_per_group;
                    let o = grp * per_out + j;
                    let i = c % in_per_group;
                    (o * in_per_group + i) * k + kk
                })
                .collect();
            Ok(([group * per_out, in_per_group, k], Some(map)))
        }
        Layout::RowsAreOutputs => {
            if shape.len() != 2 {
                return Err(Error::Config(format!("matrix weight of shape {shape:?}")));
            }
            Ok(([shape[0], shape[1], 1], None))
        }
        Layout::ColumnsAreOutputs => {
            if shape.len() != 2 {
                return Err(Error::Config(format!("matrix weight of shape {shape:?}")));
            }
            let (k, cols) = (shape[0], shape[1]);
            // ONNX (r, c) = r·cols + c → view (o = c, i = r)
            let map = (0..n).map(|idx| (idx % cols) * k + idx / cols).collect();
            Ok(([cols, k, 1], Some(map)))
        }
    }
}

/// Quantizes one weight tensor, symmetric, zero-point 0: one scale for the tensor, or one per
/// output channel (`per_channel`).
///
/// # Errors
/// Non-finite weights (naming `name`), bits outside 2..=8, or a shape that does not fit the
/// layout.
pub fn quantize_weight(
    name: &str,
    w: &ArrayD<f32>,
    layout: Layout,
    bits: u32,
    rounding: Rounding,
    per_channel: bool,
) -> Result<QuantizedWeight> {
    if !(2..=8).contains(&bits) {
        return Err(Error::Config(format!(
            "weight bits must be between 2 and 8, got {bits}"
        )));
    }
    if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::tensor(
            name,
            format!("weight element {i} is {v}: cannot quantize non-finite weights"),
        ));
    }
    let qmax = squant::symmetric_qmax(bits);
    let (dims, map) =
        view_map(w.shape(), layout).map_err(|e| Error::tensor(name, e.to_string()))?;
    // W in [O, I, K] view order.
    let mut x: Vec<f32> = match &map {
        None => w.iter().copied().collect(),
        Some(map) => {
            let mut x = vec![0f32; w.len()];
            for (src, &v) in w.iter().enumerate() {
                x[map[src]] = v;
            }
            x
        }
    };
    let per = (dims[1] * dims[2]).max(1);
    let channel_scales: Option<Vec<f32>> = per_channel.then(|| {
        x.chunks(per)
            .map(|c| squant::symmetric_scale(ndarray::ArrayView1::from(c), qmax))
            .collect()
    });
    let scale = match &channel_scales {
        Some(c) => c.iter().copied().fold(0f32, f32::max),
        None => squant::symmetric_scale(w.view(), qmax),
    };
    for (k, chunk) in x.chunks_mut(per).enumerate() {
        let s = f64::from(channel_scales.as_ref().map_or(scale, |c| c[k]));
        chunk
            .iter_mut()
            .for_each(|v| *v = (f64::from(*v) / s) as f32);
    }
    let view = Array3::from_shape_vec((dims[0], dims[1], dims[2]), x)
        .map_err(|e| Error::tensor(name, e.to_string()))?;
    let (q, flips) = squant::round_squant(view.view(), -qmax, qmax, rounding);
    let to_i8 = |v: i32| v.clamp(-128, 127) as i8;
    let out: Vec<i8> = match &map {
        None => q.iter().map(|&v| to_i8(v)).collect(),
        Some(map) => {
            let q_flat: Vec<i32> = q.iter().copied().collect();
            map.iter().map(|&dst| to_i8(q_flat[dst])).collect()
        }
    };
    let rounded_to_zero = w
        .iter()
        .zip(&out)
        .filter(|(&f, &q)| q == 0 && f != 0.0)
        .count();
    let q = ArrayD::from_shape_vec(IxDyn(w.shape()), out)
        .map_err(|e| Error::tensor(name, e.to_string()))?;
    Ok(QuantizedWeight {
        q,
        scale,
        channel_scales,
        flips,
        rounded_to_zero,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::seeded_uniform(&[n], seed, -0.5, 0.5)
            .into_raw_vec_and_offset()
            .0
    }

    #[test]
    fn layouts_agree_with_the_conv_view() {
        // A Gemm [N,K] with transB=1 and its transpose [K,N] must give transposed integers.
        let (n, k) = (5, 7);
        let rows = ArrayD::from_shape_vec(IxDyn(&[n, k]), seeded(n * k, 3)).unwrap();
        let cols = rows.t().to_owned().into_dyn();
        let a = quantize_weight(
            "w",
            &rows,
            Layout::RowsAreOutputs,
            8,
            Rounding::Squant,
            false,
        )
        .unwrap();
        let b = quantize_weight(
            "w",
            &cols,
            Layout::ColumnsAreOutputs,
            8,
            Rounding::Squant,
            false,
        )
        .unwrap();
        assert_eq!(a.q.t().to_owned().into_dyn(), b.q);
        assert_eq!(a.scale, b.scale);
        // A 1x1 conv [O, I, 1, 1] is the same matrix as a Gemm [O, I].
        let conv = rows
            .clone()
            .into_shape_with_order(IxDyn(&[n, k, 1, 1]))
            .unwrap();
        let c = quantize_weight("w", &conv, Layout::Conv, 8, Rounding::Squant, false).unwrap();
        assert_eq!(c.q.into_shape_with_order(IxDyn(&[n, k])).unwrap(), a.q);
    }

    #[test]
    fn conv_transpose_groups_collect_their_inputs() {
        // group = 1: [C_in, C_out, k] → output channel j gathers W[:, j, :].
        let (c_in, c_out, kk) = (3, 4, 2);
        let w = ArrayD::from_shape_vec(IxDyn(&[c_in, c_out, kk]), seeded(24, 9)).unwrap();
        let t = quantize_weight(
            "w",
            &w,
            Layout::ConvTranspose { group: 1 },
            8,
            Rounding::Squant,
            false,
        )
        .unwrap();
        // Same as quantizing the permuted tensor [C_out, C_in, k] as a conv.
        let perm = w.view().permuted_axes(IxDyn(&[1, 0, 2])).to_owned();
        let c = quantize_weight("w", &perm, Layout::Conv, 8, Rounding::Squant, false).unwrap();
        assert_eq!(c.q.view().permuted_axes(IxDyn(&[1, 0, 2])).to_owned(), t.q);
    }

    #[test]
    fn scale_is_max_abs_over_qmax_and_values_stay_in_range() {
        let w = ArrayD::from_shape_vec(IxDyn(&[4, 3, 3, 3]), seeded(108, 5)).unwrap();
        for bits in 2..=8 {
            let q = quantize_weight("w", &w, Layout::Conv, bits, Rounding::Squant, false).unwrap();
            let qmax = (1i32 << (bits - 1)) - 1;
            let maxabs = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((q.scale - maxabs / qmax as f32).abs() <= 1e-6 * maxabs);
            assert!(q.q.iter().all(|&v| i32::from(v).abs() <= qmax));
            // every value is floor or ceil of w/s
            for (&qi, &wi) in q.q.iter().zip(w.iter()) {
                let x = wi / q.scale;
                assert!((f32::from(qi) - x).abs() < 1.0 + 1e-4, "{qi} vs {x}");
            }
        }
    }

    #[test]
    fn per_channel_scales_follow_each_output_channel() {
        // Channel 1 is 100x larger than channel 0: per-tensor rounds channel 0 to few levels.
        let mut v = seeded(2 * 3 * 9, 11);
        for x in v.iter_mut().skip(27) {
            *x *= 100.0;
        }
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 3, 3, 3]), v).unwrap();
        let q = quantize_weight("w", &w, Layout::Conv, 8, Rounding::Squant, true).unwrap();
        let s = q.channel_scales.clone().unwrap();
        assert_eq!(s.len(), 2);
        for (o, sc) in s.iter().enumerate() {
            let m = w.as_slice().unwrap()[o * 27..(o + 1) * 27]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()));
            assert!((sc - m / 127.0).abs() <= 1e-6 * m, "{s:?}");
        }
        assert!(s[1] / s[0] > 50.0, "{s:?}");
        for (o, sc) in s.iter().enumerate() {
            let m = (0..27)
                .map(|i| i32::from(q.q.as_slice().unwrap()[o * 27 + i]).abs())
                .max()
                .unwrap();
            assert_eq!(m, 127, "channel {o} (scale {sc}) uses the full grid");
        }
        // Same layout rule as per-tensor: the transposed matrix gives transposed integers.
        let m = ArrayD::from_shape_vec(IxDyn(&[4, 6]), seeded(24, 2)).unwrap();
        let a =
            quantize_weight("w", &m, Layout::RowsAreOutputs, 8, Rounding::Squant, true).unwrap();
        let t = m.t().to_owned().into_dyn();
        let b = quantize_weight(
            "w",
            &t,
            Layout::ColumnsAreOutputs,
            8,
            Rounding::Squant,
            true,
        )
        .unwrap();
        assert_eq!(a.q.t().to_owned().into_dyn(), b.q);
        assert_eq!(a.channel_scales, b.channel_scales);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut w = ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1]), vec![1.0, 2.0]).unwrap();
        assert!(
            quantize_weight("w", &w, Layout::Conv, 9, Rounding::Squant, false)
                .unwrap_err()
                .to_string()
                .contains("between 2 and 8")
        );
        w[[1, 0, 0, 0]] = f32::NAN;
        let e = quantize_weight("conv.w", &w, Layout::Conv, 8, Rounding::Squant, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor `conv.w`") && e.contains("NaN"), "{e}");
    }
}
