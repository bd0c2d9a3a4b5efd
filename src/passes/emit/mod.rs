//! Lower quantized layers to ONNX ops, in one of four formats (`--format`), and record what
//! each layer became (the layer table, [`EmittedLayer`]).
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
//!   input scale, directly or through one Relu / Clip(lo ≥ 0) whose readers all are (or through
//!   such an activation and one `Min` with a constant: equalization's per-channel ReLU6). The
//!   Q is then the one those layers apply anyway (`Q(clip(DQ(Q(y)))) = Q(clip(y))` and
//!   `Q(min(relu(DQ(Q(y))), c)) = Q(min(relu(y), c))`: rounding is monotone, so it commutes
//!   with clamps and constant bounds), so the model computes what `convinteger`
//!   computes up to float summation order: fed the same quantized inputs, every tensor is
//!   within one step.
//! - `all`: also after every other layer with a known output range, and both inputs of
//!   residual Adds read a DQ, so every convolution fuses; these extra roundings are not in
//!   the integer format. A quantized tensor with several readers gets one `Q → DQ` per
//!   reader (`qdq::one_dequantize_per_q`: what ONNX Runtime needs to fuse them).
//!
//! The last node writes the original output name, so consumers are untouched. Every
//! QuantizeLinear gets an explicit zero-point initializer of the intended type (tract ignores
//! `output_dtype`); one QuantizeLinear is shared by all layers reading the same value at the
//! same scale. `Clip` is emitted only below 8 activation bits.
//!
//! A layer whose input stays float (the model input with no known range, ConvTranspose in the
//! integer formats, Gemm with `transA`) keeps int8 weights behind `DequantizeLinear(W_q, s_w, 0)`.

//!
//! **The layer table.** [`emit`] returns one [`EmittedLayer`] per planned layer: the op that
//! computes it, its weight scale(s), its activation encoding (scale, type, zero-point) and the
//! names of its input and output values. The pipeline stores it in the model's metadata
//! ([`LAYERS_KEY`], JSON) and reports it; `validate --per-layer` reads it back
//! ([`read_layer_table`]) instead of guessing from the graph.
//!
//! Submodules: [`integer`] (the `convinteger` formats), [`qdq`] (the Q/DQ formats).

use std::collections::HashMap;

use ndarray::{arr0, ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::weights::QuantizedWeight;
use crate::error::{Error, Result};
use crate::graph::names::NameGen;
use crate::graph::{Graph, Model, Node};
use crate::onnx::attrs;
use crate::onnx::tensor::{from_array, from_f32, TensorData};

pub mod integer;
pub mod qdq;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum Format {
    /// QuantizeLinear + ConvInteger/MatMulInteger + rescale, int8/uint8 zero-point 0 (integer
    /// arithmetic in tract and ONNX Runtime >= 1.24).
    #[default]
    #[serde(rename = "convinteger")]
    #[value(name = "convinteger")]
    ConvInteger,
    /// The same, with uint8 zero-point 128 where ONNX Runtime < 1.24 needs it.
    #[serde(rename = "convinteger-u8")]
    #[value(name = "convinteger-u8")]
    ConvIntegerU8,
    /// QuantizeLinear/DequantizeLinear around float ops, int8 only (TensorRT's rules).
    #[serde(rename = "qdq")]
    #[value(name = "qdq")]
    Qdq,
    /// The same for ONNX Runtime's CPU kernels: non-negative activations are uint8
    /// (zero-point 0), so a Relu / Clip(0, c) right after a layer is absorbed by the uint8
    /// QuantizeLinear's saturation and removed.
    #[serde(rename = "qdq-u8")]
    #[value(name = "qdq-u8")]
    QdqU8,
}

impl Format {
    /// The command-line name.
    #[must_use]
    pub fn name(self) -> String {
        crate::value_name(&self)
    }

    /// Whether the format is Q/DQ around float ops.
    pub fn is_qdq(self) -> bool {
        matches!(self, Format::Qdq | Format::QdqU8)
    }
}

/// Where the Q/DQ formats put a `Q → DQ` after a layer (`--qdq-outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
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
    /// The command-line name.
    #[must_use]
    pub fn name(self) -> String {
        crate::value_name(&self)
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

/// Metadata key of an int8 model written by isquant: the layer table, as JSON.
pub const LAYERS_KEY: &str = "isquant.layers";

/// How a layer was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Form {
    /// `QuantizeLinear → ConvInteger/MatMulInteger → Cast → Mul [→ Add]`.
    Integer,
    /// `QuantizeLinear → DequantizeLinear` on the input and the weight, the float op between.
    Qdq,
    /// Only the weight is quantized (`DequantizeLinear` before the float op).
    WeightOnly,
}

/// How an activation is encoded in the emitted graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// Scale.
    pub scale: f32,
    /// `int8` or `uint8`.
    pub dtype: String,
    /// Zero-point (0, or 128 for the signed values of `convinteger-u8`).
    pub zero_point: i32,
}

/// What [`emit`] made of one layer: a row of the layer table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmittedLayer {
    /// The original node (display name).
    pub node: String,
    /// Its original op type.
    pub op_type: String,
    /// How it was emitted.
    pub form: Form,
    /// The op that computes it now (`ConvInteger`, `MatMulInteger`, or the float op).
    pub op: String,
    /// The output format.
    pub format: Format,
    /// The int8 weight initializer.
    pub weight: String,
    /// The weight scale (per-channel: the largest).
    pub weight_scale: f32,
    /// Per-channel weight scales, when the weight has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_channel_scales: Option<Vec<f32>>,
    /// The float value the layer reads (its input 0 in both models).
    pub input: String,
    /// The input's encoding, when the layer quantizes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Encoding>,
    /// The value of the emitted graph that holds what the float model's layer output holds
    /// (with `qdq-u8`, the output of the Relu/Clip the output quantizer absorbed).
    pub output: String,
    /// Q/DQ formats: the encoding of the `Q → DQ` after the layer, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_quantization: Option<Encoding>,
}

impl EmittedLayer {
    fn new(node: &Node, plan: &LayerPlan, format: Format, form: Form, weight: String) -> Self {
        EmittedLayer {
            node: node.display_name(),
            op_type: node.op_type.clone(),
            form,
            op: node.op_type.clone(),
            format,
            weight,
            weight_scale: plan.weight.scale,
            weight_channel_scales: plan.weight.channel_scales.clone(),
            input: node.input(0).unwrap_or("").to_string(),
            activation: None,
            output: node.outputs.first().cloned().unwrap_or_default(),
            output_quantization: None,
        }
    }
}

/// Reads the layer table of a model isquant wrote (`None` when the model has none).
///
/// # Errors
/// The metadata entry is not a layer table.
pub fn read_layer_table(model: &Model) -> Result<Option<Vec<EmittedLayer>>> {
    let Some((_, json)) = model.metadata().into_iter().find(|(k, _)| k == LAYERS_KEY) else {
        return Ok(None);
    };
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| Error::Config(format!("metadata `{LAYERS_KEY}` is not a layer table: {e}")))
}

/// Zero-point encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Zp {
    I8,
    U8,
    U8Mid,
}

impl Zp {
    fn encoding(self, scale: f32) -> Encoding {
        let (dtype, zero_point) = match self {
            Zp::I8 => ("int8", 0),
            Zp::U8 => ("uint8", 0),
            Zp::U8Mid => ("uint8", 128),
        };
        Encoding {
            scale,
            dtype: dtype.to_string(),
            zero_point,
        }
    }
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

/// Rewrites the planned layers in `format` and returns the layer table (one row per plan, in
/// node order). Nodes must be in topological order.
///
/// # Errors
/// Malformed layers (missing weight, bias of the wrong size).
pub fn emit(
    model: &mut Model,
    plans: &[LayerPlan],
    format: Format,
    placement: QdqOutputs,
) -> Result<Vec<EmittedLayer>> {
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
        qdq::output_quants(graph, plans, format, placement)
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
    let mut table = Vec::with_capacity(plans.len());
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
        let integer_op = node.is("Conv")
            || node.is("Gemm")
            || node.is("MatMul")
            || (node.is("ConvTranspose") && format.is_qdq());
        let row = match plan.act.as_ref().filter(|_| integer_op) {
            None => emit_weight_only(&mut e, node, plan),
            Some(act) if format.is_qdq() => {
                let out_q = node.outputs.first().and_then(|o| out_qs.get(o)).cloned();
                qdq::emit_qdq(&mut e, node, plan, act, out_q, bias.as_ref())
            }
            Some(act) => integer::emit_integer(&mut e, node, plan, act, bias)?,
        };
        table.push(row);
    }
    if format.is_qdq() && placement == QdqOutputs::All {
        qdq::dequantize_add_inputs(&mut e);
        qdq::one_dequantize_per_q(&mut e);
    }
    let nodes = std::mem::take(&mut e.nodes);
    graph.nodes = nodes;
    drop_saturated_bounds(graph);
    if format.is_qdq() {
        graph.sort_topologically()?;
    }
    graph.remove_unused_initializers();
    Ok(table)
}

/// Replaces by an Identity each `Min(x, c)` (equalization's per-channel ReLU6 bound) whose every reader is a
/// QuantizeLinear with zero-point 0 that saturates at or below every bound: `c ≥ q_max·s`
/// everywhere (`q_max` 255 for uint8, 127 for int8). Those readers then compute the same
/// integers from `x`: where `x ≤ c` nothing changes, and where `x > c ≥ q_max·s` both give
/// `q_max`. The Min is a float op between two integer kernels in every runtime (ONNX Runtime
/// cannot fuse it; tract runs per-channel bounds on a slow broadcast path). On MobileNetV2
/// with CLE, 33 of its 34 bounds are redundant this way (the bounds of a channel CLE scaled
/// down sit well above the layer's quantization range).
///
/// Returns how many were replaced. The bounds must be initializers.
pub fn drop_saturated_bounds(graph: &mut Graph) -> usize {
    let mut nodes = std::mem::take(&mut graph.nodes);
    let n = drop_saturated_bounds_in(graph, &mut nodes);
    graph.nodes = nodes;
    n
}

fn drop_saturated_bounds_in(graph: &Graph, nodes: &mut [Node]) -> usize {
    let scalar = |name: &str| -> Option<TensorData> {
        graph
            .initializer(name)
            .and_then(|t| crate::onnx::tensor::to_array(t).ok())
    };
    // The top of a QuantizeLinear's range, when its zero-point is 0 and its scale a positive
    // scalar.
    let q_top = |q: &Node| -> Option<f64> {
        let s = match scalar(q.input(1)?)? {
            TensorData::F32(a) if a.len() == 1 => f64::from(*a.iter().next()?),
            _ => return None,
        };
        let q_max = match scalar(q.input(2)?)? {
            TensorData::U8(a) if a.len() == 1 && a.iter().all(|&z| z == 0) => 255.0,
            TensorData::I8(a) if a.len() == 1 && a.iter().all(|&z| z == 0) => 127.0,
            _ => return None,
        };
        (s > 0.0 && s.is_finite()).then_some(q_max * s)
    };
    let outputs: std::collections::HashSet<&str> = graph
        .outputs
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    // Readers by every reference, subgraphs of If/Loop included (a Min read inside one stays).
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut captured: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (i, n) in nodes.iter().enumerate() {
        for v in &n.inputs {
            readers.entry(v.as_str()).or_default().push(i);
        }
        let direct: std::collections::HashSet<&str> = n.inputs.iter().map(String::as_str).collect();
        crate::graph::order::node_references(n, |v| {
            if !direct.contains(v) {
                captured.insert(v);
            }
        });
    }
    let producer: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i)))
        .collect();
    // The channels of `x`: walks back through the ops the emitter and equalization put between
    // a convolution and its activation to the convolution, and reads its weight's output
    // channels (so a bound `[1, C, 1, 1]` cannot broadcast `x` to a larger shape).
    let channels = |x: &str| -> Option<usize> {
        let mut v = x;
        for _ in 0..8 {
            let n = &nodes[*producer.get(v)?];
            if n.is("Conv") || n.is("ConvInteger") {
                let mut w = n.input(1)?;
                if let Some(&d) = producer.get(w) {
                    let dq = &nodes[d];
                    if !dq.is("DequantizeLinear") {
                        return None;
                    }
                    w = dq.input(0)?;
                }
                let dims = &graph.initializer(w)?.dims;
                return dims.first().and_then(|&c| usize::try_from(c).ok());
            }
            let passes = [
                "Relu",
                "DequantizeLinear",
                "QuantizeLinear",
                "Add",
                "Mul",
                "Cast",
            ];
            if !passes.iter().any(|op| n.is(op)) {
                return None;
            }
            v = n.input(0)?;
        }
        None
    };
    let mut drop: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if !n.is("Min") || n.inputs.len() != 2 {
            continue;
        }
        let (Some(out), Some(TensorData::F32(bound))) = (n.outputs.first(), scalar(&n.inputs[1]))
        else {
            continue;
        };
        if outputs.contains(out.as_str())
            || captured.contains(out.as_str())
            || bound.is_empty()
            || bound.iter().any(|b| b.is_nan())
        {
            continue;
        }
        // Dropping the Min must not change the shape: a scalar bound, or `[1, C, 1, 1]` on an
        // `x` with C channels.
        let fits = match bound.shape() {
            [] | [1] => true,
            [1, c, 1, 1] => channels(&n.inputs[0]) == Some(*c),
            _ => false,
        };
        if !fits {
            continue;
        }
        let lowest = bound
            .iter()
            .fold(f64::INFINITY, |m, &b| m.min(f64::from(b)));
        let Some(rs) = readers.get(out.as_str()) else {
            continue;
        };
        let redundant = rs.iter().all(|&r| {
            let q = &nodes[r];
            q.is("QuantizeLinear")
                && q.input(0) == Some(out.as_str())
                && q_top(q).is_some_and(|top| lowest >= top)
        });
        if redundant && lowest.is_finite() {
            drop.push(i);
        }
    }
    // The Min becomes an Identity, so the value keeps its name (the layer table and
    // `validate --per-layer` name it); runtimes remove Identity nodes when they optimize.
    for &i in &drop {
        let n = &mut nodes[i];
        n.op_type = "Identity".into();
        n.inputs.truncate(1);
    }
    drop.len()
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

/// `DequantizeLinear(W_q, s_w, 0)` (per-axis with per-channel scales): returns the
/// dequantized value and the int8 weight initializer.
fn weight_dq(e: &mut Emitter<'_>, node: &Node, plan: &LayerPlan) -> (String, String) {
    let base = base_name(node);
    let w_name = node.input(1).unwrap_or("w").to_string();
    let q_name = e.names.fresh(&w_name, "_quantized");
    e.graph
        .set_initializer(from_array(&q_name, &TensorData::I8(plan.weight.q.clone())));
    match &plan.weight.channel_scales {
        None => {
            let s = e.scalar_f32(&w_name, "_scale", plan.weight.scale);
            let z = e.zero_point(Zp::I8);
            let out = e.dequantize(&q_name, &s, &z, &base, "_weight_dequantize");
            (out, q_name)
        }
        Some(scales) => {
            // Per-axis DequantizeLinear (opset 13): one scale and one zero-point per channel.
            let n = scales.len();
            let s = e.names.fresh(&w_name, "_scale");
            let z = e.names.fresh(&w_name, "_zero_point");
            let sv = ndarray::Array1::from(scales.clone()).into_dyn();
            e.graph.set_initializer(from_f32(&s, sv));
            e.graph
                .set_initializer(from_array(&z, &TensorData::I8(ArrayD::zeros(IxDyn(&[n])))));
            let out = e.names.fresh(&q_name, "_dequantized");
            let name = e.names.fresh(&base, "_weight_dequantize");
            e.nodes.push(
                Node::new(
                    "DequantizeLinear",
                    name,
                    vec![q_name.clone(), s, z],
                    vec![out.clone()],
                )
                .with_attr(attrs::make_int("axis", output_axis(node))),
            );
            (out, q_name)
        }
    }
}

/// A layer whose input stays float: `DequantizeLinear(W_q)` feeds the float op.
fn emit_weight_only(e: &mut Emitter<'_>, mut node: Node, plan: &LayerPlan) -> EmittedLayer {
    let (w, q_name) = weight_dq(e, &node, plan);
    let row = EmittedLayer::new(&node, plan, e.format, Form::WeightOnly, q_name);
    node.inputs[1] = w;
    e.nodes.push(node);
    row
}
