//! One layer's activation scale, from where its range comes from to the scale emitted.
//!
//! For the input `x` of every chosen layer, in order:
//!
//! 1. **Source** ([`sources`]): a layer with no integer op (ConvTranspose, Gemm with
//!    `transA`) keeps a float input; the model input takes `--input-range` (or a preset's
//!    range), else stays float; otherwise `--act-ranges` decides: `auto` takes the BN rule
//!    where BN statistics reach `x` ([`ranges::bn_ranges`]), widened to the noise pass where
//!    those moments went through a layer ([`ranges::through_layers`]), and the noise pass where
//!    they do not reach; `bn` BN only; `noise` and `calibrate` a forward pass.
//! 2. **Forward pass** ([`observe`]): the values sources need observed, on seeded noise
//!    (N(0,1) images for `auto`, U[0,1) for SQuant's rule) or the user's calibration inputs.
//!    Widening is a refinement: when nothing else needs the pass and the input shape is open,
//!    the propagated ranges stay.
//! 3. **Range → scale** ([`plan`]): from the pass, `auto` takes `max_c |μ_c ± N·σ_c|`
//!    (`N = --noise-sigmas`) for feature maps and SQuant's rule for other tensors, `noise`
//!    SQuant's rule, `calibrate` `max|x|` or a percentile; a widened range takes the larger
//!    of the two. Then `s_x = hi / (2^b − 1)` for non-negative tensors (uint8, unless
//!    `--format qdq` or `--activation-type int8`) and `s_x = max(|lo|, |hi|) / (2^(b−1) − 1)`
//!    otherwise (int8); zero-point 0. An empty or non-finite range keeps the input float.
//! 4. **Output scale** (Q/DQ with `--qdq-outputs all`): the `Q → DQ` after a layer that no
//!    quantized reader supplies a scale for takes the layer's own output range, but only from
//!    a BN straight before that output, or from calibration: an output Q clips, and ranges
//!    pushed through layers or from noise measured far too narrow there.
//!
//! The model input has no statistics: without `--input-range`, a layer reading it keeps a
//! float input and int8 weights (as SQuant leaves its first layer's input float).

use std::collections::{BTreeMap, HashSet};

use ndarray::ArrayD;

use super::config::{ActRanges, ActivationType, CalibrationMethod, NoiseInput, QuantizeConfig};
use super::forward::{forward_batches, forward_shape};
use super::report::{ActivationReport, LayerReport};
use crate::error::Result;
use crate::graph::Model;
use crate::passes::emit::{ActQuant, Format, LayerPlan, QdqOutputs};
use crate::passes::fold_bn::ChannelStats;
use crate::passes::ranges::{self, Dist, Observed, RangeRule};
use crate::passes::targets::Target;
use crate::passes::weights::QuantizedWeight;

/// Where one layer's input range comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The BN rule.
    Dist(Dist),
    /// The BN rule pushed through a layer: widened to the forward pass where that is wider.
    Widen(Dist),
    /// `--input-range` for the model input.
    Input(f64, f64),
    /// The forward pass.
    Observe,
    /// None: the input stays float, for this reason.
    Float(String),
}

/// Every chosen layer's [`Source`], and what the BN rule and the structure know.
#[derive(Debug, Clone)]
pub struct Sources {
    /// One per chosen layer.
    pub per_layer: Vec<Source>,
    /// BN-rule distributions by value (empty unless `--act-ranges` is `auto` or `bn`).
    pub bn: BTreeMap<String, Dist>,
    /// Values that are non-negative by construction (uint8 candidates).
    pub nonneg: HashSet<String>,
}

impl Sources {
    /// Whether layer `k` runs with a quantized input in an integer format (per-channel weight
    /// scales then live in the rescale; elsewhere they need a per-axis DequantizeLinear).
    #[must_use]
    pub fn integer(&self, k: usize, format: Format) -> bool {
        !format.is_qdq() && !matches!(self.per_layer.get(k), Some(Source::Float(_)) | None)
    }
}

/// Step 1: decides each chosen layer's [`Source`].
///
/// # Errors
/// Malformed attributes or constants.
pub fn sources(
    model: &Model,
    chosen: &[Target],
    stats: &BTreeMap<String, ChannelStats>,
    cfg: &QuantizeConfig,
) -> Result<Sources> {
    let from_input = ranges::input_derived(&model.graph, cfg.input_range)?;
    let nonneg = ranges::nonnegative_values(&model.graph)?;
    let bn = match cfg.act_ranges {
        ActRanges::Auto | ActRanges::Bn => ranges::bn_ranges(&model.graph, stats, cfg.bn_sigmas)?,
        ActRanges::Noise | ActRanges::Calibrate => BTreeMap::new(),
    };
    let through_layers = ranges::through_layers(&model.graph, &bn)?;
    let mut per_layer = Vec::with_capacity(chosen.len());
    for target in chosen {
        let node = &model.graph.nodes[target.node];
        let x = node.input(0).unwrap_or("").to_string();
        // ConvTranspose has no integer op in ONNX, but Q/DQ formats can quantize its input
        // (runtimes run DQ → ConvTranspose, or fuse it).
        let integer_op = node.is("Conv")
            || node.is("Gemm")
            || node.is("MatMul")
            || (node.is("ConvTranspose") && cfg.format.is_qdq());
        let transposed_a = node.is("Gemm") && node.attr_int("transA")?.unwrap_or(0) != 0;
        let src = if !integer_op {
            Source::Float(format!(
                "{} has no integer op in ONNX: int8 weights, float compute",
                node.op_type
            ))
        } else if transposed_a {
            Source::Float("Gemm with transA=1: int8 weights, float compute".into())
        } else if let Some(d) = from_input.get(&x) {
            // The model input, or a value computed from it by ops that only move, pad, convert
            // or rescale it (NHWC Transpose, focus Slice+Concat, Pad, Cast, in-graph
            // normalisation: `passes::ranges::input`).
            let via = if d.path.is_empty() {
                String::new()
            } else {
                format!(" through {}", d.path.join(" → "))
            };
            match cfg.input_range {
                Some(_) if d.lo.is_finite() && d.hi.is_finite() => Source::Input(d.lo, d.hi),
                _ => Source::Float(format!(
                    "reads the model input `{}`{via}, whose range is unknown: pass --input-range LO:HI or --preset imagenet to make it integer too",
                    d.input
                )),
            }
        } else {
            match cfg.act_ranges {
                ActRanges::Auto => match bn.get(&x) {
                    Some(d) if through_layers.contains(&x) => Source::Widen(d.clone()),
                    Some(d) => Source::Dist(d.clone()),
                    None => Source::Observe,
                },
                ActRanges::Bn => bn.get(&x).cloned().map_or_else(
                    || {
                        Source::Float(format!(
                            "no BN statistics reach `{x}` (use --act-ranges auto or noise)"
                        ))
                    },
                    Source::Dist,
                ),
                ActRanges::Noise | ActRanges::Calibrate => Source::Observe,
            }
        };
        per_layer.push(src);
    }
    Ok(Sources {
        per_layer,
        bn,
        nonneg,
    })
}

/// The value `--qdq-outputs all` puts an output `Q → DQ` on for each chosen layer (Q/DQ
/// formats also quantize layer outputs that do not feed another quantized layer directly,
/// such as residual Adds and graph outputs, so runtimes can fuse `DQ → Conv → Q`).
fn output_values(model: &Model, chosen: &[Target], cfg: &QuantizeConfig) -> Vec<Option<String>> {
    chosen
        .iter()
        .map(|t| {
            let node = &model.graph.nodes[t.node];
            (cfg.format.is_qdq()
                && cfg.qdq_outputs == QdqOutputs::All
                && (node.is("Conv") || node.is("Gemm") || node.is("MatMul")))
            .then(|| node.outputs.first().cloned())
            .flatten()
        })
        .collect()
}

/// Step 2: runs the forward pass over the values the sources need (and, for the noise and
/// calibration rules, the outputs `--qdq-outputs all` quantizes). Turns widened ranges back
/// into plain ones when the pass is not needed otherwise and cannot run.
///
/// # Errors
/// tract cannot run the model; an open input shape where the pass is needed.
pub fn observe(
    model: &Model,
    chosen: &[Target],
    sources: &mut Sources,
    cfg: &QuantizeConfig,
    calibration: Option<&[Vec<ArrayD<f32>>]>,
    progress: &mut dyn FnMut(&str),
) -> Result<ranges::Pass> {
    if !sources
        .per_layer
        .iter()
        .any(|s| matches!(s, Source::Observe))
        && forward_shape(model, cfg.input_shape.as_deref()).is_err()
    {
        for s in &mut sources.per_layer {
            if let Source::Widen(d) = s {
                *s = Source::Dist(d.clone());
            }
        }
    }
    let mut values: Vec<String> = chosen
        .iter()
        .zip(&sources.per_layer)
        .filter(|(_, s)| matches!(s, Source::Observe | Source::Widen(_)))
        .map(|(t, _)| model.graph.nodes[t.node].input(0).unwrap_or("").to_string())
        .collect();
    // With `auto` and `bn` only BN statistics set an extra output Q (see `output_scale`).
    if matches!(cfg.act_ranges, ActRanges::Noise | ActRanges::Calibrate) {
        values.extend(output_values(model, chosen, cfg).into_iter().flatten());
    }
    values.sort();
    values.dedup();
    if values.is_empty() {
        return Ok(ranges::Pass::default());
    }
    noise_pass(model, &values, cfg, calibration, progress)
}

/// The forward pass of [`observe`] over `values`: calibration batches, or seeded noise.
fn noise_pass(
    model: &Model,
    values: &[String],
    cfg: &QuantizeConfig,
    calibration: Option<&[Vec<ArrayD<f32>>]>,
    progress: &mut dyn FnMut(&str),
) -> Result<ranges::Pass> {
    let batches: Vec<Vec<ArrayD<f32>>> = match cfg.act_ranges {
        ActRanges::Calibrate => calibration.map(<[_]>::to_vec).unwrap_or_default(),
        _ => {
            progress("noise forward pass");
            let seed = cfg.noise_seed;
            // SQuant's rule (`noise`) uses U[0, 1) images whatever the preprocessing (its k·σ
            // widths were tuned for that batch); the per-channel rule (`auto`) N(0, 1) images,
            // the statistics normalised inputs have by construction (docs/experiments.md,
            // "Data-free ranges: per-channel noise statistics instead of SQuant's rule" and
            // "SQuant's rule: U[0,1) images, not the normalised input range").
            let normal =
                cfg.act_ranges != ActRanges::Noise && cfg.noise_input == NoiseInput::Normal;
            // N(0, 1) is what normalised inputs look like; an input that cannot be negative
            // (`--input-range 0:1`, `--preset unit` or `pixels`: raw images, as detectors
            // take them) gets uniform noise over its own range instead. On a YOLO-style head
            // fed [0, 1] images the class scores go from 24.0 to 36.3 dB (tests/heads.rs).
            let nonneg_input = cfg
                .input_range
                .filter(|&(lo, hi)| lo >= 0.0 && hi > lo && cfg.act_ranges != ActRanges::Noise);
            forward_batches(
                model,
                cfg.input_shape.as_deref(),
                cfg.noise_batch,
                8,
                |s, k| {
                    let seed = seed.wrapping_add(k as u64);
                    if let Some((lo, hi)) = nonneg_input {
                        crate::rng::seeded_uniform(s, seed, lo, hi)
                    } else if normal {
                        crate::rng::seeded_normal(s, seed)
                    } else {
                        crate::rng::seeded_uniform(s, seed, 0.0, 1.0)
                    }
                },
            )?
        }
    };
    // Seeded batches of 8 (the seeds of the inputs do not depend on how they are run), run
    // one input at a time where the batch is open: tract 0.23.9 runs a batch of N slower
    // than N single inputs (per input, batch 4 vs 1: MobileNetV2 3.9×, PP-LCNet 3.7×,
    // fmnist 1.3×; docs/benchmarks.md), and single inputs run two side by side.
    let open_batch = forward_shape(model, cfg.input_shape.as_deref())
        .is_ok_and(|s| s.first().is_some_and(Option::is_none));
    let batches: Vec<Vec<ArrayD<f32>>> = if open_batch {
        batches.into_iter().flat_map(single_inputs).collect()
    } else {
        batches
    };
    // Noise statistics settle long before 32 inputs on large feature maps (every channel has
    // thousands of values per input): the pass stops at the first checkpoint from 16 inputs
    // on where the ranges moved by at most 2 % (RMS over the observed values) and no channel
    // mean by more than 2 % of its range over the last 8 inputs. On the BN-folded
    // MobileNetV2 the change from 8 to 16 inputs is 1.8 % RMS (one 7×7 map 9.7 %), and
    // 16 instead of 32 inputs changes its real-image SQNR by less than 0.1 dB
    // (docs/benchmarks.md, "The noise pass stops when its ranges settle"). Calibration
    // inputs are the user's: all of them are used.
    let range = |o: &Observed| observed_range(o, cfg).0;
    let settle = ranges::Settle {
        every: 8,
        min: 16,
        tol: 0.02,
        range: &range,
    };
    let settle = (cfg.act_ranges != ActRanges::Calibrate).then_some(&settle);
    // A pass over large inputs takes seconds per batch: say how far it is.
    let mut last = std::time::Instant::now();
    ranges::observe(model, values, &batches, 97, settle, |done, total| {
        if done < total && last.elapsed().as_secs_f64() >= 2.0 {
            last = std::time::Instant::now();
            progress(&format!("forward pass: {done} of {total} batches"));
        }
    })
}

/// A one-input batch along an open batch axis, as batches of one input each; anything else
/// as it is.
fn single_inputs(batch: Vec<ArrayD<f32>>) -> Vec<Vec<ArrayD<f32>>> {
    match batch.as_slice() {
        [x] if x.ndim() >= 1 && x.shape()[0] > 1 => x
            .axis_chunks_iter(ndarray::Axis(0), 1)
            .map(|one| vec![one.to_owned()])
            .collect(),
        _ => vec![batch],
    }
}

/// The range a forward pass gives a tensor, and the rule that set it.
fn observed_range(o: &Observed, cfg: &QuantizeConfig) -> (f64, RangeRule) {
    let channels = match cfg.act_ranges {
        ActRanges::Auto => o.channel_gaussian_bound(cfg.noise_sigmas),
        _ => None,
    };
    match (cfg.act_ranges, cfg.calibration_method, channels) {
        (ActRanges::Calibrate, CalibrationMethod::MinMax, _) => (o.max_abs(), RangeRule::Calibrate),
        (ActRanges::Calibrate, CalibrationMethod::Percentile(p), _) => {
            (o.percentile(p), RangeRule::Calibrate)
        }
        (_, _, Some(bound)) => (bound, RangeRule::NoiseChannels),
        _ => (o.sigma_rule(cfg.act_bits), RangeRule::Noise),
    }
}

/// The scale of the `Q → DQ` after a layer's own output `y` (`--qdq-outputs all`), from a BN
/// straight before it or from calibration; `None` otherwise.
fn output_scale(
    y: &str,
    sources: &Sources,
    observed: &BTreeMap<String, Observed>,
    cfg: &QuantizeConfig,
    qmax_s: f64,
) -> Option<f32> {
    let m = match (sources.bn.get(y), observed.get(y), cfg.act_ranges) {
        (Some(d), _, ActRanges::Auto | ActRanges::Bn) if d.rule == RangeRule::Bn => {
            d.lo.abs().max(d.hi.abs())
        }
        (_, Some(o), ActRanges::Calibrate) => o.max_abs(),
        // Noise-pass ranges are not trusted for an extra clipping point. Tried again after
        // the Q moved before equalization's ReLU6 bound (the per-channel noise rule for these
        // output Qs): the BN-folded MobileNetV2 under `--target ort` went 1.01× → 0.76× float
        // at −0.13 dB, but the PP-OCRv4 detector's text-mask IoU fell 0.884 → 0.790 (map SQNR
        // 9.66 → 6.97 dB) with the guard passing, so it was reverted (docs/experiments.md,
        // "CLE back under `--qdq-outputs all`").
        (_, Some(_), ActRanges::Auto) => return None,
        (_, Some(o), _) => o.sigma_rule(cfg.act_bits),
        _ => return None,
    };
    let s = (m / qmax_s) as f32;
    (s > 0.0 && s.is_finite()).then_some(s)
}

/// Step 3 and 4: every chosen layer's activation quantization, as emit plans and report rows.
#[must_use]
pub fn plan(
    model: &Model,
    chosen: &[Target],
    quantized: Vec<QuantizedWeight>,
    sources: &Sources,
    observed: &BTreeMap<String, Observed>,
    cfg: &QuantizeConfig,
) -> (Vec<LayerPlan>, Vec<LayerReport>) {
    let qmax_u = f64::from((1u32 << cfg.act_bits) - 1);
    let qmax_s = f64::from((1u32 << (cfg.act_bits - 1)) - 1);
    let outputs = output_values(model, chosen, cfg);
    let mut plans = Vec::with_capacity(chosen.len());
    let mut layers = Vec::with_capacity(chosen.len());
    for (((target, qw), src), y) in chosen
        .iter()
        .zip(quantized)
        .zip(&sources.per_layer)
        .zip(&outputs)
    {
        let node = &model.graph.nodes[target.node];
        let x = node.input(0).unwrap_or("").to_string();
        // QDQ is int8 only (TensorRT rejects uint8).
        // Non-negative by construction, or the model input (or what it becomes through
        // Transpose, Slice, …) with a range that starts at 0 or above (`--preset unit`,
        // `pixels`).
        let from_nonneg_input = matches!(src, Source::Input(lo, _) if *lo >= 0.0);
        let unsigned = (sources.nonneg.contains(&x) || from_nonneg_input)
            && cfg.format != Format::Qdq
            && cfg.activation_type == ActivationType::Auto;
        let (range, rule, obs, float_reason) = match src {
            Source::Dist(d) => ((d.lo, d.hi), Some(d.rule), None, None),
            Source::Input(lo, hi) => ((*lo, *hi), Some(RangeRule::InputRange), None, None),
            Source::Float(why) => ((0.0, 0.0), None, None, Some(why.clone())),
            Source::Widen(d) => match observed.get(&x) {
                Some(o) => {
                    let (alpha, rule) = observed_range(o, cfg);
                    if alpha > d.lo.abs().max(d.hi.abs()) {
                        ((-alpha, alpha), Some(rule), Some(o), None)
                    } else {
                        ((d.lo, d.hi), Some(d.rule), Some(o), None)
                    }
                }
                None => ((d.lo, d.hi), Some(d.rule), None, None),
            },
            Source::Observe => match observed.get(&x) {
                Some(o) => {
                    let (alpha, rule) = observed_range(o, cfg);
                    ((-alpha, alpha), Some(rule), Some(o), None)
                }
                None => (
                    (0.0, 0.0),
                    None,
                    None,
                    Some(format!("no statistics were observed for `{x}`")),
                ),
            },
        };
        let (scale, lo_q, hi_q) = if unsigned {
            let hi = range.1.max(0.0);
            (hi / qmax_u, 0.0, hi)
        } else {
            let m = range.0.abs().max(range.1.abs());
            (m / qmax_s, -m, m)
        };
        let usable = scale > 0.0 && scale.is_finite() && (scale as f32) > 0.0;
        let float_reason = match (float_reason, usable) {
            (Some(r), _) => Some(r),
            (None, false) => Some(format!("activation range of `{x}` is empty ({range:?})")),
            (None, true) => None,
        };
        let act = float_reason.is_none().then(|| ActQuant {
            value: x.clone(),
            scale: scale as f32,
            unsigned,
            clip: (cfg.act_bits < 8).then_some((lo_q as f32, hi_q as f32)),
        });
        let activation = match (&act, rule) {
            (Some(a), Some(rule)) => Some(ActivationReport {
                value: x.clone(),
                dtype: if a.unsigned { "uint8" } else { "int8" },
                scale: a.scale,
                range: (lo_q, hi_q),
                rule,
                observed: obs.map(|o| (o.min(), o.max())),
                clipped_fraction: obs.map(|o| o.fraction_above(hi_q)),
            }),
            _ => None,
        };
        layers.push(LayerReport {
            node: target.name.clone(),
            op_type: target.op_type.clone(),
            mode: if act.is_some() {
                "integer"
            } else {
                "weight-only"
            },
            float_input_reason: float_reason,
            weight: target.weight.clone(),
            weight_shape: target.weight_shape.clone(),
            weight_scale: qw.scale,
            weight_channel_scales: qw.channel_scales.clone(),
            kernel_flips: qw.flips.kernel_flips,
            channel_flips: qw.flips.channel_flips + qw.flips.channel_undos,
            changed_vs_nearest: qw.flips.changed,
            rounded_to_zero: qw.rounded_to_zero as u64,
            activation,
        });
        let own_output_scale = y
            .as_deref()
            .and_then(|y| output_scale(y, sources, observed, cfg, qmax_s));
        plans.push(LayerPlan {
            node: target.node,
            weight: qw,
            act,
            own_output_scale,
        });
    }
    (plans, layers)
}
