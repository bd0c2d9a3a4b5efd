//! Which nodes a weight quantizer would touch.
//!
//! A node is a quantization target when it is `Conv`, `ConvTranspose`, `Gemm` or `MatMul`
//! and its weight (input 1) is a constant of rank ≥ 2 (Gemm/MatMul: exactly 2). Everything
//! else with one of those op types is reported with the reason it stays float.

use serde::Serialize;

use super::Skip;
use crate::error::Result;
use crate::graph::Graph;

/// A node whose weight can be quantized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Index of the node.
    pub node: usize,
    /// Its display name.
    pub name: String,
    /// Its `op_type`.
    pub op_type: String,
    /// The weight value's name.
    pub weight: String,
    /// The weight's shape.
    pub weight_shape: Vec<usize>,
}

/// Lists quantization targets and the layer-like nodes that cannot be targets.
///
/// # Errors
/// A malformed constant.
pub fn find_targets(graph: &Graph) -> Result<(Vec<Target>, Vec<Skip>)> {
    let producers = graph.producers();
    let mut targets = Vec::new();
    let mut skips = Vec::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        let is_layer = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
            .iter()
            .any(|op| n.is(op));
        if !is_layer {
            continue;
        }
        let skip = |reason: String| Skip {
            node: n.display_name(),
            op_type: n.op_type.clone(),
            reason,
        };
        let w = n.input(1).unwrap_or("");
        let Some((t, _)) = graph.constant_with(w, &producers)? else {
            skips.push(skip(format!(
                "weight `{w}` is not a constant (a graph input or computed at run time)"
            )));
            continue;
        };
        let shape = crate::onnx::tensor::shape_of(&t)?;
        let rank_ok = match n.op_type.as_str() {
            "Gemm" | "MatMul" => shape.len() == 2,
            _ => shape.len() >= 3,
        };
        if !rank_ok {
            skips.push(skip(format!(
                "weight `{w}` has shape {shape:?}, not a {} weight",
                if matches!(n.op_type.as_str(), "Gemm" | "MatMul") {
                    "2-D"
                } else {
                    "convolution"
                }
            )));
            continue;
        }
        let float = matches!(
            t.data_type
                .and_then(|d| crate::onnx::DataType::try_from(d).ok()),
            Some(crate::onnx::DataType::Float)
        );
        if !float {
            skips.push(skip(format!(
                "weight `{w}` is {}, not FLOAT",
                crate::onnx::data_type_name(t.data_type.unwrap_or(0))
            )));
            continue;
        }
        targets.push(Target {
            node: i,
            name: n.display_name(),
            op_type: n.op_type.clone(),
            weight: w.to_string(),
            weight_shape: shape,
        });
    }
    Ok((targets, skips))
}
