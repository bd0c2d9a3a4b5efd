//! After the passes: high-bias absorption, and writing the rescaled layers, the divided BN
//! statistics and the exact per-channel ReLU6 bounds back into the graph.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use super::layer::{f32s, Layer};
use super::{EqualizeReport, Pair, Relu6};
use crate::error::{Error, Result};
use crate::graph::names::NameGen;
use crate::graph::{Model, Node};
use crate::onnx::{pb, tensor};
use crate::passes::fold_bn::ChannelStats;

/// High-bias absorption (DFQ; `docs/algorithm.md` §5.2): with A's output modelled as
/// `N(μ_i, σ_i²)` (BN statistics divided by the CLE scale), moves `c_i = max(0, μ_i − 3σ_i)`
/// (after Relu / ReLU6; `μ_i` without activation) from A's bias into B's:
/// `b_A[i] −= c_i`, `b_B[o] += Σ_{i,k} W_B[o,i,k]·c_i`. Exact while A's pre-activation stays
/// `≥ c_i` (99.87 % of a Gaussian) and away from zero-padded borders, so B must not pad.
/// Returns the `c` of every pair it changed, by A.
///
/// # Errors
/// Malformed attributes.
pub(super) fn absorb_high_bias(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
    pairs: &[Pair],
    total: &HashMap<usize, Vec<f64>>,
    layers: &mut HashMap<usize, Layer>,
) -> Result<HashMap<usize, Vec<f64>>> {
    let mut absorbed: HashMap<usize, Vec<f64>> = HashMap::new();
    for p in pairs {
        // B must not pad: a padded border sees zeros instead of c (the DFQ caveat; including
        // padded pairs changed MobileNetV2's float logits: `docs/experiments.md`, "High-bias
        // absorption").
        if !model.graph.nodes[p.b].pads_nothing()? {
            continue;
        }
        let Some(y) = g_outputs(model, p.a) else {
            continue;
        };
        let Some(st) = stats.get(&y) else { continue };
        let Some(scales) = total.get(&p.a) else {
            continue;
        };
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
    Ok(absorbed)
}

/// Writes the equalized layers back (in node order, so names are deterministic; encoding in
/// parallel), divides the BN statistics of A's outputs by the scales, and rewrites ReLU6
/// between equalized layers as `relu6` says.
///
/// # Errors
/// A ReLU6 bound that cannot be shaped (not reachable for valid pairs).
#[allow(clippy::too_many_arguments)]
pub(super) fn write_back(
    model: &mut Model,
    stats: &mut BTreeMap<String, ChannelStats>,
    pairs: &[Pair],
    total: &HashMap<usize, Vec<f64>>,
    absorbed: &HashMap<usize, Vec<f64>>,
    layers: HashMap<usize, Layer>,
    releasable: &[String],
    relu6: Relu6,
    report: &mut EqualizeReport,
) -> Result<()> {
    // Write back, in node order (deterministic names), encoding in parallel.
    for w in releasable {
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
            let bias = ndarray::Array1::from(l.b).into_dyn();
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
    for p in pairs {
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
                    let v = ndarray::Array1::from(v)
                        .into_shape_with_order((1, c, 1, 1))
                        .map_err(|e| Error::Graph(format!("ReLU6 bound of `{out}`: {e}")))?;
                    model
                        .graph
                        .set_initializer(tensor::from_f32(&bound, v.into_dyn()));
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
    Ok(())
}

fn g_outputs(model: &Model, node: usize) -> Option<String> {
    model
        .graph
        .nodes
        .get(node)
        .and_then(|n| n.outputs.first().cloned())
}
