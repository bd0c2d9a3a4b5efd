//! Structural validation of a model, run once right after it is parsed into the editable
//! graph ([`crate::load`]), before any pass or tract sees it, for every command (`inspect`
//! included: a model ONNX Runtime and `onnx.checker` reject is an error there too, exit 2,
//! with the same message `quantize` would give).
//!
//! Rules (default-domain ops only; other domains are passed through unchecked):
//!
//! - the default-domain opset, when imported, is in `1..=`[`MAX_OPSET`];
//! - every op isquant reasons about has an input count within its arity, its required inputs
//!   present (not the `""` marker) and a first output;
//! - Conv, ConvTranspose and the pools: `kernel_shape` / `strides` / `dilations` have one
//!   value per spatial dimension and `pads` two, where the number of spatial dimensions is
//!   taken from the constant weight (rank − 2), `kernel_shape`, or the declared input rank;
//!   strides, dilations and kernel sizes ≥ 1, pads ≥ 0, every one of them at most
//!   [`MAX_WINDOW`] (tract's optimizer works out a window's border regions position by
//!   position: a fuzzed MaxPool with pads and kernel near 2^31 kept it busy for an hour),
//!   pools' pads smaller than their kernel (ONNX Runtime's rule), `group` ≥ 1 and dividing the
//!   weight's output (Conv) or input (ConvTranspose) channels, and the declared input
//!   channels equal to `weight channels × group`; a constant weight has rank ≥ 3, a
//!   constant bias is one value per output channel;
//! - pools and global pools read an input of rank ≥ 3 (when declared), MaxPool / AveragePool
//!   have `kernel_shape`;
//! - Flatten, Concat and Softmax-like `axis` attributes are within the declared input rank;
//! - Gemm's constant `B` has rank 2 and `transA` / `transB` are 0 or 1; BatchNormalization's
//!   constant parameters are vectors of one length; Reshape's constant shape is an integer
//!   vector with at most one `-1` and no value below `-1`.
//!
//! Ranks come from initializers and declared shapes (graph inputs, outputs, `value_info`),
//! else are propagated forward through the ops whose output rank follows from their inputs
//! (elementwise ops, convolutions and pools keep the rank, Flatten and Gemm give 2, Reshape
//! the length of its constant shape); a check whose operand's rank is unknown is skipped. Every error is an
//! [`Error::Node`] naming the node (name and op type) and the attribute or tensor.

use std::collections::HashMap;

use super::{Model, Node};
use crate::error::{Error, Result};
use crate::onnx::pb;

/// The highest default-domain opset isquant (and tract 0.23, ONNX 1.17) knows.
pub const MAX_OPSET: i64 = 22;

/// Checks the whole model (see the module docs). Returns the first problem.
///
/// # Errors
/// An opset out of range, or a node that breaks one of the rules.
pub fn validate(model: &Model) -> Result<()> {
    if let Some(v) = model.opset() {
        if !(1..=MAX_OPSET).contains(&v) {
            return Err(Error::Graph(format!(
                "default-domain opset {v} is not supported (isquant knows opsets 1 to {MAX_OPSET})"
            )));
        }
    }
    let opset = model.opset().unwrap_or(MAX_OPSET);
    let shapes = Shapes::new(model);
    for n in &model.graph.nodes {
        if n.domain.is_empty() || n.domain == "ai.onnx" {
            check_node(n, opset, &shapes)?;
        }
    }
    Ok(())
}

/// Declared shapes by value name: initializer dims, and graph input/output/value_info shapes
/// (`None` for a symbolic dimension).
struct Shapes<'a> {
    model: &'a Model,
    declared: HashMap<&'a str, Vec<Option<i64>>>,
    /// Ranks inferred for values with no declared shape.
    ranks: HashMap<String, usize>,
}

impl<'a> Shapes<'a> {
    fn new(model: &'a Model) -> Self {
        use pb::tensor_shape_proto::dimension::Value as Dim;
        use pb::type_proto::Value;
        let g = &model.graph;
        let mut declared = HashMap::new();
        for vi in g.inputs.iter().chain(&g.outputs).chain(&g.value_info) {
            let (Some(name), Some(Value::TensorType(tt))) = (
                vi.name.as_deref(),
                vi.r#type.as_ref().and_then(|t| t.value.as_ref()),
            ) else {
                continue;
            };
            let Some(shape) = &tt.shape else { continue };
            let dims = shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(v)) if v >= 0 => Some(v),
                    _ => None,
                })
                .collect();
            declared.insert(name, dims);
        }
        let mut shapes = Shapes {
            model,
            declared,
            ranks: HashMap::new(),
        };
        shapes.infer_ranks();
        shapes
    }

    /// Propagates ranks forward through the ops whose output rank follows from their inputs
    /// (no dimension values: only what the rules above need).
    fn infer_ranks(&mut self) {
        let g = &self.model.graph;
        let order = g
            .topological_order()
            .unwrap_or_else(|_| (0..g.nodes.len()).collect());
        for i in order {
            let Some(n) = g.nodes.get(i) else { continue };
            let Some(out) = n.outputs.first().filter(|o| !o.is_empty()) else {
                continue;
            };
            if self.declared.contains_key(out.as_str())
                || !(n.domain.is_empty() || n.domain == "ai.onnx")
            {
                continue;
            }
            let r = |k: usize| n.input(k).and_then(|v| self.rank(v));
            let rank = match n.op_type.as_str() {
                "Relu" | "LeakyRelu" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "Tanh"
                | "Clip" | "Identity" | "BatchNormalization" | "Softmax" | "LogSoftmax"
                | "Dropout" | "MaxPool" | "AveragePool" | "LpPool" | "GlobalAveragePool"
                | "GlobalMaxPool" | "GlobalLpPool" => r(0),
                "Conv" | "ConvTranspose" => r(0).or(r(1)),
                "Flatten" | "Gemm" => Some(2),
                "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "PRelu" => match (r(0), r(1)) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                },
                "Concat" => (0..n.inputs.len()).find_map(r),
                "Reshape" => n
                    .input(1)
                    .and_then(|s| self.constant(s))
                    .and_then(|d| d.first().copied())
                    .and_then(|d| usize::try_from(d).ok()),
                _ => None,
            };
            if let Some(rank) = rank {
                self.ranks.insert(out.clone(), rank);
            }
        }
    }

    /// Dimensions of a constant initializer.
    fn constant(&self, name: &str) -> Option<&'a [i64]> {
        self.model
            .graph
            .initializer(name)
            .map(|t| t.dims.as_slice())
    }

    /// Dimensions of a value (initializer or declared), `None` when unknown.
    fn dims(&self, name: &str) -> Option<Vec<Option<i64>>> {
        if let Some(d) = self.constant(name) {
            return Some(d.iter().map(|&v| Some(v)).collect());
        }
        self.declared.get(name).cloned()
    }

    fn rank(&self, name: &str) -> Option<usize> {
        self.dims(name)
            .map(|d| d.len())
            .or_else(|| self.ranks.get(name).copied())
    }
}

/// Input arity of an op at `opset`: (minimum, maximum) inputs, `None` for ops not checked.
fn arity(op: &str, opset: i64) -> Option<(usize, usize)> {
    Some(match op {
        "Conv" | "ConvTranspose" | "Gemm" => (2, 3),
        "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "PRelu" => (2, 2),
        "MaxPool" | "AveragePool" | "LpPool" | "GlobalAveragePool" | "GlobalMaxPool"
        | "GlobalLpPool" | "Flatten" | "Relu" | "LeakyRelu" | "Sigmoid" | "HardSigmoid"
        | "HardSwish" | "Tanh" | "Softmax" | "LogSoftmax" | "Identity" => (1, 1),
        "BatchNormalization" => (5, 5),
        "Reshape" if opset < 5 => (1, 1),
        "Reshape" => (2, 2),
        "Clip" if opset < 11 => (1, 1),
        "Clip" => (1, 3),
        "Concat" => (1, usize::MAX),
        _ => return None,
    })
}

fn check_node(n: &Node, opset: i64, shapes: &Shapes<'_>) -> Result<()> {
    let op = n.op_type.as_str();
    let Some((min, max)) = arity(op, opset) else {
        return Ok(());
    };
    let count = n.inputs.len();
    if count < min || count > max {
        let want = match (min, max) {
            (a, b) if a == b => format!("{a}"),
            (a, usize::MAX) => format!("at least {a}"),
            (a, b) => format!("{a} to {b}"),
        };
        return Err(n.error(format!("has {count} input(s); {op} takes {want}")));
    }
    if let Some(k) = (0..min).find(|&k| n.input(k).is_none()) {
        return Err(n.error(format!("required input {k} is empty")));
    }
    if n.outputs.first().is_none_or(String::is_empty) {
        return Err(n.error("has no output"));
    }
    match op {
        "Conv" | "ConvTranspose" => check_conv(n, shapes),
        "MaxPool" | "AveragePool" | "LpPool" => check_pool(n, shapes),
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => check_min_rank(n, shapes, 0, 3),
        "Flatten" => check_axis(n, shapes, 1, true),
        "Softmax" | "LogSoftmax" => check_axis(n, shapes, if opset < 13 { 1 } else { -1 }, false),
        "Concat" => check_concat(n, shapes),
        "Gemm" => check_gemm(n, shapes),
        "BatchNormalization" => check_bn(n, shapes),
        "Reshape" => check_reshape(n, shapes),
        _ => Ok(()),
    }
}

fn ints(n: &Node, name: &str) -> Result<Option<Vec<i64>>> {
    n.attr_ints(name)
}

/// The largest kernel size, stride, dilation or pad accepted. Real networks stay in the tens
/// (a global pool written as AveragePool over a 160×160 map is 160).
pub const MAX_WINDOW: i64 = 4096;

/// Checks `kernel_shape`, `strides`, `dilations` and `pads` against `spatial` dimensions.
fn check_window(n: &Node, spatial: usize) -> Result<()> {
    for (attr, len, lowest) in [
        ("kernel_shape", spatial, 1),
        ("strides", spatial, 1),
        ("dilations", spatial, 1),
        ("pads", 2 * spatial, 0),
        ("output_padding", spatial, 0),
    ] {
        let Some(v) = ints(n, attr)? else { continue };
        if attr == "output_padding" && !n.is("ConvTranspose") {
            continue;
        }
        if v.len() != len {
            return Err(n.error(format!(
                "attribute `{attr}` has {} value(s), expected {len} ({spatial} spatial dimension(s))",
                v.len()
            )));
        }
        if let Some(bad) = v.iter().find(|&&x| x < lowest) {
            return Err(n.error(format!(
                "attribute `{attr}` holds {bad}; every value must be ≥ {lowest}"
            )));
        }
        if let Some(bad) = v.iter().find(|&&x| x > MAX_WINDOW) {
            return Err(n.error(format!(
                "attribute `{attr}` holds {bad}; isquant accepts at most {MAX_WINDOW}"
            )));
        }
    }
    Ok(())
}

/// The number of spatial dimensions: from `kernel_shape`, else `fallback` (a weight or input
/// rank − 2).
fn spatial_dims(n: &Node, fallback: Option<usize>) -> Result<Option<usize>> {
    Ok(ints(n, "kernel_shape")?.map(|k| k.len()).or(fallback))
}

fn check_conv(n: &Node, shapes: &Shapes<'_>) -> Result<()> {
    let transpose = n.is("ConvTranspose");
    let group = n.attr_int("group")?.unwrap_or(1);
    if group < 1 {
        return Err(n.error(format!("attribute `group` is {group}; it must be ≥ 1")));
    }
    let w_name = n.input(1).unwrap_or("");
    let w = shapes.constant(w_name);
    if let Some(w) = w {
        if w.len() < 3 {
            return Err(n.error(format!(
                "weight `{w_name}` has shape {w:?}; a convolution weight has rank ≥ 3"
            )));
        }
    }
    let x_name = n.input(0).unwrap_or("");
    let x_rank = shapes.rank(x_name);
    let spatial = match w {
        Some(w) => Some(w.len() - 2),
        None => spatial_dims(n, x_rank.map(|r| r.saturating_sub(2)))?,
    };
    if let Some(s) = spatial {
        if let Some(k) = ints(n, "kernel_shape")? {
            if k.len() != s {
                return Err(n.error(format!(
                    "attribute `kernel_shape` has {} value(s); the weight `{w_name}` has {s} spatial dimension(s)",
                    k.len()
                )));
            }
            if let Some(w) = w {
                if k.as_slice() != &w[2..] {
                    return Err(n.error(format!(
                        "attribute `kernel_shape` {k:?} differs from the spatial dimensions {:?} of the weight `{w_name}`",
                        &w[2..]
                    )));
                }
            }
        }
        check_window(n, s)?;
        if let Some(r) = x_rank {
            if r != s + 2 {
                return Err(n.error(format!(
                    "input `{x_name}` has rank {r}; {s} spatial dimension(s) need rank {}",
                    s + 2
                )));
            }
        }
    }
    let Some(w) = w else { return Ok(()) };
    // An empty weight divides by any group, and passes size buffers by `channels × group`.
    if w.contains(&0) {
        return Err(n.error(format!(
            "weight `{w_name}` has shape {w:?}: a convolution weight with no elements"
        )));
    }
    // Conv: W is [M, C/group, k...]; ConvTranspose: W is [C, M/group, k...].
    let (divided, out_channels) = if transpose {
        (w[0], w[1].saturating_mul(group))
    } else {
        (w[0], w[0])
    };
    if divided % group != 0 {
        return Err(n.error(format!(
            "attribute `group` {group} does not divide the {} channels ({divided}) of the weight `{w_name}` {w:?}",
            if transpose { "input" } else { "output" }
        )));
    }
    let in_channels = if transpose {
        w[0]
    } else {
        w[1].saturating_mul(group)
    };
    if let Some(Some(c)) = shapes.dims(x_name).and_then(|d| d.get(1).copied()) {
        if c != in_channels {
            return Err(n.error(format!(
                "input `{x_name}` has {c} channels; the weight `{w_name}` {w:?} with group {group} needs {in_channels}"
            )));
        }
    }
    if let Some(b_name) = n.input(2) {
        if let Some(b) = shapes.constant(b_name) {
            if b != [out_channels] {
                return Err(n.error(format!(
                    "bias `{b_name}` has shape {b:?}; {out_channels} output channels need [{out_channels}]"
                )));
            }
        }
    }
    Ok(())
}

fn check_pool(n: &Node, shapes: &Shapes<'_>) -> Result<()> {
    let Some(k) = ints(n, "kernel_shape")? else {
        return Err(n.error("attribute `kernel_shape` is missing"));
    };
    if k.is_empty() {
        return Err(n.error("attribute `kernel_shape` is empty"));
    }
    check_window(n, k.len())?;
    if let Some(p) = ints(n, "pads")? {
        let s = k.len();
        if let Some(i) = (0..2 * s).find(|&i| p.get(i).is_some_and(|&v| v >= k[i % s])) {
            return Err(n.error(format!(
                "attribute `pads` holds {} for a kernel of {}: a pool's pads must be smaller than its kernel",
                p[i],
                k[i % s]
            )));
        }
    }
    check_min_rank(n, shapes, 0, 3)?;
    let x_name = n.input(0).unwrap_or("");
    if let Some(r) = shapes.rank(x_name) {
        if r != k.len() + 2 {
            return Err(n.error(format!(
                "input `{x_name}` has rank {r}; attribute `kernel_shape` ({} value(s)) needs rank {}",
                k.len(),
                k.len() + 2
            )));
        }
    }
    Ok(())
}

fn check_min_rank(n: &Node, shapes: &Shapes<'_>, input: usize, min: usize) -> Result<()> {
    let name = n.input(input).unwrap_or("");
    match shapes.rank(name) {
        Some(r) if r < min => Err(n.error(format!(
            "input `{name}` has rank {r}; {} needs rank ≥ {min}",
            n.op_type
        ))),
        _ => Ok(()),
    }
}

/// `axis` (default `default`) within the rank of input 0: `[-r, r]` when `inclusive` (Flatten),
/// else `[-r, r - 1]`.
fn check_axis(n: &Node, shapes: &Shapes<'_>, default: i64, inclusive: bool) -> Result<()> {
    let axis = n.attr_int("axis")?.unwrap_or(default);
    let name = n.input(0).unwrap_or("");
    let Some(r) = shapes.rank(name) else {
        return Ok(());
    };
    let r = i64::try_from(r).unwrap_or(i64::MAX);
    let hi = if inclusive { r } else { r - 1 };
    if axis < -r || axis > hi {
        return Err(n.error(format!(
            "attribute `axis` is {axis}; input `{name}` has rank {r} (allowed {}..={hi})",
            -r
        )));
    }
    Ok(())
}

fn check_concat(n: &Node, shapes: &Shapes<'_>) -> Result<()> {
    let Some(axis) = n.attr_int("axis")? else {
        return Err(n.error("attribute `axis` is missing"));
    };
    let ranks: Vec<(String, usize)> = n
        .inputs
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| shapes.rank(s).map(|r| (s.clone(), r)))
        .collect();
    if let Some((first, r0)) = ranks.first() {
        if let Some((other, r)) = ranks.iter().find(|(_, r)| r != r0) {
            return Err(n.error(format!(
                "inputs `{first}` (rank {r0}) and `{other}` (rank {r}) differ in rank"
            )));
        }
        let r = i64::try_from(*r0).unwrap_or(i64::MAX);
        if axis < -r || axis >= r {
            return Err(n.error(format!(
                "attribute `axis` is {axis}; the inputs have rank {r}"
            )));
        }
    }
    Ok(())
}

fn check_gemm(n: &Node, shapes: &Shapes<'_>) -> Result<()> {
    for attr in ["transA", "transB"] {
        if let Some(v) = n.attr_int(attr)? {
            if v != 0 && v != 1 {
                return Err(n.error(format!("attribute `{attr}` is {v}; it must be 0 or 1")));
            }
        }
    }
    for (k, want) in [(0usize, "A"), (1, "B")] {
        let name = n.input(k).unwrap_or("");
        if let Some(r) = shapes.rank(name) {
            if r != 2 {
                return Err(n.error(format!("input {want} `{name}` has rank {r}; Gemm needs 2")));
            }
        }
    }
    if let Some(c) = n.input(2) {
        if let Some(r) = shapes.rank(c) {
            if r > 2 {
                return Err(n.error(format!("input C `{c}` has rank {r}; Gemm allows ≤ 2")));
            }
        }
    }
    Ok(())
}

fn check_bn(n: &Node, shapes: &Shapes<'_>) -> Result<()> {
    let mut len: Option<(String, i64)> = None;
    for name in n.inputs.iter().skip(1) {
        let Some(d) = shapes.constant(name) else {
            continue;
        };
        let [c] = d else {
            return Err(n.error(format!(
                "parameter `{name}` has shape {d:?}; BatchNormalization parameters are vectors"
            )));
        };
        match &len {
            Some((first, l)) if l != c => {
                return Err(n.error(format!(
                    "parameters `{first}` ({l} values) and `{name}` ({c} values) differ in length"
                )))
            }
            Some(_) => {}
            None => len = Some((name.clone(), *c)),
        }
    }
    if let (Some((first, l)), Some(Some(c))) = (
        &len,
        n.input(0)
            .and_then(|x| shapes.dims(x))
            .and_then(|d| d.get(1).copied()),
    ) {
        if c != *l {
            return Err(n.error(format!(
                "input has {c} channels; parameter `{first}` has {l} values"
            )));
        }
    }
    Ok(())
}

fn check_reshape(n: &Node, shapes: &Shapes<'_>) -> Result<()> {
    let Some(s) = n.input(1) else { return Ok(()) };
    let Some(t) = shapes.model.graph.initializer(s) else {
        return Ok(());
    };
    if t.dims.len() != 1 {
        return Err(n.error(format!(
            "shape `{s}` has dimensions {:?}; a target shape is a vector",
            t.dims
        )));
    }
    let Some(v) = crate::onnx::tensor::to_array(t)
        .ok()
        .and_then(|a| a.to_i64())
        .filter(|_| t.data_type == Some(crate::onnx::DataType::Int64 as i32))
    else {
        return Err(n.error(format!("shape `{s}` is not an INT64 tensor")));
    };
    if let Some(bad) = v.iter().find(|&&d| d < -1) {
        return Err(n.error(format!("shape `{s}` holds {bad}")));
    }
    if v.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(n.error(format!("shape `{s}` holds -1 more than once")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::attrs::{make_int, make_ints};

    fn f32_init(name: &str, dims: &[i64]) -> pb::TensorProto {
        let n: i64 = dims.iter().product();
        pb::TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(1),
            float_data: vec![0.5; usize::try_from(n).unwrap()],
            ..Default::default()
        }
    }

    fn input(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        pb::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// One node `op(inputs) -> y` on input `x` of shape `x_dims`, with `inits`.
    fn model(
        opset: i64,
        op: &str,
        inputs: &[&str],
        x_dims: &[i64],
        inits: Vec<pb::TensorProto>,
        attributes: Vec<pb::AttributeProto>,
    ) -> Model {
        let node = pb::NodeProto {
            name: Some("n0".into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: attributes,
            ..Default::default()
        };
        Model::from_proto(pb::ModelProto {
            ir_version: Some(8),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(pb::GraphProto {
                node: vec![node],
                initializer: inits,
                input: vec![input("x", x_dims)],
                output: vec![pb::ValueInfoProto {
                    name: Some("y".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
    }

    fn conv(attributes: Vec<pb::AttributeProto>, w: &[i64], x: &[i64]) -> Model {
        model(
            13,
            "Conv",
            &["x", "w"],
            x,
            vec![f32_init("w", w)],
            attributes,
        )
    }

    fn err(m: &Model) -> String {
        validate(m).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_conv_passes() {
        let m = conv(
            vec![
                make_ints("kernel_shape", &[3, 3]),
                make_ints("strides", &[1, 2]),
                make_ints("pads", &[1, 1, 1, 1]),
                make_int("group", 2),
            ],
            &[4, 2, 3, 3],
            &[1, 4, 8, 8],
        );
        validate(&m).unwrap();
    }

    #[test]
    fn conv_attributes_are_checked_against_the_weight() {
        let w = [4, 2, 3, 3];
        let x = [1, 4, 8, 8];
        for (attrs, want) in [
            (
                vec![make_ints("pads", &[0, 0, 0])],
                "`pads` has 3 value(s), expected 4",
            ),
            (vec![make_ints("strides", &[0, 1])], "`strides` holds 0"),
            (vec![make_ints("strides", &[1])], "`strides` has 1 value(s)"),
            (
                vec![make_ints("dilations", &[1, 1, 1])],
                "`dilations` has 3",
            ),
            (vec![make_ints("pads", &[0, -1, 0, 0])], "`pads` holds -1"),
            (
                vec![make_ints("kernel_shape", &[3])],
                "`kernel_shape` has 1",
            ),
            (
                vec![make_ints("kernel_shape", &[3, 5])],
                "differs from the spatial",
            ),
            (vec![make_int("group", 0)], "`group` is 0"),
            (vec![make_int("group", 3)], "`group` 3 does not divide"),
            (vec![make_int("group", 4)], "has 4 channels; the weight `w`"),
        ] {
            let e = err(&conv(attrs, &w, &x));
            assert!(e.contains("node `n0` (Conv)") && e.contains(want), "{e}");
        }
        let e = err(&conv(vec![], &[4, 3], &[1, 3]));
        assert!(e.contains("rank ≥ 3"), "{e}");
        // Found by the quantize fuzzer: an empty weight passed every check (0 output channels
        // divide by any group), and a `group` of 2^35 then sized equalization's buffers
        // (137 GB, an abort).
        let e = err(&conv(vec![], &[0, 4, 3, 3], &[1, 4, 8, 8]));
        assert!(e.contains("with no elements"), "{e}");
        let e = err(&conv(vec![], &[4, 4, 3, 3], &[1, 4, 8]));
        assert!(e.contains("input `x` has rank 3"), "{e}");
    }

    #[test]
    fn arity_is_checked() {
        let e = err(&model(13, "Conv", &[], &[1, 3, 8, 8], vec![], vec![]));
        assert!(e.contains("has 0 input(s); Conv takes 2 to 3"), "{e}");
        let e = err(&model(13, "Flatten", &[], &[1, 3], vec![], vec![]));
        assert!(e.contains("Flatten takes 1"), "{e}");
        let e = err(&model(13, "Relu", &["x", "x"], &[1, 3], vec![], vec![]));
        assert!(e.contains("Relu takes 1"), "{e}");
        let e = err(&model(
            13,
            "Conv",
            &["x", ""],
            &[1, 3, 8, 8],
            vec![],
            vec![],
        ));
        assert!(e.contains("required input 1 is empty"), "{e}");
        let e = err(&model(
            13,
            "BatchNormalization",
            &["x"],
            &[1, 3],
            vec![],
            vec![],
        ));
        assert!(e.contains("BatchNormalization takes 5"), "{e}");
        // Clip takes its bounds as inputs from opset 11 on.
        validate(&model(13, "Clip", &["x", "", ""], &[1, 3], vec![], vec![])).unwrap();
        assert!(
            err(&model(6, "Clip", &["x", "", ""], &[1, 3], vec![], vec![]))
                .contains("Clip takes 1")
        );
    }

    #[test]
    fn pools_axes_and_opsets_are_checked() {
        let pool = |attrs, x: &[i64]| model(13, "MaxPool", &["x"], x, vec![], attrs);
        validate(&pool(
            vec![make_ints("kernel_shape", &[2, 2])],
            &[1, 3, 8, 8],
        ))
        .unwrap();
        assert!(err(&pool(vec![], &[1, 3, 8, 8])).contains("`kernel_shape` is missing"));
        let e = err(&pool(vec![make_ints("kernel_shape", &[2, 2])], &[8, 8]));
        assert!(e.contains("input `x` has rank 2"), "{e}");
        let e = err(&pool(
            vec![
                make_ints("kernel_shape", &[2, 2]),
                make_ints("strides", &[2]),
            ],
            &[1, 3, 8, 8],
        ));
        assert!(e.contains("`strides` has 1 value(s)"), "{e}");
        // The fuzzer's hang: tract's optimizer spun for an hour on pads and kernels near 2^31.
        let e = err(&pool(
            vec![
                make_ints("kernel_shape", &[2, 2]),
                make_ints("pads", &[0, 0, 2_147_483_647, 0]),
            ],
            &[1, 3, 8, 8],
        ));
        assert!(e.contains("at most 4096"), "{e}");
        let e = err(&pool(
            vec![
                make_ints("kernel_shape", &[2, 2]),
                make_ints("pads", &[0, 0, 2, 0]),
            ],
            &[1, 3, 8, 8],
        ));
        assert!(e.contains("smaller than its kernel"), "{e}");
        let flat = |axis| {
            model(
                13,
                "Flatten",
                &["x"],
                &[1, 3, 8, 8],
                vec![],
                vec![make_int("axis", axis)],
            )
        };
        validate(&flat(4)).unwrap();
        validate(&flat(-4)).unwrap();
        assert!(err(&flat(255)).contains("`axis` is 255; input `x` has rank 4"));
        // The rank reaches Flatten through a Relu with no declared shape.
        let mut m = flat(3);
        m.graph.nodes[0].inputs = vec!["r".into()];
        m.graph.nodes.insert(
            0,
            Node::new("Relu", "relu", vec!["x".into()], vec!["r".into()]),
        );
        validate(&m).unwrap();
        m.graph.nodes[1].set_attr(make_int("axis", 255));
        let e = err(&m);
        assert!(e.contains("`axis` is 255; input `r` has rank 4"), "{e}");
        let e = err(&model(99, "Relu", &["x"], &[1], vec![], vec![]));
        assert!(e.contains("opset 99 is not supported"), "{e}");
        assert!(err(&model(0, "Relu", &["x"], &[1], vec![], vec![])).contains("opset 0"));
        let e = err(&model(
            13,
            "GlobalAveragePool",
            &["x"],
            &[1, 3],
            vec![],
            vec![],
        ));
        assert!(e.contains("needs rank ≥ 3"), "{e}");
    }

    #[test]
    fn constants_of_gemm_bn_and_reshape_are_checked() {
        let e = err(&model(
            13,
            "Gemm",
            &["x", "b"],
            &[1, 3],
            vec![f32_init("b", &[3])],
            vec![],
        ));
        assert!(e.contains("input B `b` has rank 1"), "{e}");
        let bn = model(
            13,
            "BatchNormalization",
            &["x", "s", "b", "m", "v"],
            &[1, 3, 4, 4],
            vec![
                f32_init("s", &[3]),
                f32_init("b", &[3]),
                f32_init("m", &[2]),
                f32_init("v", &[3]),
            ],
            vec![],
        );
        assert!(err(&bn).contains("`s` (3 values) and `m` (2 values)"));
        let shape = |v: &[i64]| pb::TensorProto {
            name: Some("s".into()),
            dims: vec![v.len() as i64],
            data_type: Some(7),
            int64_data: v.to_vec(),
            ..Default::default()
        };
        let r = |v: &[i64]| model(13, "Reshape", &["x", "s"], &[1, 6], vec![shape(v)], vec![]);
        validate(&r(&[-1, 3])).unwrap();
        assert!(err(&r(&[-1, -1])).contains("-1 more than once"));
        assert!(err(&r(&[2, -3])).contains("holds -3"));
    }
}
