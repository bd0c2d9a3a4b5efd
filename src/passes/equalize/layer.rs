//! One layer of an equalized pair: its weight as raw f32 bytes, the per-channel range
//! summaries the passes read, the scales accumulated so far, and the final rescale.

use bytes::Bytes;

use super::walks::{ColCandidates, RowCandidates, CANDIDATE_MIN_ROW};
use crate::onnx::{pb, tensor};

pub(super) struct Layer {
    /// The weight as little-endian f32 bytes (the initializer's own buffer when it has one:
    /// no decode, no copy).
    pub(super) raw: Bytes,
    pub(super) shape: Vec<usize>,
    pub(super) b: Vec<f32>,
    pub(super) group: usize,
    /// `max_k |W[o, j, k]|` of the original weight, `[O, I_local]` row-major; empty when the
    /// kernel has one element and `raw` is aligned f32, which then serves ([`Layer::mags`]).
    pub(super) absmax: Vec<f32>,
    /// `Σ_k W[o, j, k]²` of the original weight, `[O, I_local]`; empty for one-element
    /// kernels (1×1 convs), where it is `absmax²`.
    pub(super) sumsq: Vec<f32>,
    /// Accumulated divisor of each output channel (from equalizing as A).
    pub(super) out_s: Vec<f64>,
    /// Accumulated factor of each input channel, `group · I_local` of them (as B).
    pub(super) in_s: Vec<f64>,
    /// `max_j absmax[o, j]·in_s[j]` per output channel, valid while `in_s` is unchanged.
    pub(super) row_max: Option<Vec<f64>>,
    /// The entries of each row that can still hold its maximum ([`RowCandidates`]).
    pub(super) row_candidates: Option<RowCandidates>,
    /// Whether listing them pays (false once the lists held over a quarter of the entries, as
    /// with uniformly spread weights).
    pub(super) listing: bool,
    /// `max_o absmax[o, c]/out_s[o]` per input channel, valid while `out_s` is unchanged.
    pub(super) col_max: Option<Vec<f64>>,
    /// The entries of each column that can still hold its maximum ([`ColCandidates`]; only
    /// without the noise objective, whose column energies walk every entry anyway).
    pub(super) col_candidates: Option<ColCandidates>,
    /// Whether listing them pays (as `listing`).
    pub(super) col_listing: bool,
    /// Full walks over the rows / columns so far.
    pub(super) row_walks: u32,
    pub(super) col_walks: u32,
    /// `Σ_o sumsq[o, c]/out_s[o]²` per input channel, valid while `out_s` is unchanged (noise
    /// objective only).
    pub(super) col_sq: Option<Vec<f64>>,
}

impl Layer {
    pub(super) fn new(
        raw: Bytes,
        shape: Vec<usize>,
        b: Vec<f32>,
        group: usize,
        energy: bool,
    ) -> Layer {
        let o_n = shape.first().copied().unwrap_or(0);
        let i_local = shape.get(1).copied().unwrap_or(0);
        let k: usize = shape.iter().skip(2).product();
        let direct = k <= 1
            && cfg!(target_endian = "little")
            && bytemuck::try_cast_slice::<u8, f32>(&raw).is_ok();
        let (absmax, sumsq) = if direct {
            // A 1×1 kernel's `max_k |W|` is `|W|`: read the weight itself ([`Layer::mags`]).
            (Vec::new(), Vec::new())
        } else if k <= 1 {
            (f32s(&raw).map(f32::abs).collect(), Vec::new())
        } else {
            let kernel = |(m, q): (f32, f32), x: f32| {
                let a = x.abs();
                (if a > m { a } else { m }, q + x * x)
            };
            match bytemuck::try_cast_slice::<u8, f32>(&raw) {
                Ok(w) if cfg!(target_endian = "little") => w
                    .chunks_exact(k)
                    .map(|c| c.iter().copied().fold((0f32, 0f32), kernel))
                    .unzip(),
                _ => raw
                    .chunks_exact(4 * k)
                    .map(|c| f32s(c).fold((0f32, 0f32), kernel))
                    .unzip(),
            }
        };
        let mut layer = Layer {
            raw,
            shape,
            b,
            group,
            absmax,
            sumsq,
            out_s: vec![1.0; o_n],
            in_s: vec![1.0; i_local * group],
            row_max: None,
            row_candidates: None,
            listing: i_local >= CANDIDATE_MIN_ROW,
            col_max: None,
            col_candidates: None,
            row_walks: 0,
            col_walks: 0,
            col_listing: o_n / group.max(1) >= CANDIDATE_MIN_ROW,
            col_sq: None,
        };
        // The first pass's ranges, while `absmax` is still in cache.
        layer.refresh_row_max();
        layer.refresh_columns(energy);
        layer
    }

    /// `max_k |W[o, j, k]|` up to sign: `absmax`, or the weight itself for 1×1 kernels (every
    /// reader takes `abs()`).
    pub(super) fn mags(&self) -> &[f32] {
        if self.absmax.is_empty() {
            bytemuck::try_cast_slice(&self.raw).unwrap_or(&[])
        } else {
            &self.absmax
        }
    }

    /// Elements per kernel (`Π shape[2..]`).
    pub(super) fn kernel(&self) -> usize {
        self.shape.iter().skip(2).product()
    }

    pub(super) fn dims(&self) -> (usize, usize, usize) {
        let o_n = self.out_s.len();
        let i_local = self.shape.get(1).copied().unwrap_or(0);
        (o_n, i_local, o_n / self.group.max(1))
    }

    /// `in_s[g·I + j] / out_s[o]`: the factor the accumulated scales put on `W[o, j, ·]`.
    pub(super) fn factor(&self, o: usize, j: usize) -> f64 {
        let (_, i_local, per_group_out) = self.dims();
        let grp = o / per_group_out.max(1);
        self.in_s[grp * i_local + j] / self.out_s[o]
    }

    /// Applies the accumulated output scales to the bias: `b[o] / out_s[o]`.
    pub(super) fn scale_bias(&mut self) {
        for (b, s) in self.b.iter_mut().zip(&self.out_s) {
            *b = (f64::from(*b) / s) as f32;
        }
    }

    /// The rescaled weight `W[o, j, k] · factor(o, j)`, encoded straight into a FLOAT tensor
    /// (one pass over the weight), in `raw`'s own buffer when nothing else holds it.
    pub(super) fn encode_weight(&mut self, name: &str) -> pb::TensorProto {
        let (o_n, i_local, per_group_out) = self.dims();
        let k = self.kernel().max(1);
        let row = i_local * k * 4;
        let raw = std::mem::take(&mut self.raw);
        let mut buf = match raw.try_into_mut() {
            Ok(buf) => buf,
            Err(raw) => bytes::BytesMut::from(&raw[..]),
        };
        for o in 0..o_n {
            let grp = o / per_group_out.max(1);
            let inv = 1.0 / self.out_s[o];
            let ins = self
                .in_s
                .get(grp * i_local..(grp + 1) * i_local)
                .unwrap_or(&[]);
            let dst = buf.get_mut(o * row..(o + 1) * row).unwrap_or(&mut []);
            match bytemuck::try_cast_slice_mut::<u8, f32>(dst) {
                // Aligned on a little-endian machine: the bytes are the f32 values (vectorizes).
                Ok(vals) if cfg!(target_endian = "little") => {
                    for (d, &f_in) in vals.chunks_exact_mut(k).zip(ins) {
                        let f = f_in * inv;
                        for v in d {
                            *v = (f64::from(*v) * f) as f32;
                        }
                    }
                }
                _ => {
                    for (d, &f_in) in dst.chunks_exact_mut(4 * k).zip(ins) {
                        let f = f_in * inv;
                        for c in d.chunks_exact_mut(4) {
                            let mut a = [0u8; 4];
                            a.copy_from_slice(c);
                            let v = f32::from_le_bytes(a);
                            c.copy_from_slice(&((f64::from(v) * f) as f32).to_le_bytes());
                        }
                    }
                }
            }
        }
        tensor::from_f32_le_raw(name, &self.shape, buf.freeze())
    }
}

/// The little-endian f32 values of `bytes`.
pub(super) fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| {
        let mut a = [0u8; 4];
        a.copy_from_slice(c);
        f32::from_le_bytes(a)
    })
}
