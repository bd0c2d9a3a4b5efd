//! Activation ranges without data (`algorithm.md` §6 and §2.4).
//!
//! Three sources, chosen per tensor by `--act-ranges`:
//!
//! - **bn** (BN-analytic, DFQ style): a value produced by a BatchNormalization (folded or
//!   not) is modelled per channel as `N(beta_c, |gamma_c|²)`; its range is
//!   `[min_c(μ_c − N·σ_c), max_c(μ_c + N·σ_c)]` with `N = --bn-sigmas` (6). The
//!   distribution is pushed forward in topological order: activations map the range through
//!   the function and the moments through the clipped-normal formulas (ReLU, Clip) or
//!   quadrature (HardSwish, HardSigmoid, Sigmoid, …); `Add` sums per-channel means and
//!   variances (independent branches) and takes `μ ± N·σ` of the sum; `Concat` concatenates
//!   channels; pooling, `Flatten`, `Identity` pass through; multiplication by a constant
//!   scales; a Conv/Gemm/MatMul with no BN after it propagates moments through its weights
//!   (`mean_o = b_o + Σ W·m`, `var_o = Σ W²·v`, independence assumed). Real inputs of a
//!   layer are correlated, so that variance comes out low: under `auto` such a tensor (and
//!   anything computed from it before the next BN, [`through_layers`]) takes the noise pass's
//!   range where that is wider.
//! - **noise** (SQuant's own rule): a seeded batch of `U[0, 1)` inputs goes through the float
//!   model (in tract); per tensor `signed = min < 0`, `σ` = std of the positive entries
//!   (unsigned) or of all entries (signed), `α = k·σ` with `k` = 12 / 14 / 25 at 4 / 6 / 8
//!   bits, divided by 1.25 when signed; below 6 bits `α ≤ max`.
//! - **noise-channels** (part of `auto`, the default): where no BN statistics reach a feature
//!   map, per-channel means and standard deviations from a seeded noise pass (N(0, 1) images by
//!   default, `--noise-input uniform` for U[0, 1)) fed to the BN-analytic rule,
//!   `max_c |μ_c ± N·σ_c|` with `N = --noise-sigmas` (4). On the BN-folded MobileNetV2 exports
//!   it measured 16.4 dB against 13.9 dB for SQuant's rule, and 37 dB against 3.8 dB on
//!   mnist-cnn's real digits (`docs/results.md`). Tensors that are not feature maps keep
//!   SQuant's rule on the same pass.
//! - **calibrate**: the user's own inputs through the float model; `max|x|` or a percentile.
//!
//! Tensors that are structurally non-negative (after Relu, Clip(0, ·), Sigmoid, …) use uint8;
//! everything else int8; zero-point 0 either way.

use std::collections::{BTreeMap, HashMap, HashSet};

use ndarray::ArrayD;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::graph::{Graph, Model, Node};
use crate::onnx::{attrs, pb};
use crate::passes::fold_bn::ChannelStats;
use crate::stats::{self, Moments};

/// Which rule set a tensor's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RangeRule {
    /// BN statistics of the BatchNormalization that produced (or consumed) the tensor.
    Bn,
    /// BN statistics pushed through later ops.
    BnPropagated,
    /// SQuant's noise rule.
    Noise,
    /// The BN-analytic rule (`max_c |μ_c ± N·σ_c|`) on per-channel statistics of the noise
    /// pass: the default where the exporter already folded BN.
    NoiseChannels,
    /// Calibration with user data.
    Calibrate,
    /// `--input-range` / `--preset` for the model input.
    InputRange,
}

/// A value's distribution as far as the BN rule knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    /// Per-channel moments, when the channel structure is known.
    pub moments: Option<Vec<Moments>>,
    /// Lower end of the range.
    pub lo: f64,
    /// Upper end of the range.
    pub hi: f64,
    /// Whether it comes straight from BN statistics or was propagated.
    pub rule: RangeRule,
}

impl Dist {
    fn from_moments(m: Vec<Moments>, n: f64, rule: RangeRule) -> Option<Dist> {
        if m.is_empty() {
            return None;
        }
        let lo = m
            .iter()
            .map(|c| c.mean - n * c.var.max(0.0).sqrt())
            .fold(f64::INFINITY, f64::min);
        let hi = m
            .iter()
            .map(|c| c.mean + n * c.var.max(0.0).sqrt())
            .fold(f64::NEG_INFINITY, f64::max);
        (lo.is_finite() && hi.is_finite()).then_some(Dist {
            moments: Some(m),
            lo,
            hi,
            rule,
        })
    }

    fn interval(lo: f64, hi: f64) -> Option<Dist> {
        (lo.is_finite() && hi.is_finite() && lo <= hi).then_some(Dist {
            moments: None,
            lo,
            hi,
            rule: RangeRule::BnPropagated,
        })
    }

    fn propagated(mut self) -> Dist {
        self.rule = RangeRule::BnPropagated;
        self
    }

    /// Applies an elementwise function: range by dense sampling, moments by the given map.
    fn map(&self, f: impl Fn(f64) -> f64 + Copy, m: impl Fn(Moments) -> Moments) -> Option<Dist> {
        let (lo, hi) = stats::range_of_fn(self.lo, self.hi, f);
        let mut d = Dist::interval(lo, hi)?;
        d.moments = self
            .moments
            .as_ref()
            .map(|ms| ms.iter().map(|&c| m(c)).collect());
        Some(d)
    }
}

/// A constant operand as per-channel values (scalar → one value; `[C]`, `[1, C, 1, …]` → C).
fn channel_constant(a: &ArrayD<f32>) -> Option<Vec<f64>> {
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
fn activation(node: &Node, graph: &Graph, producers: &HashMap<&str, usize>) -> Result<Option<Act>> {
    let op = node.op_type.as_str();
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Ok(None);
    }
    Ok(match op {
        "Relu" => Some(Act::Relu),
        "Clip" => {
            let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
            if let Some(v) = node.attr_float("min")? {
                lo = f64::from(v);
            }
            if let Some(v) = node.attr_float("max")? {
                hi = f64::from(v);
            }
            for (slot, target) in [(1usize, &mut lo), (2usize, &mut hi)] {
                if let Some(name) = node.input(slot) {
                    match graph.constant_f32(name, producers)? {
                        Some(a) => {
                            if let Some(&v) = a.iter().next() {
                                *target = f64::from(v);
                            }
                        }
                        None => return Ok(None),
                    }
                }
            }
            Some(Act::Clip(lo, hi))
        }
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
enum Act {
    Relu,
    Clip(f64, f64),
    Leaky(f64),
    HardSigmoid(f64, f64),
    HardSwish,
    Sigmoid,
    Tanh,
}

impl Act {
    fn eval(self, x: f64) -> f64 {
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

    fn non_negative(self) -> bool {
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
    for idx in graph.topological_order()? {
        let node = &graph.nodes[idx];
        let Some(out) = node.outputs.first().filter(|o| !o.is_empty()) else {
            continue;
        };
        let d = match origin(out) {
            Some(d) => Some(d),
            None => propagate(graph, node, &dists, &producers, n_sigmas)?,
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
                // x · g with g ∈ [0, G] (squeeze-excite gates, decomposed HardSwish):
                // |x·g| ≤ G·|x|, so G·x bounds the product.
                let (x, g) = match (gate(a), gate(b)) {
                    (Some(ga), Some(gb)) if ga < gb => (b, ga),
                    (_, Some(gb)) => (a, gb),
                    (ga, None) => (b, ga.unwrap_or(1.0)),
                };
                Dist::interval(x.lo.min(0.0) * g, x.hi.max(0.0) * g).map(|mut d| {
                    d.moments = x.moments.as_ref().map(|m| {
                        m.iter()
                            .map(|c| Moments {
                                mean: c.mean * g,
                                var: c.var * g * g,
                            })
                            .collect()
                    });
                    d
                })
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
        let g = node.attr_int("group")?.unwrap_or(1).max(1) as usize;
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
/// variance is low: on cifar10-keras the propagated range of the classifier's input was 3.34,
/// below the 3.78 a noise pass already reaches (the noise rule gives 16.2; logits SQNR on real
/// images 9.8 dB, 30.8 dB with the wider range). The caller widens these ranges to the noise
/// pass's where that is wider.
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

/// Values that are non-negative by construction (outputs of Relu, Clip(≥0, ·), Sigmoid,
/// HardSigmoid, Softmax, and of shape/pooling ops, Concat, Add, Mul over such values).
///
/// # Errors
/// Malformed attributes or constants.
pub fn nonnegative_values(graph: &Graph) -> Result<HashSet<String>> {
    let producers = graph.producers();
    let mut nonneg: HashSet<String> = HashSet::new();
    for idx in graph.topological_order()? {
        let node = &graph.nodes[idx];
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            continue;
        }
        let all_inputs = |from: usize| {
            node.inputs
                .iter()
                .skip(from)
                .filter(|s| !s.is_empty())
                .all(|s| {
                    nonneg.contains(s)
                        || graph
                            .constant_f32(s, &producers)
                            .ok()
                            .flatten()
                            .is_some_and(|a| a.iter().all(|&v| v >= 0.0))
                })
        };
        let yes = match node.op_type.as_str() {
            "Softmax" | "Abs" | "Exp" => true,
            "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "Identity"
            | "Dropout" | "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Transpose"
            | "Resize" | "Upsample" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "Gather"
            | "GatherElements" | "GatherND" | "Slice" | "Split" | "Expand" | "Tile"
            | "DepthToSpace" | "SpaceToDepth" => node.input(0).is_some_and(|x| nonneg.contains(x)),
            // Constant padding adds its value (0 unless input 2 gives one); the other modes
            // copy input values.
            "Pad" => {
                let mode = attrs::string(&node.attributes, "mode").map_err(|e| node.error(e))?;
                let value_ok = node.input(2).is_none_or(|v| {
                    graph
                        .constant_f32(v, &producers)
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.iter().all(|&v| v >= 0.0))
                });
                (value_ok || mode.is_some_and(|m| m != "constant"))
                    && node.input(0).is_some_and(|x| nonneg.contains(x))
            }
            "Concat" | "Add" | "Mul" | "Max" | "Min" => all_inputs(0),
            "Div" => all_inputs(0),
            _ => match activation(node, graph, &producers)? {
                Some(a) => a.non_negative(),
                None => false,
            },
        };
        if yes {
            for o in node.outputs.iter().filter(|o| !o.is_empty()) {
                nonneg.insert(o.clone());
            }
        }
    }
    Ok(nonneg)
}

/// Streaming statistics of one tensor over a forward pass (f64 sums in a fixed order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    /// Number of finite elements seen.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Their sum of squares.
    pub sum_sq: f64,
    /// Number of positive elements.
    pub count_pos: u64,
    /// Sum of positive elements.
    pub sum_pos: f64,
    /// Sum of squares of positive elements.
    pub sum_sq_pos: f64,
    /// Smallest element.
    pub min: f64,
    /// Largest element.
    pub max: f64,
    /// Every `stride`-th `|x|` over the whole pass (deterministic subsample for percentiles
    /// and clipping rates).
    #[serde(skip)]
    pub sample: Vec<f32>,
    /// Per-channel sums (channel axis 1, for tensors of rank ≥ 2) and the element count per
    /// channel: the per-channel means bias correction needs where BN statistics are gone.
    #[serde(skip)]
    pub channel_sum: Vec<f64>,
    #[serde(skip)]
    channel_count: u64,
    #[serde(skip)]
    channel_sum_sq: Vec<f64>,
    #[serde(skip)]
    feature_map: bool,
    #[serde(skip)]
    seen: u64,
}

impl Observed {
    fn add(&mut self, values: &ArrayD<f32>, sample_stride: usize) {
        if self.count == 0 {
            self.min = f64::INFINITY;
            self.max = f64::NEG_INFINITY;
        }
        if values.ndim() >= 2 {
            let c = values.shape()[1];
            self.feature_map = values.ndim() >= 3;
            if self.channel_sum.len() != c {
                self.channel_sum = vec![0.0; c];
                self.channel_sum_sq = vec![0.0; c];
                self.channel_count = 0;
            }
            for (k, lane) in values.axis_iter(ndarray::Axis(1)).enumerate() {
                let (mut s1, mut s2) = (0f64, 0f64);
                for &v in lane.iter() {
                    let x = f64::from(v);
                    s1 += x;
                    s2 += x * x;
                }
                self.channel_sum[k] += s1;
                self.channel_sum_sq[k] += s2;
            }
            self.channel_count += (values.len() / c.max(1)) as u64;
        }
        self.add_values(values, sample_stride);
    }

    fn add_values(&mut self, values: &ArrayD<f32>, sample_stride: usize) {
        for &v in values.iter() {
            let i = self.seen;
            self.seen += 1;
            if !v.is_finite() {
                continue;
            }
            let x = f64::from(v);
            self.count += 1;
            self.sum += x;
            self.sum_sq += x * x;
            if x > 0.0 {
                self.count_pos += 1;
                self.sum_pos += x;
                self.sum_sq_pos += x * x;
            }
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            if sample_stride > 0 && i.is_multiple_of(sample_stride as u64) {
                self.sample.push(v.abs());
            }
        }
    }

    fn std(n: u64, sum: f64, sum_sq: f64) -> f64 {
        if n < 2 {
            return 0.0;
        }
        let n = n as f64;
        ((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0).sqrt()
    }

    /// SQuant's noise-rule clip value `α` for `bits`, and whether the tensor counts as signed
    /// (`min < 0`).
    pub fn sigma_rule(&self, bits: u32) -> (f64, bool) {
        let k = stats::sigma_rule_k(bits);
        let signed = self.min < 0.0;
        let alpha = if signed {
            k * Self::std(self.count, self.sum, self.sum_sq) / 1.25
        } else {
            k * Self::std(self.count_pos, self.sum_pos, self.sum_sq_pos)
        };
        let mut alpha = alpha;
        if bits < 6 {
            alpha = alpha.min(self.max.abs().max(self.min.abs()));
        }
        if alpha.is_nan() || alpha <= 0.0 || !alpha.is_finite() {
            alpha = self.max.abs().max(self.min.abs());
        }
        (alpha, signed)
    }

    /// Fraction of the subsample whose `|x|` exceeds `limit` (values a range would clip).
    pub fn fraction_above(&self, limit: f64) -> f64 {
        if self.sample.is_empty() {
            return 0.0;
        }
        let n = self
            .sample
            .iter()
            .filter(|&&v| f64::from(v) > limit)
            .count();
        n as f64 / self.sample.len() as f64
    }

    /// Per-channel means (channel axis 1), when the tensor has channels.
    pub fn channel_means(&self) -> Option<Vec<f64>> {
        (self.channel_count > 0 && !self.channel_sum.is_empty()).then(|| {
            self.channel_sum
                .iter()
                .map(|s| s / self.channel_count as f64)
                .collect()
        })
    }

    /// `max_c |μ_c ± N·σ_c|` over per-channel means and standard deviations (channel axis 1).
    /// Only for feature maps (`[N, C, spatial…]`): a `[N, F]` matrix has just N samples per
    /// feature, too few for a per-channel estimate.
    pub fn channel_gaussian_bound(&self, n_sigmas: f64) -> Option<f64> {
        let n = self.channel_count as f64;
        if n < 2.0 || self.channel_sum.is_empty() || !self.feature_map {
            return None;
        }
        let mut m = 0f64;
        for (s1, s2) in self.channel_sum.iter().zip(&self.channel_sum_sq) {
            let mean = s1 / n;
            let var = (s2 / n - mean * mean).max(0.0);
            let sd = var.sqrt();
            m = m
                .max((mean + n_sigmas * sd).abs())
                .max((mean - n_sigmas * sd).abs());
        }
        Some(m)
    }

    /// `max|x|`.
    pub fn max_abs(&self) -> f64 {
        self.max.abs().max(self.min.abs())
    }

    /// The `p`-th percentile of `|x|` over the subsample (p in (0, 100]).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.sample.is_empty() {
            return self.max_abs();
        }
        let mut s = self.sample.clone();
        let idx = (((p / 100.0) * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
        let (_, v, _) = s.select_nth_unstable_by(idx, f32::total_cmp);
        f64::from(*v)
    }
}

/// Runs the float `model` in tract on each batch of `inputs` and observes `values`.
///
/// # Errors
/// tract cannot run the model, or a requested value does not exist.
pub fn observe(
    model: &Model,
    values: &[String],
    batches: &[Vec<ArrayD<f32>>],
    sample_stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<BTreeMap<String, Observed>> {
    let mut m = model.clone();
    let known: HashSet<String> = m
        .graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().cloned())
        .chain(m.graph.inputs.iter().filter_map(|i| i.name.clone()))
        .collect();
    for v in values {
        if !known.contains(v) {
            return Err(Error::Graph(format!(
                "value `{v}` is not computed by the graph"
            )));
        }
    }
    // The observed values become the only outputs; tract prunes the rest.
    m.graph.outputs = values
        .iter()
        .map(|v| pb::ValueInfoProto {
            name: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    let bytes = crate::onnx::io::encode_model(&m.to_proto());
    if batches.is_empty() {
        return Ok(BTreeMap::new());
    }
    // One optimized plan per distinct batch shape (a short last batch gets its own).
    let mut plans: Vec<(Vec<Vec<usize>>, crate::validate::TractModel)> = Vec::new();
    let mut out: BTreeMap<String, Observed> = BTreeMap::new();
    for (b, batch) in batches.iter().enumerate() {
        let shapes: Vec<Vec<usize>> = batch.iter().map(|a| a.shape().to_vec()).collect();
        let k = match plans.iter().position(|(s, _)| *s == shapes) {
            Some(k) => k,
            None => {
                let m = crate::validate::TractModel::load(
                    crate::validate::Source::Bytes(&bytes),
                    &shapes,
                )?;
                plans.push((shapes, m));
                plans.len() - 1
            }
        };
        let results = plans[k].1.run(batch)?;
        for (name, r) in values.iter().zip(&results) {
            out.entry(name.clone()).or_default().add(r, sample_stride);
        }
        progress(b + 1, batches.len());
    }
    Ok(out)
}
