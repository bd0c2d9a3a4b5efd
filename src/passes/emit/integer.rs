//! The `convinteger` formats: `[Clip] → QuantizeLinear → ConvInteger/MatMulInteger → Cast →
//! Mul(s_x·s_w) [→ Add(b)]` (module docs of [`super`]).
//!
//! With `convinteger-u8`, signed activations are uint8 with zero-point 128 and ConvInteger
//! weights uint8 with zero-point 128 (`q + 128`, lossless); MatMulInteger keeps int8 weights.

use ndarray::{ArrayD, IxDyn};

use super::{base_name, conv_attrs, ActQuant, EmittedLayer, Emitter, Form, Format, LayerPlan, Zp};
use crate::error::Result;
use crate::graph::Node;
use crate::onnx::tensor::{from_array, from_f32, TensorData};
use crate::onnx::{attrs, DataType};

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

/// Emits one layer in an integer format; returns its row of the layer table.
pub(super) fn emit_integer(
    e: &mut Emitter<'_>,
    node: Node,
    plan: &LayerPlan,
    act: &ActQuant,
    bias: Option<ArrayD<f32>>,
) -> Result<EmittedLayer> {
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
    let mut row = EmittedLayer::new(&node, plan, e.format, Form::Integer, q_name.clone());
    row.activation = Some(e.act_zp(act).encoding(act.scale));
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
        row.op = "ConvInteger".into();
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
        row.op = "MatMulInteger".into();
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
    Ok(row)
}
