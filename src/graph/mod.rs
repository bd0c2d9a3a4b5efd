//! The editable graph.
//!
//! A [`Model`] is a `ModelProto` split into the parts passes edit ([`Graph`]: nodes,
//! initializers, inputs, outputs, value_info) and everything else, which is kept verbatim and
//! written back unchanged (IR version, opsets, producer, metadata, doc strings, functions,
//! training info, sparse initializers, quantization annotations, unknown ops and domains, and
//! every attribute of every node including subgraphs).
//!
//! Values are wired by **name**, as in ONNX. Initializers stay `TensorProto`s (zero-copy
//! `raw_data`), decoded on demand; a weight held by a `Constant` node resolves exactly like an
//! initializer ([`Graph::constant`]). Indexes (producers, consumers) are built on demand and
//! never cached across edits.
//!
//! `Model::from_proto(m).to_proto() == m` holds for every valid model (tested on every fixture).

pub mod names;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::error::{Error, Result};
use crate::onnx::pb;
use crate::onnx::{attrs, tensor};

/// A model: the editable graph plus the verbatim rest of the `ModelProto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The main graph.
    pub graph: Graph,
    /// Everything of the `ModelProto` except the graph.
    header: pb::ModelProto,
}

/// The main graph of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Nodes, in file order (topological for valid models; see [`Graph::topological_order`]).
    pub nodes: Vec<Node>,
    initializers: Vec<pb::TensorProto>,
    initializer_index: HashMap<String, usize>,
    /// Graph inputs (may list initializers too, as IR < 4 models do).
    pub inputs: Vec<pb::ValueInfoProto>,
    /// Graph outputs.
    pub outputs: Vec<pb::ValueInfoProto>,
    /// Shape and type annotations of intermediate values.
    pub value_info: Vec<pb::ValueInfoProto>,
    /// Name, doc string, sparse initializers, quantization annotations, metadata: verbatim.
    rest: pb::GraphProto,
}

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
    rest: pb::NodeProto,
    /// Whether `name` / `domain` were present in the proto (kept for faithful write-back).
    had_name: bool,
    had_domain: bool,
}

/// Where a constant value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstantSource {
    /// A graph initializer.
    Initializer,
    /// A `Constant` node's output (index of the node).
    ConstantNode(usize),
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

    fn from_proto(mut p: pb::NodeProto) -> Self {
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

    fn to_proto(&self) -> pb::NodeProto {
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
}

impl Model {
    /// Splits a `ModelProto` into the editable graph and the verbatim rest.
    ///
    /// # Errors
    /// The model has no graph, or two initializers share a name.
    pub fn from_proto(mut m: pb::ModelProto) -> Result<Self> {
        let g = m
            .graph
            .take()
            .ok_or_else(|| Error::Graph("the model has no graph".into()))?;
        Ok(Model {
            graph: Graph::from_proto(g)?,
            header: m,
        })
    }

    /// Reassembles the `ModelProto`.
    pub fn to_proto(&self) -> pb::ModelProto {
        let mut m = self.header.clone();
        m.graph = Some(self.graph.to_proto());
        m
    }

    /// IR version (0 when absent).
    pub fn ir_version(&self) -> i64 {
        self.header.ir_version.unwrap_or(0)
    }

    /// Sets the IR version.
    pub fn set_ir_version(&mut self, v: i64) {
        self.header.ir_version = Some(v);
    }

    /// Whether the model uses something IR versions after 8 added: model-local functions,
    /// node/graph metadata or overloads, or 8-bit float / 4-bit tensor types. (A model that
    /// does not can be written with the lowest IR version its opset allows.)
    pub fn uses_recent_ir_features(&self) -> bool {
        let recent_type = |t: &pb::TensorProto| t.data_type.unwrap_or(0) > 16;
        !self.header.functions.is_empty()
            || !self.graph.rest.metadata_props.is_empty()
            || self.graph.nodes.iter().any(|n| {
                !n.rest.metadata_props.is_empty()
                    || n.rest.overload.is_some()
                    || n.attributes
                        .iter()
                        .any(|a| a.t.as_ref().is_some_and(recent_type))
            })
            || self.graph.initializers.iter().any(recent_type)
    }

    /// Removes node and graph `metadata_props` (an IR 10 field; informational only, e.g. the
    /// exporter's source locations). Returns how many entries were removed.
    pub fn strip_ir10_metadata(&mut self) -> usize {
        let mut n = self.graph.rest.metadata_props.len();
        self.graph.rest.metadata_props.clear();
        for node in &mut self.graph.nodes {
            n += node.rest.metadata_props.len();
            node.rest.metadata_props.clear();
        }
        n
    }

    /// Producer name and version as written by the exporter.
    pub fn producer(&self) -> (String, String) {
        (
            self.header.producer_name.clone().unwrap_or_default(),
            self.header.producer_version.clone().unwrap_or_default(),
        )
    }

    /// Opset imports as (domain, version), in file order.
    pub fn opsets(&self) -> Vec<(String, i64)> {
        self.header
            .opset_import
            .iter()
            .map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0)))
            .collect()
    }

    /// Version of the default ONNX domain ("" or "ai.onnx"), if imported.
    pub fn opset(&self) -> Option<i64> {
        self.opsets()
            .into_iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|(_, v)| v)
    }

    /// Raises the default-domain opset to at least `min` (adds the import if missing).
    pub fn require_opset(&mut self, min: i64) {
        let slot = self.header.opset_import.iter_mut().find(|o| {
            let d = o.domain.as_deref().unwrap_or("");
            d.is_empty() || d == "ai.onnx"
        });
        match slot {
            Some(o) if o.version.unwrap_or(0) < min => o.version = Some(min),
            Some(_) => {}
            None => self.header.opset_import.push(pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(min),
            }),
        }
    }

    /// `metadata_props` as (key, value) pairs.
    pub fn metadata(&self) -> Vec<(String, String)> {
        self.header
            .metadata_props
            .iter()
            .map(|p| {
                (
                    p.key.clone().unwrap_or_default(),
                    p.value.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Sets (or replaces) one `metadata_props` entry.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        let props = &mut self.header.metadata_props;
        match props.iter_mut().find(|p| p.key.as_deref() == Some(key)) {
            Some(p) => p.value = Some(value.into()),
            None => props.push(pb::StringStringEntryProto {
                key: Some(key.into()),
                value: Some(value.into()),
            }),
        }
    }
}

impl Graph {
    fn from_proto(mut g: pb::GraphProto) -> Result<Self> {
        let nodes = std::mem::take(&mut g.node)
            .into_iter()
            .map(Node::from_proto)
            .collect();
        let initializers = std::mem::take(&mut g.initializer);
        let mut initializer_index = HashMap::with_capacity(initializers.len());
        for (i, t) in initializers.iter().enumerate() {
            let name = t.name.clone().unwrap_or_default();
            if initializer_index.insert(name.clone(), i).is_some() {
                return Err(Error::tensor(name, "two initializers have this name"));
            }
        }
        Ok(Graph {
            nodes,
            initializers,
            initializer_index,
            inputs: std::mem::take(&mut g.input),
            outputs: std::mem::take(&mut g.output),
            value_info: std::mem::take(&mut g.value_info),
            rest: g,
        })
    }

    fn to_proto(&self) -> pb::GraphProto {
        let mut g = self.rest.clone();
        g.node = self.nodes.iter().map(Node::to_proto).collect();
        g.initializer = self.initializers.clone();
        g.input = self.inputs.clone();
        g.output = self.outputs.clone();
        g.value_info = self.value_info.clone();
        g
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        self.rest.name.as_deref().unwrap_or("")
    }

    /// All initializers, in file order.
    pub fn initializers(&self) -> &[pb::TensorProto] {
        &self.initializers
    }

    /// Sparse initializers (kept verbatim; isquant does not edit them).
    pub fn sparse_initializers(&self) -> &[pb::SparseTensorProto] {
        &self.rest.sparse_initializer
    }

    /// An initializer by name.
    pub fn initializer(&self, name: &str) -> Option<&pb::TensorProto> {
        self.initializer_index
            .get(name)
            .and_then(|&i| self.initializers.get(i))
    }

    /// Takes the `raw_data` of initializer `name` out of the graph (the initializer stays, with
    /// no data): a pass that is about to replace it can then own the buffer and edit it in
    /// place.
    pub fn take_raw_data(&mut self, name: &str) -> Option<bytes::Bytes> {
        let i = *self.initializer_index.get(name)?;
        self.initializers.get_mut(i)?.raw_data.take()
    }

    /// Adds an initializer, or replaces the one with the same name in place.
    pub fn set_initializer(&mut self, t: pb::TensorProto) {
        let name = t.name.clone().unwrap_or_default();
        match self.initializer_index.get(&name) {
            Some(&i) => self.initializers[i] = t,
            None => {
                self.initializer_index.insert(name, self.initializers.len());
                self.initializers.push(t);
            }
        }
    }

    fn reindex_initializers(&mut self) {
        self.initializer_index = self
            .initializers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone().unwrap_or_default(), i))
            .collect();
    }

    /// Names of the graph inputs that are real inputs (not initializers).
    pub fn real_inputs(&self) -> Vec<&pb::ValueInfoProto> {
        self.inputs
            .iter()
            .filter(|i| self.initializer(i.name.as_deref().unwrap_or("")).is_none())
            .collect()
    }

    /// Declared dimensions of a graph input (`None` for symbolic or unknown dimensions);
    /// `None` when the input has no tensor type.
    pub fn input_dims(&self, name: &str) -> Option<Vec<Option<usize>>> {
        use pb::tensor_shape_proto::dimension::Value as Dim;
        use pb::type_proto::Value;
        let vi = self
            .inputs
            .iter()
            .find(|i| i.name.as_deref() == Some(name))?;
        match vi.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(tt) => Some(
                tt.shape
                    .as_ref()?
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(v)) if v > 0 => Some(v as usize),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Value name → index of the node producing it.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                m.insert(o.as_str(), i);
            }
        }
        m
    }

    /// Value name → indices of the nodes consuming it (in node order; a node appears once per
    /// use). Uses inside subgraphs count for the node that owns the subgraph.
    pub fn consumers(&self) -> HashMap<&str, Vec<usize>> {
        let mut m: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for input in n.inputs.iter().filter(|s| !s.is_empty()) {
                m.entry(input.as_str()).or_default().push(i);
            }
        }
        m
    }

    /// Names of graph outputs.
    pub fn output_names(&self) -> HashSet<&str> {
        self.outputs
            .iter()
            .filter_map(|o| o.name.as_deref())
            .collect()
    }

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
    pub fn constant_with(
        &self,
        name: &str,
        producers: &HashMap<&str, usize>,
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
    fn constant_reshape(
        &self,
        node: &Node,
        producers: &HashMap<&str, usize>,
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
    pub fn constant_f32(
        &self,
        name: &str,
        producers: &HashMap<&str, usize>,
    ) -> Result<Option<ndarray::ArrayD<f32>>> {
        match self.constant_with(name, producers)? {
            Some((t, _)) => Ok(Some(tensor::to_f32(&t)?)),
            None => Ok(None),
        }
    }

    /// Checks that every node input exists (graph input, initializer or the output of some
    /// node), that no value is produced twice and that the graph has no cycle.
    ///
    /// # Errors
    /// Names the first offending node and value, or the nodes on a cycle.
    pub fn check(&self) -> Result<()> {
        let mut known: HashSet<&str> = self
            .inputs
            .iter()
            .filter_map(|i| i.name.as_deref())
            .collect();
        known.extend(self.initializer_index.keys().map(String::as_str));
        let mut produced: HashMap<&str, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if let Some(prev) = produced.insert(o.as_str(), i) {
                    return Err(n.error(format!(
                        "output `{o}` is also produced by node `{}`",
                        self.nodes[prev].display_name()
                    )));
                }
            }
        }
        for n in &self.nodes {
            for input in n.inputs.iter().filter(|s| !s.is_empty()) {
                if !known.contains(input.as_str()) && !produced.contains_key(input.as_str()) {
                    return Err(n.error(format!(
                        "input `{input}` is not a graph input, an initializer or the output of any node"
                    )));
                }
            }
        }
        for o in &self.outputs {
            let name = o.name.as_deref().unwrap_or("");
            if !known.contains(name) && !produced.contains_key(name) {
                return Err(Error::Graph(format!(
                    "graph output `{name}` is not produced by any node"
                )));
            }
        }
        self.topological_order().map(|_| ())
    }

    /// Node indices in a topological order (file order where the file is already sorted).
    ///
    /// # Errors
    /// The graph has a cycle (the message lists some nodes on it).
    pub fn topological_order(&self) -> Result<Vec<usize>> {
        let producers = self.producers();
        let n = self.nodes.len();
        let mut indegree = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            let deps: HashSet<usize> = node
                .inputs
                .iter()
                .filter_map(|s| producers.get(s.as_str()).copied())
                .collect();
            indegree[i] = deps.len();
            for d in deps {
                users[d].push(i);
            }
        }
        // Min-heap by index keeps the file order when it is already valid.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() < n {
            let stuck: Vec<String> = (0..n)
                .filter(|&i| indegree[i] > 0)
                .take(5)
                .map(|i| format!("`{}`", self.nodes[i].display_name()))
                .collect();
            return Err(Error::Graph(format!(
                "the graph has a cycle through {} node(s), e.g. {}",
                (0..n).filter(|&i| indegree[i] > 0).count(),
                stuck.join(", ")
            )));
        }
        Ok(order)
    }

    /// Reorders the nodes topologically (stable where already sorted).
    ///
    /// # Errors
    /// The graph has a cycle.
    pub fn sort_topologically(&mut self) -> Result<()> {
        let order = self.topological_order()?;
        let mut slots: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(())
    }

    /// Every value name referenced anywhere: node inputs (including inside subgraphs, which
    /// may capture outer values) and graph outputs.
    fn referenced_names(&self) -> HashSet<String> {
        fn walk(g: &pb::GraphProto, out: &mut HashSet<String>) {
            for n in &g.node {
                out.extend(n.input.iter().cloned());
                for a in &n.attribute {
                    if let Some(sub) = &a.g {
                        walk(sub, out);
                    }
                    for sub in &a.graphs {
                        walk(sub, out);
                    }
                }
            }
        }
        let mut out = HashSet::new();
        for n in &self.nodes {
            out.extend(n.inputs.iter().cloned());
            for a in &n.attributes {
                if let Some(sub) = &a.g {
                    walk(sub, &mut out);
                }
                for sub in &a.graphs {
                    walk(sub, &mut out);
                }
            }
        }
        out.extend(self.outputs.iter().filter_map(|o| o.name.clone()));
        out
    }

    /// Removes nodes none of whose outputs is used (repeatedly). Returns how many were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut removed = 0;
        loop {
            let used = self.referenced_names();
            let before = self.nodes.len();
            self.nodes
                .retain(|n| n.outputs.iter().any(|o| !o.is_empty() && used.contains(o)));
            let gone = before - self.nodes.len();
            if gone == 0 {
                return removed;
            }
            removed += gone;
        }
    }

    /// Removes initializers no node (or subgraph) uses and that are not graph outputs, and
    /// their entries in the graph inputs. Returns how many were removed.
    pub fn remove_unused_initializers(&mut self) -> usize {
        let used = self.referenced_names();
        let before = self.initializers.len();
        let mut dropped = HashSet::new();
        self.initializers.retain(|t| {
            let name = t.name.clone().unwrap_or_default();
            let keep = used.contains(&name);
            if !keep {
                dropped.insert(name);
            }
            keep
        });
        self.inputs
            .retain(|i| !dropped.contains(i.name.as_deref().unwrap_or("")));
        self.reindex_initializers();
        before - self.initializers.len()
    }

    /// Every value name in use (inputs, outputs, initializers, node outputs, node names), for
    /// generating fresh names.
    pub fn taken_names(&self) -> HashSet<String> {
        let mut s: HashSet<String> = self.referenced_names();
        s.extend(self.initializer_index.keys().cloned());
        s.extend(self.inputs.iter().filter_map(|i| i.name.clone()));
        for n in &self.nodes {
            s.extend(n.outputs.iter().cloned());
            s.insert(n.name.clone());
        }
        s
    }

    /// Op histogram: `op_type` (prefixed with `domain:` outside the default domain) → count.
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for n in &self.nodes {
            let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            };
            *h.entry(key).or_insert(0) += 1;
        }
        h
    }

    /// Inserts `new_nodes` right before node `at` (keeping topological order when their
    /// inputs are available there).
    pub fn insert_nodes(&mut self, at: usize, new_nodes: Vec<Node>) {
        let at = at.min(self.nodes.len());
        let tail = self.nodes.split_off(at);
        self.nodes.extend(new_nodes);
        self.nodes.extend(tail);
    }

    /// Breadth-first walk from `start` over consumers, for passes that follow chains.
    pub fn downstream(&self, start: &str) -> Vec<usize> {
        let consumers = self.consumers();
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([start.to_string()]);
        let mut out = Vec::new();
        while let Some(v) = queue.pop_front() {
            for &i in consumers.get(v.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                if seen.insert(i) {
                    out.push(i);
                    queue.extend(self.nodes[i].outputs.iter().cloned());
                }
            }
        }
        out
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
