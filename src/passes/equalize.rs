//! Cross-layer equalization (CLE, DFQ; `algorithm.md` §5.1).
//!
//! For a chain `A → f → B` (A a Conv, `f` Relu / LeakyRelu / identity / Clip(0, c), B a Conv
//! reading only A's output) with `f(s·v) = s·f(v)` for `s > 0`, per output channel `i` of A:
//! `r1_i = max|W_A[i, …]|`, `r2_i = max|W_B[:, i, …]|`, `s_i = sqrt(r1_i / r2_i)` (1 if either
//! is 0), then `W_A[i] /= s_i`, `b_A[i] /= s_i`, `W_B[:, i] *= s_i`. The float model is
//! unchanged and both ranges become `sqrt(r1_i·r2_i)`, which is what one scale per tensor
//! needs. Pairs are applied in graph order and the passes repeat until `max |ln s| < 1e-4`
//! (at most 100 passes), so `Conv → depthwise → Conv` triplets converge to the triplet rule.
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
use crate::onnx::tensor;

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
}

struct Pair {
    a: usize,
    act: Option<usize>,
    b: usize,
    clip_hi: Option<f32>,
}

struct Layer {
    w: ArrayD<f32>,
    b: Vec<f32>,
    group: usize,
}

/// Equalizes every eligible chain in place and updates `stats`.
///
/// # Errors
/// Malformed constants.
pub fn equalize(
    model: &mut Model,
    stats: &mut BTreeMap<String, ChannelStats>,
    relu6: Relu6,
    absorb_bias: bool,
) -> Result<EqualizeReport> {
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
        pairs.push(Pair {
            a,
            act,
            b: feed,
            clip_hi,
        });
    }
    if pairs.is_empty() {
        return Ok(report);
    }
    // Load every involved layer once.
    let mut layers: HashMap<usize, Layer> = HashMap::new();
    for p in &pairs {
        for idx in [p.a, p.b] {
            if layers.contains_key(&idx) {
                continue;
            }
            let n = &g.nodes[idx];
            let w = g
                .constant_f32(n.input(1).unwrap_or(""), &producers)?
                .ok_or_else(|| n.error("weight is not a constant"))?;
            let o = w.shape().first().copied().unwrap_or(0);
            let b = match n.input(2) {
                Some(b) => g
                    .constant_f32(b, &producers)?
                    .map(|a| a.iter().copied().collect())
                    .unwrap_or_else(|| vec![0.0; o]),
                None => vec![0.0; o],
            };
            let group = n.attr_int("group")?.unwrap_or(1).max(1) as usize;
            layers.insert(idx, Layer { w, b, group });
        }
    }
    // Consistency: A's output channels must be B's input channels.
    pairs.retain(|p| {
        let (la, lb) = (&layers[&p.a], &layers[&p.b]);
        let out_a = la.w.shape()[0];
        let in_b = lb.w.shape().get(1).copied().unwrap_or(0) * lb.group;
        out_a == in_b && la.w.ndim() >= 3 && lb.w.ndim() >= 3 && out_a % lb.group == 0
    });
    let mut total: HashMap<usize, Vec<f64>> = pairs
        .iter()
        .map(|p| (p.a, vec![1.0; layers[&p.a].w.shape()[0]]))
        .collect();
    for pass in 1..=100 {
        report.passes = pass;
        let mut worst = 0f64;
        for p in &pairs {
            let s = pair_scales(&layers[&p.a], &layers[&p.b]);
            worst = s.iter().fold(worst, |m, v| m.max(v.ln().abs()));
            apply_pair(&mut layers, p.a, p.b, &s);
            if let Some(t) = total.get_mut(&p.a) {
                t.iter_mut().zip(&s).for_each(|(a, b)| *a *= b);
            }
        }
        if worst < 1e-4 {
            break;
        }
    }
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
            let lb_w: Vec<f32> = layers[&p.b].w.iter().copied().collect();
            let shape = layers[&p.b].w.shape().to_vec();
            let (o_n, i_local) = (shape[0], shape[1]);
            let k: usize = shape[2..].iter().product();
            let per_group_out = o_n / layers[&p.b].group.max(1);
            if let Some(la) = layers.get_mut(&p.a) {
                la.b.iter_mut()
                    .zip(&c)
                    .for_each(|(b, ci)| *b = (f64::from(*b) - ci) as f32);
            }
            if let Some(lb) = layers.get_mut(&p.b) {
                for o in 0..o_n {
                    let grp = o / per_group_out.max(1);
                    let mut add = 0f64;
                    for j in 0..i_local {
                        let ci = c.get(grp * i_local + j).copied().unwrap_or(0.0);
                        let wsum: f64 = (0..k)
                            .map(|kk| f64::from(lb_w[(o * i_local + j) * k + kk]))
                            .sum();
                        add += wsum * ci;
                    }
                    lb.b[o] = (f64::from(lb.b[o]) + add) as f32;
                }
            }
            absorbed.insert(p.a, c);
        }
    }
    // Write back.
    let mut names = NameGen::new(model.graph.taken_names());
    for (&idx, l) in &layers {
        let n = model.graph.nodes[idx].clone();
        let w_name = names.fresh(n.input(1).unwrap_or("w"), "_equalized");
        let b_name = names.fresh(n.input(1).unwrap_or("w"), "_bias_equalized");
        model
            .graph
            .set_initializer(tensor::from_f32(&w_name, l.w.clone()));
        let bn = l.b.len();
        model.graph.set_initializer(tensor::from_f32(
            &b_name,
            ArrayD::from_shape_vec(IxDyn(&[bn]), l.b.clone())
                .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0]))),
        ));
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

/// `s_i = sqrt(r1_i / r2_i)` per output channel of A (1 when a range is 0).
fn pair_scales(a: &Layer, b: &Layer) -> Vec<f64> {
    let out_a = a.w.shape()[0];
    let per_a = a.w.len() / out_a.max(1);
    let wa: Vec<f32> = a.w.iter().copied().collect();
    let r1: Vec<f64> = (0..out_a)
        .map(|i| {
            wa[i * per_a..(i + 1) * per_a]
                .iter()
                .fold(0f64, |m, v| m.max(f64::from(v.abs())))
        })
        .collect();
    let r2 = input_ranges(b, out_a);
    r1.iter()
        .zip(&r2)
        .map(|(&x, &y)| {
            if x > 0.0 && y > 0.0 {
                (x / y).sqrt().clamp(1e-8, 1e8)
            } else {
                1.0
            }
        })
        .collect()
}

/// For each input channel `c` of B: `(first output, count, local index)` of the weights it
/// touches, and `max|W_B[:, c, …]|`.
fn input_ranges(b: &Layer, channels: usize) -> Vec<f64> {
    let shape = b.w.shape();
    let (o_n, i_local) = (shape[0], shape[1]);
    let k: usize = shape[2..].iter().product();
    let per_group_out = o_n / b.group.max(1);
    let wb: Vec<f32> = b.w.iter().copied().collect();
    (0..channels)
        .map(|c| {
            let grp = c / i_local.max(1);
            let j = c % i_local.max(1);
            let mut m = 0f64;
            for o in grp * per_group_out..(grp + 1) * per_group_out {
                for kk in 0..k {
                    m = m.max(f64::from(wb[(o * i_local + j) * k + kk].abs()));
                }
            }
            m
        })
        .collect()
}

fn apply_pair(layers: &mut HashMap<usize, Layer>, a: usize, b: usize, s: &[f64]) {
    if let Some(la) = layers.get_mut(&a) {
        let out_a = la.w.shape()[0];
        let per = la.w.len() / out_a.max(1);
        if let Some(w) = la.w.as_slice_mut() {
            for (i, chunk) in w.chunks_mut(per.max(1)).enumerate() {
                let f = s[i];
                chunk
                    .iter_mut()
                    .for_each(|v| *v = (f64::from(*v) / f) as f32);
            }
        }
        la.b.iter_mut()
            .zip(s)
            .for_each(|(v, f)| *v = (f64::from(*v) / f) as f32);
    }
    if let Some(lb) = layers.get_mut(&b) {
        let shape = lb.w.shape().to_vec();
        let (o_n, i_local) = (shape[0], shape[1]);
        let k: usize = shape[2..].iter().product();
        let per_group_out = o_n / lb.group.max(1);
        if let Some(w) = lb.w.as_slice_mut() {
            for o in 0..o_n {
                let grp = o / per_group_out.max(1);
                for j in 0..i_local {
                    let c = grp * i_local + j;
                    let f = s.get(c).copied().unwrap_or(1.0);
                    for kk in 0..k {
                        let idx = (o * i_local + j) * k + kk;
                        w[idx] = (f64::from(w[idx]) * f) as f32;
                    }
                }
            }
        }
    }
}
