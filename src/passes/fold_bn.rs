//! Fold `BatchNormalization` into the linear layer that feeds it (analysis).
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

use std::collections::{BTreeMap, HashMap, HashSet};

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use super::Skip;
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::{Graph, Model, Node};
use crate::onnx::{attrs, tensor};

/// The layer kinds a BN can fold into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FoldKind {
    /// `Conv` (any group).
    Conv,
    /// `ConvTranspose` (any group).
    ConvTranspose,
    /// `Gemm`.
    Gemm,
    /// `MatMul` with a constant right operand, optionally followed by `Add(bias)`.
    MatMul,
}

/// What the analysis decided for one BatchNormalization node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum BnVerdict {
    /// Foldable into `layer` (and `bias_add` for MatMul+Add).
    Fold {
        /// Index of the BN node.
        bn: usize,
        /// Index of the layer it folds into.
        layer: usize,
        /// Index of the `Add` between a MatMul and the BN, if any.
        bias_add: Option<usize>,
        /// The layer kind.
        kind: FoldKind,
    },
    /// Kept as is.
    Keep {
        /// Index of the BN node.
        bn: usize,
        /// Why it cannot be folded into the layer before it.
        reason: String,
    },
}

macro_rules! keep_unless {
    ($bn:expr, $cond:expr, $($why:tt)+) => {
        if !$cond {
            return Ok(BnVerdict::Keep { bn: $bn, reason: format!($($why)+) });
        }
    };
}

/// Decides, for every BatchNormalization in the graph, whether it can be folded backwards.
///
/// # Errors
/// Malformed attributes or constants (wrong attribute types, undecodable tensors).
pub fn analyze(graph: &Graph) -> Result<Vec<BnVerdict>> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs = graph.output_names();
    let mut out = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.is("BatchNormalization") {
            out.push(analyze_one(graph, i, &producers, &consumers, &outputs)?);
        }
    }
    Ok(out)
}

fn single_use(
    value: &str,
    consumers: &HashMap<&str, Vec<usize>>,
    outputs: &std::collections::HashSet<&str>,
) -> bool {
    consumers.get(value).map_or(0, Vec::len) == 1 && !outputs.contains(value)
}

fn analyze_one(
    graph: &Graph,
    bn: usize,
    producers: &HashMap<&str, usize>,
    consumers: &HashMap<&str, Vec<usize>>,
    outputs: &std::collections::HashSet<&str>,
) -> Result<BnVerdict> {
    let node: &Node = &graph.nodes[bn];
    keep_unless!(
        bn,
        node.attr_int("training_mode")?.unwrap_or(0) == 0,
        "training_mode=1"
    );
    keep_unless!(
        bn,
        node.attr_int("spatial")?.unwrap_or(1) == 1,
        "spatial=0 (per-activation BN, opset < 9) is not supported"
    );
    let extra_used = node.outputs.iter().skip(1).any(|o| {
        !o.is_empty() && (consumers.contains_key(o.as_str()) || outputs.contains(o.as_str()))
    });
    keep_unless!(bn, !extra_used, "its running-statistics outputs are used");
    keep_unless!(
        bn,
        node.inputs.len() == 5,
        "has {} inputs, expected 5",
        node.inputs.len()
    );
    for (k, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
        let name = node.input(k).unwrap_or("");
        keep_unless!(
            bn,
            graph.constant_with(name, producers)?.is_some(),
            "{what} `{name}` is not a constant"
        );
    }
    let x = node.input(0).unwrap_or("");
    let Some(&p) = producers.get(x) else {
        return Ok(BnVerdict::Keep {
            bn,
            reason: format!("its input `{x}` is a graph input, not the output of a layer"),
        });
    };
    let mut layer = p;
    let mut bias_add = None;
    let prod = &graph.nodes[p];
    if prod.is("Add") {
        // MatMul → Add(bias) → BN
        let mm = prod
            .inputs
            .iter()
            .filter_map(|s| producers.get(s.as_str()).copied())
            .find(|&j| graph.nodes[j].is("MatMul"));
        if let Some(j) = mm {
            let other = prod
                .inputs
                .iter()
                .find(|s| producers.get(s.as_str()) != Some(&j))
                .map(String::as_str)
                .unwrap_or("");
            keep_unless!(
                bn,
                graph.constant_with(other, producers)?.is_some(),
                "its input comes from Add `{}` whose bias is not a constant",
                prod.display_name()
            );
            keep_unless!(
                bn,
                single_use(
                    graph.nodes[j]
                        .outputs
                        .first()
                        .map(String::as_str)
                        .unwrap_or(""),
                    consumers,
                    outputs
                ),
                "MatMul `{}` output has other consumers",
                graph.nodes[j].display_name()
            );
            bias_add = Some(p);
            layer = j;
        }
    }
    let lnode = &graph.nodes[layer];
    let kind = if lnode.is("Conv") {
        FoldKind::Conv
    } else if lnode.is("ConvTranspose") {
        FoldKind::ConvTranspose
    } else if lnode.is("Gemm") {
        FoldKind::Gemm
    } else if lnode.is("MatMul") {
        FoldKind::MatMul
    } else {
        let after_activation = matches!(
            lnode.op_type.as_str(),
            "Relu"
                | "Clip"
                | "LeakyRelu"
                | "PRelu"
                | "Sigmoid"
                | "HardSigmoid"
                | "HardSwish"
                | "Tanh"
                | "Elu"
                | "Selu"
        );
        let why = if after_activation {
            format!(
                "it follows {} `{}`: a BN after an activation cannot be folded into the layer before it",
                lnode.op_type,
                lnode.display_name()
            )
        } else {
            format!(
                "its input comes from {} `{}`, not from Conv/ConvTranspose/Gemm/MatMul",
                lnode.op_type,
                lnode.display_name()
            )
        };
        return Ok(BnVerdict::Keep { bn, reason: why });
    };
    let w = lnode.input(1).unwrap_or("");
    keep_unless!(
        bn,
        graph.constant_with(w, producers)?.is_some(),
        "weight `{w}` of {} `{}` is not a constant",
        lnode.op_type,
        lnode.display_name()
    );
    if let Some(b) = lnode.input(2) {
        keep_unless!(
            bn,
            graph.constant_with(b, producers)?.is_some(),
            "bias `{b}` of {} `{}` is not a constant",
            lnode.op_type,
            lnode.display_name()
        );
    }
    let feeds = graph.nodes[p]
        .outputs
        .first()
        .map(String::as_str)
        .unwrap_or("");
    keep_unless!(
        bn,
        single_use(feeds, consumers, outputs),
        "`{feeds}` (output of {} `{}`) has other consumers",
        graph.nodes[p].op_type,
        graph.nodes[p].display_name()
    );
    Ok(BnVerdict::Fold {
        bn,
        layer,
        bias_add,
        kind,
    })
}

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

/// Scales output channel `o` of a Conv weight `[O, I/g, k…]` by `t[o]` (axis 0, any group).
pub fn scale_conv_weight(w: &ArrayD<f32>, t: &[f64]) -> ArrayD<f32> {
    use rayon::prelude::*;
    let o = w.shape().first().copied().unwrap_or(0).max(1);
    let per = (w.len() / o).max(1);
    let mut v: Vec<f32> = w.iter().copied().collect();
    v.par_chunks_mut(per).enumerate().for_each(|(c, chunk)| {
        let s = t[c.min(t.len() - 1)];
        chunk
            .iter_mut()
            .for_each(|x| *x = (f64::from(*x) * s) as f32);
    });
    ArrayD::from_shape_vec(IxDyn(w.shape()), v).unwrap_or_else(|_| w.clone())
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
    let v: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let o = conv_transpose_channel(&shape, group, i);
            (f64::from(x) * t[o.min(t.len() - 1)]) as f32
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap_or_else(|_| w.clone())
}

/// Scales output feature `n` of a 2-D Gemm/MatMul weight: row `n` when `trans_b`
/// (`[N, K]`), column `n` otherwise (`[K, N]`).
pub fn scale_matrix_outputs(b: &ArrayD<f32>, t: &[f64], trans_b: bool) -> ArrayD<f32> {
    let cols = b.shape().get(1).copied().unwrap_or(1).max(1);
    let v: Vec<f32> = b
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let n = if trans_b { i / cols } else { i % cols };
            (f64::from(x) * t[n.min(t.len() - 1)]) as f32
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(b.shape()), v).unwrap_or_else(|_| b.clone())
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
    let mut out = Vec::with_capacity(w.len());
    let mut bias = Vec::with_capacity(o_n);
    let flat: Vec<f32> = w.iter().copied().collect();
    for o in 0..o_n {
        let mut acc = b.map_or(0.0, |b| f64::from(b[o]));
        for i in 0..i_n {
            for kk in 0..k {
                let x = f64::from(flat[(o * i_n + i) * k + kk]);
                acc += x * a[i];
                out.push((x * s[i]) as f32);
            }
        }
        bias.push(acc as f32);
    }
    let w2 = ArrayD::from_shape_vec(IxDyn(shape), out).unwrap_or_else(|_| w.clone());
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
    let (rows, cols) = (b.shape()[0], b.shape()[1]);
    let n_out = if trans_b { rows } else { cols };
    let flat: Vec<f32> = b.iter().copied().collect();
    let mut out = flat.clone();
    let mut extra = vec![0f64; n_out];
    for r in 0..rows {
        for col in 0..cols {
            let (n, f) = if trans_b { (r, col) } else { (col, r) };
            let x = f64::from(flat[r * cols + col]);
            out[r * cols + col] = (x * s[f]) as f32;
            extra[n] += x * a[f];
        }
    }
    let bias = (0..n_out)
        .map(|n| {
            let c0 = c.map_or(0.0, |c| f64::from(c[n]));
            (c0 + alpha * extra[n] / beta_g) as f32
        })
        .collect();
    let w2 = ArrayD::from_shape_vec(IxDyn(b.shape()), out).unwrap_or_else(|_| b.clone());
    (w2, bias)
}

/// Reads a BN node's parameters.
fn bn_params(graph: &Graph, bn: &Node, producers: &HashMap<&str, usize>) -> Result<BnParams> {
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

fn record_stats(stats: &mut BTreeMap<String, ChannelStats>, bn: &Node, p: &BnParams) {
    let source = bn.display_name();
    if let Some(out) = bn.outputs.first() {
        stats.insert(
            out.clone(),
            ChannelStats {
                mean: p.beta.clone(),
                std: p.gamma.iter().map(|g| g.abs()).collect(),
                source: source.clone(),
            },
        );
    }
    if let Some(input) = bn.input(0) {
        stats.insert(
            input.to_string(),
            ChannelStats {
                mean: p.mean.clone(),
                std: p.var.iter().map(|v| (v + p.epsilon).sqrt()).collect(),
                source,
            },
        );
    }
}

/// Writes `values` as a new FLOAT initializer (fresh name from `base`) and returns its name.
fn new_initializer(
    graph: &mut Graph,
    names: &mut NameGen,
    base: &str,
    values: ArrayD<f32>,
) -> String {
    let name = names.fresh(base, "_folded");
    graph.set_initializer(tensor::from_f32(&name, values));
    name
}

fn vec_array(v: Vec<f32>) -> ArrayD<f32> {
    let n = v.len();
    ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
}

fn check_len(node: &Node, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(node.error(format!(
            "{what} has {got} channels but the BatchNormalization has {want}"
        )))
    }
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
        let producers: HashMap<String, usize> = graph
            .producers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let prod_ref: HashMap<&str, usize> =
            producers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        match v {
            BnVerdict::Fold {
                bn,
                layer,
                bias_add,
                kind,
            } => {
                let bn_node = graph.nodes[bn].clone();
                let p = bn_params(graph, &bn_node, &prod_ref)?;
                record_stats(&mut report.stats, &bn_node, &p);
                fold_backward(
                    graph, &mut names, &bn_node, layer, bias_add, kind, &p, &prod_ref,
                )?;
                remove.insert(bn);
                report.folded.push(Folded {
                    bn: bn_node.display_name(),
                    layer: graph.nodes[layer].display_name(),
                    direction: "backward",
                });
            }
            BnVerdict::Keep { bn, reason } => {
                let bn_node = graph.nodes[bn].clone();
                let p = bn_params(graph, &bn_node, &prod_ref)?;
                record_stats(&mut report.stats, &bn_node, &p);
                match fold_forward(graph, &mut names, bn, &p, &prod_ref)? {
                    Ok(layer) => {
                        remove.insert(bn);
                        report.folded.push(Folded {
                            bn: bn_node.display_name(),
                            layer,
                            direction: "forward",
                        });
                    }
                    Err(why) => report.kept.push(Skip {
                        node: bn_node.display_name(),
                        op_type: bn_node.op_type.clone(),
                        reason: format!("{reason}; not folded forward either: {why}"),
                    }),
                }
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

#[allow(clippy::too_many_arguments)]
fn fold_backward(
    graph: &mut Graph,
    names: &mut NameGen,
    bn: &Node,
    layer: usize,
    bias_add: Option<usize>,
    kind: FoldKind,
    p: &BnParams,
    producers: &HashMap<&str, usize>,
) -> Result<()> {
    let t = p.scale();
    let lnode = graph.nodes[layer].clone();
    let w_name = lnode.input(1).unwrap_or("").to_string();
    let w = graph
        .constant_f32(&w_name, producers)?
        .ok_or_else(|| lnode.error(format!("weight `{w_name}` is not a constant")))?;
    let bn_out = bn.outputs.first().cloned().unwrap_or_default();
    match kind {
        FoldKind::Conv | FoldKind::ConvTranspose => {
            let group = lnode.attr_int("group")?.unwrap_or(1).max(1) as usize;
            let (w2, out_ch) = if kind == FoldKind::Conv {
                (
                    scale_conv_weight(&w, &t),
                    w.shape().first().copied().unwrap_or(0),
                )
            } else {
                if w.ndim() < 3 || w.shape()[0] % group != 0 {
                    return Err(lnode.error(format!(
                        "ConvTranspose weight shape {:?} does not fit group {group}",
                        w.shape()
                    )));
                }
                (
                    scale_conv_transpose_weight(&w, &t, group),
                    w.shape()[1] * group,
                )
            };
            check_len(&lnode, "the weight", out_ch, p.len())?;
            let bias = match lnode.input(2) {
                Some(b) => Some(
                    graph
                        .constant_f32(b, producers)?
                        .ok_or_else(|| lnode.error(format!("bias `{b}` is not a constant")))?,
                ),
                None => None,
            };
            if let Some(b) = &bias {
                check_len(&lnode, "the bias", b.len(), p.len())?;
            }
            let b_vals: Option<Vec<f32>> = bias.map(|b| b.iter().copied().collect());
            let b2 = fold_bias(b_vals.as_deref(), p);
            let w_new = new_initializer(graph, names, &w_name, w2);
            let b_base = lnode
                .input(2)
                .map_or_else(|| format!("{w_name}_bias"), str::to_string);
            let b_new = new_initializer(graph, names, &b_base, vec_array(b2));
            let node = &mut graph.nodes[layer];
            node.inputs.resize(3, String::new());
            node.inputs[1] = w_new;
            node.inputs[2] = b_new;
            node.outputs[0] = bn_out;
        }
        FoldKind::Gemm => {
            if w.ndim() != 2 {
                return Err(lnode.error(format!("Gemm weight has shape {:?}", w.shape())));
            }
            let trans_b = lnode.attr_int("transB")?.unwrap_or(0) != 0;
            let n = if trans_b { w.shape()[0] } else { w.shape()[1] };
            check_len(&lnode, "the weight", n, p.len())?;
            let beta_g = f64::from(lnode.attr_float("beta")?.unwrap_or(1.0));
            let c = match lnode.input(2) {
                Some(c) => Some(
                    graph
                        .constant_f32(c, producers)?
                        .ok_or_else(|| lnode.error(format!("C `{c}` is not a constant")))?,
                ),
                None => None,
            };
            let c_vals = match &c {
                Some(c) if beta_g != 0.0 => Some(broadcast_bias(&lnode, c, n)?),
                _ => None,
            };
            let beta_eff = if c_vals.is_some() { beta_g } else { 1.0 };
            let a = p.shift();
            let c2: Vec<f32> = (0..n)
                .map(|j| {
                    let c0 = c_vals.as_ref().map_or(0.0, |c| f64::from(c[j]));
                    (t[j] * c0 + a[j] / beta_eff) as f32
                })
                .collect();
            let w_new =
                new_initializer(graph, names, &w_name, scale_matrix_outputs(&w, &t, trans_b));
            let c_base = lnode
                .input(2)
                .map_or_else(|| format!("{w_name}_bias"), str::to_string);
            let c_new = new_initializer(graph, names, &c_base, vec_array(c2));
            let node = &mut graph.nodes[layer];
            node.inputs.resize(3, String::new());
            node.inputs[1] = w_new;
            node.inputs[2] = c_new;
            if beta_eff != beta_g {
                node.set_attr(attrs::make_float("beta", beta_eff as f32));
            }
            node.outputs[0] = bn_out;
        }
        FoldKind::MatMul => {
            if w.ndim() != 2 {
                return Err(lnode.error(format!("MatMul weight has shape {:?}", w.shape())));
            }
            let n = w.shape()[1];
            check_len(&lnode, "the weight", n, p.len())?;
            let a = p.shift();
            let w_new = new_initializer(graph, names, &w_name, scale_matrix_outputs(&w, &t, false));
            graph.nodes[layer].inputs[1] = w_new;
            match bias_add {
                Some(add) => {
                    let add_node = graph.nodes[add].clone();
                    let mm_out = lnode.outputs.first().cloned().unwrap_or_default();
                    let slot = add_node
                        .inputs
                        .iter()
                        .position(|s| *s != mm_out)
                        .ok_or_else(|| add_node.error("adds the MatMul output to itself"))?;
                    let c_name = add_node.inputs[slot].clone();
                    let c = graph
                        .constant_f32(&c_name, producers)?
                        .ok_or_else(|| add_node.error(format!("`{c_name}` is not a constant")))?;
                    let c = broadcast_bias(&add_node, &c, n)?;
                    let c2: Vec<f32> = (0..n)
                        .map(|j| (t[j] * f64::from(c[j]) + a[j]) as f32)
                        .collect();
                    let c_new = new_initializer(graph, names, &c_name, vec_array(c2));
                    let node = &mut graph.nodes[add];
                    node.inputs[slot] = c_new;
                    node.outputs[0] = bn_out;
                }
                None => {
                    let c2: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                    let c_new =
                        new_initializer(graph, names, &format!("{w_name}_bias"), vec_array(c2));
                    let mm_out = names.fresh(&bn_out, "_matmul");
                    graph.nodes[layer].outputs[0] = mm_out.clone();
                    let add = Node::new(
                        "Add",
                        names.fresh(&bn.display_name(), "_bias"),
                        vec![mm_out, c_new],
                        vec![bn_out],
                    );
                    // Appended (indices of pending removals stay valid); sorted at the end.
                    graph.nodes.push(add);
                }
            }
        }
    }
    Ok(())
}

/// A Gemm `C` / bias constant as `n` values (scalar and `[1]`, `[n]`, `[1, n]` shapes).
fn broadcast_bias(node: &Node, c: &ArrayD<f32>, n: usize) -> Result<Vec<f32>> {
    let squeezed: Vec<usize> = c.shape().iter().copied().filter(|&d| d != 1).collect();
    match (c.len(), squeezed.as_slice()) {
        (1, _) => Ok(vec![c.iter().copied().next().unwrap_or(0.0); n]),
        (len, [d]) if len == n && *d == n && c.shape().last() == Some(&n) => {
            Ok(c.iter().copied().collect())
        }
        _ => Err(node.error(format!(
            "bias of shape {:?} cannot be folded (expected a scalar or {n} values)",
            c.shape()
        ))),
    }
}

fn no_padding(node: &Node) -> Result<bool> {
    let pads_zero = node
        .attr_ints("pads")?
        .is_none_or(|p| p.iter().all(|&v| v == 0));
    let auto = attrs::string(&node.attributes, "auto_pad")
        .map_err(|e| node.error(e))?
        .unwrap_or_else(|| "NOTSET".into());
    Ok(pads_zero && (auto == "NOTSET" || auto == "VALID"))
}

/// Tries to fold BN `bn` into the layer after it. `Ok(Ok(layer name))` when folded,
/// `Ok(Err(reason))` when not.
fn fold_forward(
    graph: &mut Graph,
    names: &mut NameGen,
    bn: usize,
    p: &BnParams,
    producers: &HashMap<&str, usize>,
) -> Result<std::result::Result<String, String>> {
    let bn_node = graph.nodes[bn].clone();
    let s = p.scale();
    let a = p.shift();
    let x = bn_node.input(0).unwrap_or("").to_string();
    let out = bn_node.outputs.first().cloned().unwrap_or_default();
    let consumers: HashMap<String, Vec<usize>> = graph
        .consumers()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let outputs: HashSet<String> = graph.output_names().into_iter().map(String::from).collect();
    let only_consumer = |v: &str| -> Option<usize> {
        match consumers.get(v).map(Vec::as_slice) {
            Some([one]) if !outputs.contains(v) => Some(*one),
            _ => None,
        }
    };
    let Some(mut next) = only_consumer(&out) else {
        return Ok(Err(format!(
            "its output `{out}` has several consumers or is a graph output"
        )));
    };
    let first = next;
    // A forward fold scales each *input* channel of the next layer's weight by `s_i`. A
    // near-dead channel (running variance ≈ 0 after the ReLU) has a huge `s_i` and would
    // dominate the per-tensor weight scale of that layer, so such BNs stay float.
    let mut sorted: Vec<f64> = s.iter().map(|v| v.abs()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(1.0);
    let max = sorted.last().copied().unwrap_or(1.0);
    if median > 0.0 && max / median > MAX_FORWARD_SPREAD {
        let c = s.iter().position(|v| v.abs() == max).unwrap_or_default();
        return Ok(Err(format!(
            "folding would scale input channel {c} of the next layer by {max:.3e}, {:.0}x the median channel (running var {:.3e}), inflating its per-tensor weight range",
            max / median,
            p.var.get(c).copied().unwrap_or_default()
        )));
    }
    let mut through_pool = None;
    if graph.nodes[next].is("MaxPool") {
        if s.iter().any(|&v| v <= 0.0) {
            return Ok(Err(
                "it feeds a MaxPool and some BN scale is not positive".into()
            ));
        }
        if graph.nodes[next].outputs.len() > 1 {
            return Ok(Err("it feeds a MaxPool with an Indices output".into()));
        }
        let pool_out = graph.nodes[next].outputs[0].clone();
        through_pool = Some(next);
        match only_consumer(&pool_out) {
            Some(n) => next = n,
            None => return Ok(Err("the MaxPool after it has several consumers".into())),
        }
    }
    let next_node = graph.nodes[next].clone();
    if next_node.is("Conv") {
        if next_node.attr_int("group")?.unwrap_or(1) != 1 {
            return Ok(Err(format!(
                "the next Conv `{}` is grouped",
                next_node.display_name()
            )));
        }
        if !no_padding(&next_node)? {
            return Ok(Err(format!(
                "the next Conv `{}` pads its input (padding would inject un-normalised zeros)",
                next_node.display_name()
            )));
        }
        let w_name = next_node.input(1).unwrap_or("").to_string();
        let Some(w) = graph.constant_f32(&w_name, producers)? else {
            return Ok(Err(format!(
                "the next Conv's weight `{w_name}` is not a constant"
            )));
        };
        if w.ndim() < 3 || w.shape()[1] != p.len() {
            return Ok(Err(format!(
                "the next Conv's weight shape {:?} does not match {} channels",
                w.shape(),
                p.len()
            )));
        }
        let b = match next_node.input(2) {
            Some(b) => match graph.constant_f32(b, producers)? {
                Some(b) => Some(b.iter().copied().collect::<Vec<f32>>()),
                None => return Ok(Err(format!("the next Conv's bias `{b}` is not a constant"))),
            },
            None => None,
        };
        let (w2, b2) = forward_fold_conv(&w, b.as_deref(), &s, &a);
        let w_new = new_initializer(graph, names, &w_name, w2);
        let b_base = next_node
            .input(2)
            .map_or_else(|| format!("{w_name}_bias"), str::to_string);
        let b_new = new_initializer(graph, names, &b_base, vec_array(b2));
        let node = &mut graph.nodes[next];
        node.inputs.resize(3, String::new());
        node.inputs[1] = w_new;
        node.inputs[2] = b_new;
    } else if next_node.is("Flatten") && through_pool.is_none() {
        if next_node.attr_int("axis")?.unwrap_or(1) != 1 {
            return Ok(Err("it feeds a Flatten whose axis is not 1".into()));
        }
        let flat_out = next_node.outputs.first().cloned().unwrap_or_default();
        let Some(g) = only_consumer(&flat_out) else {
            return Ok(Err("the Flatten after it has several consumers".into()));
        };
        let gemm = graph.nodes[g].clone();
        if !gemm.is("Gemm") || gemm.attr_int("transA")?.unwrap_or(0) != 0 {
            return Ok(Err("the Flatten after it does not feed a Gemm".into()));
        }
        let w_name = gemm.input(1).unwrap_or("").to_string();
        let Some(w) = graph.constant_f32(&w_name, producers)? else {
            return Ok(Err(format!("the Gemm weight `{w_name}` is not a constant")));
        };
        let trans_b = gemm.attr_int("transB")?.unwrap_or(0) != 0;
        if w.ndim() != 2 {
            return Ok(Err(format!("the Gemm weight has shape {:?}", w.shape())));
        }
        let (f, n) = if trans_b {
            (w.shape()[1], w.shape()[0])
        } else {
            (w.shape()[0], w.shape()[1])
        };
        if f % p.len() != 0 {
            return Ok(Err(format!(
                "{f} Gemm features are not a multiple of {} channels",
                p.len()
            )));
        }
        let per = f / p.len();
        let sf: Vec<f64> = (0..f).map(|i| s[i / per]).collect();
        let af: Vec<f64> = (0..f).map(|i| a[i / per]).collect();
        let alpha = f64::from(gemm.attr_float("alpha")?.unwrap_or(1.0));
        let beta_g = f64::from(gemm.attr_float("beta")?.unwrap_or(1.0));
        let c = match gemm.input(2) {
            Some(c) => match graph.constant_f32(c, producers)? {
                Some(c) if beta_g != 0.0 => Some(broadcast_bias(&gemm, &c, n)?),
                Some(_) => None,
                None => return Ok(Err(format!("the Gemm bias `{c}` is not a constant"))),
            },
            None => None,
        };
        let beta_eff = if c.is_some() { beta_g } else { 1.0 };
        let (w2, c2) = forward_fold_gemm(&w, c.as_deref(), &sf, &af, trans_b, alpha, beta_eff);
        let w_new = new_initializer(graph, names, &w_name, w2);
        let c_base = gemm
            .input(2)
            .map_or_else(|| format!("{w_name}_bias"), str::to_string);
        let c_new = new_initializer(graph, names, &c_base, vec_array(c2));
        let node = &mut graph.nodes[g];
        node.inputs.resize(3, String::new());
        node.inputs[1] = w_new;
        node.inputs[2] = c_new;
        if beta_eff != beta_g {
            node.set_attr(attrs::make_float("beta", beta_eff as f32));
        }
        next = g;
    } else {
        return Ok(Err(format!(
            "the node after it is {} `{}`, not a Conv without padding",
            next_node.op_type,
            next_node.display_name()
        )));
    }
    // Bypass the BN: the node that read its output now reads its input.
    for input in graph.nodes[first].inputs.iter_mut() {
        if *input == out {
            *input = x.clone();
        }
    }
    Ok(Ok(graph.nodes[next].display_name()))
}
