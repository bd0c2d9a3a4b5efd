//! The fold analysis: for every BatchNormalization, fold backward into the layer before it,
//! forward into the layer after it, or keep it (with the reason). Nothing is changed here;
//! `apply` carries the decisions out.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{BnParams, MAX_FORWARD_SPREAD};
use crate::error::Result;
use crate::graph::{Graph, Node};

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

/// What the analysis decided for one BatchNormalization node (nothing is changed yet).
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
    /// Not foldable backward, but forward into the layer after it: `BN → Conv` (no padding,
    /// group 1), `BN → MaxPool → Conv` (every BN scale positive), `BN → Flatten → Gemm`.
    Forward {
        /// Index of the BN node.
        bn: usize,
        /// Index of the Conv or Gemm whose weights absorb the BN.
        layer: usize,
        /// Index of the node that reads the BN output (the layer, the MaxPool or the
        /// Flatten): it reads the BN input instead.
        first: usize,
        /// `Conv` or `Gemm`.
        kind: FoldKind,
        /// Why it cannot be folded into the layer before it.
        backward: String,
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

/// Decides, for every BatchNormalization in the graph (in node order), whether it folds
/// backward, forward, or not at all. [`super::fold_batch_norms`] applies exactly these
/// decisions; `isquant inspect` reports them.
///
/// # Errors
/// Malformed attributes or constants (wrong attribute types, undecodable tensors).
pub fn analyze(graph: &Graph) -> Result<Vec<BnVerdict>> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    let outputs = graph.output_names();
    let mut out = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !node.is("BatchNormalization") {
            continue;
        }
        let verdict = match analyze_one(graph, i, &producers, &consumers, &outputs)? {
            BnVerdict::Keep { bn, reason } => {
                // A malformed neighbour is a reason to keep the BN here (folding reports the
                // error itself), so that `inspect` describes any model it can load.
                let forward = match BnParams::read(graph, node, &producers) {
                    Ok(p) => plan_forward(graph, bn, &p, &producers, &consumers, &outputs)
                        .unwrap_or_else(|e| Err(e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match forward {
                    Ok((layer, first, kind)) => BnVerdict::Forward {
                        bn,
                        layer,
                        first,
                        kind,
                        backward: reason,
                    },
                    Err(why) => BnVerdict::Keep {
                        bn,
                        reason: format!("{reason}; not folded forward either: {why}"),
                    },
                }
            }
            fold => fold,
        };
        out.push(verdict);
    }
    Ok(out)
}

fn single_use(value: &str, consumers: &HashMap<&str, Vec<usize>>, outputs: &HashSet<&str>) -> bool {
    consumers.get(value).map_or(0, Vec::len) == 1 && !outputs.contains(value)
}

fn analyze_one(
    graph: &Graph,
    bn: usize,
    producers: &HashMap<&str, usize>,
    consumers: &HashMap<&str, Vec<usize>>,
    outputs: &HashSet<&str>,
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

/// Plans a forward fold of BN `bn` (parameters `p`) into the layer after it:
/// `Ok(Ok((layer, first reader, kind)))`, or `Ok(Err(reason))` when it cannot.
fn plan_forward(
    graph: &Graph,
    bn: usize,
    p: &BnParams,
    producers: &HashMap<&str, usize>,
    consumers: &HashMap<&str, Vec<usize>>,
    outputs: &HashSet<&str>,
) -> Result<std::result::Result<(usize, usize, FoldKind), String>> {
    let out = graph.nodes[bn].outputs.first().cloned().unwrap_or_default();
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
    if p.is_empty() {
        return Ok(Err("it has no channels".into()));
    }
    let s = p.scale();
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
    let mut through_pool = false;
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
        through_pool = true;
        match only_consumer(&pool_out) {
            Some(n) => next = n,
            None => return Ok(Err("the MaxPool after it has several consumers".into())),
        }
    }
    let next_node = &graph.nodes[next];
    if next_node.is("Conv") {
        if next_node.attr_int("group")?.unwrap_or(1) != 1 {
            return Ok(Err(format!(
                "the next Conv `{}` is grouped",
                next_node.display_name()
            )));
        }
        if !next_node.pads_nothing()? {
            return Ok(Err(format!(
                "the next Conv `{}` pads its input (padding would inject un-normalised zeros)",
                next_node.display_name()
            )));
        }
        let w_name = next_node.input(1).unwrap_or("");
        let Some(w) = graph.constant_f32(w_name, producers)? else {
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
        if let Some(b) = next_node.input(2) {
            if graph.constant_f32(b, producers)?.is_none() {
                return Ok(Err(format!("the next Conv's bias `{b}` is not a constant")));
            }
        }
        return Ok(Ok((next, first, FoldKind::Conv)));
    }
    if next_node.is("Flatten") && !through_pool {
        if next_node.attr_int("axis")?.unwrap_or(1) != 1 {
            return Ok(Err("it feeds a Flatten whose axis is not 1".into()));
        }
        let flat_out = next_node.outputs.first().cloned().unwrap_or_default();
        let Some(g) = only_consumer(&flat_out) else {
            return Ok(Err("the Flatten after it has several consumers".into()));
        };
        let gemm = &graph.nodes[g];
        if !gemm.is("Gemm") || gemm.attr_int("transA")?.unwrap_or(0) != 0 {
            return Ok(Err("the Flatten after it does not feed a Gemm".into()));
        }
        let w_name = gemm.input(1).unwrap_or("");
        let Some(w) = graph.constant_f32(w_name, producers)? else {
            return Ok(Err(format!("the Gemm weight `{w_name}` is not a constant")));
        };
        let trans_b = gemm.attr_int("transB")?.unwrap_or(0) != 0;
        if w.ndim() != 2 {
            return Ok(Err(format!("the Gemm weight has shape {:?}", w.shape())));
        }
        let f = if trans_b { w.shape()[1] } else { w.shape()[0] };
        if f % p.len() != 0 {
            return Ok(Err(format!(
                "{f} Gemm features are not a multiple of {} channels",
                p.len()
            )));
        }
        if let Some(c) = gemm.input(2) {
            if graph.constant_f32(c, producers)?.is_none() {
                return Ok(Err(format!("the Gemm bias `{c}` is not a constant")));
            }
        }
        return Ok(Ok((g, first, FoldKind::Gemm)));
    }
    Ok(Err(format!(
        "the node after it is {} `{}`, not a Conv without padding",
        next_node.op_type,
        next_node.display_name()
    )))
}
