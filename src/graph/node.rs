//! One ONNX node, with the fields passes read broken out and the rest kept verbatim.

use crate::error::{Error, Result};
use crate::onnx::{attrs, pb};

/// One node. The fields passes read are broken out; the rest of the `NodeProto` (doc string,
/// overload, metadata, device configurations) is kept verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Node name ("" when the model has none).
    pub name: String,
    /// Operator type.
    pub op_type: String,
    /// Operator domain ("" = the default ONNX domain).
    pub domain: String,
    /// Input value names; "" marks an absent optional input.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes, verbatim.
    pub attributes: Vec<pb::AttributeProto>,
    pub(super) rest: pb::NodeProto,
    /// Whether `name` / `domain` were present in the proto (kept for faithful write-back).
    had_name: bool,
    had_domain: bool,
}

impl Node {
    /// Creates a node in the default domain with no attributes.
    pub fn new(
        op_type: &str,
        name: impl Into<String>,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> Self {
        let name = name.into();
        Node {
            had_name: !name.is_empty(),
            name,
            op_type: op_type.into(),
            domain: String::new(),
            inputs,
            outputs,
            attributes: Vec::new(),
            rest: pb::NodeProto::default(),
            had_domain: false,
        }
    }

    /// Adds an attribute (builder style).
    pub fn with_attr(mut self, attr: pb::AttributeProto) -> Self {
        self.attributes.push(attr);
        self
    }

    pub(super) fn from_proto(mut p: pb::NodeProto) -> Self {
        let had_name = p.name.is_some();
        let had_domain = p.domain.is_some();
        Node {
            name: p.name.take().unwrap_or_default(),
            op_type: p.op_type.take().unwrap_or_default(),
            domain: p.domain.take().unwrap_or_default(),
            inputs: std::mem::take(&mut p.input),
            outputs: std::mem::take(&mut p.output),
            attributes: std::mem::take(&mut p.attribute),
            rest: p,
            had_name,
            had_domain,
        }
    }

    pub(super) fn to_proto(&self) -> pb::NodeProto {
        let mut p = self.rest.clone();
        p.input = self.inputs.clone();
        p.output = self.outputs.clone();
        p.name = (self.had_name || !self.name.is_empty()).then(|| self.name.clone());
        p.op_type = Some(self.op_type.clone());
        p.domain = (self.had_domain || !self.domain.is_empty()).then(|| self.domain.clone());
        p.attribute = self.attributes.clone();
        p
    }

    /// True for ops of the default ONNX domain ("" or "ai.onnx") with this `op_type`.
    pub fn is(&self, op_type: &str) -> bool {
        self.op_type == op_type && (self.domain.is_empty() || self.domain == "ai.onnx")
    }

    /// A name for messages: the node name, or `<op_type>#<outputs[0]>` when unnamed.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            format!(
                "{}->{}",
                self.op_type,
                self.outputs.first().map(String::as_str).unwrap_or("?")
            )
        } else {
            self.name.clone()
        }
    }

    /// Builds an [`Error::Node`] for this node.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::node(self.display_name(), &self.op_type, reason)
    }

    /// Input `i`, if present and not the empty "absent" marker.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// INT attribute.
    ///
    /// # Errors
    /// The attribute has another type.
    pub fn attr_int(&self, name: &str) -> Result<Option<i64>> {
        attrs::int(&self.attributes, name).map_err(|e| self.error(e))
    }

    /// INTS attribute.
    ///
    /// # Errors
    /// The attribute has another type.
    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        attrs::ints(&self.attributes, name).map_err(|e| self.error(e))
    }

    /// FLOAT attribute.
    ///
    /// # Errors
    /// The attribute has another type.
    pub fn attr_float(&self, name: &str) -> Result<Option<f32>> {
        attrs::float(&self.attributes, name).map_err(|e| self.error(e))
    }

    /// Replaces (or adds) an attribute by name.
    pub fn set_attr(&mut self, attr: pb::AttributeProto) {
        match self.attributes.iter_mut().find(|a| a.name == attr.name) {
            Some(slot) => *slot = attr,
            None => self.attributes.push(attr),
        }
    }

    /// The `group` attribute of a convolution (default 1; values below 1 count as 1).
    ///
    /// # Errors
    /// The attribute has another type.
    pub fn group(&self) -> Result<usize> {
        Ok(self.attr_int("group")?.unwrap_or(1).max(1) as usize)
    }

    /// Whether a convolution or pooling node pads nothing: `pads` absent or all zero, and
    /// `auto_pad` absent, `NOTSET` or `VALID`.
    ///
    /// # Errors
    /// An attribute has another type.
    pub fn pads_nothing(&self) -> Result<bool> {
        let pads_zero = self
            .attr_ints("pads")?
            .is_none_or(|p| p.iter().all(|&v| v == 0));
        let auto = attrs::string(&self.attributes, "auto_pad")
            .map_err(|e| self.error(e))?
            .unwrap_or_else(|| "NOTSET".into());
        Ok(pads_zero && (auto == "NOTSET" || auto == "VALID"))
    }
}
