//! Data-free bias correction (DFQ, `algorithm.md` §5.3).
//!
//! Quantizing weights shifts a layer's expected output: with `ε = Ŵ − W` (`Ŵ = s_w·q`, the
//! dequantized SQuant weights) and `E[x_i]` the expected input per channel,
//! `E[ŷ_o] − E[y_o] = Σ_{i,k} ε[o,i,k]·E[x_i]`, so the bias becomes
//! `b'_o = b_o − Σ_{i,k} ε[o,i,k]·E[x_i]` (depthwise and grouped convs sum over their own
//! group's input channels). `E[x_i]` comes from BatchNormalization statistics pushed through
//! the activations (clipped-normal means; see [`super::ranges`]) or, where the exporter already
//! folded BN, from the per-channel means of the same noise (or calibration) forward pass the
//! activation ranges use. Run after SQuant, with the actual rounding error.
//!
//! Preconditions: the per-channel means cover every input channel (otherwise the layer is left
//! alone); ConvTranspose is not corrected. Zero-padding at image borders is ignored, as in DFQ
//! and AIMET.

use ndarray::ArrayD;

use super::weights::{Layout, QuantizedWeight};

/// `δ_o = Σ_{i,k} ε[o,i,k]·E[x_i]` for every output channel, or `None` when the layout or
/// the number of means does not fit.
pub fn bias_shift(
    w: &ArrayD<f32>,
    qw: &QuantizedWeight,
    layout: Layout,
    group: usize,
    mean: &[f64],
) -> Option<Vec<f64>> {
    use rayon::prelude::*;
    let shape = w.shape();
    // Contiguous views (weights decoded from initializers are in standard layout).
    let wf_owned;
    let wf: &[f32] = match w.as_slice() {
        Some(s) => s,
        None => {
            wf_owned = w.iter().copied().collect::<Vec<f32>>();
            &wf_owned
        }
    };
    let qf_owned;
    let qf: &[i8] = match qw.q.as_slice() {
        Some(s) => s,
        None => {
            qf_owned = qw.q.iter().copied().collect::<Vec<i8>>();
            &qf_owned
        }
    };
    let scale =
        |o: usize| -> f64 { f64::from(qw.channel_scales.as_ref().map_or(qw.scale, |c| c[o])) };
    let eps = |idx: usize, o: usize| f64::from(qf[idx]) * scale(o) - f64::from(wf[idx]);
    match layout {
        Layout::Conv => {
            let (o_n, i_n) = (shape[0], shape[1]);
            let k: usize = shape[2..].iter().product();
            let group = group.max(1);
            if mean.len() != i_n * group || o_n % group != 0 {
                return None;
            }
            let per_group = o_n / group;
            Some(
                (0..o_n)
                    .into_par_iter()
                    .map(|o| {
                        let g = o / per_group;
                        (0..i_n)
                            .map(|i| {
                                let e: f64 = (0..k).map(|kk| eps((o * i_n + i) * k + kk, o)).sum();
                                e * mean[g * i_n + i]
                            })
                            .sum()
                    })
                    .collect(),
            )
        }
        Layout::RowsAreOutputs => {
            let (n, k) = (shape[0], shape[1]);
            (mean.len() == k).then(|| {
                (0..n)
                    .map(|o| (0..k).map(|i| eps(o * k + i, o) * mean[i]).sum())
                    .collect()
            })
        }
        Layout::ColumnsAreOutputs => {
            let (k, n) = (shape[0], shape[1]);
            (mean.len() == k).then(|| {
                (0..n)
                    .map(|o| (0..k).map(|i| eps(i * n + o, o) * mean[i]).sum())
                    .collect()
            })
        }
        Layout::ConvTranspose { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::weights::quantize_weight;
    use crate::squant::Rounding;
    use ndarray::IxDyn;

    #[test]
    fn shift_equals_the_expected_output_change() {
        // y = W·x with x constant = mean: the shift is exactly Ŵ·mean − W·mean.
        let w = ArrayD::from_shape_vec(
            IxDyn(&[2, 3, 1, 1]),
            vec![0.31, -0.72, 0.05, 1.0, 0.333, -0.5],
        )
        .unwrap();
        let qw = quantize_weight("w", &w, Layout::Conv, 4, Rounding::Nearest, false).unwrap();
        let mean = [1.5, -2.0, 0.25];
        let d = bias_shift(&w, &qw, Layout::Conv, 1, &mean).unwrap();
        for o in 0..2 {
            let exact: f64 = (0..3)
                .map(|i| {
                    let wi = f64::from(w[[o, i, 0, 0]]);
                    let qi = f64::from(qw.q[[o, i, 0, 0]]) * f64::from(qw.scale);
                    (qi - wi) * mean[i]
                })
                .sum();
            assert!((d[o] - exact).abs() < 1e-12);
        }
        // Wrong channel count: no correction.
        assert!(bias_shift(&w, &qw, Layout::Conv, 1, &mean[..2]).is_none());
    }

    #[test]
    fn depthwise_uses_its_own_channel() {
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 2]), vec![0.3, 0.7, -0.2, 0.9]).unwrap();
        let qw = quantize_weight("w", &w, Layout::Conv, 3, Rounding::Nearest, false).unwrap();
        let d = bias_shift(&w, &qw, Layout::Conv, 2, &[10.0, 0.0]).unwrap();
        assert_eq!(d[1], 0.0, "channel 1 sees mean 0");
        assert!(d[0] != 0.0);
    }
}
