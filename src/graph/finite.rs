//! Non-finite weights: a NaN or an infinity in a tensor a layer or a BatchNormalization reads
//! makes the float model itself compute non-finite values (a NaN in one BN mean spreads to
//! every output), while the quantized model, whose scales skip such values, computes finite
//! numbers that agree with nothing. Quantizing such a model would hide the fault, so
//! [`Graph::check_finite_weights`] refuses it and names the node and the tensor.
//!
//! Only the constant inputs of Conv, ConvTranspose, Gemm, MatMul and BatchNormalization are
//! checked: other ops use infinities on purpose (attention masks, open Clip bounds). The check
//! reads f32 `raw_data` as bit patterns (exponent all ones), which costs a few milliseconds on
//! a ResNet-50's 25 M weights.

use super::Graph;
use crate::error::Result;
use crate::onnx::pb::tensor_proto::DataType;
use crate::onnx::tensor;

/// Ops whose constant inputs must be finite.
const CHECKED: [&str; 5] = [
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "BatchNormalization",
];

impl Graph {
    /// Refuses a model whose layers or BatchNormalizations read NaN or infinite constants.
    ///
    /// # Errors
    /// [`crate::Error::Node`] naming the node, the tensor and how many values are not finite.
    pub fn check_finite_weights(&self) -> Result<()> {
        let producers = self.producers();
        for node in &self.nodes {
            if !CHECKED.iter().any(|op| node.is(op)) {
                continue;
            }
            for (k, name) in node.inputs.iter().enumerate().skip(1) {
                if name.is_empty() {
                    continue;
                }
                let Some((t, _)) = self.constant_with(name, &producers)? else {
                    continue;
                };
                let bad = non_finite(&t)?;
                if bad > 0 {
                    return Err(node.error(format!(
                        "input {k} `{name}` holds {bad} NaN or infinite value(s) of {}: the float \
                         model itself computes non-finite values; fix the model before quantizing",
                        tensor::element_count(&t)?
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How many values of a floating-point tensor are NaN or infinite (0 for other types).
fn non_finite(t: &crate::onnx::pb::TensorProto) -> Result<usize> {
    const EXP: u32 = 0x7f80_0000;
    let dt = t.data_type.unwrap_or_default();
    if dt == DataType::Float as i32 {
        if let Some(raw) = t.raw_data.as_deref().filter(|r| !r.is_empty()) {
            return Ok(raw
                .chunks_exact(4)
                .map(|b| usize::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & EXP == EXP))
                .sum());
        }
        return Ok(t.float_data.iter().filter(|v| !v.is_finite()).count());
    }
    if [DataType::Double, DataType::Float16, DataType::Bfloat16]
        .iter()
        .any(|&d| d as i32 == dt)
    {
        return Ok(tensor::to_f32(t)?.iter().filter(|v| !v.is_finite()).count());
    }
    Ok(0)
}
