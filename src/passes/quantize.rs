//! The ISQuant pipeline: fold BN → per-tensor symmetric SQuant weights → data-free
//! activation scales → integer emission.
//!
//! Order (`algorithm.md` §4.4): [`fold_bn`](super::fold_bn) (records per-channel BN
//! statistics), [`targets`](super::targets) (which layers, minus `--skip`,
//! `--keep-first-float`, `--keep-last-float`), [`ranges`](super::ranges) (which rule sets each
//! activation range), [`weights`](super::weights) (scale `max|W|/qmax`, per tensor or per
//! channel, SQuant rounding), [`bias_correction`](super::bias_correction) (on by default),
//! the ranges themselves (BN statistics, SQuant's noise rule, user data or `--input-range`),
//! [`emit`](super::emit) (the chosen format).
//!
//! Activation scales: `s_x = hi / (2^b − 1)` for non-negative tensors (uint8),
//! `s_x = max(|lo|, |hi|) / (2^(b−1) − 1)` otherwise (int8); zero-point 0.
//!
//! The model input has no statistics: without `--input-range`, a layer reading it keeps a
//! float input and int8 weights (as SQuant leaves its first layer's input float).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use ndarray::ArrayD;
use serde::Serialize;

use super::emit::{self, ActQuant, LayerPlan};
use super::fold_bn::{self, Folded};
use super::ranges::{self, Dist, Observed, RangeRule};
use super::targets::{self, Target};
use super::weights::{self, Layout};
use super::Skip;
use crate::error::{Error, Result};
use crate::graph::Model;

use crate::squant::Rounding;

/// Where activation ranges come from (`--act-ranges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActRanges {
    /// BN statistics where they reach a tensor; elsewhere the BN-analytic rule on per-channel
    /// statistics of the noise pass (`max_c |μ_c ± N·σ_c|`, N = `noise_sigmas`) for feature
    /// maps, and SQuant's noise rule for other tensors.
    #[default]
    Auto,
    /// The same as `Auto` (its name before it became the default).
    NoiseChannels,
    /// BN statistics only (tensors they do not reach keep a float input).
    Bn,
    /// SQuant's noise rule everywhere.
    Noise,
    /// The user's calibration inputs.
    Calibrate,
}

/// Weight scale granularity (`--granularity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One scale per weight tensor (ISQuant).
    #[default]
    PerTensor,
    /// One scale per output channel (what calibrated tools use).
    PerChannel,
}

/// Images of the noise forward pass (`--noise-input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseInput {
    /// N(0, 1) per pixel: what normalised inputs look like by construction.
    #[default]
    Normal,
    /// U[0, 1) per pixel: models that take raw [0, 1] images (and SQuant's own rule).
    Uniform,
}

/// Cross-layer equalization (`--equalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Equalize {
    /// On when the model has a depthwise convolution (`group` = output channels > 1) and no
    /// BatchNormalization (the exporter folded it): MobileNet-style exports, where channel
    /// ranges differ most and no BN statistics inform the ranges.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Activation encoding (`--activation-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationType {
    /// uint8 where the value is known non-negative (one more bit after Relu), else int8.
    #[default]
    Auto,
    /// int8 everywhere (what TensorRT takes; `--format qdq` implies it).
    Int8,
}

/// How calibration data sets a range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// `max|x|`.
    MinMax,
    /// The given percentile of `|x|`.
    Percentile(f64),
}

/// Options of `isquant quantize`.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeConfig {
    /// Weight bits, 2..=8.
    pub weight_bits: u32,
    /// Activation bits, 2..=8.
    pub act_bits: u32,
    /// Weight rounding.
    #[serde(skip)]
    pub rounding: Rounding,
    /// Range source.
    pub act_ranges: ActRanges,
    /// `N` of the BN rule.
    pub bn_sigmas: f64,
    /// `N` of the BN rule applied to per-channel noise statistics (where BN does not reach).
    pub noise_sigmas: f64,
    /// Images of the noise pass for the per-channel rule (SQuant's rule always uses U[0, 1)).
    pub noise_input: NoiseInput,
    /// Range of the model input, if known.
    pub input_range: Option<(f32, f32)>,
    /// Node names, weight names, output value names or glob patterns (`*`, `?`) to keep float.
    pub skip: Vec<String>,
    /// Keep the first quantizable layer float.
    pub keep_first_float: bool,
    /// Keep the last quantizable layer float.
    pub keep_last_float: bool,
    /// Images in the noise batch.
    pub noise_batch: usize,
    /// Seed of the noise batch.
    pub noise_seed: u64,
    /// Input shape for the noise pass when the model leaves dimensions open.
    pub input_shape: Option<Vec<usize>>,
    /// How calibration data sets ranges.
    pub calibration_method: CalibrationMethod,
    /// Output format.
    pub format: emit::Format,
    /// Q/DQ formats: where a `Q → DQ` goes after a layer.
    pub qdq_outputs: emit::QdqOutputs,
    /// Activation encoding.
    pub activation_type: ActivationType,
    /// Weight scale granularity.
    pub granularity: Granularity,
    /// Data-free bias correction from BN statistics (DFQ).
    pub correct_bias: bool,
    /// Cross-layer equalization (DFQ).
    pub equalize: Equalize,
    /// ReLU6 handling under equalization.
    pub relu6: super::equalize::Relu6,
    /// High-bias absorption after equalization.
    pub absorb_bias: bool,
    /// How equalization picks its scales.
    pub equalize_objective: super::equalize::Objective,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            weight_bits: 8,
            act_bits: 8,
            rounding: Rounding::Squant,
            act_ranges: ActRanges::Auto,
            bn_sigmas: 6.0,
            noise_sigmas: 4.0,
            noise_input: NoiseInput::Normal,
            input_range: None,
            skip: Vec::new(),
            keep_first_float: false,
            keep_last_float: false,
            noise_batch: 32,
            noise_seed: 0,
            input_shape: None,
            calibration_method: CalibrationMethod::MinMax,
            format: emit::Format::ConvInteger,
            qdq_outputs: emit::QdqOutputs::Exact,
            activation_type: ActivationType::Auto,
            granularity: Granularity::PerTensor,
            correct_bias: true,
            equalize: Equalize::Auto,
            relu6: super::equalize::Relu6::PerChannel,
            absorb_bias: false,
            equalize_objective: super::equalize::Objective::Noise,
        }
    }
}

/// Runs the float model before and after equalization on 8 seeded N(0, 1) inputs in tract and
/// compares their first outputs (what `--relu6 relu` changed).
fn float_change(
    before: &Model,
    after: &Model,
    cfg: &QuantizeConfig,
) -> Result<super::equalize::FloatChange> {
    use crate::validate::{top_k, Source, Sums, TractModel};
    use prost::Message;
    let batches = forward_batches(before, cfg.input_shape.as_deref(), 8, 8, |s, k| {
        crate::validate::seeded_normal(s, cfg.noise_seed.wrapping_add(1000 + k as u64))
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
    Ok(super::equalize::FloatChange {
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

/// Whether a Conv has `group` > 1 equal to its weight's output channels (depthwise).
fn has_depthwise(g: &crate::graph::Graph) -> bool {
    let producers = g.producers();
    g.nodes.iter().any(|n| {
        let group = n.attr_int("group").ok().flatten().unwrap_or(1);
        n.is("Conv")
            && group > 1
            && n.input(1)
                .and_then(|w| g.constant_f32(w, &producers).ok().flatten())
                .is_some_and(|w| w.shape().first().is_some_and(|&o| o as i64 == group))
    })
}

/// The rounding mode's CLI name.
pub fn rounding_name(r: Rounding) -> &'static str {
    match r {
        Rounding::Nearest => "nearest",
        Rounding::SquantE => "squant-e",
        Rounding::SquantK => "squant-k",
        Rounding::SquantC => "squant-c",
        Rounding::Squant => "squant",
    }
}

/// Activation quantization of one layer, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationReport {
    /// The quantized value.
    pub value: String,
    /// `uint8` or `int8`.
    pub dtype: &'static str,
    /// Scale.
    pub scale: f32,
    /// Range the scale covers.
    pub range: (f64, f64),
    /// Which rule set it.
    pub rule: RangeRule,
    /// For noise/calibration: the observed min and max.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<(f64, f64)>,
    /// For noise/calibration: fraction of observed values beyond the range (clipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clipped_fraction: Option<f64>,
}

/// One layer in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op_type: String,
    /// `integer` (ConvInteger/MatMulInteger) or `weight-only` (DequantizeLinear + float op).
    pub mode: &'static str,
    /// Why weight-only, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float_input_reason: Option<String>,
    /// Weight value name.
    pub weight: String,
    /// Weight shape.
    pub weight_shape: Vec<usize>,
    /// Weight scale (per-channel: the largest).
    pub weight_scale: f32,
    /// Per-channel weight scales, with `--granularity per-channel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_channel_scales: Option<Vec<f32>>,
    /// Kernel-stage flips.
    pub kernel_flips: u64,
    /// Channel-stage flips (including undos).
    pub channel_flips: u64,
    /// Elements that differ from round-to-nearest.
    pub changed_vs_nearest: u64,
    /// Activation input quantization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<ActivationReport>,
}

/// What `quantize` did.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    /// isquant version.
    pub version: &'static str,
    /// The options used.
    pub config: QuantizeConfig,
    /// Rounding name.
    pub rounding: &'static str,
    /// BNs folded.
    pub bn_folded: Vec<Folded>,
    /// BNs kept.
    pub bn_kept: Vec<Skip>,
    /// Quantized layers.
    pub layers: Vec<LayerReport>,
    /// Layers left float, with reasons.
    pub skipped: Vec<Skip>,
    /// Layers whose bias was corrected (`--correct-bias`).
    pub bias_corrected: usize,
    /// Cross-layer equalization (`--equalize on`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equalized: Option<super::equalize::EqualizeReport>,
    /// How `--equalize auto` chose the scale rule, when it overrode `--equalize-by`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equalize_note: Option<String>,
    /// Stage → milliseconds.
    pub timings_ms: Vec<(String, f64)>,
}

impl QuantizeReport {
    /// Number of layers computed in integers.
    pub fn integer_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.mode == "integer").count()
    }
}

/// Minimal glob: `*` any run, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn layout_of(model: &Model, t: &Target) -> Result<Layout> {
    let node = &model.graph.nodes[t.node];
    Ok(match t.op_type.as_str() {
        "Conv" => Layout::Conv,
        "ConvTranspose" => Layout::ConvTranspose {
            group: node.attr_int("group")?.unwrap_or(1).max(1) as usize,
        },
        "Gemm" if node.attr_int("transB")?.unwrap_or(0) != 0 => Layout::RowsAreOutputs,
        _ => Layout::ColumnsAreOutputs,
    })
}

/// The shape of the model's one input for a forward pass: `input_shape` if given, else the
/// declared shape; only the batch dimension may stay open.
///
/// # Errors
/// Several inputs, or dimensions other than the batch left open without `input_shape`.
pub fn forward_shape(model: &Model, input_shape: Option<&[usize]>) -> Result<Vec<Option<usize>>> {
    let inputs = model.graph.real_inputs();
    let [input] = inputs.as_slice() else {
        return Err(Error::Config(format!(
            "the forward pass supports models with one input; this one has {}",
            inputs.len()
        )));
    };
    let name = input.name.clone().unwrap_or_default();
    let dims = model.graph.input_dims(&name).unwrap_or_default();
    let shape: Vec<Option<usize>> = match input_shape {
        Some(s) => s.iter().map(|&d| Some(d)).collect(),
        None => dims,
    };
    if shape.is_empty() || shape.iter().skip(1).any(Option::is_none) {
        let shown: Vec<String> = shape
            .iter()
            .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
            .collect();
        return Err(Error::Config(format!(
            "input `{name}` has shape [{}]: give the shape for the forward pass with --input-shape (e.g. 1,3,224,224)",
            shown.join(", ")
        )));
    }
    Ok(shape)
}

/// Inputs for a forward pass: `batch` images of the model's input shape, where the batch
/// dimension is symbolic; else `batch` runs of the fixed shape. Values from `fill`.
///
/// # Errors
/// Several inputs, or dimensions other than the batch left open without `input_shape`.
pub fn forward_batches(
    model: &Model,
    input_shape: Option<&[usize]>,
    batch: usize,
    chunk: usize,
    mut fill: impl FnMut(&[usize], usize) -> ArrayD<f32>,
) -> Result<Vec<Vec<ArrayD<f32>>>> {
    let shape = forward_shape(model, input_shape)?;
    let fixed_batch = shape[0];
    let rest: Vec<usize> = shape.iter().skip(1).map(|d| d.unwrap_or(1)).collect();
    let mut out = Vec::new();
    let mut done = 0usize;
    let mut k = 0usize;
    while done < batch {
        let n = match fixed_batch {
            Some(b) => b,
            None => chunk.min(batch - done).max(1),
        };
        let mut s = vec![n];
        s.extend(&rest);
        out.push(vec![fill(&s, k)]);
        done += n;
        k += 1;
    }
    Ok(out)
}

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
    for (what, bits) in [
        ("--weight-bits", cfg.weight_bits),
        ("--act-bits", cfg.act_bits),
    ] {
        if !(2..=8).contains(&bits) {
            return Err(Error::Config(format!(
                "{what} must be between 2 and 8, got {bits}"
            )));
        }
    }
    for (what, n) in [
        ("--bn-sigmas", cfg.bn_sigmas),
        ("--noise-sigmas", cfg.noise_sigmas),
    ] {
        if !(n > 0.0 && n.is_finite()) {
            return Err(Error::Config(format!("{what} must be positive, got {n}")));
        }
    }
    if let Some((lo, hi)) = cfg.input_range {
        if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
            || !lo.is_finite()
            || !hi.is_finite()
        {
            return Err(Error::Config(format!(
                "--input-range {lo}:{hi} is empty or not finite"
            )));
        }
    }
    if cfg.act_ranges == ActRanges::Calibrate && calibration.is_none_or(<[_]>::is_empty) {
        return Err(Error::Config(
            "--act-ranges calibrate needs --calibrate DIR with inputs".into(),
        ));
    }
    let mut timings = Vec::new();
    let stage = |name: &str, t: Instant, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), t.elapsed().as_secs_f64() * 1e3));
    };

    // 1. Fold BN.
    progress("fold-bn");
    let t = Instant::now();
    model.graph.sort_topologically()?;
    let mut fold = fold_bn::fold_batch_norms(model)?;
    model.graph.sort_topologically()?;
    stage("fold-bn", t, &mut timings);
    let mut equalized = None;
    let mut equalize_note = None;
    let equalize = match cfg.equalize {
        Equalize::On => true,
        Equalize::Off => false,
        // Decided by the ablation (docs/results.md): with depthwise convolutions CLE gains
        // +2.5 dB on the BN-folded MobileNetV2 (weights objective: no BN statistics left),
        // +3.5 dB on its BN form (noise objective) and +1.0 dB on ppocr (weights objective,
        // below); without depthwise it cost CIFAR an image.
        // With `--qdq-outputs all` (`--target ort`) the extra output quantizers sit on conv
        // outputs CLE spreads apart and neither rule models them: on the BN-form MobileNetV2
        // no CLE measured 17.78 dB, the noise objective 16.19, DFQ's rule 14.77. So there auto
        // equalizes only models without BN statistics (where it measured −0.5 dB at most).
        Equalize::Auto => {
            has_depthwise(&model.graph)
                && !(cfg.format.is_qdq()
                    && cfg.qdq_outputs == emit::QdqOutputs::All
                    && !fold.stats.is_empty())
        }
    };
    if equalize {
        progress("equalize");
        let t = Instant::now();
        let before = (cfg.relu6 == super::equalize::Relu6::Relu).then(|| model.clone());
        let opts = super::equalize::Options {
            relu6: cfg.relu6,
            absorb_bias: cfg.absorb_bias,
            objective: cfg.equalize_objective,
            n_sigmas: cfg.bn_sigmas,
            weight_bits: cfg.weight_bits,
            act_bits: cfg.act_bits,
        };
        // auto keeps the original to go back to (only `on` skips the copy).
        let backup = (cfg.equalize == Equalize::Auto
            && opts.objective == super::equalize::Objective::Noise)
            .then(|| (model.clone(), fold.stats.clone()));
        let mut report = super::equalize::equalize(model, &mut fold.stats, &opts)?;
        let convs = model.graph.nodes.iter().filter(|n| n.is("Conv")).count();
        // Where CLE reaches less than half of the convolutions (ppocr: 6 pairs of 53 layers, its
        // other chains go through HardSwish) the noise objective measured 1.1 dB worse than no
        // CLE and DFQ's rule 1.0 dB better, so auto uses DFQ's rule there.
        if let Some((m, st)) = backup.filter(|_| 2 * report.pairs.len() < convs) {
            *model = m;
            fold.stats = st;
            let weights = super::equalize::Options {
                objective: super::equalize::Objective::Weights,
                ..opts
            };
            report = super::equalize::equalize(model, &mut fold.stats, &weights)?;
            equalize_note = Some(format!(
                "--equalize auto: CLE reaches {} layer pairs of {convs} convolutions (under half), so it uses DFQ's rule (--equalize-by weights), which measured better there",
                report.pairs.len()
            ));
        }
        model.graph.sort_topologically()?;
        if let Some(before) = before.filter(|_| report.relu6_rewritten > 0) {
            progress("measure the float change of ReLU6 → Relu");
            report.float_change = Some(float_change(&before, model, cfg)?);
        }
        equalized = Some(report);
        stage("equalize", t, &mut timings);
    }

    // 2. Targets.
    let (all_targets, mut skipped) = targets::find_targets(&model.graph)?;
    let first = all_targets.first().map(|t| t.node);
    let last = all_targets.last().map(|t| t.node);
    let mut chosen = Vec::new();
    for t in all_targets {
        let node = &model.graph.nodes[t.node];
        // A layer is named by its node, its weight, or its output value (after BN folding:
        // the value `validate --per-layer` lists).
        let output = node.outputs.first().map(String::as_str).unwrap_or("");
        let pattern = cfg.skip.iter().find(|p| {
            glob_match(p, &node.name)
                || glob_match(p, &t.name)
                || glob_match(p, &t.weight)
                || glob_match(p, output)
        });
        let reason = if let Some(p) = pattern {
            Some(format!("--skip {p}"))
        } else if cfg.keep_first_float && Some(t.node) == first {
            Some("--keep-first-float".to_string())
        } else if cfg.keep_last_float && Some(t.node) == last {
            Some("--keep-last-float".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skip {
                node: t.name.clone(),
                op_type: t.op_type.clone(),
                reason,
            }),
            None => chosen.push(t),
        }
    }
    if chosen.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .map(|s| format!("{} ({}): {}", s.node, s.op_type, s.reason))
            .collect();
        return Err(Error::Config(format!(
            "nothing to quantize: the model has no Conv/ConvTranspose/Gemm/MatMul with constant float weights{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" left to quantize ({})", why.join("; "))
            }
        )));
    }

    // 4. Activation ranges.
    progress("ranges");
    let t = Instant::now();
    let graph_inputs: HashSet<String> = model
        .graph
        .real_inputs()
        .iter()
        .filter_map(|i| i.name.clone())
        .collect();
    let nonneg = ranges::nonnegative_values(&model.graph)?;
    let bn = match cfg.act_ranges {
        ActRanges::Auto | ActRanges::Bn | ActRanges::NoiseChannels => {
            ranges::bn_ranges(&model.graph, &fold.stats, cfg.bn_sigmas)?
        }
        _ => BTreeMap::new(),
    };
    // BN moments pushed through a layer assume independent inputs and come out narrow: those
    // ranges take the noise pass's where it is wider (`ranges::through_layers`).
    let through_layers = ranges::through_layers(&model.graph, &bn)?;
    enum Source {
        Dist(Dist),
        Widen(Dist),
        Input(f64, f64),
        Observe,
        Float(String),
    }
    let mut sources: Vec<Source> = Vec::with_capacity(chosen.len());
    for target in &chosen {
        let node = &model.graph.nodes[target.node];
        let x = node.input(0).unwrap_or("").to_string();
        let integer_op = node.is("Conv") || node.is("Gemm") || node.is("MatMul");
        let transposed_a = node.is("Gemm") && node.attr_int("transA")?.unwrap_or(0) != 0;
        let src = if !integer_op {
            Source::Float(format!(
                "{} has no integer op in ONNX: int8 weights, float compute",
                node.op_type
            ))
        } else if transposed_a {
            Source::Float("Gemm with transA=1: int8 weights, float compute".into())
        } else if graph_inputs.contains(&x) {
            match cfg.input_range {
                Some((lo, hi)) => Source::Input(f64::from(lo), f64::from(hi)),
                None => Source::Float(format!(
                    "reads the model input `{x}`, whose range is unknown: pass --input-range LO:HI or --preset imagenet to make it integer too"
                )),
            }
        } else {
            match cfg.act_ranges {
                ActRanges::Auto | ActRanges::NoiseChannels => match bn.get(&x) {
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
        sources.push(src);
    }
    // 3. Weights (after the range sources: a per-channel weight behind a DequantizeLinear
    // needs per-axis quantization, opset 13, and the opset is never raised that far).
    let per_axis_ok = model.opset().unwrap_or(0) >= 13;
    let integer_layers: Vec<bool> = sources
        .iter()
        .map(|src| !cfg.format.is_qdq() && !matches!(src, Source::Float(_)))
        .collect();
    progress("squant");
    let tw = Instant::now();
    let producers = model.graph.producers();
    let mut inputs = Vec::with_capacity(chosen.len());
    for target in &chosen {
        let w = model
            .graph
            .constant_f32(&target.weight, &producers)?
            .ok_or_else(|| Error::tensor(&target.weight, "weight is not a constant"))?;
        inputs.push((w, layout_of(model, target)?));
    }
    drop(producers);
    // Bias correction's E[x] from BN statistics (whatever rule sets ranges) is known now: its
    // shift is computed right after each layer is rounded, while the weights are in cache.
    // Layers BN statistics do not reach get theirs from the noise pass, below.
    let bn_means: Vec<Option<(Vec<f64>, usize)>> = if cfg.correct_bias {
        let stats_dists = if bn.is_empty() {
            ranges::bn_ranges(&model.graph, &fold.stats, cfg.bn_sigmas)?
        } else {
            bn.clone()
        };
        chosen
            .iter()
            .map(|target| -> Result<Option<(Vec<f64>, usize)>> {
                let node = &model.graph.nodes[target.node];
                let mean = stats_dists
                    .get(node.input(0).unwrap_or(""))
                    .and_then(|d| d.moments.as_ref())
                    .map(|m| m.iter().map(|c| c.mean).collect::<Vec<f64>>());
                let group = node.attr_int("group")?.unwrap_or(1).max(1) as usize;
                Ok(mean.map(|m| (m, group)))
            })
            .collect::<Result<_>>()?
    } else {
        vec![None; chosen.len()]
    };
    // Layers in parallel (each result depends only on its own weights, so the output is the
    // same for any thread count); the kernel also splits large layers over channels.
    let (quantized, bn_shifts): (Vec<weights::QuantizedWeight>, Vec<Option<Vec<f64>>>) = {
        use rayon::prelude::*;
        chosen
            .par_iter()
            .zip(inputs.par_iter())
            .zip(integer_layers.par_iter())
            .zip(bn_means.par_iter())
            .map(|(((target, (w, layout)), integer), bn_mean)| {
                // Per-channel scales are applied in the rescale (or a per-axis
                // DequantizeLinear); ConvTranspose keeps one scale (its output channels are
                // not an axis of the weight when grouped).
                // TensorRT takes per-axis weights only on axis 0: `[K, N]` matrices stay
                // per-tensor in the `qdq` format.
                let per_channel = cfg.granularity == Granularity::PerChannel
                    && !matches!(layout, Layout::ConvTranspose { .. })
                    && !(cfg.format == emit::Format::Qdq && *layout == Layout::ColumnsAreOutputs)
                    && (*integer || per_axis_ok);
                let qw = weights::quantize_weight(
                    &target.weight,
                    w,
                    *layout,
                    cfg.weight_bits,
                    cfg.rounding,
                    per_channel,
                )?;
                let shift = bn_mean.as_ref().and_then(|(mean, group)| {
                    super::bias_correction::bias_shift(w, &qw, *layout, *group, mean)
                });
                Ok((qw, shift))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip()
    };
    stage("squant", tw, &mut timings);
    let squant_time = tw.elapsed();

    // Widening is a refinement: where nothing else needs the noise pass and it cannot run (an
    // open input shape without --input-shape), the propagated ranges stay.
    if !sources.iter().any(|s| matches!(s, Source::Observe))
        && forward_shape(model, cfg.input_shape.as_deref()).is_err()
    {
        for s in &mut sources {
            if let Source::Widen(d) = s {
                *s = Source::Dist(d.clone());
            }
        }
    }
    let mut observe_values: Vec<String> = chosen
        .iter()
        .zip(&sources)
        .filter(|(_, s)| matches!(s, Source::Observe | Source::Widen(_)))
        .map(|(t, _)| model.graph.nodes[t.node].input(0).unwrap_or("").to_string())
        .collect();
    // QDQ also quantizes layer outputs that do not feed another quantized layer directly
    // (residual Adds, graph outputs), so runtimes can fuse `DQ → Conv → Q`.
    let output_values: Vec<Option<String>> = chosen
        .iter()
        .map(|t| {
            let node = &model.graph.nodes[t.node];
            (cfg.format.is_qdq()
                && cfg.qdq_outputs == emit::QdqOutputs::All
                && (node.is("Conv") || node.is("Gemm") || node.is("MatMul")))
            .then(|| node.outputs.first().cloned())
            .flatten()
        })
        .collect();
    for v in output_values.iter().flatten() {
        // With `auto` only BN statistics set an extra output Q (see `own_output_scale`).
        let needs_data = match cfg.act_ranges {
            ActRanges::Noise | ActRanges::Calibrate => true,
            ActRanges::Auto | ActRanges::NoiseChannels | ActRanges::Bn => false,
        };
        if needs_data {
            observe_values.push(v.clone());
        }
    }
    observe_values.sort();
    observe_values.dedup();
    let observed: BTreeMap<String, Observed> = if observe_values.is_empty() {
        BTreeMap::new()
    } else {
        let batches: Vec<Vec<ArrayD<f32>>> = match cfg.act_ranges {
            ActRanges::Calibrate => calibration.map(<[_]>::to_vec).unwrap_or_default(),
            _ => {
                progress("noise forward pass");
                let seed = cfg.noise_seed;
                // SQuant's rule (`noise`): U[0, 1) images whatever the preprocessing; its k·σ
                // widths were tuned for that batch (covering the normalised input range
                // instead was measured worse on MobileNetV2: 80.7 % vs 86.0 % agreement).
                // The per-channel rule (`auto`): N(0, 1) images, the statistics normalised
                // inputs have by construction (BN-folded MobileNetV2 16.2 → 16.4 dB, mnist-cnn
                // on real digits 3.5 → 35 dB against U[0, 1)).
                let normal =
                    cfg.act_ranges != ActRanges::Noise && cfg.noise_input == NoiseInput::Normal;
                forward_batches(
                    model,
                    cfg.input_shape.as_deref(),
                    cfg.noise_batch,
                    8,
                    |s, k| {
                        let seed = seed.wrapping_add(k as u64);
                        if normal {
                            crate::validate::seeded_normal(s, seed)
                        } else {
                            crate::validate::seeded_uniform(s, seed, 0.0, 1.0)
                        }
                    },
                )?
            }
        };
        ranges::observe(model, &observe_values, &batches, 97, |_, _| {})?
    };
    // Bias correction: E[x] per input channel from BN statistics (whatever rule sets ranges),
    // else from the per-channel means of the noise / calibration pass.
    let mut corrected = 0usize;
    if cfg.correct_bias {
        // Initializers change, nodes do not: one producer index and one name set serve all.
        let producers: std::collections::HashMap<String, usize> = model
            .graph
            .producers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut names = crate::graph::names::NameGen::new(model.graph.taken_names());
        for (((target, (w, layout)), qw), (bn_mean, shift)) in chosen
            .iter()
            .zip(&inputs)
            .zip(&quantized)
            .zip(bn_means.iter().zip(bn_shifts))
        {
            let delta = match (bn_mean, shift) {
                (Some(_), shift) => shift,
                (None, _) => {
                    let node = &model.graph.nodes[target.node];
                    let group = node.attr_int("group")?.unwrap_or(1).max(1) as usize;
                    observed
                        .get(node.input(0).unwrap_or(""))
                        .and_then(Observed::channel_means)
                        .and_then(|mean| {
                            super::bias_correction::bias_shift(w, qw, *layout, group, &mean)
                        })
                }
            };
            let Some(delta) = delta else {
                continue;
            };
            if apply_bias_shift(model, &mut names, &producers, target.node, &delta)? {
                corrected += 1;
            }
        }
    }
    timings.push((
        "ranges".to_string(),
        t.elapsed().saturating_sub(squant_time).as_secs_f64() * 1e3,
    ));

    // 5. Plans.
    let qmax_u = f64::from((1u32 << cfg.act_bits) - 1);
    let qmax_s = f64::from((1u32 << (cfg.act_bits - 1)) - 1);
    // The range a noise or calibration pass gives a tensor, and its rule.
    let noise_alpha = |o: &Observed| -> (f64, RangeRule) {
        let alpha = match (cfg.act_ranges, cfg.calibration_method) {
            (ActRanges::Calibrate, CalibrationMethod::MinMax) => o.max_abs(),
            (ActRanges::Calibrate, CalibrationMethod::Percentile(p)) => o.percentile(p),
            // The BN-analytic rule on per-channel statistics of the noise pass.
            (ActRanges::Auto | ActRanges::NoiseChannels, _) => o
                .channel_gaussian_bound(cfg.noise_sigmas)
                .unwrap_or_else(|| o.sigma_rule(cfg.act_bits).0),
            _ => o.sigma_rule(cfg.act_bits).0,
        };
        let rule = match cfg.act_ranges {
            ActRanges::Calibrate => RangeRule::Calibrate,
            ActRanges::Auto | ActRanges::NoiseChannels
                if o.channel_gaussian_bound(cfg.noise_sigmas).is_some() =>
            {
                RangeRule::NoiseChannels
            }
            _ => RangeRule::Noise,
        };
        (alpha, rule)
    };
    let mut plans = Vec::new();
    let mut layers = Vec::new();
    for ((target, qw), src) in chosen.iter().zip(quantized).zip(sources) {
        let node = &model.graph.nodes[target.node];
        let x = node.input(0).unwrap_or("").to_string();
        // QDQ is int8 only (TensorRT rejects uint8).
        let unsigned = nonneg.contains(&x)
            && cfg.format != emit::Format::Qdq
            && cfg.activation_type == ActivationType::Auto;
        let (range, rule, obs, float_reason) = match src {
            Source::Dist(d) => ((d.lo, d.hi), Some(d.rule), None, None),
            Source::Input(lo, hi) => ((lo, hi), Some(RangeRule::InputRange), None, None),
            Source::Float(why) => ((0.0, 0.0), None, None, Some(why)),
            Source::Widen(d) => match observed.get(&x) {
                Some(o) => {
                    let (alpha, rule) = noise_alpha(o);
                    if alpha > d.lo.abs().max(d.hi.abs()) {
                        ((-alpha, alpha), Some(rule), Some(o.clone()), None)
                    } else {
                        ((d.lo, d.hi), Some(d.rule), Some(o.clone()), None)
                    }
                }
                None => ((d.lo, d.hi), Some(d.rule), None, None),
            },
            Source::Observe => match observed.get(&x) {
                Some(o) => {
                    let (alpha, rule) = noise_alpha(o);
                    ((-alpha, alpha), Some(rule), Some(o.clone()), None)
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
            let s = hi / qmax_u;
            (s, 0.0, hi)
        } else {
            let m = range.0.abs().max(range.1.abs());
            (m / qmax_s, -m, m)
        };
        let usable = scale > 0.0 && scale.is_finite() && (scale as f32) > 0.0;
        let float_reason = match (float_reason, usable) {
            (Some(r), _) => Some(r),
            (None, false) => Some(format!("activation range of `{x}` is empty ({:?})", range)),
            (None, true) => None,
        };
        let act = if float_reason.is_none() {
            Some(ActQuant {
                value: x.clone(),
                scale: scale as f32,
                unsigned,
                clip: (cfg.act_bits < 8).then_some((lo_q as f32, hi_q as f32)),
            })
        } else {
            None
        };
        let activation = match (&act, rule) {
            (Some(a), Some(rule)) => Some(ActivationReport {
                value: x.clone(),
                dtype: if a.unsigned { "uint8" } else { "int8" },
                scale: a.scale,
                range: (lo_q, hi_q),
                rule,
                observed: obs.as_ref().map(|o| (o.min, o.max)),
                clipped_fraction: obs.as_ref().map(|o| o.fraction_above(hi_q)),
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
            activation,
        });
        let own_output_scale = output_values[plans.len()].as_ref().and_then(|y| {
            // Only a BN straight before the output is trusted here: an output Q clips, and a
            // range pushed through layers can be far too narrow.
            let m = match (bn.get(y), observed.get(y)) {
                (Some(d), _)
                    if d.rule == RangeRule::Bn
                        && cfg.act_ranges != ActRanges::Noise
                        && cfg.act_ranges != ActRanges::Calibrate =>
                {
                    d.lo.abs().max(d.hi.abs())
                }
                (_, Some(o)) if cfg.act_ranges == ActRanges::Calibrate => o.max_abs(),
                // Noise-pass ranges are not trusted for an extra clipping point either: on the
                // BN-folded MobileNetV2 they cost `--target ort` 4 dB on real images.
                (_, Some(_))
                    if matches!(cfg.act_ranges, ActRanges::Auto | ActRanges::NoiseChannels) =>
                {
                    return None
                }
                (_, Some(o)) => o.sigma_rule(cfg.act_bits).0,
                _ => return None,
            };
            let s = (m / qmax_s) as f32;
            (s > 0.0 && s.is_finite()).then_some(s)
        });
        plans.push(LayerPlan {
            node: target.node,
            weight: qw,
            act,
            own_output_scale,
        });
    }

    // 6. Emit.
    progress("emit");
    let t = Instant::now();
    emit::emit(model, &plans, cfg.format, cfg.qdq_outputs)?;
    model.graph.remove_dead_nodes();
    model.graph.remove_unused_initializers();
    stage("emit", t, &mut timings);

    let report = QuantizeReport {
        version: env!("CARGO_PKG_VERSION"),
        config: cfg.clone(),
        rounding: rounding_name(cfg.rounding),
        bn_folded: fold.folded,
        bn_kept: fold.kept,
        layers,
        skipped,
        bias_corrected: corrected,
        equalized,
        equalize_note,
        timings_ms: timings,
    };
    // Keep the IR version as low as the opset allows (ONNX Runtime 1.15 rejects IR 10), when
    // the model uses nothing newer IR versions added.
    let ir = min_ir_version(model.opset().unwrap_or(13));
    if cfg.format == emit::Format::ConvIntegerU8 && model.ir_version() > ir {
        // For old runtimes: node/graph metadata (IR 10) is informational; drop it so the IR
        // version can go down.
        model.strip_ir10_metadata();
    }
    if model.ir_version() > ir && !model.uses_recent_ir_features() {
        model.set_ir_version(ir);
    }
    model.set_metadata("isquant.version", env!("CARGO_PKG_VERSION"));
    model.set_metadata(
        "isquant.method",
        "ISQuant: BatchNormalization folded, per-tensor symmetric int8 weights (zero-point 0) rounded with SQuant, data-free activation scales",
    );
    model.set_metadata("isquant.config", &config_summary(cfg));
    if let Some(e) = report.equalized.as_ref().filter(|e| !e.rescaled.is_empty()) {
        model.set_metadata(crate::validate::RESCALED_KEY, &e.rescaled.join("\n"));
    }
    Ok(report)
}

/// Subtracts `delta` (one value per output channel) from a Conv/Gemm bias, creating the bias
/// when the layer has none. Returns false for layers it cannot correct (MatMul, non-vector C).
fn apply_bias_shift(
    model: &mut Model,
    names: &mut crate::graph::names::NameGen,
    producers: &std::collections::HashMap<String, usize>,
    node: usize,
    delta: &[f64],
) -> Result<bool> {
    use ndarray::IxDyn;
    let n = model.graph.nodes[node].clone();
    if !(n.is("Conv") || n.is("Gemm")) {
        return Ok(false);
    }
    let beta = if n.is("Gemm") {
        f64::from(n.attr_float("beta")?.unwrap_or(1.0))
    } else {
        1.0
    };
    if beta == 0.0 {
        return Ok(false);
    }
    let prod: std::collections::HashMap<&str, usize> =
        producers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let current: Vec<f64> = match n.input(2) {
        Some(b) => match model.graph.constant_f32(b, &prod)? {
            Some(a) if a.len() == delta.len() => a.iter().map(|&v| f64::from(v)).collect(),
            Some(a) if a.len() == 1 => {
                vec![f64::from(a.iter().next().copied().unwrap_or(0.0)); delta.len()]
            }
            _ => return Ok(false),
        },
        None => vec![0.0; delta.len()],
    };
    drop(prod);
    let values: Vec<f32> = current
        .iter()
        .zip(delta)
        .map(|(b, d)| (b - d / beta) as f32)
        .collect();
    let base = n.input(1).unwrap_or("w").to_string();
    let name = names.fresh(&base, "_bias_corrected");
    let arr = ArrayD::from_shape_vec(IxDyn(&[values.len()]), values)
        .map_err(|e| n.error(format!("bias correction: {e}")))?;
    model
        .graph
        .set_initializer(crate::onnx::tensor::from_f32(&name, arr));
    let node_mut = &mut model.graph.nodes[node];
    node_mut.inputs.resize(3, String::new());
    node_mut.inputs[2] = name;
    Ok(true)
}

/// The lowest IR version that supports a default-domain opset (onnx/docs/Versioning.md).
pub fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// One-line summary of the options, stored in `metadata_props`.
pub fn config_summary(cfg: &QuantizeConfig) -> String {
    let mut s = format!(
        "format={} granularity={} weight-bits={} act-bits={} rounding={} act-ranges={} bn-sigmas={}",
        cfg.format.name(),
        match cfg.granularity {
            Granularity::PerTensor => "per-tensor",
            Granularity::PerChannel => "per-channel",
        },
        cfg.weight_bits,
        cfg.act_bits,
        rounding_name(cfg.rounding),
        match cfg.act_ranges {
            ActRanges::Auto => "auto",
            ActRanges::NoiseChannels => "noise-channels",
            ActRanges::Bn => "bn",
            ActRanges::Noise => "noise",
            ActRanges::Calibrate => "calibrate",
        },
        cfg.bn_sigmas
    );
    if let Some((lo, hi)) = cfg.input_range {
        s.push_str(&format!(" input-range={lo}:{hi}"));
    }
    if matches!(
        cfg.act_ranges,
        ActRanges::Auto | ActRanges::Noise | ActRanges::NoiseChannels
    ) {
        s.push_str(&format!(
            " noise-batch={} noise-seed={} noise-sigmas={} noise-input={}",
            cfg.noise_batch,
            cfg.noise_seed,
            cfg.noise_sigmas,
            match cfg.noise_input {
                NoiseInput::Normal => "normal",
                NoiseInput::Uniform => "uniform",
            }
        ));
    }
    for p in &cfg.skip {
        s.push_str(&format!(" skip={p}"));
    }
    if cfg.keep_first_float {
        s.push_str(" keep-first-float");
    }
    if cfg.keep_last_float {
        s.push_str(" keep-last-float");
    }
    s.push_str(if cfg.correct_bias {
        " correct-bias=on"
    } else {
        " correct-bias=off"
    });
    s.push_str(match cfg.equalize {
        Equalize::Auto => " equalize=auto",
        Equalize::On => " equalize=on",
        Equalize::Off => " equalize=off",
    });
    if cfg.equalize != Equalize::Off {
        s.push_str(match cfg.equalize_objective {
            super::equalize::Objective::Noise => " equalize-by=noise",
            super::equalize::Objective::Weights => " equalize-by=weights",
        });
    }
    if cfg.absorb_bias {
        s.push_str(" absorb-bias=on");
    }
    if cfg.format.is_qdq() {
        s.push_str(&format!(" qdq-outputs={}", cfg.qdq_outputs.name()));
    }
    if cfg.activation_type == ActivationType::Int8 {
        s.push_str(" activation-type=int8");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("/features.0/*", "/features.0/Conv"));
        assert!(glob_match("*Conv", "/0/Conv"));
        assert!(glob_match("Conv?", "Conv7"));
        assert!(!glob_match("Conv?", "Conv"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
    }
}
