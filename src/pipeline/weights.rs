//! The weights stage: every chosen layer's weight scale and SQuant rounding
//! ([`crate::passes::weights::quantize_weight`]), layers in parallel.
//!
//! Each result depends only on its own weights, so the output is the same for any thread
//! count (the kernel also splits large layers over channels). Bias correction's shift from BN
//! statistics is computed right after each layer is rounded, while its weights are in cache
//! ([`super::bias`]).
//!
//! Per-channel scales (`--granularity per-channel`) are applied in the rescale of integer
//! layers, or by a per-axis DequantizeLinear (opset 13; the opset is never raised that far);
//! ConvTranspose keeps one scale (its output channels are not an axis of the weight when
//! grouped), and so do `[K, N]` matrices in the `qdq` format (TensorRT takes per-axis weights
//! only on axis 0).

use ndarray::ArrayD;
use rayon::prelude::*;

use super::config::{Granularity, QuantizeConfig};
use crate::error::{Error, Result};
use crate::graph::Model;
use crate::passes::bias_correction::{bias_shift, InputMean};
use crate::passes::emit::Format;
use crate::passes::targets::Target;
use crate::passes::weights::{self, Layout, QuantizedWeight};

/// A chosen layer's float weight and its layout.
#[derive(Debug, Clone)]
pub struct FloatWeight {
    /// The weight as the graph holds it.
    pub values: ArrayD<f32>,
    /// Which axis holds output channels.
    pub layout: Layout,
}

/// What the stage made.
#[derive(Debug, Clone)]
pub struct Weights {
    /// The float weights (bias correction compares them with the rounded ones).
    pub float: Vec<FloatWeight>,
    /// The quantized weights.
    pub quantized: Vec<QuantizedWeight>,
    /// Bias correction's shift from BN statistics, where they reach the layer's input.
    pub bn_shifts: Vec<Option<Vec<f64>>>,
}

/// The weight layout of a target.
///
/// # Errors
/// A malformed `group` or `transB` attribute.
pub fn layout_of(model: &Model, t: &Target) -> Result<Layout> {
    let node = &model.graph.nodes[t.node];
    Ok(match t.op_type.as_str() {
        "Conv" => Layout::Conv,
        "ConvTranspose" => Layout::ConvTranspose {
            group: node.group()?,
        },
        "Gemm" if node.attr_int("transB")?.unwrap_or(0) != 0 => Layout::RowsAreOutputs,
        _ => Layout::ColumnsAreOutputs,
    })
}

/// Quantizes every chosen layer's weight. `integer[k]`: layer `k` runs with a quantized
/// input in an integer format; `bn_means[k]`: its input's mean from BN statistics, if any.
///
/// # Errors
/// A weight that is not a constant, non-finite weights, malformed layers.
pub fn quantize(
    model: &Model,
    chosen: &[Target],
    integer: &[bool],
    bn_means: &[Option<InputMean>],
    cfg: &QuantizeConfig,
) -> Result<Weights> {
    let per_axis_ok = model.opset().unwrap_or(0) >= 13;
    let producers = model.graph.producers();
    let mut float = Vec::with_capacity(chosen.len());
    for target in chosen {
        let values = model
            .graph
            .constant_f32(&target.weight, &producers)?
            .ok_or_else(|| Error::tensor(&target.weight, "weight is not a constant"))?;
        float.push(FloatWeight {
            values,
            layout: layout_of(model, target)?,
        });
    }
    let (quantized, bn_shifts): (Vec<QuantizedWeight>, Vec<Option<Vec<f64>>>) = chosen
        .par_iter()
        .zip(float.par_iter())
        .zip(integer.par_iter())
        .zip(bn_means.par_iter())
        .map(|(((target, w), integer), bn_mean)| {
            let per_channel = cfg.granularity == Granularity::PerChannel
                && !matches!(w.layout, Layout::ConvTranspose { .. })
                && !(cfg.format == Format::Qdq && w.layout == Layout::ColumnsAreOutputs)
                && (*integer || per_axis_ok);
            let qw = weights::quantize_weight(
                &target.weight,
                &w.values,
                w.layout,
                cfg.weight_bits,
                cfg.rounding,
                per_channel,
            )?;
            let shift = bn_mean
                .as_ref()
                .and_then(|m| bias_shift(&w.values, &qw, w.layout, m.group, &m.mean));
            Ok((qw, shift))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    Ok(Weights {
        float,
        quantized,
        bn_shifts,
    })
}
