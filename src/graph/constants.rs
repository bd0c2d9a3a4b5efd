//! Constant values: initializers, `Constant` nodes (through `Identity`), constant Reshapes.
//!
//! Rules: resolution never recurses per node (an explicit stack), looks through at most
//! [`MAX_CONSTANT_STEPS`] `Identity` / `Reshape` nodes per value (past that the value counts as
//! computed at run time, which is always safe: the layer stays float), and a reshaped constant
//! shares the bytes of its data (no copy per Reshape).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use super::{Graph, Node};
use crate::error::Result;
use crate::onnx::{attrs, pb, tensor, DataType};

/// How many `Identity` / `Reshape` nodes [`Graph::constant_with`] looks through for one value.
pub const MAX_CONSTANT_STEPS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstantSource {
    /// A graph initializer.
    Initializer,
    /// A `Constant` node's output (index of the node).
    ConstantNode(usize),
}

impl Graph {
    /// Resolves a value to a constant tensor: an initializer, or the value of a `Constant`
    /// node (attribute `value`, `value_float(s)` or `value_int(s)`) or of a `ConstantOfShape`
    /// of a constant shape, looking through `Identity` and constant `Reshape` nodes. Returns `Ok(None)` for values computed at run time.
    ///
    /// # Errors
    /// A `Constant` node whose attributes are malformed.
    pub fn constant(&self, name: &str) -> Result<Option<(pb::TensorProto, ConstantSource)>> {
        if let Some(t) = self.initializer(name) {
            return Ok(Some((t.clone(), ConstantSource::Initializer)));
        }
        let producers = self.producers();
        self.constant_with(name, &producers)
    }

    /// As [`Graph::constant`], with a producer index the caller already built.
    ///
    /// The resolution is iterative (an explicit stack, no recursion per node) and visits at
    /// most [`MAX_CONSTANT_STEPS`] values: a value behind a longer chain of `Identity` /
    /// `Reshape` nodes is reported as not constant (`Ok(None)`), which keeps every caller
    /// linear in the graph size and the stack flat on hostile chains.
    ///
    /// # Errors
    /// As [`Graph::constant`].
    pub fn constant_with<K: Borrow<str> + Hash + Eq>(
        &self,
        name: &str,
        producers: &HashMap<K, usize>,
    ) -> Result<Option<(pb::TensorProto, ConstantSource)>> {
        type Resolved = Option<(pb::TensorProto, ConstantSource)>;
        let mut memo: HashMap<&str, Resolved> = HashMap::new();
        // (value, its inputs were pushed already)
        let mut stack: Vec<(&str, bool)> = vec![(name, false)];
        let mut steps = 0usize;
        while let Some((v, expanded)) = stack.pop() {
            if memo.contains_key(v) {
                continue;
            }
            if let Some(t) = self.initializer(v) {
                memo.insert(v, Some((t.clone(), ConstantSource::Initializer)));
                continue;
            }
            let Some((i, node)) = producers
                .get(v)
                .and_then(|&i| self.nodes.get(i).map(|n| (i, n)))
            else {
                memo.insert(v, None);
                continue;
            };
            let deps: Vec<&str> = if node.is("Identity") {
                node.input(0).into_iter().collect()
            } else if node.is("Reshape") {
                match (node.input(0), node.input(1)) {
                    (Some(d), Some(s)) => vec![d, s],
                    _ => {
                        memo.insert(v, None);
                        continue;
                    }
                }
            } else if node.is("ConstantOfShape") {
                // Exporters make BN scales and biases of ones or zeros this way.
                match node.input(0) {
                    Some(s) => vec![s],
                    None => {
                        memo.insert(v, None);
                        continue;
                    }
                }
            } else if node.is("Constant") {
                let t = constant_node_value(node, v)?;
                memo.insert(v, Some((t, ConstantSource::ConstantNode(i))));
                continue;
            } else {
                memo.insert(v, None);
                continue;
            };
            if !expanded {
                steps += 1;
                if steps > MAX_CONSTANT_STEPS || deps.is_empty() {
                    return Ok(None);
                }
                stack.push((v, true));
                // A dependency already on the stack unexpanded is a cycle: resolve it to None
                // when it comes back (memo) rather than looping.
                for d in deps {
                    if stack.iter().any(|&(s, e)| s == d && e) {
                        memo.insert(d, None);
                    } else {
                        stack.push((d, false));
                    }
                }
                continue;
            }
            let got = |d: &str| memo.get(d).cloned().flatten();
            let r = if node.is("Identity") {
                deps.first().and_then(|d| got(d))
            } else if node.is("ConstantOfShape") {
                match got(deps[0]) {
                    Some((s, _)) => {
                        filled(node, &s, v)?.map(|t| (t, ConstantSource::ConstantNode(i)))
                    }
                    None => None,
                }
            } else {
                match (got(deps[0]), got(deps[1])) {
                    (Some((d, src)), Some((s, _))) => reshaped(node, &d, &s)?.map(|t| (t, src)),
                    _ => None,
                }
            };
            memo.insert(v, r);
        }
        Ok(memo.remove(name).flatten())
    }

    /// A constant value decoded as f32 (see [`Graph::constant`]).
    ///
    /// # Errors
    /// As [`Graph::constant`], plus a non-float tensor.
    pub fn constant_f32<K: Borrow<str> + Hash + Eq>(
        &self,
        name: &str,
        producers: &HashMap<K, usize>,
    ) -> Result<Option<ndarray::ArrayD<f32>>> {
        match self.constant_with(name, producers)? {
            Some((t, _)) => Ok(Some(tensor::to_f32(&t)?)),
            None => Ok(None),
        }
    }

    /// The bounds of a `Clip` node: inputs 1 and 2 (opset ≥ 11), else the `min` / `max`
    /// attributes (opset < 11); `None` for an absent bound. `Ok(None)` when a bound is an input
    /// computed at run time.
    ///
    /// # Errors
    /// Malformed attributes or constants.
    pub fn clip_bounds<K: Borrow<str> + Hash + Eq>(
        &self,
        node: &Node,
        producers: &HashMap<K, usize>,
    ) -> Result<Option<(Option<f32>, Option<f32>)>> {
        let mut bounds = [None, None];
        for (slot, attr) in [(1usize, "min"), (2, "max")] {
            bounds[slot - 1] = match node.input(slot) {
                Some(v) => match self.constant_f32(v, producers)? {
                    Some(a) => a.iter().next().copied(),
                    None => return Ok(None),
                },
                None => node.attr_float(attr)?,
            };
        }
        Ok(Some((bounds[0], bounds[1])))
    }
}

/// `Reshape(data, shape)` of two constants: FLOAT data (FLOAT16 widened) with the target
/// dimensions, sharing `data`'s bytes; `None` for other element types or a non-integer shape.
fn reshaped(
    node: &Node,
    data: &pb::TensorProto,
    shape: &pb::TensorProto,
) -> Result<Option<pb::TensorProto>> {
    let name = node.outputs.first().cloned().unwrap_or_default();
    let data = match data.data_type {
        Some(c) if c == DataType::Float as i32 => tensor::to_raw(data)?,
        Some(c) if c == DataType::Float16 as i32 => tensor::from_f32(&name, tensor::to_f32(data)?),
        _ => return Ok(None),
    };
    tensor::check(&data)?;
    let Some(target) = tensor::to_array(shape)?.to_i64() else {
        return Ok(None);
    };
    let from = tensor::shape_of(&data)?;
    let count = tensor::element_count(&data)?;
    let mut dims: Vec<usize> = Vec::with_capacity(target.len());
    let mut infer = None;
    for (k, &t) in target.iter().enumerate() {
        match t {
            0 => dims.push(from.get(k).copied().unwrap_or(1)),
            -1 if infer.is_none() => {
                infer = Some(k);
                dims.push(1);
            }
            t if t > 0 => dims.push(usize::try_from(t).unwrap_or(usize::MAX)),
            _ => return Err(node.error(format!("invalid target shape {target:?}"))),
        }
    }
    let known = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| node.error(format!("target shape {target:?} is too large")))?;
    if let Some(k) = infer {
        if known == 0 || count % known != 0 {
            return Err(node.error(format!("cannot reshape {from:?} to {target:?}")));
        }
        dims[k] = count / known;
    } else if known != count {
        return Err(node.error(format!("cannot reshape {from:?} to {target:?}")));
    }
    let mut out = data;
    out.name = Some(name);
    out.dims = dims.iter().map(|&d| d as i64).collect();
    Ok(Some(out))
}

/// `ConstantOfShape(shape)`: a FLOAT tensor of `shape` filled with the node's `value` (one
/// element; 0.0 when absent). `None` for other element types. The element count is checked
/// against [`crate::limits`] before the tensor is made.
fn filled(node: &Node, shape: &pb::TensorProto, name: &str) -> Result<Option<pb::TensorProto>> {
    use crate::onnx::tensor::{from_array, TensorData};
    let Some(dims) = tensor::to_array(shape)?.to_i64() else {
        return Ok(None);
    };
    let dims: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| node.error(format!("negative dimension in shape {dims:?}")))?;
    let value = match attrs::tensor(&node.attributes, "value").map_err(|e| node.error(e))? {
        None => 0.0,
        Some(t) => match tensor::to_array(t)? {
            TensorData::F32(a) if a.len() == 1 => a.iter().copied().next().unwrap_or(0.0),
            _ => return Ok(None),
        },
    };
    crate::limits::elements(&format!("ConstantOfShape `{name}`"), 1, &dims)?;
    let a = ndarray::ArrayD::from_elem(ndarray::IxDyn(&dims), value);
    Ok(Some(from_array(name, &TensorData::F32(a))))
}

/// The tensor a `Constant` node produces, from whichever attribute holds it.
fn constant_node_value(node: &Node, name: &str) -> Result<pb::TensorProto> {
    use crate::onnx::tensor::{from_array, TensorData};
    use ndarray::{arr0, arr1};
    let a = &node.attributes;
    let err = |e: String| node.error(e);
    let t = if let Some(t) = attrs::tensor(a, "value").map_err(err)? {
        let mut t = t.clone();
        t.name = Some(name.to_string());
        t
    } else if let Some(v) = attrs::float(a, "value_float").map_err(err)? {
        from_array(name, &TensorData::F32(arr0(v).into_dyn()))
    } else if let Some(v) = attrs::floats(a, "value_floats").map_err(err)? {
        from_array(name, &TensorData::F32(arr1(&v).into_dyn()))
    } else if let Some(v) = attrs::int(a, "value_int").map_err(err)? {
        from_array(name, &TensorData::I64(arr0(v).into_dyn()))
    } else if let Some(v) = attrs::ints(a, "value_ints").map_err(err)? {
        from_array(name, &TensorData::I64(arr1(&v).into_dyn()))
    } else {
        return Err(node.error(
            "Constant node has none of value, value_float(s), value_int(s) (sparse and string constants are not supported)",
        ));
    };
    Ok(t)
}
