//! The equalization stage: whether cross-layer equalization runs, with which scale rule, and
//! what replacing ReLU6 by Relu changed ([`crate::passes::equalize`] does the rewrite).
//!
//! `--equalize auto` decides per model:
//! - on when the model has a depthwise convolution (`group` = output channels > 1): per-tensor
//!   weights lose most there; off otherwise;
//! - off under `--qdq-outputs all` when BN statistics exist: the extra output quantizers sit
//!   on convolution outputs CLE spreads apart, and neither scale rule models them;
//! - with the noise objective, when CLE reaches fewer than half of the convolutions, DFQ's
//!   rule (`--equalize-by weights`) instead.
//!
//! Measurements behind each rule: `docs/results.md`, "CLE with a noise objective", and
//! `docs/experiments.md`, "ppocr: DFQ's rule where CLE reaches under half of the convolutions"
//! and "No CLE under `--qdq-outputs all` where BN statistics exist".

use std::collections::BTreeMap;

use super::config::{Equalize, QuantizeConfig};
use super::forward::forward_batches;
use crate::error::Result;
use crate::graph::{Graph, Model};
use crate::metrics::{top_k, Sums};
use crate::passes::equalize::{self as cle, EqualizeReport, FloatChange, Objective, Relu6};
use crate::passes::fold_bn::ChannelStats;
use crate::runtime::{Source, TractModel};

/// What the stage did: the pass's report, and why `auto` overrode `--equalize-by`.
#[derive(Debug, Clone, Default)]
pub struct Equalized {
    /// The pass's report (`None`: equalization did not run).
    pub report: Option<EqualizeReport>,
    /// How `--equalize auto` chose the scale rule, when it overrode `--equalize-by`.
    pub note: Option<String>,
}

/// Whether equalization runs for this model and these options.
fn wanted(graph: &Graph, cfg: &QuantizeConfig) -> bool {
    match cfg.equalize {
        Equalize::On => true,
        Equalize::Off => false,
        // On under `--qdq-outputs all` too. It was off there while that form put its own Q on
        // a convolution's output before equalization's `Relu → Min` (16.19 dB on MobileNetV2
        // with CLE, 17.53 without); with the readers' Q placed there and the redundant bounds
        // removed, CLE measures 20.67 dB at the same speed (docs/benchmarks.md, issue 16).
        Equalize::Auto => has_depthwise(graph),
    }
}

/// Runs cross-layer equalization when `wanted`; updates `stats` (divided by the scales).
///
/// # Errors
/// Malformed constants; tract failing to run the float-change measurement.
pub fn run(
    model: &mut Model,
    stats: &mut BTreeMap<String, ChannelStats>,
    cfg: &QuantizeConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Equalized> {
    if !wanted(&model.graph, cfg) {
        return Ok(Equalized::default());
    }
    progress("equalize");
    let before = (cfg.relu6 == Relu6::Relu).then(|| model.clone());
    let opts = cle::Options {
        relu6: cfg.relu6,
        absorb_bias: cfg.absorb_bias,
        objective: cfg.equalize_objective,
        n_sigmas: cfg.bn_sigmas,
        weight_bits: cfg.weight_bits,
        act_bits: cfg.act_bits,
    };
    // auto keeps the original to go back to (only `on` skips the copy).
    let backup = (cfg.equalize == Equalize::Auto && opts.objective == Objective::Noise)
        .then(|| (model.clone(), stats.clone()));
    let mut report = cle::equalize(model, stats, &opts)?;
    let convs = model.graph.nodes.iter().filter(|n| n.is("Conv")).count();
    let mut note = None;
    if let Some((m, st)) = backup.filter(|_| 2 * report.pairs.len() < convs) {
        *model = m;
        *stats = st;
        let weights = cle::Options {
            objective: Objective::Weights,
            ..opts
        };
        report = cle::equalize(model, stats, &weights)?;
        note = Some(format!(
            "--equalize auto: CLE reaches {} layer pairs of {convs} convolutions (under half), so it uses DFQ's rule (--equalize-by weights), which measured better there",
            report.pairs.len()
        ));
    }
    model.graph.sort_topologically()?;
    if let Some(before) = before.filter(|_| report.relu6_rewritten > 0) {
        progress("measure the float change of ReLU6 → Relu");
        report.float_change = Some(float_change(&before, model, cfg)?);
    }
    Ok(Equalized {
        report: Some(report),
        note,
    })
}

/// Whether a Conv has `group` > 1 equal to its weight's output channels (depthwise).
fn has_depthwise(g: &Graph) -> bool {
    let producers = g.producers();
    g.nodes.iter().any(|n| {
        let group = n.group().unwrap_or(1);
        n.is("Conv")
            && group > 1
            && n.input(1)
                .and_then(|w| g.constant_f32(w, &producers).ok().flatten())
                .is_some_and(|w| w.shape().first().is_some_and(|&o| o == group))
    })
}

/// Runs the float model before and after equalization on 8 seeded N(0, 1) inputs in tract and
/// compares their first outputs (what `--relu6 relu` changed).
fn float_change(before: &Model, after: &Model, cfg: &QuantizeConfig) -> Result<FloatChange> {
    use prost::Message;
    let batches = forward_batches(before, cfg.input_shape.as_deref(), 8, 8, |s, k| {
        crate::rng::seeded_normal(s, cfg.noise_seed.wrapping_add(1000 + k as u64))
    })?;
    let (a, b) = (
        before.to_proto().encode_to_vec(),
        after.to_proto().encode_to_vec(),
    );
    let mut sums = Sums::default();
    let (mut agree, mut rows) = (0usize, 0usize);
    for batch in &batches {
        let shapes: Vec<Vec<usize>> = batch.iter().map(|x| x.shape().to_vec()).collect();
        let ya = TractModel::load(Source::Bytes(&a), &shapes)?.run(batch)?;
        let yb = TractModel::load(Source::Bytes(&b), &shapes)?.run(batch)?;
        let (Some(ya), Some(yb)) = (ya.first(), yb.first()) else {
            continue;
        };
        sums.add(ya, yb);
        if ya.ndim() == 2 && ya.shape()[1] > 1 {
            for (ra, rb) in ya.outer_iter().zip(yb.outer_iter()) {
                let (ra, rb): (Vec<f32>, Vec<f32>) =
                    (ra.iter().copied().collect(), rb.iter().copied().collect());
                agree += usize::from(top_k(&ra, 1) == top_k(&rb, 1));
                rows += 1;
            }
        }
    }
    Ok(FloatChange {
        inputs: batches
            .iter()
            .filter_map(|b| b.first())
            .map(|x| x.shape().first().copied().unwrap_or(1))
            .sum(),
        sqnr_db: sums.sqnr_db(),
        max_abs: sums.max_abs(),
        top1_agreement: if rows > 0 {
            agree as f64 / rows as f64
        } else {
            f64::NAN
        },
    })
}
