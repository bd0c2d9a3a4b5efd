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
//!
//! Submodules: `node` (one node), `constants` (constant resolution), `order` (checks,
//! topological order, clean-up), [`names`] (fresh names), [`validate`] (structural rules
//! checked once at load: arity, attribute ranks and values, opset).

mod constants;
mod finite;
pub mod names;
mod node;
pub(crate) mod order;
pub mod validate;

pub use constants::{ConstantSource, MAX_CONSTANT_STEPS};
pub use node::Node;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::error::{Error, Result};
use crate::onnx::pb;

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

    pub(super) fn reindex_initializers(&mut self) {
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

    /// Names of the real graph inputs (not initializers).
    pub fn real_input_names(&self) -> Vec<String> {
        self.real_inputs()
            .iter()
            .filter_map(|i| i.name.clone())
            .collect()
    }

    /// The model's one real input: its name and declared dimensions (`None` for symbolic or
    /// unknown ones). `what` names the feature that needs a single input, for the message.
    ///
    /// # Errors
    /// The model has no input or several.
    pub fn single_input(&self, what: &str) -> Result<(String, Vec<Option<usize>>)> {
        let inputs = self.real_input_names();
        let [name] = inputs.as_slice() else {
            return Err(Error::Config(format!(
                "{what} supports models with one input; this one has {}",
                inputs.len()
            )));
        };
        Ok((name.clone(), self.input_dims(name).unwrap_or_default()))
    }

    /// Value name → index of the node producing it, with owned keys (an index that outlives
    /// the borrow of the graph: edits of initializers keep it valid, edits of nodes do not).
    pub fn producer_index(&self) -> HashMap<String, usize> {
        self.producers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
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
