//! Values that are non-negative by construction (uint8 candidates).

use std::collections::HashSet;

use super::bn::activation;
use crate::error::Result;
use crate::graph::Graph;
use crate::onnx::attrs;

/// Values that are non-negative by construction (outputs of Relu, Clip(≥0, ·), Sigmoid,
/// HardSigmoid, Softmax, and of shape/pooling ops, Concat, Add, Mul over such values).
///
/// HardSwish (minimum −0.375) is deliberately not one: with zero-point 0, uint8 would clip
/// every value in [−0.375, 0), and those are a third to a half of a HardSwish output. On
/// `x ~ N(0, σ)`, σ = 1, 2, 3, the output's own SQNR is 36.0 / 37.7 / 38.5 dB as int8 and
/// 10.0 / 17.2 / 22.2 dB as clipped uint8 (docs/experiments.md, "HardSwish outputs stay int8").
///
/// # Errors
/// Malformed attributes or constants.
pub fn nonnegative_values(graph: &Graph) -> Result<HashSet<String>> {
    let producers = graph.producers();
    let mut nonneg: HashSet<String> = HashSet::new();
    for idx in graph.topological_order()? {
        let node = &graph.nodes[idx];
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            continue;
        }
        let all_inputs = |from: usize| {
            node.inputs
                .iter()
                .skip(from)
                .filter(|s| !s.is_empty())
                .all(|s| {
                    nonneg.contains(s)
                        || graph
                            .constant_f32(s, &producers)
                            .ok()
                            .flatten()
                            .is_some_and(|a| a.iter().all(|&v| v >= 0.0))
                })
        };
        let yes = match node.op_type.as_str() {
            "Softmax" | "Abs" | "Exp" => true,
            "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "Identity"
            | "Dropout" | "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Transpose"
            | "Resize" | "Upsample" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "Gather"
            | "GatherElements" | "GatherND" | "Slice" | "Split" | "Expand" | "Tile"
            | "DepthToSpace" | "SpaceToDepth" => node.input(0).is_some_and(|x| nonneg.contains(x)),
            // Constant padding adds its value (0 unless input 2 gives one); the other modes
            // copy input values.
            "Pad" => {
                let mode = attrs::string(&node.attributes, "mode").map_err(|e| node.error(e))?;
                let value_ok = node.input(2).is_none_or(|v| {
                    graph
                        .constant_f32(v, &producers)
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.iter().all(|&v| v >= 0.0))
                });
                (value_ok || mode.is_some_and(|m| m != "constant"))
                    && node.input(0).is_some_and(|x| nonneg.contains(x))
            }
            "Concat" | "Add" | "Mul" | "Max" | "Min" => all_inputs(0),
            "Div" => all_inputs(0),
            _ => match activation(node, graph, &producers)? {
                Some(a) => a.non_negative(),
                None => false,
            },
        };
        if yes {
            for o in node.outputs.iter().filter(|o| !o.is_empty()) {
                nonneg.insert(o.clone());
            }
        }
    }
    Ok(nonneg)
}
