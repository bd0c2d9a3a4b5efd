//! Running models in tract (the only module that knows tract).
//!
//! Models are handed to tract as bytes (our prost types are not tract's) or, when they use
//! external data, as a path so tract resolves the data file itself. Input facts are set from
//! the concrete arrays given, so models with symbolic or unknown dimensions run as long as the
//! caller picks a shape.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::*;

use crate::error::{Error, Result};

fn tract_err(action: impl Into<String>) -> impl FnOnce(TractError) -> Error {
    let action = action.into();
    move |e| Error::Tract {
        action,
        source: format!("{e:#}").into(),
    }
}

/// Where tract reads the model from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A file (external data is resolved next to it).
    Path(&'a Path),
    /// An encoded `ModelProto` with all tensors inline.
    Bytes(&'a [u8]),
}

/// A model loaded and optimized by tract for fixed input shapes.
pub struct TractModel {
    plan: std::sync::Arc<TypedSimplePlan>,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TractModel")
    }
}

/// Keeps tract off its AMX int8 matmul kernels (`avx512amx_mmm_i32_*`, CPUs with AMX such as
/// Sapphire Rapids). In tract 0.23.9 they crash (SIGSEGV) on the per-channel `Min` that
/// equalization keeps ReLU6 exact with, fused into their epilogue: every MobileNetV2 int8 model
/// with CLE crashed `isquant validate` on such a CPU. The AVX-512 VNNI kernels used instead
/// compute the same integers. A `TRACT_CPU_ISA` environment variable still takes precedence.
/// Runs once, before tract first probes the CPU; only on x86_64 (the feature name is x86's).
fn avoid_amx_int8_kernels() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // Fails only if another config set the knob differently; then that one stands.
            let _ = tract_onnx::tract_core::knobs::set_config_global("TRACT_CPU_ISA", "-amx-int8");
        }
    });
}

impl TractModel {
    /// Loads a model and optimizes it for f32 inputs of the given shapes.
    ///
    /// # Errors
    /// tract cannot parse, type or optimize the model.
    pub fn load(source: Source<'_>, input_shapes: &[Vec<usize>]) -> Result<Self> {
        avoid_amx_int8_kernels();
        // Shapes in value_info and outputs may use symbols (or -1) that would not unify with
        // the concrete input shapes chosen here; tract re-infers them.
        let onnx = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true);
        let mut model = match source {
            Source::Path(p) => onnx
                .model_for_path(p)
                .map_err(tract_err(format!("load {}", p.display())))?,
            Source::Bytes(mut b) => onnx
                .model_for_read(&mut b)
                .map_err(tract_err("load the model"))?,
        };
        for (i, shape) in input_shapes.iter().enumerate() {
            model = model
                .with_input_fact(i, f32::fact(shape).into())
                .map_err(tract_err(format!("set the shape of input {i}")))?;
        }
        let plan = model
            .into_optimized()
            .map_err(tract_err("optimize the model"))?
            .into_runnable()
            .map_err(tract_err("prepare the model to run"))?;
        Ok(TractModel { plan })
    }

    /// Runs the model on f32 inputs; returns every output as f32 (integer outputs converted).
    ///
    /// # Errors
    /// tract fails while running.
    pub fn run(&self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        let mut tv: TVec<TValue> = tvec!();
        for x in inputs {
            let data: Vec<f32> = x.iter().copied().collect();
            let t = Tensor::from_shape(x.shape(), &data).map_err(tract_err("build an input"))?;
            tv.push(t.into());
        }
        let outs = self.plan.run(tv).map_err(tract_err("run the model"))?;
        outs.iter()
            .map(|o| {
                let o = o
                    .cast_to::<f32>()
                    .map_err(tract_err("read an output as f32"))?;
                let view = o
                    .to_plain_array_view::<f32>()
                    .map_err(tract_err("read an output"))?;
                let v: Vec<f32> = view.iter().copied().collect();
                ArrayD::from_shape_vec(IxDyn(view.shape()), v).map_err(|e| Error::Tract {
                    action: "shape an output".into(),
                    source: e.to_string().into(),
                })
            })
            .collect()
    }
}

/// Seeded pseudo-random values in `[lo, hi)` (SplitMix64), identical on every machine.
pub fn seeded_uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> ArrayD<f32> {
    let mut state = seed;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(shape)))
}

/// Seeded standard-normal values (Box–Muller on two [`seeded_uniform`] streams), identical on
/// every machine.
pub fn seeded_normal(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let u = seeded_uniform(shape, seed, 0.0, 1.0);
    let v = seeded_uniform(shape, seed ^ 0x5DEE_CE66_D1CE_4E5B, 0.0, 1.0);
    let mut out = u.clone();
    out.iter_mut()
        .zip(u.iter().zip(v.iter()))
        .for_each(|(o, (&a, &b))| {
            // u ∈ [0, 1): use 1 − u ∈ (0, 1] so the logarithm is finite.
            let r = (-2.0 * (1.0 - f64::from(a)).ln()).sqrt();
            *o = (r * (std::f64::consts::TAU * f64::from(b)).cos()) as f32;
        });
    out
}

/// Sums for SQNR / cosine / max error, merged in a fixed order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    signal: f64,
    noise: f64,
    dot: f64,
    norm_b: f64,
    max_abs: f64,
    count: u64,
}

impl Sums {
    /// Accumulates `reference` vs `candidate`.
    pub fn add(&mut self, reference: &ArrayD<f32>, candidate: &ArrayD<f32>) {
        for (&x, &y) in reference.iter().zip(candidate.iter()) {
            let (x, y) = (f64::from(x), f64::from(y));
            self.signal += x * x;
            self.noise += (x - y) * (x - y);
            self.dot += x * y;
            self.norm_b += y * y;
            self.max_abs = self.max_abs.max((x - y).abs());
            self.count += 1;
        }
    }

    /// Merges another partial sum.
    pub fn merge(&mut self, o: &Sums) {
        self.signal += o.signal;
        self.noise += o.noise;
        self.dot += o.dot;
        self.norm_b += o.norm_b;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.count += o.count;
    }

    /// `10·log10(Σref² / Σ(ref − q)²)`; infinite when identical.
    pub fn sqnr_db(&self) -> f64 {
        if self.noise == 0.0 {
            f64::INFINITY
        } else if self.signal == 0.0 {
            f64::NEG_INFINITY
        } else {
            10.0 * (self.signal / self.noise).log10()
        }
    }

    /// Cosine similarity.
    pub fn cosine(&self) -> f64 {
        if self.signal == 0.0 || self.norm_b == 0.0 {
            if self.noise == 0.0 {
                1.0
            } else {
                0.0
            }
        } else {
            self.dot / (self.signal.sqrt() * self.norm_b.sqrt())
        }
    }

    /// Largest absolute difference.
    pub fn max_abs(&self) -> f64 {
        self.max_abs
    }
}

/// Indices of the `k` largest values (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Per-channel sums (channel axis 1) for comparing a tensor up to one positive gain per
/// channel: cross-layer equalization divides channel `i` of the values between two equalized
/// layers by `s_i` (the int8 model lists them under [`RESCALED_KEY`]), so the int8 model holds
/// `f_i / s_i + noise` where the float model holds `f_i`. With `g_i = Σ f·q / Σ q²` (the
/// least-squares gain; none when `Σ f·q ≤ 0`) the residual is `Σ f² − g_i·Σ f·q` per channel,
/// and the SQNR is `10·log10(Σ f² / Σ_i residual_i)`. One gain per channel absorbs next to
/// nothing of real quantization noise (thousands of values per channel).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelFit {
    ff: Vec<f64>,
    fq: Vec<f64>,
    qq: Vec<f64>,
}

impl ChannelFit {
    /// Accumulates `reference` vs `candidate` (same shape; a tensor of rank < 2 is one channel).
    pub fn add(&mut self, reference: &ArrayD<f32>, candidate: &ArrayD<f32>) {
        let shape = reference.shape();
        let c = if shape.len() >= 2 { shape[1].max(1) } else { 1 };
        let inner: usize = shape.iter().skip(2).product::<usize>().max(1);
        if self.ff.len() != c {
            *self = ChannelFit {
                ff: vec![0.0; c],
                fq: vec![0.0; c],
                qq: vec![0.0; c],
            };
        }
        for (k, (&x, &y)) in reference.iter().zip(candidate.iter()).enumerate() {
            let ch = if shape.len() >= 2 { (k / inner) % c } else { 0 };
            let (x, y) = (f64::from(x), f64::from(y));
            self.ff[ch] += x * x;
            self.fq[ch] += x * y;
            self.qq[ch] += y * y;
        }
    }

    /// Merges another partial sum (of the same tensor).
    pub fn merge(&mut self, o: &ChannelFit) {
        if self.ff.is_empty() {
            self.clone_from(o);
            return;
        }
        for (a, b) in [
            (&mut self.ff, &o.ff),
            (&mut self.fq, &o.fq),
            (&mut self.qq, &o.qq),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// SQNR in dB after the best non-negative gain per channel.
    #[must_use]
    pub fn sqnr_db(&self) -> f64 {
        let signal: f64 = self.ff.iter().sum();
        let residual: f64 = self
            .ff
            .iter()
            .zip(&self.fq)
            .zip(&self.qq)
            .map(|((&ff, &fq), &qq)| {
                if qq > 0.0 && fq > 0.0 {
                    (ff - fq * fq / qq).max(0.0)
                } else {
                    ff
                }
            })
            .sum();
        if residual <= 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / residual).log10()
        }
    }
}

/// Metadata key of an int8 model (`metadata_props`): the values cross-layer equalization
/// divided per channel, one per line. `--per-layer` compares those with [`ChannelFit`].
pub const RESCALED_KEY: &str = "isquant.rescaled";

/// Metrics of one model output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
}

/// Per-layer comparison for `--per-layer`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerMetrics {
    /// The layer's output value (same name in both models).
    pub value: String,
    /// The int8 op computing it (`ConvInteger`, `MatMulInteger`, or the float op for
    /// weight-only layers).
    pub op: String,
    /// SQNR of the int8 model's tensor against the float model's, dB; for a value
    /// cross-layer equalization rescaled (`rescaled`), after the best gain per channel
    /// ([`ChannelFit`]).
    #[serde(serialize_with = "finite_or_string")]
    pub sqnr_db: f64,
    /// Cross-layer equalization rescaled this value per channel (the int8 model's
    /// [`RESCALED_KEY`] metadata lists it), so `sqnr_db` compares it up to one gain per
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
    /// Weight scale.
    pub weight_scale: Option<f32>,
}

fn finite_or_string<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" })
    }
}

/// Everything `validate` measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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

/// A quantized layer found in an int8 model: its output value, op, and scales.
#[derive(Debug, Clone, PartialEq)]
struct LayerProbe {
    value: String,
    input: Option<String>,
    op: String,
    act_scale: Option<f32>,
    weight_scale: Option<f32>,
}

fn scalar(graph: &crate::graph::Graph, name: &str) -> Option<f32> {
    let producers = graph.producers();
    graph
        .constant_f32(name, &producers)
        .ok()
        .flatten()
        .and_then(|a| a.iter().next().copied())
}

/// Finds the quantized layers of an int8 model written by isquant (or any model with
/// ConvInteger/MatMulInteger → Cast → Mul [→ Add] chains, or DequantizeLinear weights).
fn probes(int8: &crate::graph::Model) -> Vec<LayerProbe> {
    let g = &int8.graph;
    let consumers = g.consumers();
    let producers = g.producers();
    let single = |v: &str, op: &str| -> Option<usize> {
        match consumers.get(v).map(Vec::as_slice) {
            Some([i]) if g.nodes[*i].is(op) => Some(*i),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for n in &g.nodes {
        if n.is("ConvInteger") || n.is("MatMulInteger") {
            let quant = n
                .input(0)
                .and_then(|x| producers.get(x))
                .map(|&q| &g.nodes[q])
                .filter(|q| q.is("QuantizeLinear"));
            let act_scale = quant.and_then(|q| q.input(1)).and_then(|s| scalar(g, s));
            // The float value the layer quantizes (through an optional Clip).
            let input = quant.and_then(|q| q.input(0)).map(|x| {
                match producers.get(x).map(|&c| &g.nodes[c]) {
                    Some(c) if c.is("Clip") => c.input(0).unwrap_or(x).to_string(),
                    _ => x.to_string(),
                }
            });
            let Some(cast) = n.outputs.first().and_then(|o| single(o, "Cast")) else {
                continue;
            };
            let Some(mul) = g.nodes[cast].outputs.first().and_then(|o| single(o, "Mul")) else {
                continue;
            };
            let rescale = g.nodes[mul].input(1).and_then(|s| scalar(g, s));
            let mul_out = g.nodes[mul].outputs.first().cloned().unwrap_or_default();
            let value = single(&mul_out, "Add")
                .and_then(|a| g.nodes[a].outputs.first().cloned())
                .unwrap_or(mul_out);
            out.push(LayerProbe {
                value,
                input,
                op: n.op_type.clone(),
                act_scale,
                weight_scale: match (rescale, act_scale) {
                    (Some(r), Some(a)) if a > 0.0 => Some(r / a),
                    _ => None,
                },
            });
        } else if n.is("DequantizeLinear") {
            let Some(dq_out) = n.outputs.first() else {
                continue;
            };
            let is_weight = n.input(0).is_some_and(|w| g.initializer(w).is_some());
            if !is_weight {
                continue;
            }
            for &c in consumers
                .get(dq_out.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let layer = &g.nodes[c];
                if let Some(v) = layer.outputs.first() {
                    out.push(LayerProbe {
                        value: v.clone(),
                        input: layer.input(0).map(str::to_string),
                        op: format!("{} (weight-only)", layer.op_type),
                        act_scale: None,
                        weight_scale: n.input(1).and_then(|s| scalar(g, s)),
                    });
                }
            }
        }
    }
    out
}

fn with_outputs(m: &crate::graph::Model, extra: &[String]) -> Vec<u8> {
    let mut m = m.clone();
    for v in extra {
        m.graph.outputs.push(crate::onnx::pb::ValueInfoProto {
            name: Some(v.clone()),
            ..Default::default()
        });
    }
    crate::onnx::io::encode_model(&m.to_proto())
}

/// Stacks samples into a batch `[n, ...]`.
fn stack(samples: &[&crate::inputs::Sample]) -> Result<ArrayD<f32>> {
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
    float: &crate::graph::Model,
    int8: &crate::graph::Model,
    samples: &[crate::inputs::Sample],
    opts: &ValidateOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Validation> {
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
    let float_values: std::collections::HashSet<&str> = float
        .graph
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(String::as_str))
        .collect();
    let probes: Vec<LayerProbe> = if per_layer {
        probes(int8)
            .into_iter()
            .filter(|p| float_values.contains(p.value.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    let mut extra: Vec<String> = Vec::new();
    for p in &probes {
        for v in std::iter::once(&p.value).chain(p.input.as_ref()) {
            if float_values.contains(v.as_str()) && !extra.contains(v) {
                extra.push(v.clone());
            }
        }
    }
    let fb = with_outputs(float, &extra);
    let qb = with_outputs(int8, &extra);
    let batch = batch.max(1);
    let chunks: Vec<&[crate::inputs::Sample]> = samples.chunks(batch).collect();
    let Some(first) = chunks.first() else {
        return Err(Error::Config("no inputs to validate on".into()));
    };
    let refs: Vec<&crate::inputs::Sample> = first.iter().collect();
    let shape = stack(&refs)?.shape().to_vec();
    let fm = TractModel::load(Source::Bytes(&fb), std::slice::from_ref(&shape))?;
    let qm = TractModel::load(Source::Bytes(&qb), std::slice::from_ref(&shape))?;
    // A short last batch needs its own plans.
    let last_len = chunks.last().map_or(0, |c| c.len());
    let tail_models = if last_len != first.len() {
        let mut s = shape.clone();
        s[0] = last_len;
        Some((
            TractModel::load(Source::Bytes(&fb), std::slice::from_ref(&s))?,
            TractModel::load(Source::Bytes(&qb), std::slice::from_ref(&s))?,
        ))
    } else {
        None
    };
    let done = std::sync::atomic::AtomicUsize::new(0);
    struct Partial {
        kept: Option<(ArrayD<f32>, ArrayD<f32>)>,
        outputs: Vec<(Sums, Vec<usize>)>,
        rows: Vec<Vec<(Vec<usize>, Vec<usize>)>>,
        layers: Vec<(Sums, ChannelFit)>,
    }
    let run_batch = |(k, chunk): (usize, &&[crate::inputs::Sample])| -> Result<Partial> {
        let refs: Vec<&crate::inputs::Sample> = chunk.iter().collect();
        let x = stack(&refs)?;
        let (f, q) = match (&tail_models, k + 1 == chunks.len()) {
            (Some((tf, tq)), true) => (tf, tq),
            _ => (&fm, &qm),
        };
        let a = f.run(std::slice::from_ref(&x))?;
        let b = q.run(std::slice::from_ref(&x))?;
        let mut outputs = Vec::new();
        let mut rows = Vec::new();
        for o in 0..n_out {
            let (Some(ra), Some(rb)) = (a.get(o), b.get(o)) else {
                continue;
            };
            let mut s = Sums::default();
            s.add(ra, rb);
            outputs.push((s, ra.shape().to_vec()));
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
            rows,
            layers,
        })
    };
    // tract 0.23.9's AMX int8 kernel crashes (SIGSEGV) off the main thread when layer
    // outputs are extra model outputs, so per-layer runs stay on the calling thread.
    let partials: Vec<Partial> = if per_layer {
        chunks
            .iter()
            .enumerate()
            .map(run_batch)
            .collect::<Result<Vec<_>>>()?
    } else {
        chunks
            .par_iter()
            .enumerate()
            .map(run_batch)
            .collect::<Result<Vec<_>>>()?
    };
    // Merge in batch order (deterministic whatever the thread count).
    let labels: Vec<Option<usize>> = samples.iter().map(|s| s.label).collect();
    let labeled = labels.iter().filter(|l| l.is_some()).count();
    let mut outputs = Vec::new();
    for o in 0..n_out {
        let mut sums = Sums::default();
        let mut shape = Vec::new();
        let mut all_rows: Vec<&(Vec<usize>, Vec<usize>)> = Vec::new();
        for p in &partials {
            if let Some((s, sh)) = p.outputs.get(o) {
                sums.merge(s);
                shape.clone_from(sh);
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
        });
    }
    let rescaled_values: std::collections::HashSet<String> = int8
        .metadata()
        .into_iter()
        .filter(|(k, _)| k == RESCALED_KEY)
        .flat_map(|(_, v)| v.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    // (sums, SQNR in dB, rescaled per channel).
    let merged = |name: &str| -> Option<(Sums, f64, bool)> {
        let l = extra.iter().position(|v| v == name)?;
        let mut s = Sums::default();
        let mut fit = ChannelFit::default();
        for part in &partials {
            if let Some((x, f)) = part.layers.get(l) {
                s.merge(x);
                fit.merge(f);
            }
        }
        let rescaled = rescaled_values.contains(name);
        let db = if rescaled { fit.sqnr_db() } else { s.sqnr_db() };
        Some((s, db, rescaled))
    };
    let mut layers: Vec<LayerMetrics> = probes
        .iter()
        .map(|p| {
            let (s, sqnr, rescaled) = merged(&p.value).unwrap_or_else(|| {
                let s = Sums::default();
                let db = s.sqnr_db();
                (s, db, false)
            });
            let input_sqnr = p
                .input
                .as_deref()
                .and_then(merged)
                .map_or(f64::INFINITY, |(_, db, _)| db);
            let noise = |db: f64| {
                if db.is_finite() {
                    10f64.powf(-db / 10.0)
                } else {
                    0.0
                }
            };
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
                weight_scale: p.weight_scale,
            }
        })
        .collect();
    layers.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db).then(a.value.cmp(&b.value)));
    let seconds = start.elapsed().as_secs_f64();
    let kept_outputs = partials.into_iter().filter_map(|p| p.kept).collect();
    Ok(Validation {
        kept_outputs,
        samples: samples.len(),
        labeled,
        synthetic,
        outputs,
        layers,
        seconds,
        samples_per_second: samples.len() as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_fit_ignores_a_gain_per_channel_and_keeps_noise() {
        // [N=2, C=3, 4] values; the candidate is channel c divided by (c + 1) · 0.5.
        let f = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            ((i[0] * 12 + i[1] * 4 + i[2]) as f32 * 0.37).sin() + 0.1
        });
        let gains = [0.5f32, 1.0, 1.5];
        let q = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| f[[i[0], i[1], i[2]]] / gains[i[1]]);
        let mut fit = ChannelFit::default();
        fit.add(&f, &q);
        assert!(fit.sqnr_db() > 100.0, "{}", fit.sqnr_db());
        let mut plain = Sums::default();
        plain.add(&f, &q);
        assert!(plain.sqnr_db() < 10.0, "{}", plain.sqnr_db());
        // Noise stays noise: a 1 % perturbation that is not a gain keeps ~40 dB.
        let noisy = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            q[[i[0], i[1], i[2]]] + 0.01 * ((i[2] as f32 * 2.1).cos())
        });
        let mut fit = ChannelFit::default();
        fit.add(&f, &noisy);
        let db = fit.sqnr_db();
        assert!(db > 25.0 && db < 60.0, "{db}");
        // Merging two halves gives the same as one pass.
        let mut a = ChannelFit::default();
        a.add(&f, &noisy);
        let mut b = ChannelFit::default();
        b.merge(&a);
        b.merge(&a);
        assert!((b.sqnr_db() - db).abs() < 1e-9);
        // A sign flip is not a gain: its whole energy is residual.
        let neg = f.mapv(|v| -v);
        let mut fit = ChannelFit::default();
        fit.add(&f, &neg);
        assert!(fit.sqnr_db().abs() < 1e-9, "{}", fit.sqnr_db());
    }

    #[test]
    fn seeded_normal_is_standard_normal_and_deterministic() {
        let a = seeded_normal(&[200_000], 5);
        assert_eq!(a, seeded_normal(&[200_000], 5));
        assert_ne!(a, seeded_normal(&[200_000], 6));
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        // Tails as a Gaussian's: P(|x| > 3) ≈ 0.27 %.
        let tail = a.iter().filter(|v| v.abs() > 3.0).count() as f64 / n;
        assert!((0.0017..0.0037).contains(&tail), "tail {tail}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
