//! Model I/O throughput on a generated ResNet-50-sized model (≈25.6 M float parameters,
//! ≈102 MB): encode, decode + graph build + check, graph → proto + encode, and file
//! write/read, each as MB/s (median of the runs).
//!
//! `cargo bench --bench io` (set `ISQUANT_BENCH_RUNS` to change the number of runs, default 10).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/resnet.rs"]
mod resnet;

use std::time::{Duration, Instant};

use bytes::Bytes;
use isquant::graph::Model;
use isquant::onnx::{io, pb};
use prost::Message;

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
    let proto = resnet::build(false);
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
