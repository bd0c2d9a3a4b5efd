//! Quantization speed: end-to-end `quantize` of a generated ResNet-50-sized model
//! (Conv+BN+Relu ×53 + classifier, ≈25.6 M parameters; BN ranges, so no forward pass) with no
//! DFQ pass, the default (bias correction), CLE+BC and CLE+HBA+BC, and SQuant rounding
//! throughput against plain round-to-nearest on the same tensors.
//!
//! `cargo bench --bench quantize` (`ISQUANT_BENCH_RUNS`, default 5).
//! `cargo bench --bench quantize -- --write-model FILE` writes the generated model instead
//! (to time two `isquant` builds on it: `tools/compare_speed.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/resnet.rs"]
mod resnet;

use std::time::{Duration, Instant};

use isquant::graph::Model;
use isquant::passes::equalize::Objective;
use isquant::pipeline::{quantize, Equalize, QuantizeConfig};
use isquant::squant::{round_nearest, round_squant, Rounding};
use ndarray::Array3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(k) = args.iter().position(|a| a == "--write-model") {
        let path = args.get(k + 1).expect("--write-model FILE");
        let bytes = isquant::onnx::io::encode_model(&resnet::build(true));
        std::fs::write(path, &bytes).unwrap();
        println!("wrote {path} ({} bytes)", bytes.len());
        return;
    }
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let runs: usize = std::env::var("ISQUANT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    println!("threads: {}", rayon::current_num_threads());

    // End to end, with and without the DFQ passes (same model, same run, interleaved so that
    // machine noise hits every configuration alike).
    let proto = resnet::build(true);
    let base = Model::from_proto(proto).unwrap();
    let none = QuantizeConfig {
        correct_bias: false,
        ..QuantizeConfig::default()
    };
    let configs: [(&str, QuantizeConfig); 5] = [
        ("none (--correct-bias off)", none.clone()),
        ("default (BC)", QuantizeConfig::default()),
        (
            "CLE+BC",
            QuantizeConfig {
                equalize: Equalize::On,
                ..QuantizeConfig::default()
            },
        ),
        (
            "CLE (weights)+BC",
            QuantizeConfig {
                equalize: Equalize::On,
                equalize_objective: Objective::Weights,
                ..QuantizeConfig::default()
            },
        ),
        (
            "CLE+HBA+BC",
            QuantizeConfig {
                equalize: Equalize::On,
                absorb_bias: true,
                ..QuantizeConfig::default()
            },
        ),
    ];
    let mut totals: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    let mut stages: Vec<Vec<(String, f64)>> = vec![Vec::new(); configs.len()];
    let mut passes = vec![0usize; configs.len()];
    for _ in 0..runs {
        for (k, (_, cfg)) in configs.iter().enumerate() {
            let mut m = base.clone();
            let t = Instant::now();
            let r = quantize(&mut m, cfg, None, &mut |_| {}).unwrap();
            let bytes = isquant::onnx::io::encode_model(&m.to_proto());
            totals[k].push(t.elapsed());
            std::hint::black_box(bytes);
            assert_eq!(r.integer_layers(), r.layers.len() - 1);
            stages[k] = r.timings_ms;
            passes[k] = r.equalized.as_ref().map_or(0, |e| e.passes);
        }
    }
    let medians: Vec<Duration> = totals.into_iter().map(median).collect();
    println!(
        "quantize ResNet-50-sized (fold-bn + [equalize] + squant + ranges + emit + encode), median of {runs}:"
    );
    for (k, (label, _)) in configs.iter().enumerate() {
        let parts: Vec<String> = stages[k]
            .iter()
            .map(|(s, v)| format!("{s} {v:.1}"))
            .collect();
        let eq = if passes[k] > 0 {
            format!(" ({} CLE passes)", passes[k])
        } else {
            String::new()
        };
        println!(
            "  {label:<26} {:>7.1} ms ({:.2}x none)  stages ms: {}{eq}",
            medians[k].as_secs_f64() * 1e3,
            medians[k].as_secs_f64() / medians[0].as_secs_f64(),
            parts.join(", ")
        );
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
