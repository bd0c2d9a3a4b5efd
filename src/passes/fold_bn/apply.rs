//! Carrying out the fold decisions of [`super::plan`]: new weight and bias initializers,
//! rewired nodes, and the per-channel statistics every BN leaves behind.

use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayD;

use super::math::{
    fold_bias, forward_fold_conv, forward_fold_gemm, scale_conv_transpose_weight,
    scale_conv_weight, scale_matrix_outputs,
};
use super::{BnParams, ChannelStats, FoldKind};
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::{Graph, Node};
use crate::onnx::{attrs, tensor};

/// Records a BN's statistics: its output `N(beta_c, |gamma_c|²)`, its input
/// `N(mean_c, var_c + epsilon)`.
pub(super) fn record_stats(stats: &mut BTreeMap<String, ChannelStats>, bn: &Node, p: &BnParams) {
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

/// Gives `layer` the folded weight and bias as new initializers (fresh names from its weight,
/// and from its bias or `{weight}_bias`), in that order.
fn set_weight_and_bias(
    graph: &mut Graph,
    names: &mut NameGen,
    layer: usize,
    w: ArrayD<f32>,
    b: Vec<f32>,
) {
    let node = &graph.nodes[layer];
    let w_name = node.input(1).unwrap_or("").to_string();
    let b_base = node
        .input(2)
        .map_or_else(|| format!("{w_name}_bias"), str::to_string);
    let w_new = new_initializer(graph, names, &w_name, w);
    let b_new = new_initializer(graph, names, &b_base, vec_array(b));
    let node = &mut graph.nodes[layer];
    node.inputs.resize(3, String::new());
    node.inputs[1] = w_new;
    node.inputs[2] = b_new;
}

fn vec_array(v: Vec<f32>) -> ArrayD<f32> {
    ndarray::Array1::from(v).into_dyn()
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

#[allow(clippy::too_many_arguments)]
pub(super) fn fold_backward(
    graph: &mut Graph,
    names: &mut NameGen,
    bn: &Node,
    layer: usize,
    bias_add: Option<usize>,
    kind: FoldKind,
    p: &BnParams,
    producers: &HashMap<String, usize>,
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
            let group = lnode.group()?;
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
            set_weight_and_bias(graph, names, layer, w2, b2);
            graph.nodes[layer].outputs[0] = bn_out;
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
            set_weight_and_bias(
                graph,
                names,
                layer,
                scale_matrix_outputs(&w, &t, trans_b),
                c2,
            );
            let node = &mut graph.nodes[layer];
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

/// Folds BN `bn` forward into `layer` (a Conv, or the Gemm after a Flatten), as planned by
/// [`super::plan`]: the layer's weight scales input channel (feature) `i` by `s_i` and its bias
/// gains `Σ W·a`; `first` (the node that read the BN output) reads the BN input instead.
///
/// # Errors
/// Malformed constants or attributes.
#[allow(clippy::too_many_arguments)]
pub(super) fn fold_forward(
    graph: &mut Graph,
    names: &mut NameGen,
    bn: &Node,
    layer: usize,
    first: usize,
    kind: FoldKind,
    p: &BnParams,
    producers: &HashMap<String, usize>,
) -> Result<()> {
    let s = p.scale();
    let a = p.shift();
    let x = bn.input(0).unwrap_or("").to_string();
    let out = bn.outputs.first().cloned().unwrap_or_default();
    let next_node = graph.nodes[layer].clone();
    let w_name = next_node.input(1).unwrap_or("").to_string();
    let w = graph
        .constant_f32(&w_name, producers)?
        .ok_or_else(|| next_node.error(format!("weight `{w_name}` is not a constant")))?;
    if kind == FoldKind::Conv {
        let b = match next_node.input(2) {
            Some(b) => Some(
                graph
                    .constant_f32(b, producers)?
                    .ok_or_else(|| next_node.error(format!("bias `{b}` is not a constant")))?
                    .iter()
                    .copied()
                    .collect::<Vec<f32>>(),
            ),
            None => None,
        };
        let (w2, b2) = forward_fold_conv(&w, b.as_deref(), &s, &a);
        set_weight_and_bias(graph, names, layer, w2, b2);
    } else {
        let gemm = next_node;
        let trans_b = gemm.attr_int("transB")?.unwrap_or(0) != 0;
        let (f, n) = if trans_b {
            (w.shape()[1], w.shape()[0])
        } else {
            (w.shape()[0], w.shape()[1])
        };
        let per = f / p.len().max(1);
        let sf: Vec<f64> = (0..f).map(|i| s[i / per]).collect();
        let af: Vec<f64> = (0..f).map(|i| a[i / per]).collect();
        let alpha = f64::from(gemm.attr_float("alpha")?.unwrap_or(1.0));
        let beta_g = f64::from(gemm.attr_float("beta")?.unwrap_or(1.0));
        let c = match gemm.input(2) {
            Some(c) => match graph.constant_f32(c, producers)? {
                Some(c) if beta_g != 0.0 => Some(broadcast_bias(&gemm, &c, n)?),
                Some(_) => None,
                None => return Err(gemm.error(format!("bias `{c}` is not a constant"))),
            },
            None => None,
        };
        let beta_eff = if c.is_some() { beta_g } else { 1.0 };
        let (w2, c2) = forward_fold_gemm(&w, c.as_deref(), &sf, &af, trans_b, alpha, beta_eff);
        set_weight_and_bias(graph, names, layer, w2, c2);
        let node = &mut graph.nodes[layer];
        if beta_eff != beta_g {
            node.set_attr(attrs::make_float("beta", beta_eff as f32));
        }
    }
    // Bypass the BN: the node that read its output now reads its input.
    for input in graph.nodes[first].inputs.iter_mut() {
        if *input == out {
            *input = x.clone();
        }
    }
    Ok(())
}
