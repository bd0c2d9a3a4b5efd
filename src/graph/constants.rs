//! Constant values: initializers, `Constant` nodes (through `Identity`), constant Reshapes.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use super::{Graph, Node};
use crate::error::Result;
use crate::onnx::{attrs, pb, tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstantSource {
    /// A graph initializer.
    Initializer,
    /// A `Constant` node's output (index of the node).
    ConstantNode(usize),
}

impl Graph {
    /// Resolves a value to a constant tensor: an initializer, or the value of a `Constant`
    /// node (attribute `value`, `value_float(s)` or `value_int(s)`), looking through `Identity`
    /// nodes of constants. Returns `Ok(None)` for values computed at run time.
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
    /// # Errors
    /// As [`Graph::constant`].
    pub fn constant_with<K: Borrow<str> + Hash + Eq>(
        &self,
        name: &str,
        producers: &HashMap<K, usize>,
    ) -> Result<Option<(pb::TensorProto, ConstantSource)>> {
        let mut name = name;
        // Identity chains are short; the bound only protects against malformed cycles.
        for _ in 0..64 {
            if let Some(t) = self.initializer(name) {
                return Ok(Some((t.clone(), ConstantSource::Initializer)));
            }
            let Some(node) = producers.get(name).and_then(|&i| self.nodes.get(i)) else {
                return Ok(None);
            };
            let i = producers.get(name).copied().unwrap_or_default();
            if node.is("Identity") {
                match node.input(0) {
                    Some(src) => {
                        name = src;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            if node.is("Reshape") {
                return self.constant_reshape(node, producers);
            }
            if !node.is("Constant") {
                return Ok(None);
            }
            return constant_node_value(node, name)
                .map(|t| Some((t, ConstantSource::ConstantNode(i))));
        }
        Ok(None)
    }

    /// `Reshape(constant FLOAT data, constant shape)` folded to a constant (Paddle exports
    /// put biases behind such Reshapes). `None` when either input is not constant.
    fn constant_reshape<K: Borrow<str> + Hash + Eq>(
        &self,
        node: &Node,
        producers: &HashMap<K, usize>,
    ) -> Result<Option<(pb::TensorProto, ConstantSource)>> {
        let (Some(data), Some(shape)) = (node.input(0), node.input(1)) else {
            return Ok(None);
        };
        let (Some((d, src)), Some((s, _))) = (
            self.constant_with(data, producers)?,
            self.constant_with(shape, producers)?,
        ) else {
            return Ok(None);
        };
        let tensor::TensorData::F32(values) = tensor::to_array(&d)? else {
            return Ok(None);
        };
        let Some(target) = tensor::to_array(&s)?.to_i64() else {
            return Ok(None);
        };
        let mut dims: Vec<usize> = Vec::with_capacity(target.len());
        let mut infer = None;
        for (k, &t) in target.iter().enumerate() {
            match t {
                0 => dims.push(values.shape().get(k).copied().unwrap_or(1)),
                -1 if infer.is_none() => {
                    infer = Some(k);
                    dims.push(1);
                }
                t if t > 0 => dims.push(t as usize),
                _ => return Err(node.error(format!("invalid target shape {target:?}"))),
            }
        }
        if let Some(k) = infer {
            let known: usize = dims.iter().product();
            if known == 0 || values.len() % known != 0 {
                return Err(
                    node.error(format!("cannot reshape {:?} to {target:?}", values.shape()))
                );
            }
            dims[k] = values.len() / known;
        }
        let name = node.outputs.first().cloned().unwrap_or_default();
        match values.into_shape_with_order(ndarray::IxDyn(&dims)) {
            Ok(v) => Ok(Some((tensor::from_f32(&name, v), src))),
            Err(e) => Err(node.error(format!("cannot reshape to {target:?}: {e}"))),
        }
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
