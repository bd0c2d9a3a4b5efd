//! The bias-correction stage (`--correct-bias`, on by default): where `E[x]` comes from for
//! each layer, and writing the corrected biases ([`crate::passes::bias_correction`] holds the
//! formula and the write).
//!
//! `E[x]` per input channel comes from BN statistics pushed through the activations
//! ([`ranges::bn_ranges`], whatever rule sets the ranges); its shift is computed in the weights
//! stage, right after the layer is rounded. Layers BN statistics do not reach take the
//! per-channel means of the noise or calibration pass. A layer that has a BN mean never falls
//! back to the pass, even when its layout cannot be corrected.

use std::collections::BTreeMap;

use super::config::QuantizeConfig;
use super::weights::Weights;
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::Model;
use crate::passes::bias_correction::{apply_bias_shift, bias_shift, InputMean};
use crate::passes::fold_bn::ChannelStats;
use crate::passes::ranges::{self, Dist, Observed};
use crate::passes::targets::Target;

/// [`InputMean`] for every chosen layer BN statistics reach (all `None` when bias correction
/// is off). `bn` are the range stage's BN distributions,
/// computed afresh when that stage did not use BN statistics.
///
/// # Errors
/// Malformed attributes or constants.
pub fn bn_input_means(
    model: &Model,
    chosen: &[Target],
    bn: &BTreeMap<String, Dist>,
    stats: &BTreeMap<String, ChannelStats>,
    cfg: &QuantizeConfig,
) -> Result<Vec<Option<InputMean>>> {
    if !cfg.correct_bias {
        return Ok(vec![None; chosen.len()]);
    }
    let fresh;
    let dists = if bn.is_empty() {
        fresh = ranges::bn_ranges(&model.graph, stats, cfg.bn_sigmas)?;
        &fresh
    } else {
        bn
    };
    chosen
        .iter()
        .map(|target| {
            let node = &model.graph.nodes[target.node];
            let mean = dists
                .get(node.input(0).unwrap_or(""))
                .and_then(|d| d.moments.as_ref())
                .map(|m| m.iter().map(|c| c.mean).collect::<Vec<f64>>());
            let group = node.group()?;
            Ok(mean.map(|mean| InputMean { mean, group }))
        })
        .collect()
}

/// Corrects the biases of the chosen layers; returns how many were corrected.
///
/// # Errors
/// Malformed attributes or constants.
pub fn correct(
    model: &mut Model,
    chosen: &[Target],
    weights: &Weights,
    bn_means: &[Option<InputMean>],
    observed: &BTreeMap<String, Observed>,
    cfg: &QuantizeConfig,
) -> Result<usize> {
    if !cfg.correct_bias {
        return Ok(0);
    }
    // Initializers change, nodes do not: one producer index and one name set serve all.
    let producers = model.graph.producer_index();
    let mut names = NameGen::new(model.graph.taken_names());
    let mut corrected = 0usize;
    for (k, target) in chosen.iter().enumerate() {
        let (w, qw) = (&weights.float[k], &weights.quantized[k]);
        let delta = match (&bn_means[k], &weights.bn_shifts[k]) {
            (Some(_), shift) => shift.clone(),
            (None, _) => {
                let node = &model.graph.nodes[target.node];
                let group = node.group()?;
                observed
                    .get(node.input(0).unwrap_or(""))
                    .and_then(Observed::channel_means)
                    .and_then(|mean| bias_shift(&w.values, qw, w.layout, group, &mean))
            }
        };
        let Some(delta) = delta else {
            continue;
        };
        if apply_bias_shift(model, &mut names, &producers, target.node, &delta)? {
            corrected += 1;
        }
    }
    Ok(corrected)
}
