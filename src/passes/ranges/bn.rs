//! The BN-analytic rule: per-channel moments from BatchNormalization statistics, pushed
//! forward through the graph (module docs of [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use ndarray::ArrayD;

use super::elementwise::Tracker;
use super::{Dist, RangeRule};
use crate::error::Result;
use crate::graph::{Graph, Node};
use crate::passes::fold_bn::ChannelStats;
use crate::stats::{self, Moments};

/// A constant operand as per-channel values (scalar → one value; `[C]`, `[1, C, 1, …]` → C).
pub(super) fn channel_constant(a: &ArrayD<f32>) -> Option<Vec<f64>> {
    let non_one: Vec<usize> = a.shape().iter().copied().filter(|&d| d != 1).collect();
    match non_one.as_slice() {
        [] => Some(vec![f64::from(a.iter().copied().next().unwrap_or(0.0))]),
        [_] => {
            // Channel axis: the only non-1 dim must be axis 0 of a 1-D constant or axis 1.
            let axis = a.shape().iter().position(|&d| d != 1).unwrap_or(0);
            (a.ndim() == 1 || axis == 1).then(|| a.iter().map(|&v| f64::from(v)).collect())
        }
        _ => None,
    }
}

fn pick(v: &[f64], c: usize) -> f64 {
    if v.len() == 1 {
        v[0]
    } else {
        v.get(c).copied().unwrap_or(0.0)
    }
}

/// Elementwise activation functions the BN rule knows, as closures over f64.
pub(super) fn activation(
    node: &Node,
    graph: &Graph,
    producers: &HashMap<&str, usize>,
) -> Result<Option<Act>> {
    let op = node.op_type.as_str();
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Ok(None);
    }
    Ok(match op {
        "Relu" => Some(Act::Relu),
        "Clip" => graph.clip_bounds(node, producers)?.map(|(lo, hi)| {
            Act::Clip(
                lo.map_or(f64::NEG_INFINITY, f64::from),
                hi.map_or(f64::INFINITY, f64::from),
            )
        }),
        "LeakyRelu" => Some(Act::Leaky(f64::from(
            node.attr_float("alpha")?.unwrap_or(0.01),
        ))),
        "HardSigmoid" => Some(Act::HardSigmoid(
            f64::from(node.attr_float("alpha")?.unwrap_or(0.2)),
            f64::from(node.attr_float("beta")?.unwrap_or(0.5)),
        )),
        "HardSwish" => Some(Act::HardSwish),
        "Sigmoid" => Some(Act::Sigmoid),
        "Tanh" => Some(Act::Tanh),
        _ => None,
    })
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Act {
    Relu,
    Clip(f64, f64),
    Leaky(f64),
    HardSigmoid(f64, f64),
    HardSwish,
    Sigmoid,
    Tanh,
}

impl Act {
    pub(super) fn eval(self, x: f64) -> f64 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Clip(lo, hi) => x.max(lo).min(hi),
            Act::Leaky(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Act::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Act::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Act::Tanh => x.tanh(),
        }
    }

    fn moments(self, m: Moments) -> Moments {
        match self {
            Act::Relu => stats::relu_moments(m),
            Act::Clip(lo, hi) => stats::clip_moments(m, lo, hi),
            other => stats::map_moments(m, move |x| other.eval(x)),
        }
    }

    pub(super) fn non_negative(self) -> bool {
        match self {
            Act::Relu | Act::HardSigmoid(..) | Act::Sigmoid => true,
            Act::Clip(lo, _) => lo >= 0.0,
            _ => false,
        }
    }
}

/// Computes a [`Dist`] for every value the BN rule can reach.
///
/// # Errors
/// Malformed attributes or constants.
pub fn bn_ranges(
    graph: &Graph,
    origins: &BTreeMap<String, ChannelStats>,
    n_sigmas: f64,
) -> Result<BTreeMap<String, Dist>> {
    let producers = graph.producers();
    let mut dists: BTreeMap<String, Dist> = BTreeMap::new();
    let origin = |name: &str| -> Option<Dist> {
        let s = origins.get(name)?;
        let m: Vec<Moments> = s
            .mean
            .iter()
            .zip(&s.std)
            .map(|(&mean, &sd)| Moments { mean, var: sd * sd })
            .collect();
        Dist::from_moments(m, n_sigmas, RangeRule::Bn)
    };
    // Graph inputs that are origins (rare) seed the map.
    for i in &graph.inputs {
        if let Some(name) = i.name.as_deref() {
            if let Some(d) = origin(name) {
                dists.insert(name.to_string(), d);
            }
        }
    }
    let mut elementwise = Tracker::default();
    for idx in graph.topological_order()? {
        let node = &graph.nodes[idx];
        let Some(out) = node.outputs.first().filter(|o| !o.is_empty()) else {
            continue;
        };
        let d = match origin(out) {
            Some(d) => Some(d),
            None => match elementwise.step(graph, node, &dists, &producers, n_sigmas)? {
                Some(exact) => Some(exact),
                None => propagate(graph, node, &dists, &producers, n_sigmas)?,
            },
        };
        if let Some(d) = d {
            dists.insert(out.clone(), d);
        }
    }
    Ok(dists)
}

fn propagate(
    graph: &Graph,
    node: &Node,
    dists: &BTreeMap<String, Dist>,
    producers: &HashMap<&str, usize>,
    n: f64,
) -> Result<Option<Dist>> {
    let input = |i: usize| node.input(i).and_then(|name| dists.get(name));
    let constant = |i: usize| -> Result<Option<ArrayD<f32>>> {
        match node.input(i) {
            Some(name) => graph.constant_f32(name, producers),
            None => Ok(None),
        }
    };
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Ok(None);
    }
    if let Some(act) = activation(node, graph, producers)? {
        return Ok(input(0).and_then(|d| d.map(|x| act.eval(x), |m| act.moments(m))));
    }
    let op = node.op_type.as_str();
    Ok(match op {
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "Identity"
        | "Dropout" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            input(0).cloned().map(Dist::propagated)
        }
        "Reshape" | "Transpose" | "Resize" | "Upsample" | "Pad" => input(0).map(|d| {
            let mut d = d.clone().propagated();
            d.moments = None;
            if op == "Pad" {
                d.lo = d.lo.min(0.0);
                d.hi = d.hi.max(0.0);
            }
            d
        }),
        "Softmax" => Dist::interval(0.0, 1.0),
        "Concat" => {
            if node.attr_int("axis")?.unwrap_or(0) != 1 {
                return Ok(None);
            }
            let parts: Option<Vec<&Dist>> = (0..node.inputs.len()).map(input).collect();
            let Some(parts) = parts else { return Ok(None) };
            let lo = parts.iter().map(|d| d.lo).fold(f64::INFINITY, f64::min);
            let hi = parts.iter().map(|d| d.hi).fold(f64::NEG_INFINITY, f64::max);
            let mut d = Dist::interval(lo, hi);
            if let Some(d) = d.as_mut() {
                d.moments = parts
                    .iter()
                    .map(|p| p.moments.clone())
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.concat());
            }
            d
        }
        "Add" | "Sub" => {
            let sign = if op == "Sub" { -1.0 } else { 1.0 };
            match (input(0), input(1)) {
                (Some(a), Some(b)) => match (&a.moments, &b.moments) {
                    (Some(ma), Some(mb)) if ma.len() == mb.len() => Dist::from_moments(
                        ma.iter()
                            .zip(mb)
                            .map(|(x, y)| Moments {
                                mean: x.mean + sign * y.mean,
                                var: x.var + y.var,
                            })
                            .collect(),
                        n,
                        RangeRule::BnPropagated,
                    ),
                    _ => {
                        if sign > 0.0 {
                            Dist::interval(a.lo + b.lo, a.hi + b.hi)
                        } else {
                            Dist::interval(a.lo - b.hi, a.hi - b.lo)
                        }
                    }
                },
                (Some(a), None) => shift(a, constant(1)?, sign),
                (None, Some(b)) if sign > 0.0 => shift(b, constant(0)?, 1.0),
                _ => None,
            }
        }
        "Mul" | "Div" => match (input(0), input(1)) {
            (Some(a), None) => scale(a, constant(1)?, op == "Div"),
            (None, Some(b)) if op == "Mul" => scale(b, constant(0)?, false),
            (Some(a), Some(b)) if op == "Mul" && (gate(b).is_some() || gate(a).is_some()) => {
                // x · g with g ∈ [0, G] (squeeze-excite gates): |x·g| ≤ G·|x| bounds the
                // range. With per-channel moments on both sides (the gate computed from other
                // values, so taken independent of x per element), the product's moments are
                // `E[xg] = E[x]E[g]`, `E[(xg)²] = E[x²]E[g²]`, and its range the BN rule on them
                // within that bound; without them, `G·x`.
                let (x, gd, g) = match (gate(a), gate(b)) {
                    (Some(ga), Some(gb)) if ga < gb => (b, a, ga),
                    (_, Some(gb)) => (a, b, gb),
                    (ga, None) => (b, a, ga.unwrap_or(1.0)),
                };
                let bound = Dist::interval(x.lo.min(0.0) * g, x.hi.max(0.0) * g);
                let product = match (&x.moments, &gd.moments) {
                    (Some(mx), Some(mg)) if mg.len() == mx.len() || mg.len() == 1 => {
                        let m: Vec<Moments> = mx
                            .iter()
                            .enumerate()
                            .map(|(c, x)| {
                                let g = mg[if mg.len() == 1 { 0 } else { c }];
                                let mean = x.mean * g.mean;
                                let second = x.second_moment() * g.second_moment();
                                Moments::new(mean, (second - mean * mean).max(0.0))
                            })
                            .collect();
                        Dist::from_moments(m, n, RangeRule::BnPropagated)
                    }
                    _ => None,
                };
                match (product, bound) {
                    (Some(mut p), Some(b)) => {
                        p.lo = p.lo.max(b.lo);
                        p.hi = p.hi.min(b.hi);
                        (p.lo <= p.hi).then_some(p)
                    }
                    (None, Some(mut b)) => {
                        b.moments = x.moments.as_ref().map(|m| {
                            m.iter()
                                .map(|c| Moments {
                                    mean: c.mean * g,
                                    var: c.var * g * g,
                                })
                                .collect()
                        });
                        Some(b)
                    }
                    _ => None,
                }
            }
            (Some(a), Some(b)) if op == "Mul" => {
                let c = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi];
                Dist::interval(
                    c.iter().copied().fold(f64::INFINITY, f64::min),
                    c.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            }
            _ => None,
        },
        "Min" => match (input(0), constant(1)?) {
            // Min(x, c): a per-channel upper bound (ReLU6 kept exact after equalization).
            (Some(a), Some(c)) => {
                let Some(c) = channel_constant(&c) else {
                    return Ok(None);
                };
                let cmax = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut d = Dist::interval(a.lo.min(cmax), a.hi.min(cmax));
                if let Some(d) = d.as_mut() {
                    d.moments = a.moments.as_ref().and_then(|m| {
                        (c.len() == 1 || c.len() == m.len()).then(|| {
                            m.iter()
                                .enumerate()
                                .map(|(ch, x)| {
                                    stats::clip_moments(*x, f64::NEG_INFINITY, pick(&c, ch))
                                })
                                .collect()
                        })
                    });
                }
                d
            }
            _ => None,
        },
        "Conv" | "Gemm" | "MatMul" => match input(0).and_then(|d| d.moments.as_ref()) {
            Some(m) => through_layer(graph, node, m, producers, n)?,
            None => None,
        },
        _ => None,
    })
}

/// `Some(G)` for a value known to lie in `[0, G]` (a gate, when multiplied).
fn gate(d: &Dist) -> Option<f64> {
    (d.lo >= 0.0 && d.hi.is_finite()).then_some(d.hi)
}

fn shift(d: &Dist, c: Option<ArrayD<f32>>, sign: f64) -> Option<Dist> {
    let c = channel_constant(&c?)?;
    let cmin = c.iter().copied().fold(f64::INFINITY, f64::min) * sign;
    let cmax = c.iter().copied().fold(f64::NEG_INFINITY, f64::max) * sign;
    let (cmin, cmax) = (cmin.min(cmax), cmin.max(cmax));
    let mut out = Dist::interval(d.lo + cmin, d.hi + cmax)?;
    out.moments = d.moments.as_ref().and_then(|m| {
        (c.len() == 1 || c.len() == m.len()).then(|| {
            m.iter()
                .enumerate()
                .map(|(ch, x)| Moments {
                    mean: x.mean + sign * pick(&c, ch),
                    var: x.var,
                })
                .collect()
        })
    });
    Some(out)
}

fn scale(d: &Dist, c: Option<ArrayD<f32>>, divide: bool) -> Option<Dist> {
    let mut c = channel_constant(&c?)?;
    if divide {
        if c.contains(&0.0) {
            return None;
        }
        c.iter_mut().for_each(|v| *v = 1.0 / *v);
    }
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for &k in &c {
        for v in [d.lo * k, d.hi * k] {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    let mut out = Dist::interval(lo, hi)?;
    out.moments = d.moments.as_ref().and_then(|m| {
        (c.len() == 1 || c.len() == m.len()).then(|| {
            m.iter()
                .enumerate()
                .map(|(ch, x)| {
                    let k = pick(&c, ch);
                    Moments {
                        mean: x.mean * k,
                        var: x.var * k * k,
                    }
                })
                .collect()
        })
    });
    Some(out)
}

/// Moments of a linear layer's output from its input's per-channel moments.
fn through_layer(
    graph: &Graph,
    node: &Node,
    m: &[Moments],
    producers: &HashMap<&str, usize>,
    n: f64,
) -> Result<Option<Dist>> {
    let Some(w) = node
        .input(1)
        .map(|w| graph.constant_f32(w, producers))
        .transpose()?
    else {
        return Ok(None);
    };
    let Some(w) = w else { return Ok(None) };
    let bias = match node.input(2) {
        Some(b) => match graph.constant_f32(b, producers)? {
            Some(b) => Some(b),
            None => return Ok(None),
        },
        None => None,
    };
    let flat: Vec<f32> = w.iter().copied().collect();
    // (out channels, in channels per group, kernel size, group, weight index fn)
    let (o_n, i_n, k, group, by_row) = if node.is("Conv") {
        if w.ndim() < 3 {
            return Ok(None);
        }
        let g = node.group()?;
        (
            w.shape()[0],
            w.shape()[1],
            w.shape()[2..].iter().product::<usize>(),
            g,
            true,
        )
    } else {
        if w.ndim() != 2 || node.attr_int("transA")?.unwrap_or(0) != 0 {
            return Ok(None);
        }
        let trans_b = node.is("Gemm") && node.attr_int("transB")?.unwrap_or(0) != 0;
        if trans_b {
            (w.shape()[0], w.shape()[1], 1, 1, true)
        } else {
            (w.shape()[1], w.shape()[0], 1, 1, false)
        }
    };
    if i_n * group != m.len() || group == 0 || o_n % group != 0 {
        return Ok(None);
    }
    let (alpha, beta) = if node.is("Gemm") {
        (
            f64::from(node.attr_float("alpha")?.unwrap_or(1.0)),
            f64::from(node.attr_float("beta")?.unwrap_or(1.0)),
        )
    } else {
        (1.0, 1.0)
    };
    let bias_vals = match &bias {
        Some(b) => match channel_constant(b) {
            Some(v) => Some(v),
            None if b.len() == o_n => Some(b.iter().map(|&v| f64::from(v)).collect()),
            None => return Ok(None),
        },
        None => None,
    };
    let out_per_group = o_n / group;
    let out: Vec<Moments> = (0..o_n)
        .map(|o| {
            let g = o / out_per_group;
            let mut mean = bias_vals.as_ref().map_or(0.0, |b| beta * pick(b, o));
            let mut var = 0.0;
            for i in 0..i_n {
                let ch = &m[g * i_n + i];
                let (mut s1, mut s2) = (0.0, 0.0);
                for kk in 0..k {
                    let wv = if by_row {
                        f64::from(flat[(o * i_n + i) * k + kk])
                    } else {
                        f64::from(flat[i * o_n + o])
                    } * alpha;
                    s1 += wv;
                    s2 += wv * wv;
                }
                mean += s1 * ch.mean;
                var += s2 * ch.var;
            }
            Moments { mean, var }
        })
        .collect();
    Ok(Dist::from_moments(out, n, RangeRule::BnPropagated))
}

/// Values whose BN-rule distribution was pushed through a Conv, Gemm or MatMul (with no
/// BatchNormalization after it since). Those moments assume independent inputs, and a layer's
/// inputs are positively correlated on real data (they share the image), so the propagated
/// variance is low (on cifar10-keras it was narrower than what a noise pass already reaches:
/// `docs/results.md`, "BN moments pushed through a layer widen to the noise pass"). The caller
/// widens these ranges to the noise pass's where that is wider.
///
/// # Errors
/// A cycle in the graph.
pub fn through_layers(graph: &Graph, dists: &BTreeMap<String, Dist>) -> Result<HashSet<String>> {
    let mut out: HashSet<String> = HashSet::new();
    for idx in graph.topological_order()? {
        let node = &graph.nodes[idx];
        let layer = node.is("Conv") || node.is("Gemm") || node.is("MatMul");
        let from_tainted = node.inputs.iter().any(|i| out.contains(i));
        for o in &node.outputs {
            let Some(d) = dists.get(o) else { continue };
            if d.rule != RangeRule::Bn && (layer || from_tainted) {
                out.insert(o.clone());
            }
        }
    }
    Ok(out)
}
