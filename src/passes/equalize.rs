//! Cross-layer equalization (CLE, DFQ; `algorithm.md` §5.1).
//!
//! For a chain `A → f → B` (A a Conv, `f` Relu / LeakyRelu / identity / Clip(0, c), B a Conv
//! reading only A's output) with `f(s·v) = s·f(v)` for `s > 0`, per output channel `i` of A:
//! `r1_i = max|W_A[i, …]|`, `r2_i = max|W_B[:, i, …]|`, `s_i = sqrt(r1_i / r2_i)` (1 if either
//! is 0), then `W_A[i] /= s_i`, `b_A[i] /= s_i`, `W_B[:, i] *= s_i`. The float model is
//! unchanged and both ranges become `sqrt(r1_i·r2_i)`, which is what one scale per tensor
//! needs. Pairs are applied in graph order and the passes repeat until `max |ln s| < 1e-3`
//! (1e-2 for noise-objective pairs; at most 100 passes), so `Conv → depthwise → Conv`
//! triplets converge to the triplet rule.
//! The passes only update per-channel scale vectors against `max_k |W[o, j, k]|` (9× smaller
//! than a 3×3 weight; a 1×1 weight is read in place); row and column maxima come from short
//! lists of the entries that can still hold them (exact; see `RowCandidates`), and each weight is
//! rescaled once at the end, in its own buffer when the graph releases it. Noise-objective
//! pairs settle at 1 % (their grid's finest step is 17 %), DFQ pairs at 0.1 %.
//!
//! With BN statistics, [`Objective::Noise`] (default) picks `s` to minimise the modelled
//! quantization noise at B's output instead of equalizing weight ranges alone: A's weights,
//! the activation between (per-tensor, its range `max_i a_i/s_i` from the BN rule) and B's
//! weights each add uniform noise `Δ²/12`, propagated to B's output ([`NoiseTerms::noise`],
//! solved by [`noise_scales`]). DFQ's rule ignores the activation; on MobileNetV2's first
//! depthwise chain it spreads that activation's channels over 45×, which costs what it
//! gains. Pairs BN statistics do not reach use DFQ's rule.
//!
//! ReLU6 (`Clip(0, c)`) is not scale-equivariant. With [`Relu6::PerChannel`] (default) it is
//! kept exact: the Clip becomes `Relu` then `Min(·, c / S_i)` with the accumulated channel
//! scale `S_i`. [`Relu6::Relu`] replaces it by Relu (DFQ's choice; changes the float model).
//! [`Relu6::Stop`] leaves such chains alone.
//!
//! Preconditions: BN already folded (A's bias then holds the BN shift); A's output and the
//! activation's output each have exactly one consumer and are not graph outputs; weights and
//! biases are constants. The BN statistics recorded for A's output are divided by `S_i`.

use std::collections::{BTreeMap, HashMap};

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use super::fold_bn::ChannelStats;
use super::Skip;
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::{Model, Node};
use crate::onnx::{pb, tensor, DataType};
use crate::stats::{clip_moments, Moments};
use bytes::Bytes;
use rayon::prelude::*;

/// What to do with ReLU6 (Clip(0, c)) between two equalized layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relu6 {
    /// Keep it exact with a per-channel bound (`Relu` + `Min(c / S)`).
    #[default]
    PerChannel,
    /// Replace it by Relu (changes the float model).
    Relu,
    /// Do not equalize across it.
    Stop,
}

/// What CLE did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EqualizeReport {
    /// Equalized pairs (layer A, layer B).
    pub pairs: Vec<(String, String)>,
    /// Chains left alone, with reasons.
    pub skipped: Vec<Skip>,
    /// Passes until convergence.
    pub passes: usize,
    /// ReLU6 nodes rewritten (per-channel bound, or replaced by Relu).
    pub relu6_rewritten: usize,
    /// Values now divided per channel by the scales (A's output and the activation after it;
    /// names as in the original model): `validate --per-layer` compares them up to a gain per
    /// channel. With `--absorb-bias` they are also shifted, which that comparison counts as
    /// error.
    pub rescaled: Vec<String>,
    /// With `--relu6 relu`: how much replacing ReLU6 by Relu changed the float model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float_change: Option<FloatChange>,
}

/// The float model's first output after vs before equalization, on seeded N(0, 1) inputs.
#[derive(Debug, Clone, Serialize)]
pub struct FloatChange {
    /// Inputs compared.
    pub inputs: usize,
    /// SQNR of the equalized float output against the original (dB).
    pub sqnr_db: f64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Top-1 agreement between the two float models (when the output has classes).
    pub top1_agreement: f64,
}

/// Convergence threshold on `max |ln s|` of a pass (0.1 % scale change; 1 % measured 0.3–0.4 dB worse on the BN-folded MobileNetV2 exports).
const TOLERANCE: f64 = 1e-3;
/// The same for noise-objective pairs (1 %): their grid's finest step is 17 %, and on
/// MobileNetV2 (BN form) 1 % measured as well as 0.1 % (21.56 vs 21.53 dB) in fewer passes.
const NOISE_TOLERANCE: f64 = 1e-2;
/// Pass limit.
const MAX_PASSES: usize = 100;
/// Layers with at least this many `[O, I_local]` entries split their per-pass walks over the
/// rayon pool.
const PARALLEL_ELEMENTS: usize = 1 << 16;

struct Pair {
    a: usize,
    act: Option<usize>,
    b: usize,
    clip_hi: Option<f32>,
    /// Statistics for [`Objective::Noise`] in the original scaling, when BN statistics reach.
    noise: Option<PairStats>,
}

/// What the noise objective knows about a pair before any scaling.
struct PairStats {
    /// Range of each channel of the activation between A and B (BN rule, after `f`).
    range: Vec<f64>,
    /// `E[v_i²]` of that activation.
    energy: Vec<f64>,
    /// `E[x_j²]` of each channel of A's input (1 for a graph input: standardised images).
    in_energy: Vec<f64>,
    /// The activation is non-negative (Relu / ReLU6): unsigned codes.
    unsigned: bool,
}

/// How CLE chooses the channel scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// DFQ: `s_i = sqrt(r1_i / r2_i)`, equal weight ranges on both sides.
    Weights,
    /// Minimise the modelled quantization noise at B's output from A's weights, the
    /// activation between and B's weights ([`noise_scales`]), with BN statistics; pairs they
    /// do not reach use [`Objective::Weights`].
    #[default]
    Noise,
}

/// Options of [`equalize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// ReLU6 handling.
    pub relu6: Relu6,
    /// High-bias absorption after equalization.
    pub absorb_bias: bool,
    /// Scale rule.
    pub objective: Objective,
    /// `N` of the BN range rule (`μ ± N·σ`), as the activation ranges will use it.
    pub n_sigmas: f64,
    /// Weight and activation bits (the noise objective's grid sizes).
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            relu6: Relu6::PerChannel,
            absorb_bias: false,
            objective: Objective::Noise,
            n_sigmas: 6.0,
            weight_bits: 8,
            act_bits: 8,
        }
    }
}

struct Layer {
    /// The weight as little-endian f32 bytes (the initializer's own buffer when it has one:
    /// no decode, no copy).
    raw: Bytes,
    shape: Vec<usize>,
    b: Vec<f32>,
    group: usize,
    /// `max_k |W[o, j, k]|` of the original weight, `[O, I_local]` row-major; empty when the
    /// kernel has one element and `raw` is aligned f32, which then serves ([`Layer::mags`]).
    absmax: Vec<f32>,
    /// `Σ_k W[o, j, k]²` of the original weight, `[O, I_local]`; empty for one-element
    /// kernels (1×1 convs), where it is `absmax²`.
    sumsq: Vec<f32>,
    /// Accumulated divisor of each output channel (from equalizing as A).
    out_s: Vec<f64>,
    /// Accumulated factor of each input channel, `group · I_local` of them (as B).
    in_s: Vec<f64>,
    /// `max_j absmax[o, j]·in_s[j]` per output channel, valid while `in_s` is unchanged.
    row_max: Option<Vec<f64>>,
    /// The entries of each row that can still hold its maximum ([`RowCandidates`]).
    row_candidates: Option<RowCandidates>,
    /// Whether listing them pays (false once the lists held over a quarter of the entries, as
    /// with uniformly spread weights).
    listing: bool,
    /// `max_o absmax[o, c]/out_s[o]` per input channel, valid while `out_s` is unchanged.
    col_max: Option<Vec<f64>>,
    /// The entries of each column that can still hold its maximum ([`ColCandidates`]; only
    /// without the noise objective, whose column energies walk every entry anyway).
    col_candidates: Option<ColCandidates>,
    /// Whether listing them pays (as `listing`).
    col_listing: bool,
    /// Full walks over the rows / columns so far.
    row_walks: u32,
    col_walks: u32,
    /// `Σ_o sumsq[o, c]/out_s[o]²` per input channel, valid while `out_s` is unchanged (noise
    /// objective only).
    col_sq: Option<Vec<f64>>,
}

impl Layer {
    fn new(raw: Bytes, shape: Vec<usize>, b: Vec<f32>, group: usize, energy: bool) -> Layer {
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
    fn mags(&self) -> &[f32] {
        if self.absmax.is_empty() {
            bytemuck::try_cast_slice(&self.raw).unwrap_or(&[])
        } else {
            &self.absmax
        }
    }

    /// Elements per kernel (`Π shape[2..]`).
    fn kernel(&self) -> usize {
        self.shape.iter().skip(2).product()
    }

    fn dims(&self) -> (usize, usize, usize) {
        let o_n = self.out_s.len();
        let i_local = self.shape.get(1).copied().unwrap_or(0);
        (o_n, i_local, o_n / self.group.max(1))
    }

    /// `in_s[g·I + j] / out_s[o]`: the factor the accumulated scales put on `W[o, j, ·]`.
    fn factor(&self, o: usize, j: usize) -> f64 {
        let (_, i_local, per_group_out) = self.dims();
        let grp = o / per_group_out.max(1);
        self.in_s[grp * i_local + j] / self.out_s[o]
    }

    /// Applies the accumulated output scales to the bias: `b[o] / out_s[o]`.
    fn scale_bias(&mut self) {
        for (b, s) in self.b.iter_mut().zip(&self.out_s) {
            *b = (f64::from(*b) / s) as f32;
        }
    }

    /// The rescaled weight `W[o, j, k] · factor(o, j)`, encoded straight into a FLOAT tensor
    /// (one pass over the weight), in `raw`'s own buffer when nothing else holds it.
    fn encode_weight(&mut self, name: &str) -> pb::TensorProto {
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

/// Entries `j` of each row with `|W|[o, j]·snap[j] ≥ CANDIDATE·top[o]` (`top[o]` the row
/// maximum then) when they were listed. With `hi = max_j in_s[j]/snap[j]` since, an unlisted
/// entry is now below `CANDIDATE·top[o]·hi`; when the listed entries reach that, the row
/// maximum is their maximum, exactly. Rows that fail the test are walked whole.
struct RowCandidates {
    /// `in_s` (as f32) when the lists were made.
    snap: Vec<f32>,
    /// Each row's maximum then.
    top: Vec<f32>,
    /// Row `o`'s entries are `idx[start[o]..start[o + 1]]`.
    start: Vec<usize>,
    idx: Vec<u32>,
}

/// Entries `(flat index, o, c)` of `|W|` with `|W|[o, c]·snap[o] ≥ CANDIDATE·top[c]` when
/// listed: the column counterpart of [`RowCandidates`], with `snap` the factors `1/out_s[o]`.
struct ColCandidates {
    snap: Vec<f32>,
    top: Vec<f32>,
    entries: Vec<[u32; 3]>,
}

/// `max now[i]/then[i]` with a margin for f32 rounding of the products it bounds (`None`
/// when the lengths differ or a ratio is not finite).
fn growth(now: &[f32], then: &[f32]) -> Option<f32> {
    if now.len() != then.len() {
        return None;
    }
    let hi = now
        .iter()
        .zip(then)
        .fold(0f32, |hi, (&n, &t)| if n / t > hi { n / t } else { hi });
    hi.is_finite().then_some(hi * (1.0 + 1e-5))
}

/// Threshold of [`RowCandidates`] (the lists hold until the scales drift 1/0.7 apart).
const CANDIDATE: f32 = 0.7;
/// Rows shorter than this are always walked whole.
const CANDIDATE_MIN_ROW: usize = 16;

/// The little-endian f32 values of `bytes`.
fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| {
        let mut a = [0u8; 4];
        a.copy_from_slice(c);
        f32::from_le_bytes(a)
    })
}

/// Equalizes every eligible chain in place and updates `stats`.
///
/// # Errors
/// Malformed constants.
pub fn equalize(
    model: &mut Model,
    stats: &mut BTreeMap<String, ChannelStats>,
    opts: &Options,
) -> Result<EqualizeReport> {
    let (relu6, absorb_bias) = (opts.relu6, opts.absorb_bias);
    let mut report = EqualizeReport::default();
    let g = &model.graph;
    let producers = g.producers();
    let consumers = g.consumers();
    let outputs = g.output_names();
    let only = |v: &str| -> Option<usize> {
        match consumers.get(v).map(Vec::as_slice) {
            Some([one]) if !outputs.contains(v) => Some(*one),
            _ => None,
        }
    };
    let conv_with_constants = |n: &Node| -> Result<bool> {
        Ok(n.is("Conv")
            && n.input(1)
                .map_or(Ok(None), |w| g.constant_with(w, &producers))?
                .is_some()
            && match n.input(2) {
                Some(b) => g.constant_with(b, &producers)?.is_some(),
                None => true,
            })
    };
    let mut pairs = Vec::new();
    for (a, an) in g.nodes.iter().enumerate() {
        if !conv_with_constants(an)? {
            continue;
        }
        let Some(y) = an.outputs.first() else {
            continue;
        };
        let Some(next) = only(y) else { continue };
        let nn = &g.nodes[next];
        let (act, clip_hi, feed) = if nn.is("Conv") {
            (None, None, next)
        } else {
            let clip_hi = if nn.is("Clip") {
                let bound = |k: usize| -> Result<Option<f32>> {
                    Ok(match nn.input(k) {
                        Some(v) => g
                            .constant_f32(v, &producers)?
                            .and_then(|a| a.iter().next().copied()),
                        None => None,
                    })
                };
                let lo = bound(1)?.or(nn.attr_float("min")?);
                let hi = bound(2)?.or(nn.attr_float("max")?);
                match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h > 0.0 => Some(h),
                    _ => {
                        report
                            .skipped
                            .push(skip(an, "followed by a Clip that is not Clip(0, c)"));
                        continue;
                    }
                }
            } else if nn.is("Relu") || nn.is("LeakyRelu") {
                None
            } else {
                continue;
            };
            if clip_hi.is_some() && relu6 == Relu6::Stop {
                report
                    .skipped
                    .push(skip(an, "ReLU6 between the layers (--relu6 stop)"));
                continue;
            }
            let Some(z) = nn.outputs.first() else {
                continue;
            };
            let Some(b) = only(z) else {
                continue;
            };
            (Some(next), clip_hi, b)
        };
        let bn = &g.nodes[feed];
        let fed = g.nodes[act.unwrap_or(a)]
            .outputs
            .first()
            .map(String::as_str);
        if !conv_with_constants(bn)? || bn.input(0) != fed {
            continue;
        }
        let noise = match opts.objective {
            Objective::Weights => None,
            Objective::Noise => pair_stats(model, &producers, stats, a, act, clip_hi, opts)?,
        };
        pairs.push(Pair {
            a,
            act,
            b: feed,
            clip_hi,
            noise,
        });
    }
    if pairs.is_empty() {
        return Ok(report);
    }
    // Load every involved layer once (in parallel: decoding and `max_k |W|` touch every weight).
    let mut idxs: Vec<usize> = pairs.iter().flat_map(|p| [p.a, p.b]).collect();
    idxs.sort_unstable();
    idxs.dedup();
    let energy = pairs.iter().any(|p| p.noise.is_some());
    let loaded: Vec<(usize, Layer)> = idxs
        .par_iter()
        .map(|&idx| -> Result<(usize, Layer)> {
            let n = &g.nodes[idx];
            let w_name = n.input(1).unwrap_or("");
            let (t, _) = g
                .constant_with(w_name, &producers)?
                .ok_or_else(|| n.error("weight is not a constant"))?;
            let shape = tensor::shape_of(&t)?;
            let count: usize = shape.iter().product();
            let raw = match &t.raw_data {
                Some(r) if t.data_type == Some(DataType::Float as i32) && r.len() == count * 4 => {
                    r.clone()
                }
                // Other encodings (float_data, FLOAT16, …): decode once.
                _ => {
                    let w = tensor::to_f32(&t)?;
                    Bytes::from(w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
                }
            };
            let o = shape.first().copied().unwrap_or(0);
            let b = match n.input(2) {
                Some(b) => g
                    .constant_f32(b, &producers)?
                    .map(|a| a.iter().copied().collect())
                    .unwrap_or_else(|| vec![0.0; o]),
                None => vec![0.0; o],
            };
            let group = n.attr_int("group")?.unwrap_or(1).max(1) as usize;
            Ok((idx, Layer::new(raw, shape, b, group, energy)))
        })
        .collect::<Result<_>>()?;
    let mut layers: HashMap<usize, Layer> = loaded.into_iter().collect();
    // Consistency: A's output channels must be B's input channels.
    pairs.retain(|p| {
        let (la, lb) = (&layers[&p.a], &layers[&p.b]);
        let out_a = la.shape.first().copied().unwrap_or(0);
        let in_b = lb.shape.get(1).copied().unwrap_or(0) * lb.group;
        out_a == in_b && la.shape.len() >= 3 && lb.shape.len() >= 3 && out_a % lb.group == 0
    });
    // Weights only these layers read: their buffers are released from the graph before the
    // write-back, so that it can rescale them in place.
    let subgraphs = g.nodes.iter().any(|n| {
        n.attributes
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    });
    let releasable: Vec<String> = layers
        .keys()
        .filter(|_| !subgraphs)
        .filter_map(|&idx| {
            let w = g.nodes[idx].input(1)?;
            let only_here = consumers.get(w).map(Vec::as_slice) == Some(&[idx][..]);
            (only_here && !outputs.contains(w) && g.initializer(w).is_some()).then(|| w.to_string())
        })
        .collect();
    let mut total: HashMap<usize, Vec<f64>> = pairs
        .iter()
        .map(|p| (p.a, vec![1.0; layers[&p.a].out_s.len()]))
        .collect();
    // The passes work on per-channel ranges (`max_k |W|` and the accumulated scales); the
    // weights are rescaled once at the end.
    // The noise objective's grid centre per pair: later passes search only around it.
    let mut centres: HashMap<usize, Option<(f64, f64)>> = HashMap::new();
    // A DFQ pair whose last scales were all within the tolerance is skipped until a
    // neighbouring pair moves one of its two layers again: DFQ's rule would then give exactly
    // s = 1. (Noise-objective pairs always rerun: skipping them stopped their grid search early
    // and measured 0.3 dB worse on MobileNetV2.)
    let mut moved: HashMap<usize, u64> = HashMap::new();
    let mut seen: Vec<Option<(u64, u64)>> = vec![None; pairs.len()];
    for pass in 1..=MAX_PASSES {
        report.passes = pass;
        let mut unsettled = false;
        for (k, p) in pairs.iter().enumerate() {
            let stamps = (
                moved.get(&p.a).copied().unwrap_or(0),
                moved.get(&p.b).copied().unwrap_or(0),
            );
            if p.noise.is_none() && seen[k] == Some(stamps) {
                continue;
            }
            // Only the side whose scales moved since is recomputed: in a chain A → B → C the
            // ranges of A's rows and C's columns never change, only B's.
            if let Some(la) = layers.get_mut(&p.a) {
                la.refresh_row_max();
            }
            if let Some(lb) = layers.get_mut(&p.b) {
                lb.refresh_columns(p.noise.is_some());
            }
            // The next noise pair's column walk (memory-bound) overlaps this pair's grid search
            // (compute-bound). Exact: B's columns depend on B's `out_s` only, which no pair
            // before the one where B is A changes, and that one comes later (pairs are in
            // graph order of A).
            let next_b = pairs
                .get(k + 1)
                .filter(|n| n.noise.is_some() && n.b != p.a && n.b != p.b)
                .map(|n| n.b)
                .filter(|nb| layers.contains_key(nb));
            let t = total.get(&p.a).map(Vec::as_slice).unwrap_or(&[]);
            let start = centres.entry(p.a).or_insert(None);
            let mut scales = |la: &Layer, lb: &Layer| match &p.noise {
                Some(ps) => noise_pair_scales(la, lb, ps, t, opts, start),
                None => pair_scales(la, lb),
            };
            let s = match next_b {
                Some(nb) => match layers.get_disjoint_mut([&p.a, &p.b, &nb]) {
                    [Some(la), Some(lb), Some(ln)] => {
                        rayon::join(|| scales(la, lb), || ln.refresh_columns(true)).0
                    }
                    // Unreachable: every pair's layers are loaded (checked above) and the
                    // three keys differ.
                    _ => vec![1.0; p.noise.as_ref().map_or(0, |n| n.range.len())],
                },
                None => scales(&layers[&p.a], &layers[&p.b]),
            };
            let change = s.iter().fold(0f64, |m, v| m.max(v.ln().abs()));
            let tolerance = if p.noise.is_some() {
                NOISE_TOLERANCE
            } else {
                TOLERANCE
            };
            unsettled |= change >= tolerance;
            if change >= TOLERANCE {
                *moved.entry(p.a).or_insert(0) += 1;
                *moved.entry(p.b).or_insert(0) += 1;
                seen[k] = None;
            } else {
                seen[k] = Some(stamps);
            }
            if let Some(la) = layers.get_mut(&p.a) {
                la.out_s.iter_mut().zip(&s).for_each(|(a, f)| *a *= f);
                la.col_max = None;
                la.col_sq = None;
            }
            if let Some(lb) = layers.get_mut(&p.b) {
                lb.in_s.iter_mut().zip(&s).for_each(|(a, f)| *a *= f);
                lb.row_max = None;
            }
            if let Some(t) = total.get_mut(&p.a) {
                t.iter_mut().zip(&s).for_each(|(a, b)| *a *= b);
            }
        }
        if !unsettled {
            break;
        }
    }
    // Biases now; weights are rescaled while they are encoded.
    layers.values_mut().for_each(Layer::scale_bias);
    // High-bias absorption (DFQ §5.2, `algorithm.md` §5.2): with A's output modelled as
    // N(μ_i, σ_i²) (BN statistics divided by the CLE scale), move `c_i = max(0, μ_i − 3σ_i)`
    // (after Relu / ReLU6; `μ_i` without activation) from A's bias into B's:
    // `b_A[i] −= c_i`, `b_B[o] += Σ_{i,k} W_B[o,i,k]·c_i`. Exact while A's pre-activation stays
    // ≥ c_i (99.87 % of a Gaussian) and away from zero-padded borders.
    let mut absorbed: HashMap<usize, Vec<f64>> = HashMap::new();
    if absorb_bias {
        for p in &pairs {
            // B must not pad: a padded border sees zeros instead of c (the DFQ caveat), which
            // measured a 20 % change of MobileNetV2's float logits when padded pairs were
            // included.
            let b_node = &model.graph.nodes[p.b];
            let pads_zero = b_node
                .attr_ints("pads")?
                .is_none_or(|v| v.iter().all(|&x| x == 0));
            let auto_pad = crate::onnx::attrs::string(&b_node.attributes, "auto_pad")
                .ok()
                .flatten()
                .unwrap_or_else(|| "NOTSET".into());
            if !pads_zero || !(auto_pad == "NOTSET" || auto_pad == "VALID") {
                continue;
            }
            let Some(y) = g_outputs(model, p.a) else {
                continue;
            };
            let Some(st) = stats.get(&y) else { continue };
            let scales = &total[&p.a];
            if st.mean.len() != scales.len() {
                continue;
            }
            let relu_like = p.act.is_some();
            let c: Vec<f64> = (0..scales.len())
                .map(|i| {
                    let (m, sd) = (st.mean[i] / scales[i], st.std[i] / scales[i]);
                    if relu_like {
                        (m - 3.0 * sd).max(0.0)
                    } else {
                        m
                    }
                })
                .collect();
            if c.iter().all(|&v| v == 0.0) {
                continue;
            }
            if let Some(la) = layers.get_mut(&p.a) {
                la.b.iter_mut()
                    .zip(&c)
                    .for_each(|(b, ci)| *b = (f64::from(*b) - ci) as f32);
            }
            if let Some(lb) = layers.get_mut(&p.b) {
                // Kernel sums of B as rescaled: `factor(o, j) · Σ_k W[o, j, k]`.
                let (o_n, i_local, per_group_out) = lb.dims();
                let k = lb.kernel().max(1);
                let adds: Vec<f64> = (0..o_n)
                    .map(|o| {
                        let grp = o / per_group_out.max(1);
                        (0..i_local)
                            .map(|j| {
                                let ci = c.get(grp * i_local + j).copied().unwrap_or(0.0);
                                let at = (o * i_local + j) * k * 4;
                                let wsum: f64 = f32s(lb.raw.get(at..at + 4 * k).unwrap_or(&[]))
                                    .map(f64::from)
                                    .sum();
                                wsum * lb.factor(o, j) * ci
                            })
                            .sum()
                    })
                    .collect();
                for (b, add) in lb.b.iter_mut().zip(adds) {
                    *b = (f64::from(*b) + add) as f32;
                }
            }
            absorbed.insert(p.a, c);
        }
    }
    // Write back, in node order (deterministic names), encoding in parallel.
    for w in &releasable {
        drop(model.graph.take_raw_data(w));
    }
    let mut names = NameGen::new(model.graph.taken_names());
    let mut done: Vec<(usize, Layer)> = layers.into_iter().collect();
    done.sort_unstable_by_key(|(idx, _)| *idx);
    let named: Vec<(usize, String, String, Layer)> = done
        .into_iter()
        .map(|(idx, l)| {
            let w = model.graph.nodes[idx].input(1).unwrap_or("w").to_string();
            let w_name = names.fresh(&w, "_equalized");
            let b_name = names.fresh(&w, "_bias_equalized");
            (idx, w_name, b_name, l)
        })
        .collect();
    let encoded: Vec<(usize, pb::TensorProto, pb::TensorProto)> = named
        .into_par_iter()
        .map(|(idx, w_name, b_name, mut l)| {
            let w = l.encode_weight(&w_name);
            let bn = l.b.len();
            let bias = ArrayD::from_shape_vec(IxDyn(&[bn]), l.b)
                .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])));
            (idx, w, tensor::from_f32(&b_name, bias))
        })
        .collect();
    for (idx, w, b) in encoded {
        let (w_name, b_name) = (
            tensor::tensor_name(&w).to_string(),
            tensor::tensor_name(&b).to_string(),
        );
        model.graph.set_initializer(w);
        model.graph.set_initializer(b);
        let node = &mut model.graph.nodes[idx];
        node.inputs.resize(3, String::new());
        node.inputs[1] = w_name;
        node.inputs[2] = b_name;
    }
    let mut new_nodes: Vec<(usize, Node)> = Vec::new();
    for p in &pairs {
        let an = model.graph.nodes[p.a].display_name();
        let bname = model.graph.nodes[p.b].display_name();
        report.pairs.push((an, bname));
        for n in std::iter::once(p.a).chain(p.act) {
            report
                .rescaled
                .extend(model.graph.nodes[n].outputs.first().cloned());
        }
        let scales = &total[&p.a];
        if let Some(y) = model.graph.nodes[p.a].outputs.first().cloned() {
            if let Some(st) = stats.get_mut(&y) {
                for (c, s) in scales.iter().enumerate() {
                    if let (Some(m), Some(d)) = (st.mean.get_mut(c), st.std.get_mut(c)) {
                        *m /= s;
                        *d /= s;
                        *m -= absorbed
                            .get(&p.a)
                            .and_then(|a| a.get(c))
                            .copied()
                            .unwrap_or(0.0);
                    }
                }
            }
        }
        if let (Some(act), Some(hi)) = (p.act, p.clip_hi) {
            report.relu6_rewritten += 1;
            let clip = model.graph.nodes[act].clone();
            let x = clip.input(0).unwrap_or("").to_string();
            let out = clip.outputs.first().cloned().unwrap_or_default();
            match relu6 {
                Relu6::Relu => {
                    model.graph.nodes[act] =
                        Node::new("Relu", clip.name.clone(), vec![x], vec![out]);
                }
                _ => {
                    let relu_out = names.fresh(&out, "_relu");
                    let bound = names.fresh(&out, "_bound");
                    let c = scales.len();
                    // min(y, b) − c = min(y − c, b − c): the bound moves with the absorbed bias.
                    let shift = absorbed.get(&p.a);
                    let v: Vec<f32> = scales
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let c = shift.and_then(|a| a.get(i)).copied().unwrap_or(0.0);
                            (f64::from(hi) / s - c) as f32
                        })
                        .collect();
                    model.graph.set_initializer(tensor::from_f32(
                        &bound,
                        ArrayD::from_shape_vec(IxDyn(&[1, c, 1, 1]), v)
                            .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0]))),
                    ));
                    model.graph.nodes[act] =
                        Node::new("Relu", clip.name.clone(), vec![x], vec![relu_out.clone()]);
                    let name = names.fresh(&clip.display_name(), "_bound");
                    new_nodes.push((
                        act,
                        Node::new("Min", name, vec![relu_out, bound], vec![out]),
                    ));
                }
            }
        }
    }
    // Insert the Min nodes right after their Relu (highest index first keeps indices valid).
    new_nodes.sort_by_key(|n| std::cmp::Reverse(n.0));
    for (at, n) in new_nodes {
        model.graph.insert_nodes(at + 1, vec![n]);
    }
    model.graph.remove_dead_nodes();
    model.graph.remove_unused_initializers();
    Ok(report)
}

fn g_outputs(model: &Model, node: usize) -> Option<String> {
    model
        .graph
        .nodes
        .get(node)
        .and_then(|n| n.outputs.first().cloned())
}

fn skip(n: &Node, reason: &str) -> Skip {
    Skip {
        node: n.display_name(),
        op_type: n.op_type.clone(),
        reason: reason.to_string(),
    }
}

impl Layer {
    /// Computes `row_max` if `in_s` changed since (f32 inner loop: vectorizes; ranges need no
    /// more precision).
    fn refresh_row_max(&mut self) {
        if self.row_max.is_some() {
            return;
        }
        let (o_n, il, pgo) = self.dims();
        let ins: Vec<f32> = self.in_s.iter().map(|&v| v as f32).collect();
        // Cheap path: the listed entries decide every row that passes the test.
        if let Some(c) = &self.row_candidates {
            if let Some(hi) = growth(&ins, &c.snap) {
                let mut failed = 0usize;
                let max: Vec<f64> = (0..o_n)
                    .map(|o| {
                        let grp = o / pgo.max(1);
                        let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
                        let s = ins.get(grp * il..(grp + 1) * il).unwrap_or(&[]);
                        let list = c.idx.get(c.start[o]..c.start[o + 1]).unwrap_or(&[]);
                        let m = list.iter().fold(0f32, |m, &j| {
                            let j = j as usize;
                            match (row.get(j), s.get(j)) {
                                (Some(w), Some(f)) => m.max(w.abs() * f),
                                _ => m,
                            }
                        });
                        if m >= CANDIDATE * c.top[o] * hi {
                            f64::from(m)
                        } else {
                            failed += 1;
                            f64::from(max_scaled(row, s))
                        }
                    })
                    .collect();
                if failed * 4 > o_n {
                    // The lists went stale: list afresh at the next walk.
                    self.row_candidates = None;
                }
                self.row_max = Some(max);
                return;
            }
        }
        // Full walk, listing each row's candidates while it is in cache (not on the first walk:
        // the first pass moves every scale by up to ~2.5×, which no list survives).
        let listing = self.listing && self.row_walks > 0;
        self.row_walks += 1;
        let one = |o: usize| -> (f64, Vec<u32>) {
            let grp = o / pgo.max(1);
            let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
            let s = ins.get(grp * il..(grp + 1) * il).unwrap_or(&[]);
            let m = max_scaled(row, s);
            let mut list = Vec::new();
            if listing {
                list_at_least(row, s, m * CANDIDATE, &mut list);
            }
            (f64::from(m), list)
        };
        let rows: Vec<(f64, Vec<u32>)> = if o_n * il >= PARALLEL_ELEMENTS {
            (0..o_n)
                .into_par_iter()
                .with_min_len(o_n.div_ceil(rayon::current_num_threads().max(1)))
                .map(one)
                .collect()
        } else {
            (0..o_n).map(one).collect()
        };
        let mut start = Vec::with_capacity(o_n + 1);
        let mut idx = Vec::new();
        let mut max = Vec::with_capacity(o_n);
        start.push(0);
        for (m, list) in rows {
            max.push(m);
            idx.extend(list);
            start.push(idx.len());
        }
        self.listing &= !listing || idx.len() * 4 <= o_n * il;
        self.row_candidates = (listing && self.listing).then_some(RowCandidates {
            snap: ins,
            top: max.iter().map(|&m| m as f32).collect(),
            start,
            idx,
        });
        self.row_max = Some(max);
    }

    /// Computes `col_max` (`max_o absmax[o, c]/out_s[o]`) if `out_s` changed since, and with
    /// `energy` also `col_sq` (`Σ_o sumsq[o, c]/out_s[o]²`), in one walk over the rows.
    fn refresh_columns(&mut self, energy: bool) {
        let want_sq = energy && self.col_sq.is_none();
        if self.col_max.is_some() && !want_sq {
            return;
        }
        let f: Vec<f32> = self.out_s.iter().map(|&s| (1.0 / s) as f32).collect();
        if !want_sq {
            // Cheap path, as for rows ([`ColCandidates`]).
            if let Some(c) = &self.col_candidates {
                if let Some(hi) = growth(&f, &c.snap) {
                    let mags = self.mags();
                    let mut m = vec![0f32; self.in_s.len()];
                    for &[flat, o, col] in &c.entries {
                        if let (Some(w), Some(fo), Some(d)) = (
                            mags.get(flat as usize),
                            f.get(o as usize),
                            m.get_mut(col as usize),
                        ) {
                            let v = w.abs() * fo;
                            *d = if v > *d { v } else { *d };
                        }
                    }
                    // Columns that fail the test are walked whole (strided).
                    let (_, il, pgo) = self.dims();
                    let mut failed = 0usize;
                    for (col, d) in m.iter_mut().enumerate() {
                        if *d >= CANDIDATE * c.top.get(col).copied().unwrap_or(0.0) * hi {
                            continue;
                        }
                        failed += 1;
                        let (grp, j) = (col / il.max(1), col % il.max(1));
                        for o in grp * pgo..(grp + 1) * pgo {
                            if let (Some(w), Some(fo)) = (mags.get(o * il + j), f.get(o)) {
                                let v = w.abs() * fo;
                                *d = if v > *d { v } else { *d };
                            }
                        }
                    }
                    if failed * 4 > m.len() {
                        self.col_candidates = None;
                    }
                    self.col_max = Some(m.into_iter().map(f64::from).collect());
                    return;
                }
            }
        }
        let (max, sq) = self.column_pass(&f, want_sq);
        let first = self.col_walks == 0;
        self.col_walks += 1;
        if !energy && self.col_listing && !first {
            // List each column's candidates (a second walk, paid back by the passes after).
            let (o_n, il, pgo) = self.dims();
            let mut entries = Vec::new();
            for (o, &fo) in f.iter().enumerate().take(o_n) {
                let base = (o / pgo.max(1)) * il;
                let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
                let tops = max.get(base..base + il).unwrap_or(&[]);
                for (j, (&w, &t)) in row.iter().zip(tops).enumerate() {
                    if w.abs() * fo >= t * CANDIDATE {
                        entries.push([(o * il + j) as u32, o as u32, (base + j) as u32]);
                    }
                }
            }
            self.col_listing = entries.len() * 4 <= o_n * il && o_n * il < u32::MAX as usize;
            self.col_candidates = self.col_listing.then(|| ColCandidates {
                snap: f,
                top: max.clone(),
                entries,
            });
        }
        self.col_max = Some(max.into_iter().map(f64::from).collect());
        if want_sq {
            self.col_sq = Some(sq.into_iter().map(f64::from).collect());
        }
    }

    /// Per input channel `c` (per group): `max_o absmax[o, c]/out_s[o]` and, with `energy`,
    /// `Σ_o sumsq[o, c]/out_s[o]²`, walking rows (row-major: cache-friendly). f32 inner loops:
    /// they vectorize, and ranges and energies need no more precision. Large layers split
    /// their rows over the rayon pool (the passes are bound by reading these arrays).
    fn column_pass(&self, f: &[f32], energy: bool) -> (Vec<f32>, Vec<f32>) {
        let (o_n, il, pgo) = self.dims();
        let n = self.in_s.len();
        let rows = |lo: usize, hi: usize| -> (Vec<f32>, Vec<f32>) {
            let mut mx = vec![0f32; n];
            let mut sq = vec![0f32; if energy { n } else { 0 }];
            for o in lo..hi {
                let grp = o / pgo.max(1);
                let f = f.get(o).copied().unwrap_or(1.0);
                let span = grp * il..(grp + 1) * il;
                let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
                if let Some(dst) = mx.get_mut(span.clone()) {
                    for (d, &w) in dst.iter_mut().zip(row) {
                        let v = w.abs() * f;
                        *d = if v > *d { v } else { *d };
                    }
                }
                if !energy {
                    continue;
                }
                let f2 = f * f;
                let Some(dst) = sq.get_mut(span) else {
                    continue;
                };
                if self.sumsq.is_empty() {
                    for (d, &w) in dst.iter_mut().zip(row) {
                        *d += w * w * f2;
                    }
                } else {
                    let row = self.sumsq.get(o * il..(o + 1) * il).unwrap_or(&[]);
                    for (d, &w) in dst.iter_mut().zip(row) {
                        *d += w * f2;
                    }
                }
            }
            (mx, sq)
        };
        let (mx, sq) = if o_n * il >= PARALLEL_ELEMENTS && o_n >= 2 {
            let parts = rayon::current_num_threads().clamp(1, o_n);
            let step = o_n.div_ceil(parts);
            (0..parts)
                .into_par_iter()
                .map(|p| rows(p * step, ((p + 1) * step).min(o_n)))
                .reduce(
                    || (vec![0f32; n], vec![0f32; if energy { n } else { 0 }]),
                    |(mut m1, mut q1), (m2, q2)| {
                        m1.iter_mut().zip(&m2).for_each(|(a, &b)| *a = a.max(b));
                        q1.iter_mut().zip(&q2).for_each(|(a, &b)| *a += b);
                        (m1, q1)
                    },
                )
        } else {
            rows(0, o_n)
        };
        (mx, sq)
    }
}

/// `s_i = sqrt(r1_i / r2_i)` per output channel of A (1 when a range is 0) with the ranges of
/// the weights as currently scaled: `r1_i = row_max_A[i] / out_s_A[i]`,
/// `r2_i = col_max_B[i] · in_s_B[i]`. Both caches must be fresh.
fn pair_scales(a: &Layer, b: &Layer) -> Vec<f64> {
    let (Some(rows), Some(cols)) = (&a.row_max, &b.col_max) else {
        return vec![1.0; a.out_s.len()];
    };
    rows.iter()
        .zip(&a.out_s)
        .zip(cols.iter().zip(&b.in_s))
        .map(|((r, o), (c, i))| {
            let (x, y) = (r / o, c * i);
            if x > 0.0 && y > 0.0 {
                (x / y).sqrt().clamp(1e-8, 1e8)
            } else {
                1.0
            }
        })
        .collect()
}

/// Appends every `j` with `|row[j]|·s[j] ≥ t` to `out`, eight entries at a time (a
/// branch-free test per block, so that the common miss vectorizes).
fn list_at_least(row: &[f32], s: &[f32], t: f32, out: &mut Vec<u32>) {
    let n = row.len().min(s.len());
    let (row, s) = (&row[..n], &s[..n]);
    for (b, (r, f)) in row.chunks(8).zip(s.chunks(8)).enumerate() {
        let hit = r
            .iter()
            .zip(f)
            .fold(false, |h, (&w, &x)| h | (w.abs() * x >= t));
        if hit {
            for (j, (&w, &x)) in r.iter().zip(f).enumerate() {
                if w.abs() * x >= t {
                    out.push((b * 8 + j) as u32);
                }
            }
        }
    }
}

/// `max_j |row[j]|·s[j]` (`s` non-negative), with eight independent lanes so it vectorizes.
fn max_scaled(row: &[f32], s: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (rc, sc) = (row.chunks_exact(8), s.chunks_exact(8));
    let (rr, sr) = (rc.remainder(), sc.remainder());
    for (r, s) in rc.zip(sc) {
        for k in 0..8 {
            let v = r[k].abs() * s[k];
            lanes[k] = if v > lanes[k] { v } else { lanes[k] };
        }
    }
    let tail = rr
        .iter()
        .zip(sr)
        .fold(0f32, |m, (&r, &s)| m.max(r.abs() * s));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Per-channel `(E[x], E[x²])` of value `v` from BN statistics: a recorded BN output, or
/// Relu / Clip(lo, hi) / Add of such values (Add: independent summands). `None` when the
/// statistics do not reach `v`.
fn tensor_moments(
    model: &Model,
    producers: &HashMap<&str, usize>,
    stats: &BTreeMap<String, ChannelStats>,
    v: &str,
    depth: usize,
) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
    if let Some(st) = stats.get(v) {
        let e = st.mean.iter().zip(&st.std).map(|(m, s)| m * m + s * s);
        return Ok(Some((st.mean.clone(), e.collect())));
    }
    let g = &model.graph;
    let Some(&p) = producers.get(v) else {
        return Ok(None);
    };
    let n = &g.nodes[p];
    if depth > 8 {
        return Ok(None);
    }
    let first = |k: usize| -> Result<Option<(Vec<f64>, Vec<f64>)>> {
        match n.input(k) {
            Some(x) => tensor_moments(model, producers, stats, x, depth + 1),
            None => Ok(None),
        }
    };
    let clipped = |(mean, e2): (Vec<f64>, Vec<f64>), lo: f64, hi: f64| {
        mean.iter()
            .zip(&e2)
            .map(|(&m, &q)| {
                let c = clip_moments(Moments::new(m, (q - m * m).max(0.0)), lo, hi);
                (c.mean, c.second_moment())
            })
            .unzip()
    };
    Ok(match n.op_type.as_str() {
        "Relu" => first(0)?.map(|x| clipped(x, 0.0, f64::INFINITY)),
        "Clip" => {
            let bound = |k: usize, attr: &str| -> Result<Option<f32>> {
                Ok(match n.input(k).filter(|s| !s.is_empty()) {
                    Some(b) => g
                        .constant_f32(b, producers)?
                        .and_then(|a| a.iter().next().copied()),
                    None => n.attr_float(attr)?,
                })
            };
            let lo = bound(1, "min")?.map_or(f64::NEG_INFINITY, f64::from);
            let hi = bound(2, "max")?.map_or(f64::INFINITY, f64::from);
            first(0)?.map(|x| clipped(x, lo, hi))
        }
        "Add" => match (first(0)?, first(1)?) {
            (Some((ma, ea)), Some((mb, eb))) if ma.len() == mb.len() => Some(
                ma.iter()
                    .zip(&mb)
                    .zip(ea.iter().zip(&eb))
                    .map(|((a, b), (x, y))| (a + b, x + y + 2.0 * a * b))
                    .unzip(),
            ),
            _ => None,
        },
        _ => None,
    })
}

/// The noise objective's statistics of pair `A → f → B` (original scaling), or `None` when
/// BN statistics do not describe A's output.
fn pair_stats(
    model: &Model,
    producers: &HashMap<&str, usize>,
    stats: &BTreeMap<String, ChannelStats>,
    a: usize,
    act: Option<usize>,
    clip_hi: Option<f32>,
    opts: &Options,
) -> Result<Option<PairStats>> {
    let g = &model.graph;
    let Some(y) = g.nodes[a].outputs.first() else {
        return Ok(None);
    };
    let Some(st) = stats.get(y) else {
        return Ok(None);
    };
    let n = opts.n_sigmas;
    let relu_like = act.is_some_and(|i| !g.nodes[i].is("LeakyRelu"));
    let hi = clip_hi.map_or(f64::INFINITY, f64::from);
    let (range, energy) = st
        .mean
        .iter()
        .zip(&st.std)
        .map(|(&m, &s)| {
            if relu_like {
                let c = clip_moments(Moments::new(m, s * s), 0.0, hi);
                ((m + n * s).clamp(0.0, hi), c.second_moment())
            } else {
                ((m - n * s).abs().max((m + n * s).abs()), m * m + s * s)
            }
        })
        .unzip();
    let x = g.nodes[a].input(0).unwrap_or("");
    let in_energy = if g.inputs.iter().any(|i| i.name.as_deref() == Some(x)) {
        // A graph input: assume standardised (E[x²] = 1), as image models take.
        Vec::new()
    } else {
        match tensor_moments(model, producers, stats, x, 0)? {
            Some((_, e)) => e,
            None => return Ok(None),
        }
    };
    Ok(Some(PairStats {
        range,
        energy,
        in_energy,
        unsigned: relu_like,
    }))
}

/// The scales [`noise_scales`] picks for a pair, with every quantity in the current scaling:
/// A's rows and B's columns as rescaled so far, the activation's statistics divided by the
/// accumulated scale `total` of A's output channels. `start` carries the grid centre from
/// one pass to the next.
fn noise_pair_scales(
    a: &Layer,
    b: &Layer,
    ps: &PairStats,
    total: &[f64],
    opts: &Options,
    start: &mut Option<(f64, f64)>,
) -> Vec<f64> {
    let (Some(rows), Some(cols)) = (&a.row_max, &b.col_max) else {
        return vec![1.0; a.out_s.len()];
    };
    let c_n = a.out_s.len();
    if ps.range.len() != c_n || total.len() != c_n || b.in_s.len() != c_n {
        return pair_scales(a, b);
    }
    let r1: Vec<f64> = rows.iter().zip(&a.out_s).map(|(r, o)| r / o).collect();
    let r2: Vec<f64> = cols.iter().zip(&b.in_s).map(|(c, i)| c * i).collect();
    let range: Vec<f64> = ps.range.iter().zip(total).map(|(r, t)| r / t).collect();
    let energy: Vec<f64> = ps
        .energy
        .iter()
        .zip(total)
        .map(|(e, t)| e / (t * t))
        .collect();
    // A's input energy per output channel: K_A · Σ_{j in its group} E[x_j²] / in_s_A[j]².
    let (_, il_a, pgo_a) = a.dims();
    let k_a = a.kernel().max(1) as f64;
    let in_e: Vec<f64> = a
        .in_s
        .iter()
        .enumerate()
        .map(|(j, s)| ps.in_energy.get(j).copied().unwrap_or(1.0) / (s * s))
        .collect();
    let group_sums: Vec<f64> = in_e
        .chunks(il_a.max(1))
        .map(|c| k_a * c.iter().sum::<f64>())
        .collect();
    let ea: Vec<f64> = (0..c_n)
        .map(|i| group_sums.get(i / pgo_a.max(1)).copied().unwrap_or(0.0))
        .collect();
    // B's column energy Σ_{o,k} W_B[o,i,k]² and fan-out (outputs reading i) · K_B.
    let (_, _, pgo_b) = b.dims();
    let k_b = b.kernel().max(1);
    let Some(col_sq) = &b.col_sq else {
        return pair_scales(a, b);
    };
    let gain: Vec<f64> = col_sq.iter().zip(&b.in_s).map(|(q, i)| q * i * i).collect();
    let fan_out = vec![(pgo_b * k_b) as f64; c_n];
    let qw = f64::from((1u32 << (opts.weight_bits.clamp(2, 16) - 1)) - 1);
    let qa = if ps.unsigned {
        f64::from((1u32 << opts.act_bits.clamp(2, 16)) - 1)
    } else {
        f64::from((1u32 << (opts.act_bits.clamp(2, 16) - 1)) - 1)
    };
    let (s, centre) = noise_scales_from(
        &NoiseTerms {
            r1: &r1,
            r2: &r2,
            act_range: &range,
            in_energy: &ea,
            act_energy: &energy,
            gain: &gain,
            fan_out: &fan_out,
            qw,
            qa,
        },
        *start,
    );
    if centre.is_some() {
        *start = centre;
    }
    s
}

/// The per-channel quantities of the noise model of one pair `A → f → B` (module docs),
/// channel `i` being a channel of the activation `v = f(A(x))` between the two layers.
#[derive(Debug, Clone, Copy)]
pub struct NoiseTerms<'a> {
    /// `max |W_A[i, …]|`.
    pub r1: &'a [f64],
    /// `max |W_B[:, i, …]|`.
    pub r2: &'a [f64],
    /// Range of `v_i` (what the activation scale must cover).
    pub act_range: &'a [f64],
    /// `Σ_{j,k} E[x_j²]` over A's inputs to channel `i`.
    pub in_energy: &'a [f64],
    /// `E[v_i²]`.
    pub act_energy: &'a [f64],
    /// `Σ_{o,k} W_B[o, i, k]²`.
    pub gain: &'a [f64],
    /// Outputs of B that read `v_i`, times B's kernel size.
    pub fan_out: &'a [f64],
    /// Largest weight code (127 at 8 bits).
    pub qw: f64,
    /// Largest activation code (255 unsigned, 127 signed at 8 bits).
    pub qa: f64,
}

impl NoiseTerms<'_> {
    /// Modelled noise power at B's output after scaling channel `i` by `s_i` (`W_A[i] /= s_i`,
    /// `W_B[:, i] *= s_i`), each quantizer adding uniform noise of variance `Δ²/12`:
    /// `Σ_i s_i²·gain_i·(Δ_A²·in_energy_i + Δ_v²) + Δ_B²·Σ_i fan_out_i·act_energy_i/s_i²`
    /// (times 1/12) with `Δ_A = max_i(r1_i/s_i)/qw`, `Δ_v = max_i(act_range_i/s_i)/qa`,
    /// `Δ_B = max_i(r2_i·s_i)/qw`.
    #[must_use]
    pub fn noise(&self, s: &[f64]) -> f64 {
        // One pass: the three ranges and the three sums they multiply (selects, not
        // `f64::max`, so that it vectorizes).
        // Channels all the vectors have (a shorter one would otherwise panic).
        let n = [
            s.len(),
            self.r1.len(),
            self.act_range.len(),
            self.r2.len(),
            self.gain.len(),
            self.in_energy.len(),
            self.fan_out.len(),
            self.act_energy.len(),
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        let s = &s[..n];
        let mut acc = NoiseSum::default();
        for (i, &si) in s.iter().enumerate() {
            acc.add(self, i, si);
        }
        acc.total(self)
    }
}

/// The running maxima and sums of [`NoiseTerms::noise`] (one implementation for the noise
/// itself and for the grid search, which fuses it into the loop that picks the scales).
#[derive(Default)]
struct NoiseSum {
    m1: f64,
    ma: f64,
    m2: f64,
    sw: f64,
    sa: f64,
    sb: f64,
}

impl NoiseSum {
    /// Adds channel `i` at scale `si` (the caller guarantees `i` is in range of every vector).
    #[inline]
    fn add(&mut self, t: &NoiseTerms, i: usize, si: f64) {
        let inv = 1.0 / si;
        let (x1, xa, x2) = (t.r1[i] * inv, t.act_range[i] * inv, t.r2[i] * si);
        self.m1 = if x1 > self.m1 { x1 } else { self.m1 };
        self.ma = if xa > self.ma { xa } else { self.ma };
        self.m2 = if x2 > self.m2 { x2 } else { self.m2 };
        let gs = si * si * t.gain[i];
        self.sw += gs * t.in_energy[i];
        self.sa += gs;
        self.sb += t.fan_out[i] * t.act_energy[i] * inv * inv;
    }

    fn total(&self, t: &NoiseTerms) -> f64 {
        let (m1, ma, m2) = (self.m1 / t.qw, self.ma / t.qa, self.m2 / t.qw);
        (m1 * m1 * self.sw + ma * ma * self.sa + m2 * m2 * self.sb) / 12.0
    }
}

/// Channel scales minimising [`NoiseTerms::noise`], normalised to geometric mean 1.
///
/// The noise is invariant to a common factor on all `s_i`, so `Δ_B`'s range `R2` is held at
/// its DFQ value and the two other ranges `R1 = max r1/s`, `Rv = max range/s` are searched
/// on log grids refined around the best point (`e^{±3}` around DFQ in steps of 1.5, down to
/// steps of 0.17). For fixed ranges the noise separates per channel, with its minimum at
/// `s_i⁴ = Δ_B²·fan_out_i·act_energy_i / (gain_i·(Δ_A²·in_i + Δ_v²))` clamped to the box
/// the ranges allow (`r1_i/R1 ≤ s_i`, `range_i/Rv ≤ s_i`, `s_i ≤ R2/r2_i`). The best of
/// these, DFQ's scales and no scaling is returned, so the result never models more noise
/// than DFQ.
#[must_use]
pub fn noise_scales(t: &NoiseTerms) -> Vec<f64> {
    noise_scales_from(t, None).0
}

/// [`noise_scales`], searching only `±0.5` around `start` (the grid centre of an earlier
/// pass, `(ln f1, ln fv)`) when given; also returns the centre found.
fn noise_scales_from(t: &NoiseTerms, start: Option<(f64, f64)>) -> (Vec<f64>, Option<(f64, f64)>) {
    let n = t.r1.len();
    let ok = [
        t.r2,
        t.act_range,
        t.in_energy,
        t.act_energy,
        t.gain,
        t.fan_out,
    ]
    .iter()
    .all(|v| v.len() == n);
    if n == 0 || !ok {
        return (vec![1.0; n], None);
    }
    let dfq: Vec<f64> =
        t.r1.iter()
            .zip(t.r2)
            .map(|(&x, &y)| {
                if x > 0.0 && y > 0.0 {
                    (x / y).sqrt().clamp(1e-8, 1e8)
                } else {
                    1.0
                }
            })
            .collect();
    let ones = vec![1.0; n];
    let (mut best, mut best_v) = (ones.clone(), t.noise(&ones));
    let v = t.noise(&dfq);
    if v < best_v || !best_v.is_finite() {
        (best, best_v) = (dfq.clone(), v);
    }
    let mut found = None;
    let max_of = |f: &dyn Fn(usize) -> f64| (0..n).map(f).fold(0f64, f64::max);
    let r1d = max_of(&|i| t.r1[i] / dfq[i]);
    let rad = max_of(&|i| t.act_range[i] / dfq[i]);
    let r2 = max_of(&|i| t.r2[i] * dfq[i]);
    if r1d > 0.0 && r2 > 0.0 && rad > 0.0 {
        let hi: Vec<f64> =
            t.r2.iter()
                .map(|&r| if r > 0.0 { r2 / r } else { f64::INFINITY })
                .collect();
        let d: Vec<f64> = (0..n)
            .map(|i| (r2 / t.qw).powi(2) * t.fan_out[i] * t.act_energy[i])
            .collect();
        let gain_in: Vec<f64> = t.gain.iter().zip(t.in_energy).map(|(g, e)| g * e).collect();
        // The best scales on a `steps × steps` grid of `(ln f1, ln fv)` centred at `c`.
        let search = |c: (f64, f64), half: f64, steps: usize| {
            let at = |k: usize| -half + 2.0 * half * k as f64 / (steps - 1) as f64;
            // Sequential: rayon over the grid rows measured slower even at 2048 channels.
            let row = |k1: usize| {
                let l1 = c.0 + at(k1);
                let big_r1 = r1d * l1.exp();
                let mut local: Option<(f64, Vec<f64>, (f64, f64))> = None;
                let mut s = vec![1.0; n];
                'grid: for ka in 0..steps {
                    let la = c.1 + at(ka);
                    let big_ra = rad * la.exp();
                    let (inv_r1, inv_ra) = (1.0 / big_r1, 1.0 / big_ra);
                    let (cw, ca) = ((big_r1 / t.qw).powi(2), (big_ra / t.qa).powi(2));
                    // Feasibility first, then a branch-free pass (both vectorize).
                    let (r1, ar, hi) = (&t.r1[..n], &t.act_range[..n], &hi[..n]);
                    let lo_at = |i: usize| {
                        let (a, b) = (r1[i] * inv_r1, ar[i] * inv_ra);
                        if a > b {
                            a
                        } else {
                            b
                        }
                    };
                    if (0..n).any(|i| lo_at(i) > hi[i] * (1.0 + 1e-9)) {
                        continue 'grid;
                    }
                    let (gi, g, dd, df) = (&gain_in[..n], &t.gain[..n], &d[..n], &dfq[..n]);
                    let mut acc = NoiseSum::default();
                    for (i, si) in s[..n].iter_mut().enumerate() {
                        let lo = lo_at(i);
                        let c = cw * gi[i] + ca * g[i];
                        let opt = (dd[i] / c).sqrt().sqrt();
                        let opt = if c > 0.0 && dd[i] > 0.0 { opt } else { df[i] };
                        let v = if opt > hi[i] { hi[i] } else { opt };
                        let v = if v < lo { lo } else { v };
                        *si = if v > 0.0 && v < f64::INFINITY { v } else { 1.0 };
                        acc.add(t, i, *si);
                    }
                    let v = acc.total(t);
                    if v.is_finite() && local.as_ref().is_none_or(|(b, _, _)| v < *b) {
                        local = Some((v, s.clone(), (l1, la)));
                    }
                }
                local
            };
            let pick = |x: (f64, Vec<f64>, (f64, f64)), y: (f64, Vec<f64>, (f64, f64))| {
                if y.0 < x.0 {
                    y
                } else {
                    x
                }
            };
            (0..steps).filter_map(row).reduce(pick)
        };
        // Coarse to fine: steps of 1.5, 0.75, 0.5 and 0.17 in ln R (`e^{±3}` in all); later
        // passes refine around the previous centre only.
        let mut centre = start.unwrap_or((0.0, 0.0));
        let levels: &[(f64, usize)] = if start.is_some() {
            &[(0.5, 3), (0.17, 3)]
        } else {
            &[(3.0, 5), (1.5, 5), (0.5, 5), (0.17, 3)]
        };
        for &(half, steps) in levels {
            if let Some((v, s, c)) = search(centre, half, steps) {
                centre = c;
                found = Some(c);
                if v < best_v {
                    (best, best_v) = (s, v);
                }
            }
        }
    }
    let mean_ln = best.iter().map(|s| s.ln()).sum::<f64>() / n as f64;
    let c = (-mean_ln).exp();
    (
        best.iter().map(|s| (s * c).clamp(1e-8, 1e8)).collect(),
        found,
    )
}

#[cfg(test)]
mod tests {
    use super::{noise_scales, NoiseTerms};

    fn terms<'a>(
        r1: &'a [f64],
        r2: &'a [f64],
        act_range: &'a [f64],
        ones: &'a [f64],
    ) -> NoiseTerms<'a> {
        NoiseTerms {
            r1,
            r2,
            act_range,
            in_energy: ones,
            act_energy: act_range,
            gain: ones,
            fan_out: ones,
            qw: 127.0,
            qa: 255.0,
        }
    }

    #[test]
    fn noise_scales_never_model_more_noise_than_dfq_or_none() {
        // Channel ranges spread over four decades, as after folding BN into a depthwise conv.
        let r1 = [15.0, 0.007, 2.3, 0.4, 8.8];
        let r2 = [0.5, 1.0, 0.75, 0.9, 1.03];
        let act = [6.0, 0.02, 3.0, 1.0, 6.0];
        let ones = [1.0; 5];
        let t = terms(&r1, &r2, &act, &ones);
        let s = noise_scales(&t);
        let dfq: Vec<f64> = r1.iter().zip(&r2).map(|(a, b)| (a / b).sqrt()).collect();
        assert!(t.noise(&s) <= t.noise(&dfq) * (1.0 + 1e-12));
        assert!(t.noise(&s) <= t.noise(&ones) * (1.0 + 1e-12));
        // Normalised to geometric mean 1.
        let mean_ln: f64 = s.iter().map(|v| v.ln()).sum::<f64>() / 5.0;
        assert!(mean_ln.abs() < 1e-9, "{mean_ln}");
    }

    #[test]
    fn mismatched_lengths_neither_panic_nor_scale() {
        let (r1, r2, act, ones) = ([1.0, 2.0, 3.0], [1.0, 1.0], [1.0, 1.0, 1.0], [1.0; 3]);
        let t = terms(&r1, &r2, &act, &ones);
        assert!(t.noise(&[1.0, 1.0, 1.0]).is_finite());
        assert_eq!(noise_scales(&t), vec![1.0; 3]);
    }

    #[test]
    fn activation_noise_pulls_scales_away_from_dfq() {
        // Weight ranges call for very different scales, but the activation between has the
        // same range in every channel: shrinking a channel (s > 1) also shrinks its
        // activation and wastes the activation grid, so the noise optimum scales less than
        // DFQ does.
        let r1 = [100.0, 1.0];
        let r2 = [1.0, 1.0];
        let act = [1.0, 1.0];
        let ones = [1.0; 2];
        let t = terms(&r1, &r2, &act, &ones);
        let s = noise_scales(&t);
        let spread = (s[0] / s[1]).ln();
        let dfq_spread = (10.0f64 / 1.0).ln();
        assert!(spread > 0.0 && spread < dfq_spread, "{s:?}");
    }
}

#[cfg(test)]
mod candidate_tests {
    use super::Layer;
    use bytes::Bytes;

    /// Seeded bell-shaped values (mean of four uniforms), as trained weights are.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.max(1);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n).map(|_| next() + next() + next() + next()).collect()
    }

    /// Row and column maxima by brute force, in the same f32 arithmetic as the passes.
    fn brute(w: &[f32], shape: &[usize], group: usize, l: &Layer) -> (Vec<f64>, Vec<f64>) {
        let (o_n, il) = (shape[0], shape[1]);
        let k: usize = shape[2..].iter().product();
        let pgo = o_n / group;
        let mag =
            |o: usize, j: usize| (0..k).fold(0f32, |m, kk| m.max(w[(o * il + j) * k + kk].abs()));
        let rows = (0..o_n)
            .map(|o| {
                let grp = o / pgo;
                let m = (0..il).fold(0f32, |m, j| m.max(mag(o, j) * l.in_s[grp * il + j] as f32));
                f64::from(m)
            })
            .collect();
        let mut cols = vec![0f32; il * group];
        for o in 0..o_n {
            let f = (1.0 / l.out_s[o]) as f32;
            for j in 0..il {
                let c = (o / pgo) * il + j;
                cols[c] = cols[c].max(mag(o, j) * f);
            }
        }
        (rows, cols.into_iter().map(f64::from).collect())
    }

    #[test]
    fn candidate_lists_give_the_exact_maxima() {
        // 1×1 (read in place), 3×3 and grouped layers; scale moves from 0.1 % to 3×, the big
        // ones making most lists fail their test (rows and columns then walked whole).
        for (shape, group) in [
            (vec![96usize, 80, 1, 1], 1usize),
            (vec![48, 40, 3, 3], 1),
            (vec![64, 32, 1, 1], 2),
        ] {
            let n: usize = shape.iter().product();
            let w = weights(n, 7 + n as u64);
            let raw = Bytes::from(w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            let o_n = shape[0];
            let mut l = Layer::new(raw, shape.clone(), vec![0.0; o_n], group, false);
            let mut seed = 99u64;
            for (step, spread) in [0.5, 0.001, 0.01, 1.1, 0.003, 0.2, 0.0, 0.05]
                .into_iter()
                .enumerate()
            {
                for (i, s) in l.in_s.iter_mut().enumerate() {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let u = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                    *s *= (spread * u * (1 + i % 3) as f64).exp();
                }
                for (o, s) in l.out_s.iter_mut().enumerate() {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let u = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                    *s *= (spread * u * (1 + o % 2) as f64).exp();
                }
                l.row_max = None;
                l.col_max = None;
                l.refresh_row_max();
                l.refresh_columns(false);
                let (rows, cols) = brute(&w, &shape, group, &l);
                assert_eq!(
                    l.row_max.as_ref(),
                    Some(&rows),
                    "{shape:?} rows, step {step}"
                );
                assert_eq!(
                    l.col_max.as_ref(),
                    Some(&cols),
                    "{shape:?} columns, step {step}"
                );
            }
            assert!(
                l.row_candidates.is_some() && l.col_candidates.is_some(),
                "{shape:?}: the lists must be in use for this test to mean anything"
            );
        }
    }
}
