//! Lower quantized layers to ONNX integer ops (`--format convinteger`).
//!
//! For a layer with a quantized activation input (scale `s_x`, zero-point 0, uint8 when the
//! input is non-negative, else int8) and int8 weights (`s_w`, zero-point 0):
//!
//! ```text
//! Conv:    [Clip] → QuantizeLinear(x, s_x, zp) → ConvInteger(x_q, W_q) → Cast(FLOAT)
//!          → Mul(s_x·s_w) → Add(b as [1, C, 1, …])
//! Gemm:    [Clip] → QuantizeLinear(A) → MatMulInteger(A_q, B_q as [K, N]) → Cast
//!          → Mul(alpha·s_x·s_w) → Add(beta·C)
//! MatMul:  [Clip] → QuantizeLinear(A) → MatMulInteger(A_q, B_q) → Cast → Mul(s_x·s_w)
//! ```
//!
//! The last node writes the original output name, so consumers are untouched. Every
//! QuantizeLinear gets an explicit zero-point initializer of the intended type (tract
//! ignores `output_dtype`); one QuantizeLinear is shared by all layers reading the same
//! value at the same scale. `Clip` is emitted only below 8 activation bits, to keep values
//! inside the narrower grid.
//!
//! A layer whose input stays float (the model input with no known range, ConvTranspose,
//! which has no integer op in ONNX, Gemm with `transA`) keeps int8 weights behind a
//! `DequantizeLinear(W_q, s_w, 0)` and computes in float.

use std::collections::HashMap;

use ndarray::{arr0, IxDyn};

use super::weights::QuantizedWeight;
use crate::error::Result;
use crate::graph::names::NameGen;
use crate::graph::{Model, Node};
use crate::onnx::tensor::{from_array, from_f32, TensorData};
use crate::onnx::{attrs, DataType};

/// How a layer's activation input is quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct ActQuant {
    /// The value quantized.
    pub value: String,
    /// Scale `s_x`.
    pub scale: f32,
    /// uint8 (non-negative input) or int8.
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
    /// The activation input, when the layer runs in integers.
    pub act: Option<ActQuant>,
}

fn scalar_f32(name: &str, v: f32) -> crate::onnx::pb::TensorProto {
    from_array(name, &TensorData::F32(arr0(v).into_dyn()))
}

/// Rewrites the planned layers. Nodes must be in topological order.
///
/// # Errors
/// Malformed layers (missing weight, bias of the wrong size).
pub fn emit_conv_integer(model: &mut Model, plans: &[LayerPlan]) -> Result<()> {
    model.require_opset(10);
    let opset = model.opset().unwrap_or(10);
    let graph = &mut model.graph;
    let producers: HashMap<String, usize> = graph
        .producers()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut names = NameGen::new(graph.taken_names());
    // Bias constants are read before the node list is taken apart.
    let mut biases: HashMap<usize, Option<ndarray::ArrayD<f32>>> = HashMap::new();
    {
        let prod_ref: HashMap<&str, usize> =
            producers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for p in plans {
            if let Some(b) = graph.nodes.get(p.node).and_then(|n| n.input(2)) {
                biases.insert(p.node, graph.constant_f32(b, &prod_ref)?);
            }
        }
    }
    let by_node: HashMap<usize, &LayerPlan> = plans.iter().map(|p| (p.node, p)).collect();
    let mut shared_q: HashMap<(String, u32, bool), String> = HashMap::new();
    let old_nodes = std::mem::take(&mut graph.nodes);
    let mut new_nodes: Vec<Node> = Vec::with_capacity(old_nodes.len() + plans.len() * 5);
    for (i, node) in old_nodes.into_iter().enumerate() {
        let Some(plan) = by_node.get(&i) else {
            new_nodes.push(node);
            continue;
        };
        let base = if node.name.is_empty() {
            node.outputs.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let w_name = node.input(1).unwrap_or("w").to_string();
        let q_name = names.fresh(&w_name, "_quantized");
        let integer =
            plan.act.is_some() && (node.is("Conv") || node.is("Gemm") || node.is("MatMul"));
        let trans_b = node.is("Gemm") && node.attr_int("transB")?.unwrap_or(0) != 0;
        // MatMulInteger needs B as [K, N]: store Gemm transB=1 weights transposed.
        let q = if integer && trans_b {
            plan.weight.q.t().to_owned().into_dyn()
        } else {
            plan.weight.q.clone()
        };
        graph.set_initializer(from_array(&q_name, &TensorData::I8(q)));
        let Some(act) = plan.act.as_ref().filter(|_| integer) else {
            // Weight-only: DequantizeLinear feeding the float op.
            let s_name = names.fresh(&w_name, "_scale");
            let zp_name = names.fresh(&w_name, "_zero_point");
            let dq_out = names.fresh(&w_name, "_dequantized");
            graph.set_initializer(scalar_f32(&s_name, plan.weight.scale));
            graph.set_initializer(from_array(&zp_name, &TensorData::I8(arr0(0i8).into_dyn())));
            new_nodes.push(Node::new(
                "DequantizeLinear",
                names.fresh(&base, "_weight_dequantize"),
                vec![q_name, s_name, zp_name],
                vec![dq_out.clone()],
            ));
            let mut node = node;
            node.inputs[1] = dq_out;
            new_nodes.push(node);
            continue;
        };
        let out = node.outputs.first().cloned().unwrap_or_default();
        // 1. (Clip) + QuantizeLinear, shared per (value, scale, type).
        let key = (act.value.clone(), act.scale.to_bits(), act.unsigned);
        let x_q = match shared_q.get(&key) {
            Some(x_q) => x_q.clone(),
            None => {
                let mut x = act.value.clone();
                if let Some((lo, hi)) = act.clip {
                    let clipped = names.fresh(&act.value, "_clipped");
                    let mut clip = Node::new(
                        "Clip",
                        names.fresh(&base, "_input_clip"),
                        vec![x],
                        vec![clipped.clone()],
                    );
                    if opset >= 11 {
                        let lo_n = names.fresh(&act.value, "_clip_min");
                        let hi_n = names.fresh(&act.value, "_clip_max");
                        graph.set_initializer(scalar_f32(&lo_n, lo));
                        graph.set_initializer(scalar_f32(&hi_n, hi));
                        clip.inputs.extend([lo_n, hi_n]);
                    } else {
                        clip = clip
                            .with_attr(attrs::make_float("min", lo))
                            .with_attr(attrs::make_float("max", hi));
                    }
                    new_nodes.push(clip);
                    x = clipped;
                }
                let s_name = names.fresh(&act.value, "_scale");
                let zp_name = names.fresh(&act.value, "_zero_point");
                let x_q = names.fresh(&act.value, "_quantized");
                graph.set_initializer(scalar_f32(&s_name, act.scale));
                let zp = if act.unsigned {
                    TensorData::U8(arr0(0u8).into_dyn())
                } else {
                    TensorData::I8(arr0(0i8).into_dyn())
                };
                graph.set_initializer(from_array(&zp_name, &zp));
                new_nodes.push(Node::new(
                    "QuantizeLinear",
                    names.fresh(&base, "_input_quantize"),
                    vec![x, s_name, zp_name],
                    vec![x_q.clone()],
                ));
                shared_q.insert(key, x_q.clone());
                x_q
            }
        };
        // 2. The integer op.
        let acc = names.fresh(&out, "_int32");
        let int_node = if node.is("Conv") {
            let mut n = Node::new(
                "ConvInteger",
                names.fresh(&base, "_integer"),
                vec![x_q, q_name],
                vec![acc.clone()],
            );
            for a in &node.attributes {
                let keep = matches!(
                    a.name.as_deref(),
                    Some("auto_pad" | "dilations" | "group" | "kernel_shape" | "pads" | "strides")
                );
                if keep {
                    n.attributes.push(a.clone());
                }
            }
            n
        } else {
            Node::new(
                "MatMulInteger",
                names.fresh(&base, "_integer"),
                vec![x_q, q_name],
                vec![acc.clone()],
            )
        };
        new_nodes.push(int_node);
        // 3. Cast + rescale.
        let acc_f = names.fresh(&out, "_float");
        new_nodes.push(
            Node::new(
                "Cast",
                names.fresh(&base, "_cast"),
                vec![acc],
                vec![acc_f.clone()],
            )
            .with_attr(attrs::make_int("to", DataType::Float as i64)),
        );
        let (alpha, beta) = if node.is("Gemm") {
            (
                f64::from(node.attr_float("alpha")?.unwrap_or(1.0)),
                f64::from(node.attr_float("beta")?.unwrap_or(1.0)),
            )
        } else {
            (1.0, 1.0)
        };
        let rescale = (alpha * f64::from(act.scale) * f64::from(plan.weight.scale)) as f32;
        let r_name = names.fresh(&base, "_rescale");
        graph.set_initializer(scalar_f32(&r_name, rescale));
        // 4. Bias.
        let bias_input = node.input(2).map(str::to_string);
        let bias = bias_input
            .as_ref()
            .map(|b| (b.clone(), biases.remove(&i).flatten()));
        let mul_out = if bias.is_some() {
            names.fresh(&out, "_rescaled")
        } else {
            out.clone()
        };
        new_nodes.push(Node::new(
            "Mul",
            names.fresh(&base, "_rescale"),
            vec![acc_f, r_name],
            vec![mul_out.clone()],
        ));
        if let Some((b_name, values)) = bias {
            let b_input = if node.is("Conv") {
                let values = values
                    .ok_or_else(|| node.error(format!("bias `{b_name}` is not a constant")))?;
                let c = values.len();
                let rank = plan.weight.q.ndim().max(3);
                let mut shape = vec![1usize; rank];
                shape[1] = c;
                let reshaped = values
                    .into_shape_with_order(IxDyn(&shape))
                    .map_err(|e| node.error(format!("bias `{b_name}`: {e}")))?;
                let n = names.fresh(&b_name, "_broadcast");
                graph.set_initializer(from_f32(&n, reshaped));
                n
            } else if beta != 1.0 {
                let values =
                    values.ok_or_else(|| node.error(format!("C `{b_name}` is not a constant")))?;
                let n = names.fresh(&b_name, "_scaled");
                graph.set_initializer(from_f32(&n, values.mapv(|v| (f64::from(v) * beta) as f32)));
                n
            } else {
                b_name
            };
            new_nodes.push(Node::new(
                "Add",
                names.fresh(&base, "_bias"),
                vec![mul_out, b_input],
                vec![out],
            ));
        }
    }
    graph.nodes = new_nodes;
    graph.remove_unused_initializers();
    Ok(())
}
