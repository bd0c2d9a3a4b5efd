//! Which chains equalize: `A → f → B` with A and B Conv layers with constant weights, `f`
//! Relu / LeakyRelu / identity / Clip(0, c), each value read only by the next; and what the
//! noise objective knows about a pair from BN statistics.

use std::collections::{BTreeMap, HashMap};

use super::{skip, EqualizeReport, Objective, Options, Pair, PairStats, Relu6};
use crate::error::Result;
use crate::graph::{Model, Node};
use crate::passes::fold_bn::ChannelStats;
use crate::stats::{clip_moments, Moments};

/// Finds the chains to equalize, in graph order of A (chains left alone go to `report`).
///
/// # Errors
/// Malformed constants or attributes.
pub(super) fn find(
    model: &Model,
    stats: &BTreeMap<String, ChannelStats>,
    opts: &Options,
    report: &mut EqualizeReport,
) -> Result<Vec<Pair>> {
    let relu6 = opts.relu6;
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
                match g.clip_bounds(nn, &producers)? {
                    Some((Some(l), Some(h))) if l == 0.0 && h > 0.0 => Some(h),
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
        let noise = match opts.objective {
            Objective::Weights => None,
            Objective::Noise => pair_stats(model, &producers, stats, a, act, clip_hi, opts)?,
        };
        pairs.push(Pair {
            a,
            act,
            b: feed,
            clip_hi,
            noise,
        });
    }
    Ok(pairs)
}

/// Per-channel `(E[x], E[x²])` of value `v` from BN statistics: a recorded BN output, or
/// Relu / Clip(lo, hi) / Add of such values (Add: independent summands). `None` when the
/// statistics do not reach `v`.
fn tensor_moments(
    model: &Model,
    producers: &HashMap<&str, usize>,
    stats: &BTreeMap<String, ChannelStats>,
    v: &str,
    depth: usize,
) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
    if let Some(st) = stats.get(v) {
        let e = st.mean.iter().zip(&st.std).map(|(m, s)| m * m + s * s);
        return Ok(Some((st.mean.clone(), e.collect())));
    }
    let g = &model.graph;
    let Some(&p) = producers.get(v) else {
        return Ok(None);
    };
    let n = &g.nodes[p];
    if depth > 8 {
        return Ok(None);
    }
    let first = |k: usize| -> Result<Option<(Vec<f64>, Vec<f64>)>> {
        match n.input(k) {
            Some(x) => tensor_moments(model, producers, stats, x, depth + 1),
            None => Ok(None),
        }
    };
    let clipped = |(mean, e2): (Vec<f64>, Vec<f64>), lo: f64, hi: f64| {
        mean.iter()
            .zip(&e2)
            .map(|(&m, &q)| {
                let c = clip_moments(Moments::new(m, (q - m * m).max(0.0)), lo, hi);
                (c.mean, c.second_moment())
            })
            .unzip()
    };
    Ok(match n.op_type.as_str() {
        "Relu" => first(0)?.map(|x| clipped(x, 0.0, f64::INFINITY)),
        "Clip" => match g.clip_bounds(n, producers)? {
            Some((lo, hi)) => {
                let lo = lo.map_or(f64::NEG_INFINITY, f64::from);
                let hi = hi.map_or(f64::INFINITY, f64::from);
                first(0)?.map(|x| clipped(x, lo, hi))
            }
            None => None,
        },
        "Add" => match (first(0)?, first(1)?) {
            (Some((ma, ea)), Some((mb, eb))) if ma.len() == mb.len() => Some(
                ma.iter()
                    .zip(&mb)
                    .zip(ea.iter().zip(&eb))
                    .map(|((a, b), (x, y))| (a + b, x + y + 2.0 * a * b))
                    .unzip(),
            ),
            _ => None,
        },
        _ => None,
    })
}

/// The noise objective's statistics of pair `A → f → B` (original scaling), or `None` when
/// BN statistics do not describe A's output.
fn pair_stats(
    model: &Model,
    producers: &HashMap<&str, usize>,
    stats: &BTreeMap<String, ChannelStats>,
    a: usize,
    act: Option<usize>,
    clip_hi: Option<f32>,
    opts: &Options,
) -> Result<Option<PairStats>> {
    let g = &model.graph;
    let Some(y) = g.nodes[a].outputs.first() else {
        return Ok(None);
    };
    let Some(st) = stats.get(y) else {
        return Ok(None);
    };
    let n = opts.n_sigmas;
    let relu_like = act.is_some_and(|i| !g.nodes[i].is("LeakyRelu"));
    let hi = clip_hi.map_or(f64::INFINITY, f64::from);
    let (range, energy) = st
        .mean
        .iter()
        .zip(&st.std)
        .map(|(&m, &s)| {
            if relu_like {
                let c = clip_moments(Moments::new(m, s * s), 0.0, hi);
                ((m + n * s).clamp(0.0, hi), c.second_moment())
            } else {
                ((m - n * s).abs().max((m + n * s).abs()), m * m + s * s)
            }
        })
        .unzip();
    let x = g.nodes[a].input(0).unwrap_or("");
    let in_energy = if g.inputs.iter().any(|i| i.name.as_deref() == Some(x)) {
        // A graph input: assume standardised (E[x²] = 1), as image models take.
        Vec::new()
    } else {
        match tensor_moments(model, producers, stats, x, 0)? {
            Some((_, e)) => e,
            None => return Ok(None),
        }
    };
    Ok(Some(PairStats {
        range,
        energy,
        in_energy,
        unsigned: relu_like,
    }))
}
