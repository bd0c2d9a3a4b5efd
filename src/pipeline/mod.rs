//! The ISQuant pipeline: a float model in, an int8 model and a [`QuantizeReport`] out.
//!
//! [`quantize`] calls the stages in the order they run (`docs/algorithm.md` §4.4):
//!
//! | stage | module | what it decides or changes |
//! |---|---|---|
//! | options | [`config`] | every check on the options, before anything runs |
//! | fold BN | [`crate::passes::fold_bn`] | BatchNormalization folded into its layers; per-channel BN statistics recorded |
//! | equalize | [`equalize`] | whether and how cross-layer equalization rescales chains |
//! | select | [`select`] | which layers are quantized (targets minus `--skip`, `--keep-*-float`) |
//! | activation sources | [`activations`] | where each layer's input range comes from |
//! | weights | [`weights`] | weight scales, SQuant rounding, bias shift from BN statistics |
//! | forward pass | [`activations`] | noise or calibration statistics where the sources need them |
//! | bias correction | [`bias`] | corrected biases |
//! | plans | [`activations`] | each layer's activation scale, type and output quantizer |
//! | emit | [`crate::passes::emit`] | the graph in the chosen format, and the layer table |
//! | finish | [`finish`] | IR version, metadata |
//! | report | [`report`] | what was done, and the text summary |
//!
//! The graph is edited by fold, equalize, bias correction, emit and finish only, in that order;
//! the stages between read it.

pub mod activations;
pub mod bias;
pub mod config;
pub mod equalize;
pub mod finish;
pub mod forward;
pub mod report;
pub mod select;
pub mod weights;

use std::time::{Duration, Instant};

use ndarray::ArrayD;

pub use config::{
    ActRanges, ActivationType, CalibrationMethod, Equalize, Granularity, NoiseInput,
    QuantizeConfig, Switch,
};
pub use report::{ActivationReport, LayerReport, QuantizeReport, RenderOptions};

use crate::error::Result;
use crate::graph::Model;
use crate::passes::emit;
use crate::passes::fold_bn;

/// Quantizes `model` in place and reports what was done.
///
/// `calibration`: the user's input batches, required when `act_ranges` is `Calibrate`.
/// `progress` is told the name of each stage as it starts.
///
/// # Errors
/// Invalid options, a model with no quantizable layer, malformed layers, non-finite
/// weights, or a failing forward pass.
pub fn quantize(
    model: &mut Model,
    cfg: &QuantizeConfig,
    calibration: Option<&[Vec<ArrayD<f32>>]>,
    progress: &mut dyn FnMut(&str),
) -> Result<QuantizeReport> {
    cfg.validate(calibration.is_some_and(|c| !c.is_empty()))?;
    model.graph.check_finite_weights()?;
    let mut timings = Timings::default();

    progress("fold-bn");
    let t = Instant::now();
    let mut fold = fold(model)?;
    timings.add("fold-bn", t);

    let t = Instant::now();
    let equalized = equalize::run(model, &mut fold.stats, cfg, progress)?;
    if equalized.report.is_some() {
        timings.add("equalize", t);
    }

    let selection = select::select(&model.graph, cfg)?;
    let chosen = &selection.chosen;

    progress("ranges");
    let t_ranges = Instant::now();
    let mut sources = activations::sources(model, chosen, &fold.stats, cfg)?;
    let integer: Vec<bool> = (0..chosen.len())
        .map(|k| sources.integer(k, cfg.format))
        .collect();
    progress("squant");
    let t = Instant::now();
    let bn_means = bias::bn_input_means(model, chosen, &sources.bn, &fold.stats, cfg)?;
    let weights = weights::quantize(model, chosen, &integer, &bn_means, cfg)?;
    let squant = timings.add("squant", t);
    let pass = activations::observe(model, chosen, &mut sources, cfg, calibration, progress)?;
    let observed = &pass.observed;
    let bias_corrected = bias::correct(model, chosen, &weights, &bn_means, observed, cfg)?;
    timings.add_duration("ranges", t_ranges.elapsed().saturating_sub(squant));

    let (plans, mut layers) =
        activations::plan(model, chosen, weights.quantized, &sources, observed, cfg);

    progress("emit");
    let t = Instant::now();
    let emitted = emit::emit(model, &plans, cfg.format, cfg.qdq_outputs)?;
    model.graph.remove_dead_nodes();
    model.graph.remove_unused_initializers();
    timings.add("emit", t);

    finish::finish(model, cfg, equalized.report.as_ref(), &emitted)?;
    report::set_modes(&mut layers, &emitted);
    let warnings = report::warnings(&layers, cfg.weight_bits);
    Ok(QuantizeReport {
        version: env!("CARGO_PKG_VERSION"),
        config: cfg.clone(),
        bn_folded: fold.folded,
        bn_kept: fold.kept,
        layers,
        emitted,
        quantization_ops: report::quantization_ops(&model.graph),
        float_weights: report::float_weights(&model.graph),
        skipped: selection.skipped,
        bias_corrected,
        equalized: equalized.report,
        equalize_note: equalized.note,
        warnings,
        deploy: crate::deploy::hint(cfg.format, cfg.qdq_outputs),
        forward_pass: (pass.inputs > 0).then(|| report::ForwardPass {
            inputs: pass.inputs,
            offered: pass.offered,
            settled: pass.settled,
            range_change: pass.last_change.map(|c| c.0),
        }),
        timings_ms: timings.0,
    })
}

/// The fold stage: BatchNormalization folded ([`fold_bn::fold_batch_norms`]) between two
/// topological sorts (the passes after it need node order to be data order).
fn fold(model: &mut Model) -> Result<fold_bn::FoldReport> {
    model.graph.sort_topologically()?;
    let fold = fold_bn::fold_batch_norms(model)?;
    model.graph.sort_topologically()?;
    Ok(fold)
}

/// Stage times, in the order the stages ran.
#[derive(Debug, Default)]
struct Timings(Vec<(String, f64)>);

impl Timings {
    /// Records the time since `start`; returns it.
    fn add(&mut self, stage: &str, start: Instant) -> Duration {
        let d = start.elapsed();
        self.add_duration(stage, d);
        d
    }

    fn add_duration(&mut self, stage: &str, d: Duration) {
        self.0.push((stage.to_string(), d.as_secs_f64() * 1e3));
    }
}
