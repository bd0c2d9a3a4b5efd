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

/// The values one run of `model` computes: the sum of every node's output elements (those
/// with a known shape). tract frees a value after its last use, so this bounds the activation
/// memory of a run from above, and it grows with the work a run does.
fn computed_values(model: &TypedModel) -> u128 {
    model
        .nodes()
        .iter()
        .flat_map(|n| n.outputs.iter())
        .filter_map(|o| o.fact.shape.as_concrete())
        .map(|dims| dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128)))
        .fold(0u128, u128::saturating_add)
}

fn shapes_text(shapes: &[Vec<usize>]) -> String {
    let one: Vec<String> = shapes
        .iter()
        .map(|s| {
            let d: Vec<String> = s.iter().map(ToString::to_string).collect();
            format!("[{}]", d.join(", "))
        })
        .collect();
    one.join(" and ")
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
        let model = model
            .into_optimized()
            .map_err(tract_err("optimize the model"))?;
        crate::limits::forward_values(&shapes_text(input_shapes), computed_values(&model))?;
        let plan = model
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
    grouped_conv_integer_in_f32(&mut m);
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

/// The largest integer below which every f32 sum of integers is exact (2^24).
const F32_EXACT: f64 = 16_777_216.0;

/// Rewrites each grouped `ConvInteger` (depthwise and other `group > 1` convolutions) whose
/// arithmetic is exact in f32 as `Cast(x → float) → Conv → Cast(→ int32)`, for tract only.
///
/// **Why.** tract 0.23.9 runs a quantized convolution through im2col and one matrix product
/// per group, whatever the group count; for a depthwise layer that is one product per
/// channel, and MobileNetV2's int8 model ran 3–4× slower than its float model in tract
/// (a single 96-channel depthwise layer at 112×112: 36 ms as `ConvInteger`, 1.7 ms as float
/// `Conv`; docs/benchmarks.md). Its float depthwise kernel has no such cost.
///
/// **Exact.** The inputs are integers (uint8 or int8, zero points absent or 0) and so are the
/// weights; every product and every partial sum of output channel `o` is an integer of
/// magnitude at most `x_max · Σ_k |w_ok|`. When that bound is below 2^24 for every channel,
/// every f32 operation on the way is exact, in any summation order, and the result converted
/// to int32 is the `ConvInteger` result bit for bit. Layers over the bound are left alone.
/// The written model is not changed: this runs on the copy handed to tract.
fn grouped_conv_integer_in_f32(model: &mut Model) -> usize {
    use crate::graph::Node;
    use crate::onnx::attrs;
    use crate::onnx::pb::tensor_proto::DataType;
    use crate::onnx::tensor::{from_array, to_array, TensorData};

    let zero_or_absent = |g: &crate::graph::Graph, name: Option<&str>| match name {
        None | Some("") => true,
        Some(n) => g
            .initializer(n)
            .and_then(|t| to_array(t).ok())
            .and_then(|d| d.to_i64())
            .is_some_and(|v| v.iter().all(|&z| z == 0)),
    };
    let mut taken = model.graph.taken_names();
    let mut fresh = |base: &str| {
        let mut k = 0usize;
        loop {
            let name = if k == 0 {
                format!("{base}_f32")
            } else {
                format!("{base}_f32_{k}")
            };
            if taken.insert(name.clone()) {
                return name;
            }
            k += 1;
        }
    };
    let mut k = 0;
    let mut rewritten = 0;
    while k < model.graph.nodes.len() {
        let node = &model.graph.nodes[k];
        let grouped = node.is("ConvInteger") && node.group().is_ok_and(|g| g > 1);
        let (Some(x), Some(w), Some(y)) = (node.input(0), node.input(1), node.outputs.first())
        else {
            k += 1;
            continue;
        };
        if !grouped
            || !zero_or_absent(&model.graph, node.input(2))
            || !zero_or_absent(&model.graph, node.input(3))
        {
            k += 1;
            continue;
        }
        let weights = model.graph.initializer(w).and_then(|t| to_array(t).ok());
        let Some(TensorData::I8(wq)) = weights else {
            k += 1;
            continue;
        };
        // x_max: 255 for uint8 inputs, 128 for int8; the type is not known here, so the larger.
        let x_max = 255.0f64;
        let channels = wq.shape().first().copied().unwrap_or(0);
        let per_channel = wq.len() / channels.max(1);
        let bound = wq
            .as_slice()
            .map(|v| {
                v.chunks(per_channel.max(1))
                    .map(|c| c.iter().map(|&q| f64::from(q).abs()).sum::<f64>())
                    .fold(0.0f64, f64::max)
            })
            .unwrap_or(f64::INFINITY);
        if x_max * bound >= F32_EXACT {
            k += 1;
            continue;
        }
        let (x, w, y) = (x.to_string(), w.to_string(), y.clone());
        let attributes = node.attributes.clone();
        let name = node.name.clone();
        let w_f = fresh(&w);
        let x_f = fresh(&format!("{y}_x"));
        let y_f = fresh(&y);
        model
            .graph
            .set_initializer(from_array(&w_f, &TensorData::F32(wq.mapv(f32::from))));
        let cast_in = Node::new(
            "Cast",
            fresh(&format!("{name}_cast_in")),
            vec![x],
            vec![x_f.clone()],
        )
        .with_attr(attrs::make_int("to", DataType::Float as i64));
        let mut conv = Node::new("Conv", fresh(&name), vec![x_f, w_f], vec![y_f.clone()]);
        conv.attributes = attributes;
        let cast_out = Node::new(
            "Cast",
            fresh(&format!("{name}_cast_out")),
            vec![y_f],
            vec![y],
        )
        .with_attr(attrs::make_int("to", DataType::Int32 as i64));
        model.graph.nodes.remove(k);
        model.graph.insert_nodes(k, vec![cast_in, conv, cast_out]);
        k += 3;
        rewritten += 1;
    }
    rewritten
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::{grouped_conv_integer_in_f32, Source, TractModel};
    use crate::pipeline::{self, QuantizeConfig};

    /// The f32 form of grouped ConvInteger gives tract's int8 results bit for bit, on a real
    /// model with depthwise layers (PP-LCNet text-line classifier) and on its inner values.
    #[test]
    fn grouped_conv_integer_in_f32_is_bit_exact() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/ppocr-textline-cls.onnx");
        let mut model = crate::load(&path).unwrap().model;
        let cfg = QuantizeConfig {
            input_shape: Some(vec![1, 3, 48, 192]),
            ..QuantizeConfig::default()
        };
        pipeline::quantize(&mut model, &cfg, None, &mut |_| {}).unwrap();
        // Every ConvInteger output becomes a graph output, so each layer is compared.
        let mut probe = model.clone();
        let acc: Vec<String> = probe
            .graph
            .nodes
            .iter()
            .filter(|n| n.is("ConvInteger"))
            .filter_map(|n| n.outputs.first().cloned())
            .collect();
        probe
            .graph
            .outputs
            .extend(acc.iter().map(|v| crate::onnx::pb::ValueInfoProto {
                name: Some(v.clone()),
                ..Default::default()
            }));
        let plain = crate::onnx::io::encode_model(&probe.to_proto());
        let mut rewritten_model = probe.clone();
        let n = grouped_conv_integer_in_f32(&mut rewritten_model);
        assert!(n >= 5, "only {n} grouped ConvInteger rewritten");
        let rewritten = crate::onnx::io::encode_model(&rewritten_model.to_proto());
        let shape = vec![2, 3, 48, 192];
        let a = TractModel::load(Source::Bytes(&plain), std::slice::from_ref(&shape)).unwrap();
        let b = TractModel::load(Source::Bytes(&rewritten), std::slice::from_ref(&shape)).unwrap();
        for seed in 0..3 {
            let x = crate::rng::seeded_normal(&shape, seed);
            let (ya, yb) = (
                a.run(std::slice::from_ref(&x)).unwrap(),
                b.run(std::slice::from_ref(&x)).unwrap(),
            );
            assert_eq!(ya.len(), yb.len());
            for (u, v) in ya.iter().zip(&yb) {
                assert_eq!(u.shape(), v.shape());
                assert!(
                    u.iter()
                        .zip(v.iter())
                        .all(|(p, q)| p.to_bits() == q.to_bits()),
                    "outputs differ"
                );
            }
        }
    }
}
