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

impl TractModel {
    /// Loads a model and optimizes it for f32 inputs of the given shapes.
    ///
    /// # Errors
    /// tract cannot parse, type or optimize the model.
    pub fn load(source: Source<'_>, input_shapes: &[Vec<usize>]) -> Result<Self> {
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

/// How closely a quantized model follows its float original on the same inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Number of rows compared (samples × batch).
    pub rows: usize,
    /// Fraction of rows whose top-1 class is the same (first output, last axis).
    pub top1_agreement: f64,
    /// Signal-to-quantization-noise ratio of the first output, in dB.
    pub sqnr_db: f64,
    /// Cosine similarity of the first output.
    pub cosine: f64,
    /// Largest absolute difference.
    pub max_abs_error: f64,
}

/// Runs both models on every batch and compares their first outputs.
///
/// # Errors
/// tract fails on either model.
pub fn compare(
    reference: &TractModel,
    candidate: &TractModel,
    batches: &[Vec<ArrayD<f32>>],
) -> Result<Agreement> {
    let (mut signal, mut noise, mut dot, mut na, mut nb, mut max_abs) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut rows, mut agree) = (0usize, 0usize);
    for batch in batches {
        let a = reference.run(batch)?;
        let b = candidate.run(batch)?;
        let (Some(a), Some(b)) = (a.first(), b.first()) else {
            continue;
        };
        for (&x, &y) in a.iter().zip(b.iter()) {
            let (x, y) = (f64::from(x), f64::from(y));
            signal += x * x;
            noise += (x - y) * (x - y);
            dot += x * y;
            na += x * x;
            nb += y * y;
            max_abs = max_abs.max((x - y).abs());
        }
        let classes = a.shape().last().copied().unwrap_or(1).max(1);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0
        };
        let av: Vec<f32> = a.iter().copied().collect();
        let bv: Vec<f32> = b.iter().copied().collect();
        for (ra, rb) in av.chunks(classes).zip(bv.chunks(classes)) {
            rows += 1;
            if argmax(ra) == argmax(rb) {
                agree += 1;
            }
        }
    }
    Ok(Agreement {
        rows,
        top1_agreement: if rows == 0 {
            0.0
        } else {
            agree as f64 / rows as f64
        },
        sqnr_db: if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / noise).log10()
        },
        cosine: if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            dot / (na.sqrt() * nb.sqrt())
        },
        max_abs_error: max_abs,
    })
}
