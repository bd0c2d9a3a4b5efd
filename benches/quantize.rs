//! Quantization speed: end-to-end `quantize` of a generated ResNet-50-sized model
//! (Conv+BN+Relu ×53 + classifier, ≈25.6 M parameters; BN ranges, so no forward pass), and
//! SQuant rounding throughput against plain round-to-nearest on the same tensors.
//!
//! `cargo bench --bench quantize` (`ISQUANT_BENCH_RUNS`, default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/resnet.rs"]
mod resnet;

use std::time::{Duration, Instant};

use isquant::graph::Model;
use isquant::passes::quantize::{quantize, QuantizeConfig};
use isquant::squant::{round_nearest, round_squant, Rounding};
use ndarray::Array3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let runs: usize = std::env::var("ISQUANT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    println!("threads: {}", rayon::current_num_threads());

    // End to end.
    let proto = resnet::build(true);
    let base = Model::from_proto(proto).unwrap();
    let mut stages: Vec<Vec<(String, f64)>> = Vec::new();
    let mut totals = Vec::new();
    for _ in 0..runs {
        let mut m = base.clone();
        let t = Instant::now();
        let r = quantize(&mut m, &QuantizeConfig::default(), None, &mut |_| {}).unwrap();
        let bytes = isquant::onnx::io::encode_model(&m.to_proto());
        totals.push(t.elapsed());
        std::hint::black_box(bytes);
        assert_eq!(r.integer_layers(), r.layers.len() - 1);
        stages.push(r.timings_ms);
    }
    let total = median(totals);
    println!(
        "quantize ResNet-50-sized (fold-bn + squant + ranges + emit + encode), median of {runs}: {:.1} ms",
        total.as_secs_f64() * 1e3
    );
    if let Some(s) = stages.get(stages.len() / 2) {
        let parts: Vec<String> = s.iter().map(|(k, v)| format!("{k} {v:.1} ms")).collect();
        println!("  stages (one run): {}", parts.join(", "));
    }

    // Rounding throughput.
    let shapes: [(usize, usize, usize); 4] =
        [(64, 64, 9), (256, 256, 9), (512, 512, 9), (1000, 2048, 1)];
    println!(
        "{:<16} {:>14} {:>14} {:>14} {:>8}",
        "shape [O,I,K]", "nearest Mw/s", "squant-k+c Mw/s", "squant-c Mw/s", "ratio"
    );
    for (o, i, k) in shapes {
        let n = o * i * k;
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let x = Array3::from_shape_fn((o, i, k), |_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 254.0
        });
        let reps = if quick {
            1
        } else {
            (200_000_000 / n).clamp(3, 50)
        };
        let time = |f: &dyn Fn()| {
            median(
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed()
                    })
                    .collect(),
            )
        };
        let tn = time(&|| {
            std::hint::black_box(round_nearest(x.view(), -127, 127));
        });
        let ts = time(&|| {
            std::hint::black_box(round_squant(x.view(), -127, 127, Rounding::Squant));
        });
        let tc = time(&|| {
            std::hint::black_box(round_squant(x.view(), -127, 127, Rounding::SquantC));
        });
        let rate = |t: Duration| n as f64 / t.as_secs_f64() / 1e6;
        println!(
            "{:<16} {:>14.0} {:>14.0} {:>14.0} {:>7.2}x",
            format!("{o}x{i}x{k}"),
            rate(tn),
            rate(ts),
            rate(tc),
            ts.as_secs_f64() / tn.as_secs_f64()
        );
    }
}
