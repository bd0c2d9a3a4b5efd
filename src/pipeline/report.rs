//! What `quantize` did ([`QuantizeReport`], serialized for `--report`) and its text summary
//! ([`QuantizeReport::render`], what the CLI prints).
//!
//! The layer lines come from the layer table emit returned ([`EmittedLayer`]) and the op
//! counts from the written graph, so the summary describes the model as written in every
//! format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::config::QuantizeConfig;
use crate::graph::Graph;
use crate::passes::emit::{EmittedLayer, Form};
use crate::passes::equalize::EqualizeReport;
use crate::passes::fold_bn::Folded;
use crate::passes::ranges::RangeRule;
use crate::passes::Skip;
use crate::{serde_name, value_name};

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
    /// `integer` (ConvInteger/MatMulInteger), `qdq` (Q/DQ around the float op) or
    /// `weight-only` (DequantizeLinear + float op), as emitted.
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
    /// Non-zero float weights that became integer 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub rounded_to_zero: u64,
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
    /// BNs folded.
    pub bn_folded: Vec<Folded>,
    /// BNs kept.
    pub bn_kept: Vec<Skip>,
    /// Quantized layers.
    pub layers: Vec<LayerReport>,
    /// The layer table: what emit made of each layer (also in the model's `isquant.layers`
    /// metadata).
    pub emitted: Vec<EmittedLayer>,
    /// Quantization ops in the written graph (QuantizeLinear, DequantizeLinear,
    /// ConvInteger, MatMulInteger) and their counts.
    pub quantization_ops: BTreeMap<String, usize>,
    /// Layers left float, with reasons.
    pub skipped: Vec<Skip>,
    /// Float weights left in the written graph (matrices and kernels of 1,024 values or
    /// more that a float op reads directly: LSTM/GRU, layers kept float, ops isquant does not
    /// quantize), by op type.
    pub float_weights: Vec<FloatWeights>,
    /// Layers whose bias was corrected (`--correct-bias`).
    pub bias_corrected: usize,
    /// Cross-layer equalization (`--equalize on`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equalized: Option<EqualizeReport>,
    /// How `--equalize auto` chose the scale rule, when it overrode `--equalize-by`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equalize_note: Option<String>,
    /// Which runtime the written form suits, and the flag of a faster one.
    pub deploy: crate::deploy::DeployHint,
    /// The forward pass on noise or calibration inputs, when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_pass: Option<ForwardPass>,
    /// Stage → milliseconds.
    pub timings_ms: Vec<(String, f64)>,
    /// What the user should look at although the model was written (see [`warnings`]).
    pub warnings: Vec<String>,
}

/// How many inputs the forward pass ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardPass {
    /// Inputs run.
    pub inputs: usize,
    /// Inputs it would have run at most (`--noise-batch`, or the calibration set).
    pub offered: usize,
    /// It stopped early: the ranges and channel means had settled.
    pub settled: bool,
    /// At its last checkpoint: the RMS relative change of the ranges over the last 8 inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_change: Option<f64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Share of a weight tensor's non-zero values that may round to 0 before it is a warning.
///
/// A healthy 8-bit per-tensor scale leaves a few percent of the weights at 0 (the ones within
/// half a step); when one outlier sets the scale (a 1e36 among weights of 0.1) nearly all of
/// them do, and the layer computes little but its bias. Below 4 bits many zeros are expected,
/// so the rule holds from 4 bits up.
pub const ZERO_WARNING_FRACTION: f64 = 0.5;

/// Warnings about the layers: weights mostly rounded to zero.
#[must_use]
pub fn warnings(layers: &[LayerReport], weight_bits: u32) -> Vec<String> {
    if weight_bits < 4 {
        return Vec::new();
    }
    layers
        .iter()
        .filter_map(|l| {
            let n: usize = l.weight_shape.iter().product();
            let z = l.rounded_to_zero as usize;
            (n >= 16 && z as f64 > ZERO_WARNING_FRACTION * n as f64).then(|| {
                format!(
                    "{} ({}): {z} of {n} weights of `{}` round to 0 at scale {:.3e}: a few large \
                     values set the scale (check the weights, or try --granularity per-channel)",
                    l.node, l.op_type, l.weight, l.weight_scale
                )
            })
        })
        .collect()
}

/// Float weights of one op type in the written graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FloatWeights {
    /// Op type.
    pub op_type: String,
    /// Nodes of that type holding such weights.
    pub nodes: usize,
    /// Weight values.
    pub weights: usize,
    /// Bytes they take.
    pub bytes: usize,
}

/// What the text summary needs beyond the report.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    /// The input file, as the user named it.
    pub input: &'a str,
    /// Encoded size of the float model, bytes.
    pub size_before: usize,
    /// Encoded size of the int8 model, bytes.
    pub size_after: usize,
    /// One line per layer.
    pub verbose: bool,
}

impl QuantizeReport {
    /// Number of layers computed by ConvInteger/MatMulInteger.
    #[must_use]
    pub fn integer_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.mode == "integer").count()
    }

    /// The summary `isquant quantize` prints, one line per item, ending in a newline.
    #[must_use]
    pub fn render(&self, o: &RenderOptions<'_>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "isquant {} quantize {}", self.version, o.input);
        self.render_bn(&mut s);
        self.render_layers(&mut s);
        if let Some(e) = &self.equalized {
            let _ = writeln!(
                s,
                "equalize   {} layer pairs in {} passes, {} ReLU6 rewritten",
                e.pairs.len(),
                e.passes,
                e.relu6_rewritten
            );
            if let Some(why) = &self.equalize_note {
                let _ = writeln!(s, "           {why}");
            }
            if let Some(c) = &e.float_change {
                let _ = writeln!(
                    s,
                    "           ReLU6 replaced by Relu changed the float model: SQNR {:.2} dB against the original, max |diff| {:.3e}, top-1 agreement {:.2} % ({} seeded N(0,1) inputs)",
                    c.sqnr_db,
                    c.max_abs,
                    100.0 * c.top1_agreement,
                    c.inputs
                );
            }
        }
        if self.config.correct_bias {
            let _ = writeln!(
                s,
                "bias       {} layers corrected (data-free: E[x] from BN statistics, else from the noise pass)",
                self.bias_corrected
            );
        }
        self.render_activations(&mut s);
        for k in &self.skipped {
            let _ = writeln!(s, "skipped    {} ({}): {}", k.node, k.op_type, k.reason);
        }
        if !self.float_weights.is_empty() {
            let parts: Vec<String> = self
                .float_weights
                .iter()
                .map(|f| {
                    format!(
                        "{} {} ({} weights, {:.1} kB)",
                        f.op_type,
                        f.nodes,
                        f.weights,
                        f.bytes as f64 / 1e3
                    )
                })
                .collect();
            let _ = writeln!(s, "float      weights left float: {}", parts.join(", "));
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning    {w}");
        }
        if o.verbose {
            self.render_table(&mut s);
        }
        let _ = writeln!(
            s,
            "size       {:.1} kB -> {:.1} kB ({:.2}x smaller)",
            o.size_before as f64 / 1e3,
            o.size_after as f64 / 1e3,
            o.size_before as f64 / o.size_after.max(1) as f64
        );
        let _ = writeln!(s, "deploy     {}", self.deploy.line);
        let t: Vec<String> = self
            .timings_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.1} ms"))
            .collect();
        let _ = writeln!(s, "time       {}", t.join(", "));
        s
    }

    fn render_bn(&self, s: &mut String) {
        let fwd = self
            .bn_folded
            .iter()
            .filter(|f| f.direction == "forward")
            .count();
        let _ = writeln!(
            s,
            "BN         {} folded ({} backward, {fwd} forward), {} kept",
            self.bn_folded.len(),
            self.bn_folded.len() - fwd,
            self.bn_kept.len()
        );
        for k in &self.bn_kept {
            let _ = writeln!(s, "           kept {}: {}", k.node, k.reason);
        }
    }

    /// The `layers`, `ops` and `weights` lines, from the layer table and the written graph.
    fn render_layers(&self, s: &mut String) {
        let group = |form: Form| -> (usize, String) {
            let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
            for l in self.emitted.iter().filter(|l| l.form == form) {
                *ops.entry(l.op.as_str()).or_default() += 1;
            }
            let n = ops.values().sum();
            let list: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            (n, list.join(", "))
        };
        let mut parts = Vec::new();
        for (form, label) in [(Form::Integer, "integer"), (Form::Qdq, "Q/DQ")] {
            let (n, ops) = group(form);
            if n > 0 {
                parts.push(format!("{n} {label} ({ops})"));
            }
        }
        parts.push(format!("{} weight-only int8", group(Form::WeightOnly).0));
        let _ = writeln!(
            s,
            "layers     {} quantized: {}",
            self.emitted.len(),
            parts.join(", ")
        );
        let ops: Vec<String> = self
            .quantization_ops
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "ops        {}", ops.join(", "));
        let (flips, weights) = self.layers.iter().fold((0u64, 0usize), |(f, w), l| {
            (
                f + l.changed_vs_nearest,
                w + l.weight_shape.iter().product::<usize>(),
            )
        });
        let _ = writeln!(
            s,
            "weights    W{} {} symmetric, rounding {}: {flips} of {weights} weights differ from round-to-nearest",
            self.config.weight_bits,
            value_name(&self.config.granularity),
            value_name(&self.config.rounding)
        );
    }

    fn render_activations(&self, s: &mut String) {
        let mut rules: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.layers.iter().filter_map(|l| l.activation.as_ref()) {
            *rules
                .entry(format!("{} ({})", serde_name(&a.rule), a.dtype))
                .or_default() += 1;
        }
        let rules: Vec<String> = rules.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(
            s,
            "activations A{}: {}",
            self.config.act_bits,
            rules.join(", ")
        );
        if let Some(p) = self.forward_pass.as_ref().filter(|p| p.settled) {
            let _ = writeln!(
                s,
                "           forward pass: {} of {} inputs (the ranges settled: {:.1} % RMS change over the last 8)",
                p.inputs,
                p.offered,
                100.0 * p.range_change.unwrap_or(0.0)
            );
        }
        for l in self.layers.iter().filter(|l| l.mode == "weight-only") {
            if let Some(why) = &l.float_input_reason {
                let _ = writeln!(
                    s,
                    "           {} ({}, {} int8 weights) keeps a float input: {why}",
                    l.node,
                    l.op_type,
                    l.weight_shape.iter().product::<usize>()
                );
            }
        }
    }

    fn render_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "{:<40} {:<8} {:<11} {:>11} {:<6} {:<14} {:>11}",
            "layer", "op", "mode", "w scale", "act", "rule", "act scale"
        );
        for l in &self.layers {
            let (dt, rule, sc) = match &l.activation {
                Some(a) => (
                    a.dtype.to_string(),
                    serde_name(&a.rule),
                    format!("{:.4e}", a.scale),
                ),
                None => ("float".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                s,
                "{:<40} {:<8} {:<11} {:>11.4e} {:<6} {:<14} {:>11}",
                l.node, l.op_type, l.mode, l.weight_scale, dt, rule, sc
            );
        }
    }
}

/// Sets each layer's `mode` from what emit made of it (`integer`, `qdq`, `weight-only`).
pub(super) fn set_modes(layers: &mut [LayerReport], emitted: &[EmittedLayer]) {
    for (l, e) in layers.iter_mut().zip(emitted) {
        l.mode = match e.form {
            Form::Integer => "integer",
            Form::Qdq => "qdq",
            Form::WeightOnly => "weight-only",
        };
    }
}

/// The quantization ops a graph holds (QuantizeLinear, DequantizeLinear, ConvInteger,
/// MatMulInteger, QLinear*) and their counts.
/// Float weights a float op reads directly in `graph`: constants of rank ≥ 2 with at least
/// 1,024 values (biases and scales are not counted), by op type.
pub(super) fn float_weights(graph: &Graph) -> Vec<FloatWeights> {
    let producers = graph.producers();
    let mut by_op: BTreeMap<String, FloatWeights> = BTreeMap::new();
    for node in &graph.nodes {
        let op = node.op_type.as_str();
        if matches!(
            op,
            "QuantizeLinear" | "DequantizeLinear" | "ConvInteger" | "MatMulInteger" | "Constant"
        ) || op.starts_with("QLinear")
        {
            continue;
        }
        let mut found = (0usize, 0usize);
        for input in node.inputs.iter().filter(|i| !i.is_empty()) {
            let Ok(Some((t, _))) = graph.constant_with(input, &producers) else {
                continue;
            };
            // 1 float, 10 float16, 11 double, 16 bfloat16.
            let width = match t.data_type() {
                1 => 4,
                10 | 16 => 2,
                11 => 8,
                _ => continue,
            };
            let n: usize = t
                .dims
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .fold(1usize, usize::saturating_mul);
            if t.dims.len() >= 2 && n >= 1024 {
                found.0 = found.0.saturating_add(n);
                found.1 = found.1.saturating_add(n.saturating_mul(width));
            }
        }
        if found.0 > 0 {
            let e = by_op.entry(op.to_string()).or_insert_with(|| FloatWeights {
                op_type: op.to_string(),
                nodes: 0,
                weights: 0,
                bytes: 0,
            });
            e.nodes += 1;
            e.weights += found.0;
            e.bytes += found.1;
        }
    }
    by_op.into_values().collect()
}

pub(super) fn quantization_ops(graph: &Graph) -> BTreeMap<String, usize> {
    graph
        .op_histogram()
        .into_iter()
        .filter(|(op, _)| {
            matches!(
                op.as_str(),
                "QuantizeLinear" | "DequantizeLinear" | "ConvInteger" | "MatMulInteger"
            ) || op.starts_with("QLinear")
        })
        .collect()
}
