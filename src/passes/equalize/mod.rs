//! Cross-layer equalization (CLE, DFQ; `docs/algorithm.md` §5.1).
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

//!
//! Submodules: `pairs` (which chains, and the noise objective's statistics), `layer` (a
//! layer's weight and accumulated scales), `walks` (row and column ranges per pass, DFQ's
//! rule), `noise` (the noise objective), `rewrite` (high-bias absorption, write-back).

mod layer;
mod noise;
mod pairs;
mod rewrite;
mod walks;

pub use noise::{noise_scales, NoiseTerms};

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use rayon::prelude::*;
use serde::Serialize;

use super::fold_bn::ChannelStats;
use super::Skip;
use crate::error::Result;
use crate::graph::{Graph, Model, Node};
use crate::onnx::{tensor, DataType};
use layer::Layer;
use noise::noise_pair_scales;
use walks::pair_scales;

/// What to do with ReLU6 (Clip(0, c)) between two equalized layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
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

/// Convergence threshold on `max |ln s|` of a pass (a 0.1 % scale change): 1 % measured worse
/// on the BN-folded MobileNetV2 exports (`docs/experiments.md`, "CLE convergence tolerance").
const TOLERANCE: f64 = 1e-3;
/// The same for noise-objective pairs (1 %): their grid's finest step is 17 %, and 1 % measured
/// as well as 0.1 % in fewer passes (`docs/experiments.md`, "CLE convergence tolerance").
const NOISE_TOLERANCE: f64 = 1e-2;
/// Pass limit.
const MAX_PASSES: usize = 100;
/// Layers with at least this many `[O, I_local]` entries split their per-pass walks over the
/// rayon pool.
pub(super) const PARALLEL_ELEMENTS: usize = 1 << 16;

pub(super) struct Pair {
    pub(super) a: usize,
    pub(super) act: Option<usize>,
    pub(super) b: usize,
    pub(super) clip_hi: Option<f32>,
    /// Statistics for [`Objective::Noise`] in the original scaling, when BN statistics reach.
    pub(super) noise: Option<PairStats>,
}

/// What the noise objective knows about a pair before any scaling.
pub(super) struct PairStats {
    /// Range of each channel of the activation between A and B (BN rule, after `f`).
    pub(super) range: Vec<f64>,
    /// `E[v_i²]` of that activation.
    pub(super) energy: Vec<f64>,
    /// `E[x_j²]` of each channel of A's input (1 for a graph input: standardised images).
    pub(super) in_energy: Vec<f64>,
    /// The activation is non-negative (Relu / ReLU6): unsigned codes.
    pub(super) unsigned: bool,
}

/// How CLE chooses the channel scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// DFQ: equal weight ranges on both sides, s_i = sqrt(r1_i / r2_i).
    Weights,
    /// Minimise the modelled int8 noise of both layers' weights and of the activation between
    /// them, from BN statistics; pairs without statistics use `weights`.
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

/// Equalizes every eligible chain in place and updates `stats` (A's output statistics are
/// divided by the scales).
///
/// # Errors
/// Malformed constants.
pub fn equalize(
    model: &mut Model,
    stats: &mut BTreeMap<String, ChannelStats>,
    opts: &Options,
) -> Result<EqualizeReport> {
    let mut report = EqualizeReport::default();
    let mut pairs = pairs::find(model, stats, opts, &mut report)?;
    if pairs.is_empty() {
        return Ok(report);
    }
    let mut layers = load_layers(&model.graph, &pairs)?;
    // Consistency: A's output channels must be B's input channels.
    pairs.retain(|p| {
        let (la, lb) = (&layers[&p.a], &layers[&p.b]);
        let out_a = la.shape.first().copied().unwrap_or(0);
        let in_b = lb.shape.get(1).copied().unwrap_or(0) * lb.group;
        out_a == in_b && la.shape.len() >= 3 && lb.shape.len() >= 3 && out_a % lb.group == 0
    });
    let releasable = releasable(&model.graph, &layers);
    let total = run_passes(&pairs, &mut layers, opts, &mut report);
    // Biases now; weights are rescaled while they are encoded.
    layers.values_mut().for_each(Layer::scale_bias);
    let absorbed = if opts.absorb_bias {
        rewrite::absorb_high_bias(model, stats, &pairs, &total, &mut layers)?
    } else {
        HashMap::new()
    };
    rewrite::write_back(
        model,
        stats,
        &pairs,
        &total,
        &absorbed,
        layers,
        &releasable,
        opts.relu6,
        &mut report,
    )?;
    Ok(report)
}

/// Loads every layer of the pairs once (in parallel: decoding and `max_k |W|` touch every
/// weight).
fn load_layers(g: &Graph, pairs: &[Pair]) -> Result<HashMap<usize, Layer>> {
    let producers = g.producers();
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
            let group = n.group()?;
            // The weight may come from a Constant node (not checked at load against `group`):
            // the layer's buffers are sized by `channels × group` (a fuzzed empty weight with
            // group 2^35 asked for 137 GB).
            let i_local = shape.get(1).copied().unwrap_or(0);
            if shape.len() < 3 || o == 0 || i_local == 0 || o % group != 0 || b.len() != o {
                return Err(n.error(format!(
                    "weight `{w_name}` {shape:?} with group {group} and a bias of {} values is not a convolution weight cross-layer equalization can rescale",
                    b.len()
                )));
            }
            Ok((idx, Layer::new(raw, shape, b, group, energy)))
        })
        .collect::<Result<_>>()?;
    Ok(loaded.into_iter().collect())
}

/// Weights only these layers read: their buffers are released from the graph before the
/// write-back, so that it can rescale them in place.
fn releasable(g: &Graph, layers: &HashMap<usize, Layer>) -> Vec<String> {
    let consumers = g.consumers();
    let outputs = g.output_names();
    let subgraphs = g.nodes.iter().any(|n| {
        n.attributes
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    });
    layers
        .keys()
        .filter(|_| !subgraphs)
        .filter_map(|&idx| {
            let w = g.nodes[idx].input(1)?;
            let only_here = consumers.get(w).map(Vec::as_slice) == Some(&[idx][..]);
            (only_here && !outputs.contains(w) && g.initializer(w).is_some()).then(|| w.to_string())
        })
        .collect()
}

/// Runs passes over the pairs in graph order until every scale settles (or [`MAX_PASSES`]);
/// returns the accumulated scale of each A's output channels.
fn run_passes(
    pairs: &[Pair],
    layers: &mut HashMap<usize, Layer>,
    opts: &Options,
    report: &mut EqualizeReport,
) -> HashMap<usize, Vec<f64>> {
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
    // s = 1. (Noise-objective pairs always rerun: skipping them stopped their grid search early,
    // which measured worse: `docs/experiments.md`, "CLE convergence tolerance".)
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
    total
}

fn skip(n: &Node, reason: &str) -> Skip {
    Skip {
        node: n.display_name(),
        op_type: n.op_type.clone(),
        reason: reason.to_string(),
    }
}
