//! `--per-layer`: which values to compare, read from the int8 model's layer table (metadata
//! `isquant.layers`, written by the pipeline), and the per-layer metrics.
//!
//! For each layer the table names the value holding its output in both models and the float
//! value it reads. Both are made extra outputs of both models; the layer's SQNR compares its
//! output, its *local* SQNR removes the noise its input already carried (noise powers add:
//! `local = −10·log10(10^(−out/10) − 10^(−in/10))`). Values cross-layer equalization divided per
//! channel (metadata `isquant.rescaled`) are compared up to one gain per channel
//! ([`ChannelFit`]).

use std::collections::HashSet;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::graph::Model;
use crate::metrics::{finite_or_string, ChannelFit, Sums};
use crate::passes::emit::{read_layer_table, Form, LAYERS_KEY};
use crate::pipeline::finish::RESCALED_KEY;

/// Per-layer comparison for `--per-layer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerMetrics {
    /// The layer's output value (same name in both models).
    pub value: String,
    /// What computes it in the int8 model: `ConvInteger`, `MatMulInteger`, or the float op
    /// with `(Q/DQ)` or `(weight-only)`.
    pub op: String,
    /// SQNR of the int8 model's tensor against the float model's, dB; for a value
    /// cross-layer equalization rescaled (`rescaled`), after the best gain per channel
    /// ([`ChannelFit`]).
    #[serde(serialize_with = "finite_or_string")]
    pub sqnr_db: f64,
    /// Cross-layer equalization rescaled this value per channel (the int8 model's
    /// `isquant.rescaled` metadata lists it), so `sqnr_db` compares it up to one gain per
    /// channel; so does `input_sqnr_db` for a rescaled input.
    pub rescaled: bool,
    /// Cosine similarity (without any fit).
    pub cosine: f64,
    /// SQNR of the layer's input in the int8 model (infinite for the model input).
    #[serde(serialize_with = "finite_or_string")]
    pub input_sqnr_db: f64,
    /// The layer's own contribution: `−10·log10(10^(−out/10) − 10^(−in/10))`, the SQNR the
    /// layer would have if its input were exact (noise powers add). Lowest = the layer that
    /// loses the most; the one to try with `--skip`.
    #[serde(serialize_with = "finite_or_string")]
    pub local_sqnr_db: f64,
    /// Activation scale, when the layer quantizes its input.
    pub act_scale: Option<f32>,
    /// Weight scale (per-channel weights: the largest).
    pub weight_scale: Option<f32>,
}

/// A layer to compare: its output value, the value it reads, its op label and scales.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Probe {
    value: String,
    input: String,
    op: String,
    act_scale: Option<f32>,
    weight_scale: f32,
}

/// The layers of `int8` to compare (those whose output the float model computes too) and the
/// values to add as extra outputs of both models.
///
/// # Errors
/// The int8 model has no layer table (it was not written by isquant).
pub(super) fn probes(float: &Model, int8: &Model) -> Result<(Vec<Probe>, Vec<String>)> {
    let table = read_layer_table(int8)?.ok_or_else(|| {
        Error::Config(format!(
            "--per-layer needs the int8 model's layer table (metadata `{LAYERS_KEY}`), which isquant quantize writes; this model has none"
        ))
    })?;
    let float_values: HashSet<&str> = float
        .graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(String::as_str))
        .collect();
    let probes: Vec<Probe> = table
        .into_iter()
        .filter(|l| float_values.contains(l.output.as_str()))
        .map(|l| Probe {
            op: match l.form {
                Form::Integer => l.op.clone(),
                Form::Qdq => format!("{} (Q/DQ)", l.op),
                Form::WeightOnly => format!("{} (weight-only)", l.op),
            },
            act_scale: l.activation.as_ref().map(|a| a.scale),
            weight_scale: l.weight_scale,
            value: l.output,
            input: l.input,
        })
        .collect();
    let mut extra: Vec<String> = Vec::new();
    for p in &probes {
        for v in [&p.value, &p.input] {
            if float_values.contains(v.as_str()) && !extra.contains(v) {
                extra.push(v.clone());
            }
        }
    }
    Ok((probes, extra))
}

/// The per-layer metrics, worst SQNR first. `sums(k)`: the merged comparison of extra output
/// `k` over every batch.
pub(super) fn metrics(
    int8: &Model,
    probes: &[Probe],
    extra: &[String],
    sums: impl Fn(usize) -> (Sums, ChannelFit),
) -> Vec<LayerMetrics> {
    let rescaled_values: HashSet<String> = int8
        .metadata()
        .into_iter()
        .filter(|(k, _)| k == RESCALED_KEY)
        .flat_map(|(_, v)| v.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    // (sums, SQNR in dB, rescaled per channel).
    let merged = |name: &str| -> Option<(Sums, f64, bool)> {
        let k = extra.iter().position(|v| v == name)?;
        let (s, fit) = sums(k);
        let rescaled = rescaled_values.contains(name);
        let db = if rescaled { fit.sqnr_db() } else { s.sqnr_db() };
        Some((s, db, rescaled))
    };
    let noise = |db: f64| {
        if db.is_finite() {
            10f64.powf(-db / 10.0)
        } else {
            0.0
        }
    };
    let mut layers: Vec<LayerMetrics> = probes
        .iter()
        .map(|p| {
            let (s, sqnr, rescaled) = merged(&p.value).unwrap_or_else(|| {
                let s = Sums::default();
                let db = s.sqnr_db();
                (s, db, false)
            });
            let input_sqnr = merged(&p.input).map_or(f64::INFINITY, |(_, db, _)| db);
            let local = noise(sqnr) - noise(input_sqnr);
            LayerMetrics {
                value: p.value.clone(),
                op: p.op.clone(),
                sqnr_db: sqnr,
                rescaled,
                cosine: s.cosine(),
                input_sqnr_db: input_sqnr,
                local_sqnr_db: if local > 0.0 {
                    -10.0 * local.log10()
                } else {
                    f64::INFINITY
                },
                act_scale: p.act_scale,
                weight_scale: Some(p.weight_scale),
            }
        })
        .collect();
    layers.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db).then(a.value.cmp(&b.value)));
    layers
}
