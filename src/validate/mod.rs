//! `isquant validate`: the float and the int8 model side by side in tract, on the same inputs.
//!
//! Per output: top-1 / top-5 agreement (classification-like `[N, C]` outputs), accuracy on
//! labeled inputs, SQNR, cosine and maximum error ([`crate::metrics`]). With `per_layer`, every
//! quantized layer's output too ([`layers`]). Batches run in parallel and are merged in batch
//! order, so results do not depend on the thread count. Rendering and thresholds: [`render`].
//!
//! Nothing in the pipeline depends on this module; it depends on the pipeline's outputs only
//! through the metadata a quantized model carries.

pub mod layers;
pub mod outputs;
pub mod render;

use ndarray::ArrayD;
use serde::Serialize;

pub use layers::LayerMetrics;
pub use outputs::OutputKindMetrics;
pub use render::Thresholds;

use crate::error::{Error, Result};
use crate::graph::Model;
use crate::inputs::Sample;
use crate::metrics::{finite_or_string, top_k, ChannelFit, Sums};
use crate::runtime::{encode_with_outputs, Outputs, Source, TractModel};

/// Metrics of one model output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputMetrics {
    /// Output name.
    pub name: String,
    /// Shape of one batch of this output.
    pub shape: Vec<usize>,
    /// SQNR of the int8 output against the float output, dB.
    #[serde(serialize_with = "finite_or_string")]
    pub sqnr_db: f64,
    /// Cosine similarity.
    pub cosine: f64,
    /// Largest absolute difference.
    pub max_abs_error: f64,
    /// Top-1 agreement (classification-like outputs: `[N, C]`).
    pub top1_agreement: Option<f64>,
    /// Top-5 agreement: the int8 top-1 is in the float top-5 (`C ≥ 5`).
    pub top5_agreement: Option<f64>,
    /// Float model's top-1 accuracy on labeled samples.
    pub float_accuracy: Option<f64>,
    /// int8 model's top-1 accuracy on labeled samples.
    pub int8_accuracy: Option<f64>,
    /// Maps (`[N, C, H, W]`): per-channel SQNR and mask IoU; sequences (`[N, T, C]`): step
    /// agreement and identical greedy-CTC decodings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<OutputKindMetrics>,
}

/// Everything `validate` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    /// Number of samples.
    pub samples: usize,
    /// Number of labeled samples.
    pub labeled: usize,
    /// Whether the inputs were synthetic.
    pub synthetic: bool,
    /// Per-output metrics.
    pub outputs: Vec<OutputMetrics>,
    /// Per-layer metrics, worst SQNR first (with `per_layer`).
    pub layers: Vec<LayerMetrics>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Samples per second (both models).
    pub samples_per_second: f64,
    /// The first output of the float and the int8 model, batch by batch (with `keep_outputs`).
    #[serde(skip)]
    pub kept_outputs: Vec<(ArrayD<f32>, ArrayD<f32>)>,
}

/// Stacks samples into a batch `[n, ...]`.
fn stack(samples: &[&Sample]) -> Result<ArrayD<f32>> {
    let views: Vec<_> = samples.iter().map(|s| s.tensor.view()).collect();
    let stacked = ndarray::stack(ndarray::Axis(0), &views).map_err(|e| {
        Error::Config(format!(
            "inputs have different shapes ({}): {e}",
            samples
                .iter()
                .map(|s| format!("{:?}", s.tensor.shape()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    Ok(stacked)
}

/// Options of [`validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidateOptions {
    /// The samples are synthetic (reported as such).
    pub synthetic: bool,
    /// Samples per run (1 when the model's batch dimension is fixed).
    pub batch: usize,
    /// Also compare every quantized layer's output.
    pub per_layer: bool,
    /// Keep both models' first outputs in [`Validation::kept_outputs`].
    pub keep_outputs: bool,
}

/// Runs the float and the int8 model on `samples` and compares them.
///
/// `progress(done, total)` is called after each batch, from worker threads.
///
/// # Errors
/// tract fails on either model; samples of different shapes; labels out of range.
pub fn validate(
    float: &Model,
    int8: &Model,
    samples: &[Sample],
    opts: &ValidateOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Validation> {
    let mut v = validate_groups(float, int8, &[samples], opts, progress)?;
    v.pop()
        .ok_or_else(|| Error::Config("no inputs to validate on".into()))
}

/// [`validate`] for several groups of samples at once, one [`Validation`] per group: each
/// model is loaded and optimized once per batch length, and the batches of every group run
/// side by side (the guard's three input families).
///
/// # Errors
/// As [`validate`]; an empty group is an error.
pub fn validate_groups(
    float: &Model,
    int8: &Model,
    groups: &[&[Sample]],
    opts: &ValidateOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Validation>> {
    let ValidateOptions {
        synthetic,
        batch,
        per_layer,
        keep_outputs,
    } = *opts;
    use rayon::prelude::*;
    let start = std::time::Instant::now();
    let n_out = int8.graph.outputs.len();
    if float.graph.outputs.len() != n_out {
        return Err(Error::Config(format!(
            "the models have different outputs: {} in the float model, {n_out} in the int8 model",
            float.graph.outputs.len()
        )));
    }
    let fi: Vec<String> = float
        .graph
        .real_inputs()
        .iter()
        .filter_map(|i| i.name.clone())
        .collect();
    let qi: Vec<String> = int8
        .graph
        .real_inputs()
        .iter()
        .filter_map(|i| i.name.clone())
        .collect();
    if fi != qi {
        return Err(Error::Config(format!(
            "the models have different inputs: {fi:?} vs {qi:?}"
        )));
    }
    for name in &fi {
        if let (Some(a), Some(b)) = (float.graph.input_dims(name), int8.graph.input_dims(name)) {
            let clash = a.len() != b.len()
                || a.iter()
                    .zip(&b)
                    .any(|(x, y)| matches!((x, y), (Some(x), Some(y)) if x != y));
            if clash {
                let show = |d: &[Option<usize>]| {
                    d.iter()
                        .map(|v| v.map_or("?".to_string(), |v| v.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Error::Config(format!(
                    "the models have different shapes for input `{name}`: [{}] vs [{}]",
                    show(&a),
                    show(&b)
                )));
            }
        }
    }
    let (probes, extra) = if per_layer {
        layers::probes(float, int8)?
    } else {
        (Vec::new(), Vec::new())
    };
    let fb = encode_with_outputs(float, Outputs::Append(&extra))?;
    let qb = encode_with_outputs(int8, Outputs::Append(&extra))?;
    let batch = batch.max(1);
    if groups.iter().any(|g| g.is_empty()) || groups.is_empty() {
        return Err(Error::Config("no inputs to validate on".into()));
    }
    // (group, batch) in group order.
    let chunks: Vec<(usize, &[Sample])> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, samples)| samples.chunks(batch).map(move |c| (g, c)))
        .collect();
    // One pair of plans per batch length (a short last batch needs its own), the first
    // batch's length first.
    let mut plans: Vec<(usize, TractModel, TractModel)> = Vec::new();
    for (_, chunk) in &chunks {
        if plans.iter().any(|(n, _, _)| *n == chunk.len()) {
            continue;
        }
        let refs: Vec<&Sample> = chunk.iter().collect();
        let shape = stack(&refs)?.shape().to_vec();
        let fm = TractModel::load(Source::Bytes(&fb), std::slice::from_ref(&shape))?;
        let qm = TractModel::load(Source::Bytes(&qb), std::slice::from_ref(&shape))?;
        plans.push((chunk.len(), fm, qm));
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let run_batch = |(_, chunk): &(usize, &[Sample])| -> Result<Partial> {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let x = stack(&refs)?;
        let Some((_, f, q)) = plans.iter().find(|(n, _, _)| *n == chunk.len()) else {
            return Err(Error::Config("no plan for a batch length".into()));
        };
        let a = f.run(std::slice::from_ref(&x))?;
        let b = q.run(std::slice::from_ref(&x))?;
        let mut outputs = Vec::new();
        let mut kinds = Vec::new();
        let mut rows = Vec::new();
        for o in 0..n_out {
            let (Some(ra), Some(rb)) = (a.get(o), b.get(o)) else {
                continue;
            };
            let mut s = Sums::default();
            s.add(ra, rb);
            outputs.push((s, ra.shape().to_vec()));
            let mut k = outputs::Partial::default();
            k.add(ra, rb);
            kinds.push(k);
            let classes = if ra.ndim() == 2 { ra.shape()[1] } else { 0 };
            let mut r = Vec::new();
            if classes > 1 {
                let va: Vec<f32> = ra.iter().copied().collect();
                let vb: Vec<f32> = rb.iter().copied().collect();
                for (x, y) in va.chunks(classes).zip(vb.chunks(classes)) {
                    r.push((top_k(x, 5), top_k(y, 1)));
                }
            }
            rows.push(r);
        }
        let layers = (0..extra.len())
            .map(|l| {
                let mut s = Sums::default();
                let mut fit = ChannelFit::default();
                if let (Some(x), Some(y)) = (a.get(n_out + l), b.get(n_out + l)) {
                    s.add(x, y);
                    fit.add(x, y);
                }
                (s, fit)
            })
            .collect();
        let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(d, chunks.len());
        let kept = if keep_outputs {
            a.first().cloned().zip(b.first().cloned())
        } else {
            None
        };
        Ok(Partial {
            kept,
            outputs,
            kinds,
            rows,
            layers,
        })
    };
    // tract 0.23.9's AMX int8 kernel crashes (SIGSEGV) off the main thread when layer
    // outputs are extra model outputs, so per-layer runs stay on the calling thread.
    let partials: Vec<Partial> = if per_layer {
        chunks.iter().map(run_batch).collect::<Result<Vec<_>>>()?
    } else {
        chunks
            .par_iter()
            .map(run_batch)
            .collect::<Result<Vec<_>>>()?
    };
    let seconds = start.elapsed().as_secs_f64();
    let total: usize = groups.iter().map(|g| g.len()).sum();
    // Merge in batch order (deterministic whatever the thread count), group by group.
    let mut by_group: Vec<Vec<Partial>> = groups.iter().map(|_| Vec::new()).collect();
    for ((g, _), p) in chunks.iter().zip(partials) {
        if let Some(slot) = by_group.get_mut(*g) {
            slot.push(p);
        }
    }
    groups
        .iter()
        .zip(by_group)
        .map(|(samples, partials)| {
            let m = Merge {
                int8,
                samples,
                synthetic,
                probes: &probes,
                extra: &extra,
                n_out,
                seconds,
                total,
            };
            m.merge(partials)
        })
        .collect()
}

/// One batch's sums, before they are merged.
struct Partial {
    kept: Option<(ArrayD<f32>, ArrayD<f32>)>,
    outputs: Vec<(Sums, Vec<usize>)>,
    kinds: Vec<outputs::Partial>,
    rows: Vec<Vec<(Vec<usize>, Vec<usize>)>>,
    layers: Vec<(Sums, ChannelFit)>,
}

/// What merging one group's batches needs.
struct Merge<'a> {
    int8: &'a Model,
    samples: &'a [Sample],
    synthetic: bool,
    probes: &'a [layers::Probe],
    extra: &'a [String],
    n_out: usize,
    seconds: f64,
    total: usize,
}

impl Merge<'_> {
    fn merge(&self, partials: Vec<Partial>) -> Result<Validation> {
        let Merge {
            int8,
            samples,
            synthetic,
            probes,
            extra,
            n_out,
            seconds,
            total,
        } = *self;
        let labels: Vec<Option<usize>> = samples.iter().map(|s| s.label).collect();
        let labeled = labels.iter().filter(|l| l.is_some()).count();
        let mut outputs = Vec::new();
        for o in 0..n_out {
            let mut sums = Sums::default();
            let mut kind = outputs::Partial::default();
            let mut shape = Vec::new();
            let mut all_rows: Vec<&(Vec<usize>, Vec<usize>)> = Vec::new();
            for p in &partials {
                if let Some((s, sh)) = p.outputs.get(o) {
                    sums.merge(s);
                    shape.clone_from(sh);
                }
                if let Some(k) = p.kinds.get(o) {
                    kind.merge(k);
                }
                if let Some(r) = p.rows.get(o) {
                    all_rows.extend(r.iter());
                }
            }
            let (mut top1, mut top5, mut acc_f, mut acc_q, mut n_lab) =
                (0usize, 0usize, 0usize, 0usize, 0usize);
            let classes = if shape.len() == 2 { shape[1] } else { 0 };
            for (row, (fa, qb)) in all_rows.iter().enumerate() {
                let (fa, qb) = (fa, qb);
                let f1 = fa.first().copied();
                let q1 = qb.first().copied();
                if f1 == q1 {
                    top1 += 1;
                }
                if q1.is_some_and(|q| fa.contains(&q)) {
                    top5 += 1;
                }
                if let Some(Some(l)) = labels.get(row) {
                    if *l >= classes {
                        return Err(Error::Config(format!(
                            "label {l} of input `{}` is out of range for {classes} classes",
                            samples.get(row).map_or("?", |s| s.name.as_str())
                        )));
                    }
                    n_lab += 1;
                    acc_f += usize::from(f1 == Some(*l));
                    acc_q += usize::from(q1 == Some(*l));
                }
            }
            let rows = all_rows.len();
            let frac = |k: usize, n: usize| (n > 0).then(|| k as f64 / n as f64);
            outputs.push(OutputMetrics {
                name: int8
                    .graph
                    .outputs
                    .get(o)
                    .and_then(|v| v.name.clone())
                    .unwrap_or_default(),
                shape,
                sqnr_db: sums.sqnr_db(),
                cosine: sums.cosine(),
                max_abs_error: sums.max_abs(),
                top1_agreement: frac(top1, rows),
                top5_agreement: if classes >= 5 { frac(top5, rows) } else { None },
                float_accuracy: frac(acc_f, n_lab),
                int8_accuracy: frac(acc_q, n_lab),
                details: kind.metrics(),
            });
        }
        let layers = layers::metrics(int8, probes, extra, |k| {
            let mut s = Sums::default();
            let mut fit = ChannelFit::default();
            for part in &partials {
                if let Some((x, f)) = part.layers.get(k) {
                    s.merge(x);
                    fit.merge(f);
                }
            }
            (s, fit)
        });
        let kept_outputs = partials.into_iter().filter_map(|p| p.kept).collect();
        Ok(Validation {
            kept_outputs,
            samples: samples.len(),
            labeled,
            synthetic,
            outputs,
            layers,
            seconds,
            samples_per_second: total as f64 / seconds.max(1e-9),
        })
    }
}
