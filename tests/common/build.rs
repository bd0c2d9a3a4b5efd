//! A small builder for synthetic ONNX models in tests (seeded weights, no Python).

use isquant::onnx::attrs;
use isquant::onnx::pb;
use isquant::onnx::tensor::from_f32;
use ndarray::{ArrayD, IxDyn};

/// Seeded values in [-0.5, 0.5) (the crate's generator).
pub fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = isquant::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.unit_f32() - 0.5).collect()
}

/// An INT64 initializer (shapes, pads, Slice bounds).
pub fn i64s(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(7),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

pub fn value_info(name: &str, shape: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                Value::DimParam("N".into())
                            } else {
                                Value::DimValue(d)
                            }),
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

/// Model under construction.
pub struct Builder {
    graph: pb::GraphProto,
    opset: i64,
    seed: u64,
}

impl Builder {
    pub fn new(opset: i64) -> Self {
        Builder {
            graph: pb::GraphProto {
                name: Some("test".into()),
                ..Default::default()
            },
            opset,
            seed: 1,
        }
    }

    /// A float input; negative dims are symbolic (`N`).
    pub fn input(mut self, name: &str, shape: &[i64]) -> Self {
        self.graph.input.push(value_info(name, shape));
        self
    }

    pub fn output(mut self, name: &str) -> Self {
        self.graph.output.push(pb::ValueInfoProto {
            name: Some(name.into()),
            ..Default::default()
        });
        self
    }

    /// An initializer with the given values.
    pub fn init(mut self, name: &str, shape: &[usize], values: Vec<f32>) -> Self {
        let a = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
        self.graph.initializer.push(from_f32(name, a));
        self
    }

    /// Any initializer, as given.
    pub fn init_tensor(mut self, t: pb::TensorProto) -> Self {
        self.graph.initializer.push(t);
        self
    }

    /// An initializer with seeded values scaled by `scale` and shifted by `shift`.
    pub fn random(mut self, name: &str, shape: &[usize], scale: f32, shift: f32) -> Self {
        let n = shape.iter().product();
        self.seed += 1;
        let v = seeded(n, self.seed)
            .into_iter()
            .map(|x| x * scale + shift)
            .collect();
        self.init(name, shape, v)
    }

    /// BatchNormalization parameters `{p}.gamma/.beta/.mean/.var` for `c` channels.
    pub fn bn_params(self, p: &str, c: usize, gamma_sign: f32) -> Self {
        self.random(&format!("{p}.gamma"), &[c], 0.5, gamma_sign * 1.0)
            .random(&format!("{p}.beta"), &[c], 1.0, 0.1)
            .random(&format!("{p}.mean"), &[c], 1.0, 0.0)
            .random(&format!("{p}.var"), &[c], 0.5, 0.8)
    }

    pub fn node(
        mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> Self {
        let n = self.graph.node.len();
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(format!("{op}_{n}")),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// `BatchNormalization(x, {p}.*) -> y`.
    pub fn bn(self, x: &str, p: &str, y: &str) -> Self {
        let ins = [
            x.to_string(),
            format!("{p}.gamma"),
            format!("{p}.beta"),
            format!("{p}.mean"),
            format!("{p}.var"),
        ];
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        self.node(
            "BatchNormalization",
            &ins,
            &[y],
            vec![attrs::make_float("epsilon", 1e-3)],
        )
    }

    pub fn build(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: Some(8),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("isquant-tests".into()),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

pub use attrs::{make_float as f, make_int as i, make_ints as ints};
