//! `isquant inspect`: what is in a model, and what isquant would do with it.
//!
//! Pure analysis: builds an [`Inspection`] (serializable for `--json`) and renders it as text.
//! Nothing is modified.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::Result;
use crate::graph::{ConstantSource, Model};
use crate::onnx::{data_type_name, io::LoadInfo, pb, tensor};
use crate::passes::fold_bn::{self, BnVerdict, FoldKind};
use crate::passes::{targets, Skip};

/// A graph input or output.
#[derive(Debug, Clone, Serialize)]
pub struct ValueSummary {
    /// Value name.
    pub name: String,
    /// Element type (`FLOAT`, ...), or `?`.
    pub elem_type: String,
    /// Dimensions: numbers, symbolic names, or `?` when unknown.
    pub shape: Vec<String>,
}

/// Where the model's weights are stored.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WeightStorage {
    /// Number of initializers.
    pub initializers: usize,
    /// Number of `Constant` nodes.
    pub constant_nodes: usize,
    /// Number of tensors that were read from external data files.
    pub external_tensors: usize,
    /// The external data files.
    pub external_files: Vec<String>,
    /// Number of sparse initializers (kept verbatim, not quantized).
    pub sparse_initializers: usize,
}

/// A BatchNormalization `fold-bn` folds, and where.
#[derive(Debug, Clone, Serialize)]
pub struct FoldablePair {
    /// The BatchNormalization node.
    pub bn: String,
    /// The layer it folds into.
    pub layer: String,
    /// The layer's kind.
    pub kind: FoldKind,
    /// `backward` (into the layer before it) or `forward` (into the layer after it).
    pub direction: &'static str,
}

/// Everything `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub path: String,
    /// IR version.
    pub ir_version: i64,
    /// Opset imports (domain, version).
    pub opsets: Vec<(String, i64)>,
    /// Producer name.
    pub producer: String,
    /// Producer version.
    pub producer_version: String,
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<ValueSummary>,
    /// Graph outputs.
    pub outputs: Vec<ValueSummary>,
    /// Number of nodes.
    pub nodes: usize,
    /// `op_type` → count.
    pub ops: BTreeMap<String, usize>,
    /// Number of parameters (elements of initializers and Constant-node tensors).
    pub parameters: usize,
    /// Bytes of those parameters.
    pub parameter_bytes: usize,
    /// Where weights live.
    pub weights: WeightStorage,
    /// `metadata_props`.
    pub metadata: Vec<(String, String)>,
    /// BN nodes `fold-bn` (and `quantize`) fold, backward or forward.
    pub foldable_bn: Vec<FoldablePair>,
    /// BN nodes that cannot, with reasons.
    pub unfoldable_bn: Vec<Skip>,
    /// Layers a quantizer would make integer.
    pub quantizable: Vec<targets::Target>,
    /// Layer-like nodes that would stay float, with reasons.
    pub not_quantizable: Vec<Skip>,
}

fn value_summary(v: &pb::ValueInfoProto) -> ValueSummary {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value;
    let name = v.name.clone().unwrap_or_default();
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(Value::TensorType(tt)) => Some(tt),
        _ => None,
    });
    let elem_type = tensor
        .and_then(|t| t.elem_type)
        .map(data_type_name)
        .unwrap_or_else(|| "?".into());
    let shape = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Dim::DimValue(n)) if *n >= 0 => n.to_string(),
                    Some(Dim::DimParam(p)) if !p.is_empty() => p.clone(),
                    _ => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    ValueSummary {
        name,
        elem_type,
        shape,
    }
}

/// Analyses a loaded model.
///
/// # Errors
/// Malformed constants or attributes met by the analyses.
pub fn inspect(model: &Model, path: &str, info: &LoadInfo) -> Result<Inspection> {
    let g = &model.graph;
    let (producer, producer_version) = model.producer();
    let mut parameters = 0usize;
    let mut parameter_bytes = 0usize;
    for t in g.initializers() {
        parameters += tensor::element_count(t).unwrap_or(0);
        parameter_bytes += tensor::payload_bytes(t);
    }
    let producers = g.producers();
    let mut constant_nodes = 0;
    for n in g.nodes.iter().filter(|n| n.is("Constant")) {
        constant_nodes += 1;
        if let Some(out) = n.outputs.first() {
            if let Some((t, ConstantSource::ConstantNode(_))) = g.constant_with(out, &producers)? {
                parameters += tensor::element_count(&t).unwrap_or(0);
                parameter_bytes += tensor::payload_bytes(&t);
            }
        }
    }
    let mut foldable_bn = Vec::new();
    let mut unfoldable_bn = Vec::new();
    for v in fold_bn::analyze(g)? {
        match v {
            BnVerdict::Fold {
                bn, layer, kind, ..
            } => foldable_bn.push(FoldablePair {
                bn: g.nodes[bn].display_name(),
                layer: g.nodes[layer].display_name(),
                kind,
                direction: "backward",
            }),
            BnVerdict::Forward {
                bn, layer, kind, ..
            } => foldable_bn.push(FoldablePair {
                bn: g.nodes[bn].display_name(),
                layer: g.nodes[layer].display_name(),
                kind,
                direction: "forward",
            }),
            BnVerdict::Keep { bn, reason } => unfoldable_bn.push(Skip {
                node: g.nodes[bn].display_name(),
                op_type: g.nodes[bn].op_type.clone(),
                reason,
            }),
        }
    }
    let (quantizable, not_quantizable) = targets::find_targets(g)?;
    Ok(Inspection {
        path: path.to_string(),
        ir_version: model.ir_version(),
        opsets: model.opsets(),
        producer,
        producer_version,
        inputs: g.real_inputs().into_iter().map(value_summary).collect(),
        outputs: g.outputs.iter().map(value_summary).collect(),
        nodes: g.nodes.len(),
        ops: g.op_histogram(),
        parameters,
        parameter_bytes,
        weights: WeightStorage {
            initializers: g.initializers().len(),
            constant_nodes,
            external_tensors: info.external_tensors,
            external_files: info.external_files.clone(),
            sparse_initializers: g.sparse_initializers().len(),
        },
        metadata: model.metadata(),
        foldable_bn,
        unfoldable_bn,
        quantizable,
        not_quantizable,
    })
}

fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

/// Renders an inspection as the human-readable text `inspect` prints.
pub fn render(i: &Inspection) -> String {
    let mut s = String::new();
    let opsets: Vec<String> = i
        .opsets
        .iter()
        .map(|(d, v)| {
            if d.is_empty() {
                format!("ai.onnx {v}")
            } else {
                format!("{d} {v}")
            }
        })
        .collect();
    let _ = writeln!(s, "model      {}", i.path);
    let _ = writeln!(
        s,
        "format     IR {}, opset {}",
        i.ir_version,
        opsets.join(", ")
    );
    let producer = format!("{} {}", i.producer, i.producer_version);
    let _ = writeln!(
        s,
        "producer   {}",
        if producer.trim().is_empty() {
            "(not recorded)"
        } else {
            producer.trim()
        }
    );
    for (label, vals) in [("input", &i.inputs), ("output", &i.outputs)] {
        for v in vals {
            let _ = writeln!(
                s,
                "{label:<10} {} {} [{}]",
                v.name,
                v.elem_type,
                v.shape.join(", ")
            );
        }
    }
    let ops: Vec<String> = {
        let mut v: Vec<(&String, &usize)> = i.ops.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.into_iter().map(|(k, n)| format!("{k} {n}")).collect()
    };
    let _ = writeln!(s, "nodes      {}: {}", i.nodes, ops.join(", "));
    let _ = writeln!(
        s,
        "parameters {} ({})",
        i.parameters,
        human_bytes(i.parameter_bytes)
    );
    let w = &i.weights;
    let mut where_ = vec![format!("{} initializers", w.initializers)];
    if w.constant_nodes > 0 {
        where_.push(format!("{} Constant nodes", w.constant_nodes));
    }
    if w.external_tensors > 0 {
        where_.push(format!(
            "{} tensors in external data ({})",
            w.external_tensors,
            w.external_files.join(", ")
        ));
    }
    if w.sparse_initializers > 0 {
        where_.push(format!("{} sparse initializers", w.sparse_initializers));
    }
    let _ = writeln!(s, "weights    {}", where_.join(", "));
    for (k, v) in &i.metadata {
        let _ = writeln!(s, "metadata   {k} = {v:?}");
    }
    let forward = i
        .foldable_bn
        .iter()
        .filter(|p| p.direction == "forward")
        .count();
    let _ = writeln!(
        s,
        "\nBatchNormalization: {} foldable ({} backward, {forward} forward), {} not foldable",
        i.foldable_bn.len(),
        i.foldable_bn.len() - forward,
        i.unfoldable_bn.len()
    );
    for p in &i.foldable_bn {
        let _ = writeln!(
            s,
            "  fold  {} -> {} ({:?}, {})",
            p.bn, p.layer, p.kind, p.direction
        );
    }
    for k in &i.unfoldable_bn {
        let _ = writeln!(s, "  keep  {}: {}", k.node, k.reason);
    }
    let _ = writeln!(
        s,
        "\nQuantizable layers: {} (weights made int8), {} stay float",
        i.quantizable.len(),
        i.not_quantizable.len()
    );
    let mut by_op: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &i.quantizable {
        *by_op.entry(t.op_type.as_str()).or_default() += 1;
    }
    if !by_op.is_empty() {
        let parts: Vec<String> = by_op.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "  {}", parts.join(", "));
    }
    for k in &i.not_quantizable {
        let _ = writeln!(s, "  float {} ({}): {}", k.node, k.op_type, k.reason);
    }
    s
}
