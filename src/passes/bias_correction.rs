//! Data-free bias correction (DFQ; `docs/algorithm.md` §5.3): the formula ([`bias_shift`])
//! and the write ([`apply_bias_shift`]).
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
//! alone); ConvTranspose and MatMul are not corrected (MatMul has no bias input). Zero-padding
//! at image borders is ignored, as in DFQ and AIMET.

use std::collections::HashMap;

use ndarray::ArrayD;

use super::weights::{Layout, QuantizedWeight};
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::Model;

/// `E[x]` of a layer's input per channel, (from BN statistics, or a forward pass) and the layer's `group`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputMean {
    /// One mean per input channel.
    pub mean: Vec<f64>,
    /// The layer's `group` (each output channel sums over its own group's inputs).
    pub group: usize,
}

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
            let row = i_n * k;
            let k = k.max(1);
            // f32 throughout (each ε is one rounding error, far below f32's resolution of the
            // sum), eight independent accumulators so the loops vectorize; f64 across lanes.
            let mf: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
            Some(
                wf.par_chunks(row.max(1))
                    .zip(qf.par_chunks(row.max(1)))
                    .enumerate()
                    .map(|(o, (wr, qr))| {
                        let s = scale(o) as f32;
                        let g = o / per_group;
                        let means = mf.get(g * i_n..(g + 1) * i_n).unwrap_or(&[]);
                        let mut lanes = [0f32; 8];
                        if k == 1 {
                            let (wc, qc, mc) = (
                                wr.chunks_exact(8),
                                qr.chunks_exact(8),
                                means.chunks_exact(8),
                            );
                            let tail = wc
                                .remainder()
                                .iter()
                                .zip(qc.remainder())
                                .zip(mc.remainder())
                                .fold(0f32, |a, ((&w, &q), &m)| a + (f32::from(q) * s - w) * m);
                            for ((w8, q8), m8) in wc.zip(qc).zip(mc) {
                                for l in 0..8 {
                                    lanes[l] += (f32::from(q8[l]) * s - w8[l]) * m8[l];
                                }
                            }
                            lanes[0] += tail;
                        } else {
                            for (i, ((wk, qk), &m)) in wr
                                .chunks_exact(k)
                                .zip(qr.chunks_exact(k))
                                .zip(means)
                                .enumerate()
                            {
                                let e: f32 =
                                    wk.iter().zip(qk).map(|(&w, &q)| f32::from(q) * s - w).sum();
                                lanes[i % 8] += e * m;
                            }
                        }
                        lanes.iter().map(|&v| f64::from(v)).sum()
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

/// Subtracts `delta` (one value per output channel) from a Conv/Gemm bias, creating the bias
/// when the layer has none: `b'_o = b_o − δ_o / β` (`β` the Gemm's `beta`, 1 for Conv). The
/// corrected bias is a new initializer. Returns false for layers it cannot correct (MatMul, a
/// Gemm with `beta = 0`, a bias that is neither one value per channel nor a scalar).
///
/// # Errors
/// Malformed attributes or constants.
pub fn apply_bias_shift(
    model: &mut Model,
    names: &mut NameGen,
    producers: &HashMap<String, usize>,
    node: usize,
    delta: &[f64],
) -> Result<bool> {
    let n = &model.graph.nodes[node];
    if !(n.is("Conv") || n.is("Gemm")) {
        return Ok(false);
    }
    let beta = if n.is("Gemm") {
        f64::from(n.attr_float("beta")?.unwrap_or(1.0))
    } else {
        1.0
    };
    if beta == 0.0 {
        return Ok(false);
    }
    let current: Vec<f64> = match n.input(2) {
        Some(b) => match model.graph.constant_f32(b, producers)? {
            Some(a) if a.len() == delta.len() => a.iter().map(|&v| f64::from(v)).collect(),
            Some(a) if a.len() == 1 => {
                vec![f64::from(a.iter().next().copied().unwrap_or(0.0)); delta.len()]
            }
            _ => return Ok(false),
        },
        None => vec![0.0; delta.len()],
    };
    let values: Vec<f32> = current
        .iter()
        .zip(delta)
        .map(|(b, d)| (b - d / beta) as f32)
        .collect();
    let name = names.fresh(n.input(1).unwrap_or("w"), "_bias_corrected");
    let arr = ndarray::Array1::from(values).into_dyn();
    model
        .graph
        .set_initializer(crate::onnx::tensor::from_f32(&name, arr));
    let node_mut = &mut model.graph.nodes[node];
    node_mut.inputs.resize(3, String::new());
    node_mut.inputs[2] = name;
    Ok(true)
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
            // ε is formed in f32: a few ulps of weights of size 1 (the shift here is ~0.1).
            assert!((d[o] - exact).abs() < 1e-6, "{} vs {exact}", d[o]);
            assert!(exact.abs() > 1e-3, "the test must see a real shift");
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
