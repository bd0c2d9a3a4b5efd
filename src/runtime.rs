//! Running models in tract: the only module that names tract.
//!
//! Models are handed to tract as bytes (our prost types are not tract's) or, when they use
//! external data, as a path so tract resolves the data file itself. Input facts are set from
//! the concrete shapes given, so models with symbolic or unknown dimensions run as long as the
//! caller picks a shape. Value info and declared output shapes are ignored (tract re-infers
//! them), because symbols or `-1` there would not unify with the concrete shapes chosen here.
//!
//! Passes that need values inside the graph (the noise forward pass, per-layer validation) run
//! a copy whose graph outputs are those values: [`encode_with_outputs`].

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::graph::Model;

fn tract_err(action: impl Into<String>) -> impl FnOnce(TractError) -> Error {
    let action = action.into();
    move |e| Error::Tract {
        action,
        source: format!("{e:#}").into(),
    }
}

/// Runs `f`, turning a panic inside tract into an error: tract 0.23.9 panics on some malformed
/// models (a Conv whose `pads` has 3 entries, a zero stride, a Flatten without inputs, …)
/// instead of returning an error, and isquant must answer every bad input with an error.
/// While `f` runs, the panic hook stays quiet on this thread (the message becomes the error's
/// cause instead of a "thread panicked" line); panics elsewhere are reported as before.
fn guarded<T>(action: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    thread_local! {
        static IN_TRACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TRACT.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = IN_TRACT.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_TRACT.with(|c| c.set(was));
    result.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Tract {
            action: action.into(),
            source: format!("tract panicked: {msg}").into(),
        })
    })
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
        guarded("load the model", || Self::load_inner(source, input_shapes))
    }

    fn load_inner(source: Source<'_>, input_shapes: &[Vec<usize>]) -> Result<Self> {
        avoid_amx_int8_kernels();
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
        guarded("run the model", || self.run_inner(inputs))
    }

    fn run_inner(&self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        let mut tv: TVec<TValue> = tvec!();
        for x in inputs {
            // Contiguous inputs (all the tool makes) are copied as one block.
            let t = match x.as_slice() {
                Some(data) => Tensor::from_shape(x.shape(), data),
                None => {
                    let data: Vec<f32> = x.iter().copied().collect();
                    Tensor::from_shape(x.shape(), &data)
                }
            }
            .map_err(tract_err("build an input"))?;
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
                let v: Vec<f32> = match view.as_slice() {
                    Some(s) => s.to_vec(),
                    None => view.iter().copied().collect(),
                };
                ArrayD::from_shape_vec(IxDyn(view.shape()), v).map_err(|e| Error::Tract {
                    action: "shape an output".into(),
                    source: e.to_string().into(),
                })
            })
            .collect()
    }
}

/// Which graph outputs a copy made by [`encode_with_outputs`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs<'a> {
    /// The model's own outputs, then these values (per-layer validation).
    Append(&'a [String]),
    /// Only these values: tract then prunes everything they do not need (the noise pass).
    Only(&'a [String]),
}

/// Encodes `model` with the graph outputs `outputs` asks for, every tensor inline.
///
/// # Errors
/// With [`Outputs::Only`], a value the graph does not compute (a graph input or node output).
pub fn encode_with_outputs(model: &Model, outputs: Outputs<'_>) -> Result<Vec<u8>> {
    let mut m = model.clone();
    let info = |v: &String| crate::onnx::pb::ValueInfoProto {
        name: Some(v.clone()),
        ..Default::default()
    };
    match outputs {
        Outputs::Append(extra) => m.graph.outputs.extend(extra.iter().map(info)),
        Outputs::Only(values) => {
            let known: std::collections::HashSet<&str> = model
                .graph
                .nodes
                .iter()
                .flat_map(|n| n.outputs.iter().map(String::as_str))
                .chain(model.graph.inputs.iter().filter_map(|i| i.name.as_deref()))
                .collect();
            if let Some(v) = values.iter().find(|v| !known.contains(v.as_str())) {
                return Err(Error::Graph(format!(
                    "value `{v}` is not computed by the graph"
                )));
            }
            m.graph.outputs = values.iter().map(info).collect();
        }
    }
    Ok(crate::onnx::io::encode_model(&m.to_proto()))
}
