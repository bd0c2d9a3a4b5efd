//! The Q/DQ formats (`qdq`, `qdq-u8`): float ops reading `DequantizeLinear` outputs, and where
//! a `Q → DQ` goes after a layer ([`QdqOutputs`]; module docs of [`super`]).

use std::collections::HashMap;

use ndarray::ArrayD;

use crate::onnx::tensor::{from_array, TensorData};

use super::{
    base_name, weight_dq, ActQuant, EmittedLayer, Emitter, Form, Format, LayerPlan, QdqOutputs, Zp,
};
use crate::graph::{Graph, Node};

/// The `Q → DQ` put right after a layer output (`qdq`, `qdq-u8`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OutQ {
    pub(super) scale: f32,
    pub(super) unsigned: bool,
    /// An activation (Relu / Clip) right after the layer that the uint8 Q makes redundant:
    /// its node index, and its output (which the DQ then writes).
    pub(super) absorb: Option<(usize, String)>,
}

/// For Q/DQ formats: the `Q → DQ` after each layer output `y`, so runtimes see
/// `DQ → Conv → Q`. Scale, in order of preference: the input scale of the quantized layers
/// reading `y` directly (they then share this QuantizeLinear: one Q per tensor); the input
/// scale of the layers reading it through one Relu / Clip(≥ 0), or through one such activation
/// and one `Min` with a constant (values it clips are zeroed by
/// the activation anyway; with `qdq-u8` the uint8 Q *is* the activation, which is removed
/// when its upper bound is not below the Q's); the layer's own output range. Graph outputs
/// stay float.
pub(super) fn output_quants(
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
    let clamp = |n: &Node| -> Option<(f64, f64)> {
        if n.is("Relu") {
            return Some((0.0, f64::INFINITY));
        }
        if !n.is("Clip") {
            return None;
        }
        // Malformed bounds were already errors in the range passes; here they are no clamp.
        let (lo, hi) = graph.clip_bounds(n, &producers).ok().flatten()?;
        let (lo, hi) = (f64::from(lo?), hi.map_or(f64::INFINITY, f64::from));
        (lo >= 0.0).then_some((lo, hi))
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
            if let (Some((lo, hi)), Some(a_out)) = (clamp(act), act.outputs.first()) {
                // The readers quantize the activation's output, or that of one `Min` with a
                // constant after it (equalization's per-channel ReLU6 bound). The Q after the
                // layer is exact there too: rounding is monotone, so
                // `Q(min(relu(DQ(Q(y))), c)) = Q(min(relu(y), c))` at one scale.
                let then_min = || -> Option<&str> {
                    if graph_outputs.contains(a_out.as_str()) {
                        return None;
                    }
                    let [m] = consumers.get(a_out.as_str())?.as_slice() else {
                        return None;
                    };
                    let m = &graph.nodes[*m];
                    let bound = (m.is("Min") && m.inputs.len() == 2 && m.inputs[0] == *a_out)
                        .then(|| graph.constant_f32(&m.inputs[1], &producers).ok().flatten())??;
                    bound
                        .iter()
                        .all(|b| b.is_finite())
                        .then(|| m.outputs.first().map(String::as_str))?
                };
                let quantized = readers_q(a_out).or_else(|| then_min().and_then(readers_q));
                if let Some((scale, unsigned)) = quantized {
                    let q_hi = f64::from(scale) * 255.0;
                    // The uint8 Q clamps at 0, so it replaces the activation only when that
                    // clamps at 0 too (a `Clip(0.5, 6)` keeps its lower bound).
                    let absorb = (unsigned
                        && unsigned_ok
                        && lo == 0.0
                        && q_hi <= hi + 1e-6 * hi.abs().max(1.0))
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

/// Q/DQ formats: an `Add` (residual) reads each input that has a QuantizeLinear through its
/// own DequantizeLinear, so both of its inputs are quantized, as TensorRT wants to fuse the
/// add into the convolution (and ONNX Runtime fuses `DQ → Add → Q`).
pub(super) fn dequantize_add_inputs(e: &mut Emitter<'_>) {
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

/// `--qdq-outputs all`: a quantized tensor read by several layers gets one `Q → DQ` per reader,
/// behind a one-input `Sum` of the shared DQ, so every QuantizeLinear has exactly one
/// DequantizeLinear edge:
///
/// ```text
/// y → Q → DQ → Sum → Q_1 → DQ_1 → reader 1
///                  → Q_2 → DQ_2 → reader 2
/// ```
///
/// Only int8 tensors (uint8 ones need no conversion). Why: ONNX Runtime (CPU, x86) turns int8
/// activations into uint8 (its S8-to-U8 transform) only
/// where a QuantizeLinear has a single DequantizeLinear edge, and it first gives every reader
/// its own DQ; a residual tensor (read by the next Conv and by the Add) then stays int8 while
/// its neighbours become uint8, and the Convs between mixed types are not fused. On
/// MobileNetV2 (`--format qdq --qdq-outputs all`) 15 of 52 Convs stayed float, and ONNX
/// Runtime's own symmetric quantizer leaves the same 15. `Q_i` has its own scale and
/// zero-point initializers (same values, new names): identical ones would be merged back into
/// one node. The one-input `Sum` is an identity that ONNX Runtime does not remove (an
/// `Identity` is removed and the Qs merged; a `Reshape` breaks its NCHWc layout).
///
/// Exact: `DQ_i(Q_i(DQ(q))) = DQ(q)` (`q·s` divided by `s` rounds back to `q` for every
/// 8-bit `q`), so the model computes the same values.
pub(super) fn one_dequantize_per_q(e: &mut Emitter<'_>) {
    // A DQ counts when its output is read (a DQ written for a value no node reads is dropped
    // by every runtime and needs no Q of its own).
    let mut read: std::collections::HashSet<&str> = e
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .collect();
    read.extend(e.graph.outputs.iter().filter_map(|o| o.name.as_deref()));
    let mut readers: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in e.nodes.iter().enumerate() {
        let used = n.outputs.first().is_some_and(|o| read.contains(o.as_str()));
        if n.is("DequantizeLinear") && used {
            if let Some(q) = n.inputs.first() {
                readers.entry(q.clone()).or_default().push(i);
            }
        }
    }
    // Only the QuantizeLinears the emitter made (Q/DQ pairs of the input model keep theirs).
    let ours: std::collections::HashSet<&str> =
        e.shared_q.values().map(|(q, _, _)| q.as_str()).collect();
    let shared: Vec<(usize, Vec<usize>)> = e
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.is("QuantizeLinear") && n.outputs.first().is_some_and(|o| ours.contains(o.as_str()))
        })
        .filter_map(|(i, n)| {
            let dqs = readers.get(n.outputs.first()?)?;
            (dqs.len() > 1).then(|| (i, dqs.clone()))
        })
        .collect();
    for (qi, dqs) in shared {
        let q = e.nodes[qi].clone();
        let (Some(s), Some(z)) = (q.inputs.get(1).cloned(), q.inputs.get(2).cloned()) else {
            continue;
        };
        let (Some(s_t), Some(z_t)) = (
            e.graph.initializer(&s).cloned(),
            e.graph.initializer(&z).cloned(),
        ) else {
            continue;
        };
        // uint8 pairs need no conversion and fuse as they are (ResNet-50's residual tensors,
        // after Relu, are uint8 in `qdq-u8`); a fan-out there only adds float work.
        if z_t.data_type != Some(crate::onnx::DataType::Int8 as i32) {
            continue;
        }
        let base = base_name(&q);
        // The first DQ stays and feeds the Sum; every DQ (the first included) then reads its own Q.
        let Some(first_out) = e.nodes[dqs[0]].outputs.first().cloned() else {
            continue;
        };
        let shared_dq = e.names.fresh(&first_out, "_shared");
        e.nodes[dqs[0]].outputs[0] = shared_dq.clone();
        let sum_out = e.names.fresh(&shared_dq, "_sum");
        e.node(
            "Sum",
            &base,
            "_fanout",
            vec![shared_dq.clone()],
            sum_out.clone(),
        );
        let first = e.nodes[dqs[0]].clone();
        let mut targets: Vec<(usize, String)> = vec![(usize::MAX, first_out)];
        targets.extend(
            dqs[1..]
                .iter()
                .filter_map(|&d| e.nodes[d].outputs.first().map(|o| (d, o.clone()))),
        );
        for (k, (d, out)) in targets.into_iter().enumerate() {
            let s_k = e.names.fresh(&s, &format!("_reader{k}"));
            let z_k = e.names.fresh(&z, &format!("_reader{k}"));
            let mut st = s_t.clone();
            st.name = Some(s_k.clone());
            let mut zt = z_t.clone();
            zt.name = Some(z_k.clone());
            e.graph.set_initializer(st);
            e.graph.set_initializer(zt);
            let q_k = e.names.fresh(&shared_dq, &format!("_requantized{k}"));
            e.node(
                "QuantizeLinear",
                &base,
                &format!("_reader{k}"),
                vec![sum_out.clone(), s_k.clone(), z_k.clone()],
                q_k.clone(),
            );
            let dq = Node::new(
                "DequantizeLinear",
                e.names.fresh(&first.name, &format!("_reader{k}")),
                vec![q_k, s_k, z_k],
                vec![out],
            );
            if d == usize::MAX {
                e.nodes.push(dq);
            } else {
                // Replaces the reader's own DQ (same output name, so the reader is untouched).
                e.nodes[d] = dq;
            }
        }
    }
}

/// Emits one layer in a Q/DQ format; returns its row of the layer table.
pub(super) fn emit_qdq(
    e: &mut Emitter<'_>,
    mut node: Node,
    plan: &LayerPlan,
    act: &ActQuant,
    out_q: Option<OutQ>,
    bias: Option<&ArrayD<f32>>,
) -> EmittedLayer {
    let base = base_name(&node);
    let (x_q, x_s, x_z) = e.quantize(act, &base);
    let x_dq = e.dequantize(&x_q, &x_s, &x_z, &base, "_input_dequantize");
    let (w_dq, q_name) = weight_dq(e, &node, plan);
    // Below opset 11 ONNX Runtime's Q/DQ fusion quantizes a float bias itself with a `Round`
    // node, which opset 10 does not have, and the model fails to load ("No Op registered for
    // Round with domain_version of 10"). There the bias is given as ONNX Runtime's own
    // quantizer writes it: int32 at scale `s_x·s_w`, zero-point 0, through a DequantizeLinear
    // (which takes int32 from opset 10). Per-channel weights need opset 13, so this is the
    // per-tensor case only.
    if e.opset < 11 && plan.weight.channel_scales.is_none() {
        if let (Some(b), Some(b_name)) = (bias, node.input(2).map(str::to_string)) {
            let s_b = f64::from(act.scale) * f64::from(plan.weight.scale);
            if s_b > 0.0 {
                let q = b.mapv(|v| (f64::from(v) / s_b).round().clamp(-2.0e9, 2.0e9) as i32);
                let q_name = e.names.fresh(&b_name, "_quantized");
                e.graph
                    .set_initializer(from_array(&q_name, &TensorData::I32(q)));
                let s = e.scalar_f32(&b_name, "_scale", s_b as f32);
                let z = e.names.fresh(&b_name, "_zero_point");
                e.graph.set_initializer(from_array(
                    &z,
                    &TensorData::I32(ndarray::arr0(0i32).into_dyn()),
                ));
                node.inputs[2] = e.dequantize(&q_name, &s, &z, &base, "_bias_dequantize");
            }
        }
    }
    let mut row = EmittedLayer::new(&node, plan, e.format, Form::Qdq, q_name);
    row.activation = Some(e.act_zp(act).encoding(act.scale));
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
            row.output.clone_from(&target);
            row.output_quantization = Some(zp.encoding(oq.scale));
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
    row
}
