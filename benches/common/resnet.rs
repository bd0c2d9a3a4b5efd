//! A generated ResNet-50-sized model for benchmarks: the 53 ResNet-50 v1 Conv weights
//! (with biases, optionally each followed by BatchNormalization + Relu) in a chain, then the
//! 2048×1000 classifier. ≈25.5 M float parameters. Shapes need not chain: nothing runs it.

#![allow(dead_code)]

use isquant::onnx::{attrs, pb, tensor};

/// ResNet-50 v1 layer shapes: (out, in, k) for every Conv, then the final Gemm.
pub fn resnet50_convs() -> Vec<(usize, usize, usize)> {
    let mut v = vec![(64, 3, 7)];
    let mut cin = 64;
    for (blocks, width) in [(3, 64), (4, 128), (6, 256), (3, 512)] {
        for b in 0..blocks {
            v.push((width, cin, 1));
            v.push((width, width, 3));
            v.push((width * 4, width, 1));
            if b == 0 {
                v.push((width * 4, cin, 1)); // downsample
            }
            cin = width * 4;
        }
    }
    v
}

/// Seeded bell-shaped weights in (−1, 1): the mean of four uniforms (Irwin–Hall), whose tail
/// matches trained convolutions (3.0 % of each row's `|w|` within 0.7 of the row maximum;
/// MobileNetV2 ImageNet: 3.6 %; uniform weights: 30 %).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s as f32 / u32::MAX as f32 - 0.5
    };
    (0..n)
        .map(|_| (next() + next() + next() + next()) * 0.5)
        .collect()
}

pub fn build(with_bn: bool) -> pb::ModelProto {
    let mut g = pb::GraphProto {
        name: Some("resnet50-sized".into()),
        ..Default::default()
    };
    g.input.push(pb::ValueInfoProto {
        name: Some("x".into()),
        ..Default::default()
    });
    let mut prev = "x".to_string();
    let mut params = 0;
    for (i, (o, c, k)) in resnet50_convs().into_iter().enumerate() {
        let w = format!("conv{i}.weight");
        let b = format!("conv{i}.bias");
        let arr = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[o, c, k, k]),
            values(o * c * k * k, i as u32 + 1),
        )
        .unwrap();
        params += arr.len() + o;
        g.initializer.push(tensor::from_f32(&w, arr));
        g.initializer.push(tensor::from_f32(
            &b,
            ndarray::ArrayD::zeros(ndarray::IxDyn(&[o])),
        ));
        let out = format!("conv{i}.out");
        g.node.push(pb::NodeProto {
            input: vec![prev.clone(), w, b],
            output: vec![out.clone()],
            name: Some(format!("conv{i}")),
            op_type: Some("Conv".into()),
            attribute: vec![attrs::make_ints("pads", &[k as i64 / 2; 4])],
            ..Default::default()
        });
        prev = out;
        if with_bn {
            let names: Vec<String> = ["gamma", "beta", "mean", "var"]
                .iter()
                .map(|n| format!("bn{i}.{n}"))
                .collect();
            for (j, n) in names.iter().enumerate() {
                let v: Vec<f32> = values(o, (i * 4 + j) as u32 + 1000)
                    .into_iter()
                    .map(|x| {
                        if j == 3 {
                            x.abs() + 0.5
                        } else {
                            x + if j == 0 { 1.0 } else { 0.0 }
                        }
                    })
                    .collect();
                let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[o]), v).unwrap();
                g.initializer.push(tensor::from_f32(n, a));
                params += o;
            }
            let bn_out = format!("bn{i}.out");
            let relu_out = format!("relu{i}.out");
            let mut inputs = vec![prev.clone()];
            inputs.extend(names);
            g.node.push(pb::NodeProto {
                input: inputs,
                output: vec![bn_out.clone()],
                name: Some(format!("bn{i}")),
                op_type: Some("BatchNormalization".into()),
                ..Default::default()
            });
            g.node.push(pb::NodeProto {
                input: vec![bn_out],
                output: vec![relu_out.clone()],
                name: Some(format!("relu{i}")),
                op_type: Some("Relu".into()),
                ..Default::default()
            });
            prev = relu_out;
        }
    }
    let fc = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1000, 2048]), values(2_048_000, 99))
        .unwrap();
    params += fc.len();
    g.initializer.push(tensor::from_f32("fc.weight", fc));
    // Gemm takes a matrix: pool and flatten first (the load-time validation refuses a rank-4
    // Gemm input, as onnx.checker and ONNX Runtime do).
    for (op, out) in [("GlobalAveragePool", "pool.out"), ("Flatten", "flat.out")] {
        g.node.push(pb::NodeProto {
            input: vec![prev],
            output: vec![out.into()],
            name: Some(out.trim_end_matches(".out").into()),
            op_type: Some(op.into()),
            ..Default::default()
        });
        prev = out.into();
    }
    g.node.push(pb::NodeProto {
        input: vec![prev, "fc.weight".into()],
        output: vec!["y".into()],
        name: Some("fc".into()),
        op_type: Some("Gemm".into()),
        attribute: vec![attrs::make_int("transB", 1)],
        ..Default::default()
    });
    g.output.push(pb::ValueInfoProto {
        name: Some("y".into()),
        ..Default::default()
    });
    eprintln!("generated model: {params} parameters");
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        producer_name: Some("isquant-bench".into()),
        graph: Some(g),
        ..Default::default()
    }
}
