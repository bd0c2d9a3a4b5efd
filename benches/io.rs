//! Model I/O throughput on a generated ResNet-50-sized model (≈25.6 M float parameters,
//! ≈102 MB): encode, decode + graph build + check, graph → proto + encode, and file
//! write/read, each as MB/s (median of the runs).
//!
//! `cargo bench --bench io` (set `ISQUANT_BENCH_RUNS` to change the number of runs, default 10).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use isquant::graph::Model;
use isquant::onnx::{attrs, io, pb, tensor};
use prost::Message;

/// ResNet-50 v1 layer shapes: (out, in, k) for every Conv, then the final Gemm.
fn resnet50_convs() -> Vec<(usize, usize, usize)> {
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

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn build() -> pb::ModelProto {
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
    }
    let fc = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1000, 2048]), values(2_048_000, 99))
        .unwrap();
    params += fc.len();
    g.initializer.push(tensor::from_f32("fc.weight", fc));
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(label: &str, bytes: usize, runs: Vec<Duration>) {
    let t = median(runs);
    let mbps = bytes as f64 / 1e6 / t.as_secs_f64();
    println!(
        "{label:<44} {:>9.1} ms {:>9.0} MB/s",
        t.as_secs_f64() * 1e3,
        mbps
    );
}

fn main() {
    // `cargo test --all-targets` runs benches with `--bench`-less args; keep that cheap.
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let runs: usize = std::env::var("ISQUANT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 10 });
    let proto = build();
    let encoded = Bytes::from(proto.encode_to_vec());
    let n = encoded.len();
    println!(
        "model: {:.1} MB encoded, {runs} runs, median",
        n as f64 / 1e6
    );

    let time = |f: &mut dyn FnMut()| -> Vec<Duration> {
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect()
    };

    report(
        "decode (bytes -> ModelProto, zero-copy)",
        n,
        time(&mut || {
            let m = pb::ModelProto::decode(encoded.clone()).unwrap();
            std::hint::black_box(m);
        }),
    );
    report(
        "load (decode + graph build + check)",
        n,
        time(&mut || {
            let l = isquant::load_bytes(encoded.clone(), std::path::Path::new("<bench>"), None)
                .unwrap();
            std::hint::black_box(l);
        }),
    );
    let model = Model::from_proto(pb::ModelProto::decode(encoded.clone()).unwrap()).unwrap();
    report(
        "save (graph -> ModelProto + encode)",
        n,
        time(&mut || {
            let b = io::encode_model(&model.to_proto());
            std::hint::black_box(b);
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet50.onnx");
    report(
        "write file (encode + atomic write, page cache)",
        n,
        time(&mut || {
            io::write_model(&model.to_proto(), &path, io::ExternalData::Auto, &[]).unwrap();
        }),
    );
    report(
        "read file (read + decode + graph + check)",
        n,
        time(&mut || {
            let l = isquant::load(&path).unwrap();
            std::hint::black_box(l);
        }),
    );
    let ext = dir.path().join("resnet50-ext.onnx");
    report(
        "write file with --external-data",
        n,
        time(&mut || {
            io::write_model(&model.to_proto(), &ext, io::ExternalData::Always, &[]).unwrap();
        }),
    );
    report(
        "read file with external data",
        n,
        time(&mut || {
            let l = isquant::load(&ext).unwrap();
            std::hint::black_box(l);
        }),
    );
}
