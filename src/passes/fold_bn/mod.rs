//! Fold `BatchNormalization` into the linear layer before it (backward) or after it (forward).
//!
//! Before: `y = Conv(x, W, b?)`; `z = BatchNormalization(y, gamma, beta, mean, var)`
//! After:  `z = Conv(x, W', b')` with, per output channel `c`,
//! `s_c = gamma_c / sqrt(var_c + epsilon)`, `W'[c] = W[c] * s_c`,
//! `b'_c = (b_c - mean_c) * s_c + beta_c` (`b = 0` if absent).
//! The same holds for `ConvTranspose` (output channel axis 1 of W, per group), `Gemm`
//! (output axis of B, depending on `transB`) and `MatMul` (+ `Add` of a constant bias).
//!
//! A BN folds only when (otherwise it is kept and the reason reported):
//! 1. it is in inference mode (`training_mode` absent or 0) and only its first output is used;
//! 2. `gamma`, `beta`, `mean`, `var` are constants (initializers or `Constant` nodes);
//! 3. its input is produced by Conv / ConvTranspose / Gemm / MatMul (optionally through an `Add`
//!    of a constant bias) whose weight is constant;
//! 4. that producer's output feeds only this BN and is not a graph output.
//!
//! A BN after an activation (`Conv → Relu → BN`) is never folded backwards: the activation
//! does not commute with the affine map. It is folded **forward** instead when that is exact:
//!
//! - `BN → Conv` with `group = 1` and no padding (padding would inject un-normalised zeros):
//!   with `a_i = beta_i − mean_i·s_i`: `W'[o,i,…] = W[o,i,…]·s_i`,
//!   `b'_o = b_o + Σ_{i,k} W[o,i,k]·a_i`;
//! - `BN → MaxPool → Conv` as above when every `s_i > 0` (max commutes with a positive
//!   per-channel affine map);
//! - `BN → Flatten(axis 1) → Gemm`, each flattened feature taking its channel's `s_i`, `a_i`.
//!
//! Otherwise the BN is kept (a float op) and reported. Every BN folded or kept leaves its
//! per-channel statistics for the activation-range pass: the BN output is modelled as
//! `N(beta_c, |gamma_c|²)` and the BN input as `N(mean_c, var_c + epsilon)`.
//!
//! Arithmetic is f64; results are stored as f32.
//!
//! Submodules: [`plan`] decides every BN's fate without changing anything (what `isquant
//! inspect` reports), `apply` carries the decisions out, [`math`] holds the arithmetic.

mod apply;
pub mod math;
pub mod plan;

pub use math::{
    fold_bias, forward_fold_conv, forward_fold_gemm, scale_conv_transpose_weight,
    scale_conv_weight, scale_matrix_outputs,
};
pub use plan::{analyze, BnVerdict, FoldKind};

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use serde::Serialize;

use super::Skip;
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::{Graph, Model, Node};

/// BatchNormalization parameters of one node, widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub struct BnParams {
    /// `scale` (γ).
    pub gamma: Vec<f64>,
    /// `B` (β).
    pub beta: Vec<f64>,
    /// `input_mean` (μ).
    pub mean: Vec<f64>,
    /// `input_var` (v).
    pub var: Vec<f64>,
    /// `epsilon` attribute (default 1e-5).
    pub epsilon: f64,
}

impl BnParams {
    /// Reads a BN node's parameters (constants), checking their lengths and that
    /// `var + epsilon > 0` and `gamma` is finite in every channel.
    ///
    /// # Errors
    /// A parameter is not a constant, the lengths disagree, or a channel is degenerate.
    pub fn read<K: Borrow<str> + Hash + Eq>(
        graph: &Graph,
        bn: &Node,
        producers: &HashMap<K, usize>,
    ) -> Result<BnParams> {
        let get = |k: usize| -> Result<Vec<f64>> {
            let name = bn.input(k).unwrap_or("");
            let a = graph
                .constant_f32(name, producers)?
                .ok_or_else(|| bn.error(format!("`{name}` is not a constant")))?;
            Ok(a.iter().map(|&v| f64::from(v)).collect())
        };
        let p = BnParams {
            gamma: get(1)?,
            beta: get(2)?,
            mean: get(3)?,
            var: get(4)?,
            epsilon: f64::from(bn.attr_float("epsilon")?.unwrap_or(1e-5)),
        };
        let n = p.gamma.len();
        if p.beta.len() != n || p.mean.len() != n || p.var.len() != n {
            return Err(bn.error(format!(
                "scale, B, mean and var have {}, {}, {} and {} values",
                n,
                p.beta.len(),
                p.mean.len(),
                p.var.len()
            )));
        }
        if let Some(c) = (0..n).find(|&c| {
            (p.var[c] + p.epsilon).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                || !p.gamma[c].is_finite()
        }) {
            return Err(bn.error(format!(
                "channel {c}: var + epsilon = {} (must be > 0) or gamma not finite",
                p.var[c] + p.epsilon
            )));
        }
        Ok(p)
    }

    /// `s_c = gamma_c / sqrt(var_c + epsilon)`.
    pub fn scale(&self) -> Vec<f64> {
        self.gamma
            .iter()
            .zip(&self.var)
            .map(|(g, v)| g / (v + self.epsilon).sqrt())
            .collect()
    }

    /// `a_c = beta_c − mean_c · s_c`, so that `BN(x) = s ∘ x + a`.
    pub fn shift(&self) -> Vec<f64> {
        let s = self.scale();
        self.beta
            .iter()
            .zip(&self.mean)
            .zip(&s)
            .map(|((b, m), s)| b - m * s)
            .collect()
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.gamma.len()
    }

    /// True when there are no channels.
    pub fn is_empty(&self) -> bool {
        self.gamma.is_empty()
    }
}

/// Largest ratio of the largest to the median BN scale `|s_i|` a forward fold accepts.
pub const MAX_FORWARD_SPREAD: f64 = 8.0;

/// Per-channel Gaussian statistics of a value (mean, standard deviation), as recorded from
/// BatchNormalization nodes for the activation-range and bias-correction passes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelStats {
    /// Per-channel mean.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation (≥ 0).
    pub std: Vec<f64>,
    /// The BN node the statistics come from.
    pub source: String,
}

/// One BatchNormalization that was folded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Folded {
    /// The BN node.
    pub bn: String,
    /// The layer it was folded into.
    pub layer: String,
    /// `backward` (into the layer before) or `forward` (into the layer after).
    pub direction: &'static str,
}

/// What the fold-bn pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FoldReport {
    /// BNs folded.
    pub folded: Vec<Folded>,
    /// BNs kept, with reasons.
    pub kept: Vec<Skip>,
    /// Per-channel statistics by value name (see [`ChannelStats`]).
    #[serde(skip)]
    pub stats: BTreeMap<String, ChannelStats>,
}

/// Folds every BatchNormalization that can be folded (backward, else forward), records
/// statistics for all of them, and removes the folded nodes and what they leave unused.
///
/// # Errors
/// Malformed models: BN parameter lengths that disagree, weights whose shape disagrees with
/// the BN, non-positive variance.
pub fn fold_batch_norms(model: &mut Model) -> Result<FoldReport> {
    let verdicts = analyze(&model.graph)?;
    let mut report = FoldReport::default();
    let mut names = NameGen::new(model.graph.taken_names());
    let mut remove: HashSet<usize> = HashSet::new();
    for v in verdicts {
        let graph = &mut model.graph;
        let producers = graph.producer_index();
        match v {
            BnVerdict::Fold {
                bn,
                layer,
                bias_add,
                kind,
            } => {
                let bn_node = graph.nodes[bn].clone();
                let p = BnParams::read(graph, &bn_node, &producers)?;
                apply::record_stats(&mut report.stats, &bn_node, &p);
                apply::fold_backward(
                    graph, &mut names, &bn_node, layer, bias_add, kind, &p, &producers,
                )?;
                remove.insert(bn);
                report.folded.push(Folded {
                    bn: bn_node.display_name(),
                    layer: graph.nodes[layer].display_name(),
                    direction: "backward",
                });
            }
            BnVerdict::Forward {
                bn,
                layer,
                first,
                kind,
                ..
            } => {
                let bn_node = graph.nodes[bn].clone();
                let p = BnParams::read(graph, &bn_node, &producers)?;
                apply::record_stats(&mut report.stats, &bn_node, &p);
                apply::fold_forward(
                    graph, &mut names, &bn_node, layer, first, kind, &p, &producers,
                )?;
                remove.insert(bn);
                report.folded.push(Folded {
                    bn: bn_node.display_name(),
                    layer: graph.nodes[layer].display_name(),
                    direction: "forward",
                });
            }
            BnVerdict::Keep { bn, reason } => {
                let bn_node = graph.nodes[bn].clone();
                let p = BnParams::read(graph, &bn_node, &producers)?;
                apply::record_stats(&mut report.stats, &bn_node, &p);
                report.kept.push(Skip {
                    node: bn_node.display_name(),
                    op_type: bn_node.op_type.clone(),
                    reason,
                });
            }
        }
    }
    let mut i = 0;
    model.graph.nodes.retain(|_| {
        let keep = !remove.contains(&i);
        i += 1;
        keep
    });
    model.graph.sort_topologically()?;
    model.graph.remove_dead_nodes();
    model.graph.remove_unused_initializers();
    Ok(report)
}
