//! The arithmetic of folding (pure, no graph): per-channel weight and bias updates, in f64,
//! stored as f32 (formulas in the module docs of [`super`]).
//!
//! Every function maps a tensor to one of the same shape element by element
//! ([`ndarray::Array::mapv`] or indexed maps), so none can fail.

use ndarray::ArrayD;

use super::BnParams;

/// Scales output channel `o` of a Conv weight `[O, I/g, k…]` by `t[o]` (axis 0, any group).
pub fn scale_conv_weight(w: &ArrayD<f32>, t: &[f64]) -> ArrayD<f32> {
    use rayon::prelude::*;
    let o = w.shape().first().copied().unwrap_or(0).max(1);
    let per = (w.len() / o).max(1);
    let mut out = w.as_standard_layout().into_owned();
    if let Some(v) = out.as_slice_mut() {
        v.par_chunks_mut(per).enumerate().for_each(|(c, chunk)| {
            let s = t[c.min(t.len() - 1)];
            chunk
                .iter_mut()
                .for_each(|x| *x = (f64::from(*x) * s) as f32);
        });
    }
    out
}

/// Output channel of element `idx` of a ConvTranspose weight `[C_in, C_out/g, k…]`:
/// `o = grp·(C_out/g) + j` with `grp = c div (C_in/g)`.
fn conv_transpose_channel(shape: &[usize], group: usize, idx: usize) -> usize {
    let c_in = shape[0];
    let per_group_out = shape[1];
    let k: usize = shape[2..].iter().product();
    let c = idx / (per_group_out * k);
    let j = (idx / k) % per_group_out;
    let grp = c / (c_in / group.max(1)).max(1);
    grp * per_group_out + j
}

/// Scales output channel `o` of a ConvTranspose weight by `t[o]` (see spec §7).
pub fn scale_conv_transpose_weight(w: &ArrayD<f32>, t: &[f64], group: usize) -> ArrayD<f32> {
    let shape = w.shape().to_vec();
    let mut out = w.as_standard_layout().into_owned();
    for (i, x) in out.iter_mut().enumerate() {
        let o = conv_transpose_channel(&shape, group, i);
        *x = (f64::from(*x) * t[o.min(t.len() - 1)]) as f32;
    }
    out
}

/// Scales output feature `n` of a 2-D Gemm/MatMul weight: row `n` when `trans_b`
/// (`[N, K]`), column `n` otherwise (`[K, N]`).
pub fn scale_matrix_outputs(b: &ArrayD<f32>, t: &[f64], trans_b: bool) -> ArrayD<f32> {
    let cols = b.shape().get(1).copied().unwrap_or(1).max(1);
    let mut out = b.as_standard_layout().into_owned();
    for (i, x) in out.iter_mut().enumerate() {
        let n = if trans_b { i / cols } else { i % cols };
        *x = (f64::from(*x) * t[n.min(t.len() - 1)]) as f32;
    }
    out
}

/// Folded bias `b'_c = (b_c − mean_c)·s_c + beta_c` (`b = 0` when absent).
pub fn fold_bias(b: Option<&[f32]>, p: &BnParams) -> Vec<f32> {
    let s = p.scale();
    (0..p.len())
        .map(|c| {
            let b = b.map_or(0.0, |b| f64::from(b[c]));
            ((b - p.mean[c]) * s[c] + p.beta[c]) as f32
        })
        .collect()
}

/// Forward fold into a Conv: `W'[o,i,…] = W[o,i,…]·s_i`, `b'_o = b_o + Σ_{i,k} W[o,i,k]·a_i`.
pub fn forward_fold_conv(
    w: &ArrayD<f32>,
    b: Option<&[f32]>,
    s: &[f64],
    a: &[f64],
) -> (ArrayD<f32>, Vec<f32>) {
    let shape = w.shape();
    let o_n = shape.first().copied().unwrap_or(0);
    let i_n = shape.get(1).copied().unwrap_or(1).max(1);
    let k: usize = shape.iter().skip(2).product();
    let mut w2 = w.as_standard_layout().into_owned();
    let mut bias = Vec::with_capacity(o_n);
    let mut flat = w2.iter_mut();
    for o in 0..o_n {
        let mut acc = b.map_or(0.0, |b| f64::from(b[o]));
        for i in 0..i_n {
            for x in flat.by_ref().take(k) {
                let v = f64::from(*x);
                acc += v * a[i];
                *x = (v * s[i]) as f32;
            }
        }
        bias.push(acc as f32);
    }
    (w2, bias)
}

/// Forward fold into a Gemm whose input feature `f` is scaled by `s[f]` and shifted by
/// `a[f]`: `B'` scales input feature `f` by `s[f]`; the bias gains `alpha·Σ_f B[f,n]·a[f]`
/// (divided by `beta_g`, the Gemm's own `beta`, since `Y = alpha·A·B + beta_g·C`).
pub fn forward_fold_gemm(
    b: &ArrayD<f32>,
    c: Option<&[f32]>,
    s: &[f64],
    a: &[f64],
    trans_b: bool,
    alpha: f64,
    beta_g: f64,
) -> (ArrayD<f32>, Vec<f32>) {
    let cols = b.shape().get(1).copied().unwrap_or(1).max(1);
    let n_out = if trans_b { b.shape()[0] } else { cols };
    let mut w2 = b.as_standard_layout().into_owned();
    let mut extra = vec![0f64; n_out];
    for (idx, x) in w2.iter_mut().enumerate() {
        let (r, col) = (idx / cols, idx % cols);
        let (n, f) = if trans_b { (r, col) } else { (col, r) };
        let v = f64::from(*x);
        *x = (v * s[f]) as f32;
        extra[n] += v * a[f];
    }
    let bias = (0..n_out)
        .map(|n| {
            let c0 = c.map_or(0.0, |c| f64::from(c[n]));
            (c0 + alpha * extra[n] / beta_g) as f32
        })
        .collect();
    (w2, bias)
}
