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
//! does not commute with the affine map.

use std::collections::HashMap;

use serde::Serialize;

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
