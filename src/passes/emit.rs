//! Lower quantized layers to ONNX ops, in one of three formats (`--format`).
//!
//! Every layer has int8 weights `W_q` (scale `s_w`, zero-point 0). A layer whose activation
//! input is quantized (scale `s_x`, zero-point 0) becomes:
//!
//! **`convinteger`** (default; integer arithmetic in tract and ONNX Runtime ≥ 1.24):
//! ```text
//! Conv:    [Clip] → QuantizeLinear(x, s_x, zp) → ConvInteger(x_q, W_q) → Cast(FLOAT)
//!          → Mul(s_x·s_w) → Add(b as [1, C, 1, …])
//! Gemm:    … → MatMulInteger(A_q, B_q as [K, N]) → Cast → Mul(alpha·s_x·s_w) → Add(beta·C)
//! MatMul:  … → MatMulInteger(A_q, B_q) → Cast → Mul(s_x·s_w)
//! ```
//! Activations are uint8 (zero-point 0) when non-negative, else int8 (zero-point 0).
//!
//! **`convinteger-u8`** (every ONNX Runtime version): the same graph re-encoded losslessly for
//! the kernels old runtimes have: signed activations become uint8 with zero-point 128
//! (`q + 128`), ConvInteger weights become uint8 with zero-point 128, MatMulInteger keeps
//! int8 weights (u8 × s8).
//!
//! **`qdq`** (TensorRT, ONNX Runtime's fused QLinearConv): the float ops stay and read
//! `DequantizeLinear` outputs: weights `DQ(W_q, s_w, 0)`, activations
//! `Q(x, s_x, 0) → DQ` (int8 only, one DQ per consumer); the bias stays float (ONNX
//! Runtime fuses `DQ → Conv → Q` with a float bias too, and TensorRT dequantizes int8 only).
//! A `Q → DQ` after a layer lets runtimes fuse `DQ → Conv → Q`; where it goes is
//! [`QdqOutputs`]:
//! - `exact` (default): only when every reader of the output is a quantized layer with the same
//!   input scale, directly or through one Relu / Clip(lo ≥ 0) whose readers all are. The Q is
//!   then the one those layers apply anyway (`Q(clip(DQ(Q(y)))) = Q(clip(y))`: rounding is
//!   monotone, so it commutes with the clamp), so the model computes what `convinteger`
//!   computes up to float summation order: fed the same quantized inputs, every tensor is
//!   within one step.
//! - `all`: also after every other layer with a known output range, and both inputs of
//!   residual Adds read a DQ, so every convolution fuses; these extra roundings are not in
//!   the integer format.
//!
//! The last node writes the original output name, so consumers are untouched. Every
//! QuantizeLinear gets an explicit zero-point initializer of the intended type (tract ignores
//! `output_dtype`); one QuantizeLinear is shared by all layers reading the same value at the
//! same scale. `Clip` is emitted only below 8 activation bits.
//!
//! A layer whose input stays float (the model input with no known range, ConvTranspose, Gemm
//! with `transA`) keeps int8 weights behind `DequantizeLinear(W_q, s_w, 0)`.

use std::collections::HashMap;

use ndarray::{arr0, ArrayD, IxDyn};
use serde::Serialize;

use super::weights::QuantizedWeight;
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::{Graph, Model, Node};
use crate::onnx::tensor::{from_array, from_f32, TensorData};
use crate::onnx::{attrs, DataType};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// QuantizeLinear + ConvInteger/MatMulInteger + rescale, int8/uint8 zero-point 0.
    #[default]
    ConvInteger,
    /// The same, with uint8 zero-point 128 where ONNX Runtime < 1.24 needs it.
    ConvIntegerU8,
    /// QuantizeLinear/DequantizeLinear around float ops, int8 only (TensorRT's rules).
    Qdq,
    /// The same for ONNX Runtime's CPU kernels: non-negative activations are uint8
    /// (zero-point 0), so a Relu / Clip(0, c) right after a layer is absorbed by the uint8
    /// QuantizeLinear's saturation and removed.
    QdqU8,
}

impl Format {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Format::ConvInteger => "convinteger",
            Format::ConvIntegerU8 => "convinteger-u8",
            Format::Qdq => "qdq",
            Format::QdqU8 => "qdq-u8",
        }
    }

    /// Whether the format is Q/DQ around float ops.
    pub fn is_qdq(self) -> bool {
        matches!(self, Format::Qdq | Format::QdqU8)
    }
}

/// Where the Q/DQ formats put a `Q → DQ` after a layer (`--qdq-outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QdqOutputs {
    /// Only where it reproduces the integer format's arithmetic: every reader of the output
    /// (directly, or through one Relu / Clip(≥ 0)) is a quantized layer reading it at the
    /// same scale, so the Q is the one those layers would apply anyway. The model computes
    /// what `convinteger` computes, up to float summation order.
    #[default]
    Exact,
    /// After every layer whose output has a range, and on both inputs of residual Adds:
    /// more `DQ → op → Q` groups for runtimes to fuse (faster in ONNX Runtime), at the cost
    /// of extra quantization points the integer format does not have.
    All,
}

impl QdqOutputs {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            QdqOutputs::Exact => "exact",
            QdqOutputs::All => "all",
        }
    }
}

/// How a layer's activation input is quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct ActQuant {
    /// The value quantized.
    pub value: String,
    /// Scale `s_x`.
    pub scale: f32,
    /// Non-negative input encoded as uint8 (otherwise int8).
    pub unsigned: bool,
    /// Clip bounds applied before quantizing (only below 8 bits).
    pub clip: Option<(f32, f32)>,
}

/// One layer to emit.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// Node index in the graph.
    pub node: usize,
    /// The quantized weight (ONNX layout of the original weight).
    pub weight: QuantizedWeight,
    /// The activation input, when the layer runs quantized.
    pub act: Option<ActQuant>,
    /// `qdq` only: scale of the layer's own output range, used for the `Q → DQ` after it
    /// when no quantized reader supplies one.
    pub own_output_scale: Option<f32>,
}

/// Zero-point encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Zp {
    I8,
    U8,
    U8Mid,
}

struct Emitter<'a> {
    graph: &'a mut Graph,
    names: NameGen,
    opset: i64,
    format: Format,
    nodes: Vec<Node>,
    /// (value, scale bits, zero-point) → quantized value name.
    shared_q: HashMap<(String, u32, Zp), (String, String, String)>,
    zps: HashMap<Zp, String>,
}

impl Emitter<'_> {
    fn scalar_f32(&mut self, base: &str, suffix: &str, v: f32) -> String {
        let name = self.names.fresh(base, suffix);
        self.graph
            .set_initializer(from_array(&name, &TensorData::F32(arr0(v).into_dyn())));
        name
    }

    /// One shared zero-point initializer per encoding.
    fn zero_point(&mut self, zp: Zp) -> String {
        if let Some(n) = self.zps.get(&zp) {
            return n.clone();
        }
        let (suffix, data) = match zp {
            Zp::I8 => ("int8", TensorData::I8(arr0(0i8).into_dyn())),
            Zp::U8 => ("uint8", TensorData::U8(arr0(0u8).into_dyn())),
            Zp::U8Mid => ("uint8_128", TensorData::U8(arr0(128u8).into_dyn())),
        };
        let name = self.names.fresh("isquant_zero_point_", suffix);
        self.graph.set_initializer(from_array(&name, &data));
        self.zps.insert(zp, name.clone());
        name
    }

    fn node(&mut self, op: &str, base: &str, suffix: &str, inputs: Vec<String>, out: String) {
        let name = self.names.fresh(base, suffix);
        self.nodes.push(Node::new(op, name, inputs, vec![out]));
    }

    fn act_zp(&self, act: &ActQuant) -> Zp {
        match (self.format, act.unsigned) {
            (Format::Qdq, _) | (Format::QdqU8, false) => Zp::I8,
            (Format::QdqU8, true) => Zp::U8,
            (_, true) => Zp::U8,
            (Format::ConvIntegerU8, false) => Zp::U8Mid,
            (Format::ConvInteger, false) => Zp::I8,
        }
    }

    /// `[Clip] → QuantizeLinear`, shared per (value, scale, zero-point). Returns the
    /// quantized value and the names of its scale and zero-point.
    fn quantize(&mut self, act: &ActQuant, base: &str) -> (String, String, String) {
        let zp = self.act_zp(act);
        let key = (act.value.clone(), act.scale.to_bits(), zp);
        if let Some(q) = self.shared_q.get(&key) {
            return q.clone();
        }
        let mut x = act.value.clone();
        if let Some((lo, hi)) = act.clip {
            let clipped = self.names.fresh(&act.value, "_clipped");
            let name = self.names.fresh(base, "_input_clip");
            let mut clip = Node::new("Clip", name, vec![x], vec![clipped.clone()]);
            if self.opset >= 11 {
                let lo_n = self.scalar_f32(&act.value, "_clip_min", lo);
                let hi_n = self.scalar_f32(&act.value, "_clip_max", hi);
                clip.inputs.extend([lo_n, hi_n]);
            } else {
                clip = clip
                    .with_attr(attrs::make_float("min", lo))
                    .with_attr(attrs::make_float("max", hi));
            }
            self.nodes.push(clip);
            x = clipped;
        }
        let s = self.scalar_f32(&act.value, "_scale", act.scale);
        let z = self.zero_point(zp);
        let q = self.names.fresh(&act.value, "_quantized");
        self.node(
            "QuantizeLinear",
            base,
            "_input_quantize",
            vec![x, s.clone(), z.clone()],
            q.clone(),
        );
        let out = (q, s, z);
        self.shared_q.insert(key, out.clone());
        out
    }

    fn dequantize(&mut self, q: &str, s: &str, z: &str, base: &str, suffix: &str) -> String {
        let out = self.names.fresh(q, "_dequantized");
        self.node(
            "DequantizeLinear",
            base,
            suffix,
            vec![q.to_string(), s.to_string(), z.to_string()],
            out.clone(),
        );
        out
    }
}

fn base_name(node: &Node) -> String {
    if node.name.is_empty() {
        node.outputs.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

fn conv_attrs(node: &Node, target: &mut Node) {
    for a in &node.attributes {
        let keep = matches!(
            a.name.as_deref(),
            Some("auto_pad" | "dilations" | "group" | "kernel_shape" | "pads" | "strides")
        );
        if keep {
            target.attributes.push(a.clone());
        }
    }
}

/// The `Q → DQ` put right after a layer output (`qdq`, `qdq-u8`).
#[derive(Debug, Clone, PartialEq)]
struct OutQ {
    scale: f32,
    unsigned: bool,
    /// An activation (Relu / Clip) right after the layer that the uint8 Q makes redundant:
    /// its node index, and its output (which the DQ then writes).
    absorb: Option<(usize, String)>,
}

/// For Q/DQ formats: the `Q → DQ` after each layer output `y`, so runtimes see
/// `DQ → Conv → Q`. Scale, in order of preference: the input scale of the quantized layers
/// reading `y` directly (they then share this QuantizeLinear: one Q per tensor); the input
/// scale of the layers reading it through one Relu / Clip(≥ 0) (values it clips are zeroed by
/// the activation anyway; with `qdq-u8` the uint8 Q *is* the activation, which is removed
/// when its upper bound is not below the Q's); the layer's own output range. Graph outputs
/// stay float.
fn output_quants(
    graph: &Graph,
    plans: &[LayerPlan],
    format: Format,
    placement: QdqOutputs,
) -> HashMap<String, OutQ> {
    let exact = placement == QdqOutputs::Exact;
    let graph_outputs: std::collections::HashSet<&str> = graph
        .outputs
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    let consumers = graph.consumers();
    let producers = graph.producers();
    let input_q: HashMap<(usize, &str), (f32, bool)> = plans
        .iter()
        .filter_map(|p| {
            p.act
                .as_ref()
                .map(|a| ((p.node, a.value.as_str()), (a.scale, a.unsigned)))
        })
        .collect();
    // The common input quantization of the quantized readers of `v` (with `exact`: of all
    // its readers, which must all be quantized layers, and `v` must not be a graph output).
    let readers_q = |v: &str| -> Option<(f32, bool)> {
        if exact && graph_outputs.contains(v) {
            return None;
        }
        let mut s: Option<(f32, bool)> = None;
        for &r in consumers.get(v)? {
            match input_q.get(&(r, v)) {
                Some(&q) => {
                    if s.is_some_and(|x| x.0.to_bits() != q.0.to_bits() || x.1 != q.1) {
                        return None;
                    }
                    s = Some(q);
                }
                None if exact => return None,
                None => {}
            }
        }
        s
    };
    // Lower and upper clamp of a Relu / Clip with a non-negative lower bound.
    let clamp = |n: &Node| -> Option<f64> {
        if n.is("Relu") {
            return Some(f64::INFINITY);
        }
        if !n.is("Clip") {
            return None;
        }
        let bound = |k: usize| {
            n.input(k)
                .and_then(|m| graph.constant_f32(m, &producers).ok().flatten())
                .and_then(|a| a.iter().next().copied())
                .map(f64::from)
        };
        let lo = bound(1).or(n.attr_float("min").ok().flatten().map(f64::from))?;
        let hi = bound(2)
            .or(n.attr_float("max").ok().flatten().map(f64::from))
            .unwrap_or(f64::INFINITY);
        (lo >= 0.0).then_some(hi)
    };
    let unsigned_ok = format == Format::QdqU8;
    let mut out = HashMap::new();
    for p in plans.iter().filter(|p| p.act.is_some()) {
        let Some(y) = graph.nodes[p.node].outputs.first() else {
            continue;
        };
        let Some(readers) = consumers.get(y.as_str()) else {
            continue;
        };
        if let Some((scale, unsigned)) = readers_q(y) {
            out.insert(
                y.clone(),
                OutQ {
                    scale,
                    unsigned,
                    absorb: None,
                },
            );
            continue;
        }
        let y_is_output = exact && graph_outputs.contains(y.as_str());
        if let (false, [r]) = (y_is_output, readers.as_slice()) {
            let act = &graph.nodes[*r];
            if let (Some(hi), Some(a_out)) = (clamp(act), act.outputs.first()) {
                if let Some((scale, unsigned)) = readers_q(a_out) {
                    let q_hi = f64::from(scale) * 255.0;
                    let absorb = (unsigned && unsigned_ok && q_hi <= hi + 1e-6 * hi.abs().max(1.0))
                        .then(|| (*r, a_out.clone()));
                    out.insert(
                        y.clone(),
                        OutQ {
                            scale,
                            unsigned: unsigned && unsigned_ok,
                            absorb,
                        },
                    );
                    continue;
                }
            }
        }
        if let Some(scale) = p.own_output_scale.filter(|_| !exact) {
            out.insert(
                y.clone(),
                OutQ {
                    scale,
                    unsigned: false,
                    absorb: None,
                },
            );
        }
    }
    out
}

/// Rewrites the planned layers in `format`. Nodes must be in topological order.
///
/// # Errors
/// Malformed layers (missing weight, bias of the wrong size).
pub fn emit(
    model: &mut Model,
    plans: &[LayerPlan],
    format: Format,
    placement: QdqOutputs,
) -> Result<()> {
    // QuantizeLinear/DequantizeLinear/ConvInteger/MatMulInteger exist from opset 10; per-axis
    // DequantizeLinear needs 13 and is only planned when the model already has it. The opset is
    // never raised further: that could change the meaning of other ops (Softmax, Squeeze, …).
    model.require_opset(10);
    let opset = model.opset().unwrap_or(10);
    let graph = &mut model.graph;
    // Everything read from the graph is read before the node list is taken apart.
    let mut biases: HashMap<usize, Option<ArrayD<f32>>> = HashMap::new();
    {
        let producers = graph.producers();
        for p in plans {
            if let Some(b) = graph.nodes.get(p.node).and_then(|n| n.input(2)) {
                biases.insert(p.node, graph.constant_f32(b, &producers)?);
            }
        }
    }
    let out_qs = if format.is_qdq() {
        output_quants(graph, plans, format, placement)
    } else {
        HashMap::new()
    };
    let absorbed: std::collections::HashSet<usize> = out_qs
        .values()
        .filter_map(|o| o.absorb.as_ref().map(|a| a.0))
        .collect();
    let by_node: HashMap<usize, &LayerPlan> = plans.iter().map(|p| (p.node, p)).collect();
    let old_nodes = std::mem::take(&mut graph.nodes);
    let names = NameGen::new(graph.taken_names());
    let mut e = Emitter {
        graph,
        names,
        opset,
        format,
        nodes: Vec::with_capacity(old_nodes.len() + plans.len() * 6),
        shared_q: HashMap::new(),
        zps: HashMap::new(),
    };
    for (i, node) in old_nodes.into_iter().enumerate() {
        if absorbed.contains(&i) {
            // A Relu / Clip replaced by the uint8 QuantizeLinear before it.
            continue;
        }
        let Some(plan) = by_node.get(&i) else {
            e.nodes.push(node);
            continue;
        };
        let bias = biases.remove(&i).flatten();
        let integer_op = node.is("Conv") || node.is("Gemm") || node.is("MatMul");
        match plan.act.as_ref().filter(|_| integer_op) {
            None => emit_weight_only(&mut e, node, plan)?,
            Some(act) if format.is_qdq() => {
                let out_q = node.outputs.first().and_then(|o| out_qs.get(o)).cloned();
                emit_qdq(&mut e, node, plan, act, out_q)?;
            }
            Some(act) => emit_integer(&mut e, node, plan, act, bias)?,
        }
    }
    if format.is_qdq() && placement == QdqOutputs::All {
        dequantize_add_inputs(&mut e);
    }
    let nodes = std::mem::take(&mut e.nodes);
    graph.nodes = nodes;
    if format.is_qdq() {
        graph.sort_topologically()?;
    }
    graph.remove_unused_initializers();
    Ok(())
}

/// Q/DQ formats: an `Add` (residual) reads each input that has a QuantizeLinear through its
/// own DequantizeLinear, so both of its inputs are quantized, as TensorRT wants to fuse the
/// add into the convolution (and ONNX Runtime fuses `DQ → Add → Q`).
fn dequantize_add_inputs(e: &mut Emitter<'_>) {
    let quantized: HashMap<String, (String, String, String)> = e
        .shared_q
        .iter()
        .map(|((v, _, _), q)| (v.clone(), q.clone()))
        .collect();
    let dq_outputs: std::collections::HashSet<String> = e
        .nodes
        .iter()
        .filter(|n| n.is("DequantizeLinear"))
        .flat_map(|n| n.outputs.iter().cloned())
        .collect();
    let nodes = std::mem::take(&mut e.nodes);
    for mut n in nodes {
        if n.is("Add") {
            for k in 0..n.inputs.len() {
                let v = n.inputs[k].clone();
                if dq_outputs.contains(&v) {
                    continue;
                }
                if let Some((q, s, z)) = quantized.get(&v) {
                    let base = base_name(&n);
                    let dq = e.dequantize(q, s, z, &base, "_input_dequantize");
                    n.inputs[k] = dq;
                }
            }
        }
        e.nodes.push(n);
    }
}

/// The axis of a weight that holds output channels: 1 for `[K, N]` matrices (Gemm with
/// `transB = 0`, MatMul), 0 otherwise.
fn output_axis(node: &Node) -> i64 {
    let trans_b = node.attr_int("transB").ok().flatten().unwrap_or(0) != 0;
    if node.is("MatMul") || (node.is("Gemm") && !trans_b) {
        1
    } else {
        0
    }
}

fn weight_dq(e: &mut Emitter<'_>, node: &Node, plan: &LayerPlan) -> String {
    let base = base_name(node);
    let w_name = node.input(1).unwrap_or("w").to_string();
    let q_name = e.names.fresh(&w_name, "_quantized");
    e.graph
        .set_initializer(from_array(&q_name, &TensorData::I8(plan.weight.q.clone())));
    match &plan.weight.channel_scales {
        None => {
            let s = e.scalar_f32(&w_name, "_scale", plan.weight.scale);
            let z = e.zero_point(Zp::I8);
            e.dequantize(&q_name, &s, &z, &base, "_weight_dequantize")
        }
        Some(scales) => {
            // Per-axis DequantizeLinear (opset 13): one scale and one zero-point per channel.
            let n = scales.len();
            let s = e.names.fresh(&w_name, "_scale");
            let z = e.names.fresh(&w_name, "_zero_point");
            let sv = ArrayD::from_shape_vec(IxDyn(&[n]), scales.clone())
                .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[n])));
            e.graph.set_initializer(from_f32(&s, sv));
            e.graph
                .set_initializer(from_array(&z, &TensorData::I8(ArrayD::zeros(IxDyn(&[n])))));
            let out = e.names.fresh(&q_name, "_dequantized");
            let name = e.names.fresh(&base, "_weight_dequantize");
            e.nodes.push(
                Node::new(
                    "DequantizeLinear",
                    name,
                    vec![q_name, s, z],
                    vec![out.clone()],
                )
                .with_attr(attrs::make_int("axis", output_axis(node))),
            );
            out
        }
    }
}

fn emit_weight_only(e: &mut Emitter<'_>, mut node: Node, plan: &LayerPlan) -> Result<()> {
    let w = weight_dq(e, &node, plan);
    node.inputs[1] = w;
    e.nodes.push(node);
    Ok(())
}

fn gemm_alpha_beta(node: &Node) -> Result<(f64, f64)> {
    Ok(if node.is("Gemm") {
        (
            f64::from(node.attr_float("alpha")?.unwrap_or(1.0)),
            f64::from(node.attr_float("beta")?.unwrap_or(1.0)),
        )
    } else {
        (1.0, 1.0)
    })
}

fn emit_integer(
    e: &mut Emitter<'_>,
    node: Node,
    plan: &LayerPlan,
    act: &ActQuant,
    bias: Option<ArrayD<f32>>,
) -> Result<()> {
    let base = base_name(&node);
    let out = node.outputs.first().cloned().unwrap_or_default();
    let w_name = node.input(1).unwrap_or("w").to_string();
    let trans_b = node.is("Gemm") && node.attr_int("transB")?.unwrap_or(0) != 0;
    // MatMulInteger needs B as [K, N]: Gemm transB=1 weights are stored transposed.
    let q = if trans_b {
        plan.weight.q.t().to_owned().into_dyn()
    } else {
        plan.weight.q.clone()
    };
    let (x_q, _, x_zp) = e.quantize(act, &base);
    let q_name = e.names.fresh(&w_name, "_quantized");
    let acc = e.names.fresh(&out, "_int32");
    let int_name = e.names.fresh(&base, "_integer");
    let int_node = if node.is("Conv") {
        let mut inputs = vec![x_q, q_name.clone()];
        if e.format == Format::ConvIntegerU8 {
            // uint8 weights, zero-point 128: q + 128 (lossless).
            let shifted = q.mapv(|v| (i16::from(v) + 128) as u8);
            e.graph
                .set_initializer(from_array(&q_name, &TensorData::U8(shifted)));
            let w_zp = e.zero_point(Zp::U8Mid);
            inputs.extend([x_zp, w_zp]);
        } else {
            e.graph
                .set_initializer(from_array(&q_name, &TensorData::I8(q)));
        }
        let mut n = Node::new("ConvInteger", int_name, inputs, vec![acc.clone()]);
        conv_attrs(&node, &mut n);
        n
    } else {
        e.graph
            .set_initializer(from_array(&q_name, &TensorData::I8(q)));
        let mut inputs = vec![x_q, q_name];
        if e.format == Format::ConvIntegerU8 {
            inputs.push(x_zp);
        }
        Node::new("MatMulInteger", int_name, inputs, vec![acc.clone()])
    };
    e.nodes.push(int_node);
    let acc_f = e.names.fresh(&out, "_float");
    let cast_name = e.names.fresh(&base, "_cast");
    e.nodes.push(
        Node::new("Cast", cast_name, vec![acc], vec![acc_f.clone()])
            .with_attr(attrs::make_int("to", DataType::Float as i64)),
    );
    let (alpha, beta) = gemm_alpha_beta(&node)?;
    let r_name = match &plan.weight.channel_scales {
        None => {
            let rescale = (alpha * f64::from(act.scale) * f64::from(plan.weight.scale)) as f32;
            e.scalar_f32(&base, "_rescale", rescale)
        }
        Some(scales) => {
            // Per-channel: the rescale broadcasts over the output channel axis ([1, C, 1, …]
            // for Conv, the last axis for Gemm/MatMul).
            let v: Vec<f32> = scales
                .iter()
                .map(|&sw| (alpha * f64::from(act.scale) * f64::from(sw)) as f32)
                .collect();
            let shape = if node.is("Conv") {
                let mut sh = vec![1usize; plan.weight.q.ndim().max(3)];
                sh[1] = v.len();
                sh
            } else {
                vec![v.len()]
            };
            let n = e.names.fresh(&base, "_rescale");
            let arr = ArrayD::from_shape_vec(IxDyn(&shape), v)
                .map_err(|err| node.error(format!("per-channel rescale: {err}")))?;
            e.graph.set_initializer(from_f32(&n, arr));
            n
        }
    };
    let bias_name = node.input(2).map(str::to_string);
    let mul_out = if bias_name.is_some() {
        e.names.fresh(&out, "_rescaled")
    } else {
        out.clone()
    };
    e.node(
        "Mul",
        &base,
        "_rescale",
        vec![acc_f, r_name],
        mul_out.clone(),
    );
    if let Some(b_name) = bias_name {
        let b_input = if node.is("Conv") {
            let values =
                bias.ok_or_else(|| node.error(format!("bias `{b_name}` is not a constant")))?;
            let c = values.len();
            let rank = plan.weight.q.ndim().max(3);
            let mut shape = vec![1usize; rank];
            shape[1] = c;
            let reshaped = values
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|err| node.error(format!("bias `{b_name}`: {err}")))?;
            let n = e.names.fresh(&b_name, "_broadcast");
            e.graph.set_initializer(from_f32(&n, reshaped));
            n
        } else if beta != 1.0 {
            let values =
                bias.ok_or_else(|| node.error(format!("C `{b_name}` is not a constant")))?;
            let n = e.names.fresh(&b_name, "_scaled");
            e.graph
                .set_initializer(from_f32(&n, values.mapv(|v| (f64::from(v) * beta) as f32)));
            n
        } else {
            b_name
        };
        e.node("Add", &base, "_bias", vec![mul_out, b_input], out);
    }
    Ok(())
}

fn emit_qdq(
    e: &mut Emitter<'_>,
    mut node: Node,
    plan: &LayerPlan,
    act: &ActQuant,
    out_q: Option<OutQ>,
) -> Result<()> {
    let base = base_name(&node);
    let (x_q, x_s, x_z) = e.quantize(act, &base);
    let x_dq = e.dequantize(&x_q, &x_s, &x_z, &base, "_input_dequantize");
    let w_dq = weight_dq(e, &node, plan);
    node.inputs[0] = x_dq;
    node.inputs[1] = w_dq;
    match out_q {
        None => e.nodes.push(node),
        Some(oq) => {
            let out = node.outputs.first().cloned().unwrap_or_default();
            let raw = e.names.fresh(&out, "_float");
            node.outputs[0] = raw.clone();
            e.nodes.push(node);
            // With an absorbed activation, the DQ writes the activation's output.
            let target = oq.absorb.as_ref().map_or(out.clone(), |(_, a)| a.clone());
            let zp = if oq.unsigned { Zp::U8 } else { Zp::I8 };
            let s = e.scalar_f32(&target, "_scale", oq.scale);
            let z = e.zero_point(zp);
            let q = e.names.fresh(&target, "_quantized");
            e.node(
                "QuantizeLinear",
                &base,
                "_output_quantize",
                vec![raw, s.clone(), z.clone()],
                q.clone(),
            );
            // Quantized readers of `target` at this scale reuse this Q (one Q per tensor).
            e.shared_q.insert(
                (target.clone(), oq.scale.to_bits(), zp),
                (q.clone(), s.clone(), z.clone()),
            );
            let name = e.names.fresh(&base, "_output_dequantize");
            e.nodes.push(Node::new(
                "DequantizeLinear",
                name,
                vec![q, s, z],
                vec![target],
            ));
        }
    }
    Ok(())
}
