//! `isquant check MODEL --target T`: the rules of a deployment runtime a model breaks.
//!
//! The rules (`docs/runtime-rules.md`) were measured for tract 0.23 and ONNX Runtime
//! 1.15–1.32, and read from TensorRT's ONNX parser for TensorRT:
//!
//! | target | rules |
//! |---|---|
//! | `tensorrt` | only QuantizeLinear/DequantizeLinear carry quantization (no ConvInteger, MatMulInteger, QLinear*, DynamicQuantizeLinear); int8 only (no uint8); zero-point 0, present and constant; scales constant, finite, > 0; per-tensor activations; per-axis only for weights, on axis 0, opset ≥ 13; no `com.microsoft` ops |
//! | `ort` (≥ 1.24) | constant scales and zero-points; opset ≥ 10 for integer ops |
//! | `ort-legacy` (< 1.24) | the `ort` rules, plus ConvInteger only with uint8 input and weight; IR ≤ 9 (1.15 rejects IR 10) |
//! | `tract` | no `com.microsoft` contrib ops; QuantizeLinear needs an explicit zero-point (tract ignores `output_dtype`); constant f32 scales; no blocked quantization |

use std::fmt;

use crate::graph::{Graph, Model, Node};
use crate::onnx::{tensor, DataType};

/// A deployment runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// tract 0.23.
    Tract,
    /// ONNX Runtime ≥ 1.24 (CPU).
    Ort,
    /// ONNX Runtime < 1.24 (CPU).
    OrtLegacy,
    /// TensorRT (its ONNX parser).
    #[serde(rename = "tensorrt")]
    #[value(name = "tensorrt")]
    TensorRt,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The node (or `model`).
    pub node: String,
    /// Its op type.
    pub op_type: String,
    /// The rule it breaks.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.node, self.op_type, self.rule)
    }
}

/// Element type of a value: from initializers, QuantizeLinear zero-points and Casts.
fn elem_type(
    g: &Graph,
    v: &str,
    producers: &std::collections::HashMap<&str, usize>,
) -> Option<i32> {
    // Iterative through chains of QuantizeLinear zero points (bounded: no stack per node).
    let mut v = v;
    for _ in 0..crate::graph::MAX_CONSTANT_STEPS {
        if let Some((t, _)) = g.constant_with(v, producers).ok().flatten() {
            return t.data_type;
        }
        let n = &g.nodes[*producers.get(v)?];
        if n.is("QuantizeLinear") {
            match n.input(2) {
                Some(zp) => v = zp,
                None => return Some(DataType::Uint8 as i32),
            }
            continue;
        }
        if n.is("DynamicQuantizeLinear") {
            return Some(DataType::Uint8 as i32);
        }
        return None;
    }
    None
}

fn type_name(t: Option<i32>) -> String {
    t.map_or("unknown".into(), crate::onnx::data_type_name)
}

/// Lists every rule of `target` that `model` breaks (empty: the model conforms).
pub fn check(model: &Model, target: Target) -> Vec<Violation> {
    let g = &model.graph;
    let producers = g.producers();
    let opset = model.opset().unwrap_or(0);
    let mut out = Vec::new();
    if target == Target::OrtLegacy && model.ir_version() > 9 {
        out.push(Violation {
            node: "model".into(),
            op_type: "-".into(),
            rule: format!(
                "IR version {} (ONNX Runtime 1.15 rejects IR 10)",
                model.ir_version()
            ),
        });
    }
    let mut bad = |n: &Node, rule: String| {
        out.push(Violation {
            node: n.display_name(),
            op_type: n.op_type.clone(),
            rule,
        });
    };
    let is_i8 = |t: Option<i32>| t == Some(DataType::Int8 as i32);
    let is_u8 = |t: Option<i32>| t == Some(DataType::Uint8 as i32);
    for n in &g.nodes {
        let contrib = n.domain == "com.microsoft";
        if contrib && matches!(target, Target::TensorRt | Target::Tract) {
            bad(
                n,
                "com.microsoft contrib op (not supported by this runtime)".into(),
            );
        }
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            continue;
        }
        let op = n.op_type.as_str();
        let is_q = op == "QuantizeLinear" || op == "DequantizeLinear";
        if target == Target::TensorRt
            && matches!(
                op,
                "ConvInteger"
                    | "MatMulInteger"
                    | "QLinearConv"
                    | "QLinearMatMul"
                    | "DynamicQuantizeLinear"
            )
        {
            bad(n, format!("{op}: TensorRT takes quantization only as QuantizeLinear/DequantizeLinear pairs"));
        }
        if matches!(
            op,
            "ConvInteger" | "MatMulInteger" | "QuantizeLinear" | "DequantizeLinear"
        ) && opset < 10
        {
            bad(n, format!("needs opset >= 10 (model has {opset})"));
        }
        if target == Target::OrtLegacy && op == "ConvInteger" {
            let x = n.input(0).and_then(|v| elem_type(g, v, &producers));
            let w = n.input(1).and_then(|v| elem_type(g, v, &producers));
            if !(is_u8(x) && is_u8(w)) {
                bad(
                    n,
                    format!(
                        "ConvInteger with {} input and {} weight needs ONNX Runtime >= 1.24 (older versions run only uint8 x uint8)",
                        type_name(x),
                        type_name(w)
                    ),
                );
            }
        }
        if !is_q {
            continue;
        }
        // Scale: constant, f32, finite, positive.
        let scale = n
            .input(1)
            .and_then(|s| g.constant_with(s, &producers).ok().flatten());
        match &scale {
            None => bad(n, "scale is not a constant".into()),
            Some((t, _)) => {
                if t.data_type != Some(DataType::Float as i32) {
                    bad(n, format!("scale is {}, not FLOAT", type_name(t.data_type)));
                } else if let Ok(a) = tensor::to_f32(t) {
                    if a.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                        bad(n, "scale is not finite and positive".into());
                    }
                    if target == Target::TensorRt && a.len() > 1 {
                        let axis = n.attr_int("axis").ok().flatten().unwrap_or(1);
                        let on_weight = op == "DequantizeLinear"
                            && n.input(0).is_some_and(|w| g.initializer(w).is_some());
                        if !on_weight || axis != 0 {
                            bad(
                                n,
                                "per-axis scales are allowed only for weights, on axis 0".into(),
                            );
                        }
                        if opset < 13 {
                            bad(
                                n,
                                format!(
                                    "per-axis quantization needs opset >= 13 (model has {opset})"
                                ),
                            );
                        }
                    }
                }
            }
        }
        if n.attr_int("block_size").ok().flatten().unwrap_or(0) != 0 {
            bad(
                n,
                "blocked quantization (block_size) is not supported".into(),
            );
        }
        // Zero-point: present, constant; TensorRT: int8 and 0.
        let zp = n
            .input(2)
            .and_then(|z| g.constant_with(z, &producers).ok().flatten());
        match (&zp, n.input(2)) {
            (None, None) => {
                if op == "QuantizeLinear" && matches!(target, Target::Tract | Target::TensorRt) {
                    bad(
                        n,
                        "no zero-point: the output type then depends on output_dtype, which tract ignores (and defaults to uint8)"
                            .into(),
                    );
                }
            }
            (None, Some(_)) => bad(n, "zero-point is not a constant".into()),
            (Some((t, _)), _) => {
                if target == Target::TensorRt {
                    if !is_i8(t.data_type) {
                        bad(
                            n,
                            format!(
                                "{} zero-point: TensorRT takes int8 only (uint8 rejected)",
                                type_name(t.data_type)
                            ),
                        );
                    } else if tensor::to_array(t)
                        .ok()
                        .and_then(|a| a.to_i64())
                        .is_some_and(|v| v.iter().any(|&x| x != 0))
                    {
                        bad(n, "zero-point is not 0 (TensorRT is symmetric)".into());
                    }
                }
            }
        }
        if target == Target::TensorRt && op == "DequantizeLinear" {
            let x = n.input(0).and_then(|v| elem_type(g, v, &producers));
            if x.is_some() && !is_i8(x) && x != Some(DataType::Int32 as i32) {
                bad(
                    n,
                    format!("dequantizes {}: TensorRT takes int8 only", type_name(x)),
                );
            }
        }
    }
    out
}
