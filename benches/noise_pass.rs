//! The noise pass against tract alone (issue 15's target: the pass at most 2× what tract needs
//! to run the float model on the same batch).
//!
//! For each model: (a) tract runs the float model (its own outputs) on the seeded N(0, 1)
//! inputs the pass ran (as many as the report's `forward_pass.inputs`: the pass stops when its
//! ranges settle), one input per run and two runs side by side, as the pass runs them;
//! (b) `quantize --guard off` end to end, whose report gives the `ranges` stage (the noise
//! pass: forward with the observed tensors as outputs, plus the statistics). Interleaved runs,
//! medians, and the ratio (b.ranges / a).
//!
//! `cargo bench --bench noise_pass [-- MODEL.onnx[:N,C,H,W] ...]`; default: the BN-folded
//! MobileNetV2 and the PP-OCRv4 detector at 640×640 from `../shared/models` when present, else
//! the fixture detector at 320×320. `ISQUANT_BENCH_RUNS` (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use isquant::pipeline::forward::forward_batches;
use isquant::pipeline::{quantize, QuantizeConfig};
use isquant::runtime::{Source, TractModel};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let runs: usize = std::env::var("ISQUANT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let mut models: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.ends_with(".onnx") || a.contains(".onnx:"))
        .collect();
    if models.is_empty() {
        let shared = root.join("../shared/models");
        let mnv2 = shared.join("mobilenetv2-imagenet-folded.onnx");
        let det = shared.join("ppocrv4-det.onnx");
        if mnv2.exists() && det.exists() && !quick {
            models.push(mnv2.display().to_string());
            models.push(format!("{}:1,3,640,640", det.display()));
        } else {
            models.push(format!(
                "{}:1,3,320,320",
                root.join("fixtures/ppocrv4-det.onnx").display()
            ));
        }
    }
    println!("threads: {}", rayon::current_num_threads());
    for spec in models {
        let (path, shape) = match spec.rsplit_once(".onnx:") {
            Some((p, s)) => (
                format!("{p}.onnx"),
                Some(
                    s.split(',')
                        .map(|d| d.parse::<usize>().unwrap())
                        .collect::<Vec<_>>(),
                ),
            ),
            None => (spec.clone(), None),
        };
        let loaded = isquant::load(Path::new(&path)).unwrap();
        let cfg = QuantizeConfig {
            input_shape: shape.clone(),
            ..QuantizeConfig::default()
        };
        // How many inputs the pass runs on this model.
        let used = {
            let mut m = loaded.model.clone();
            let report = quantize(&mut m, &cfg, None, &mut |_| {}).unwrap();
            report.forward_pass.map_or(cfg.noise_batch, |p| p.inputs)
        };
        // The pass's own inputs (same count, chunking and seeds), one input per run where the
        // batch is open.
        let batches = forward_batches(
            &loaded.model,
            shape.as_deref(),
            cfg.noise_batch,
            8,
            |s, k| isquant::rng::seeded_normal(s, cfg.noise_seed.wrapping_add(k as u64)),
        )
        .unwrap();
        let singles: Vec<ndarray::ArrayD<f32>> = batches
            .iter()
            .flat_map(|b| {
                b[0].axis_chunks_iter(ndarray::Axis(0), 1)
                    .map(|x| x.to_owned())
                    .collect::<Vec<_>>()
            })
            .take(used)
            .collect();
        let bytes = isquant::onnx::io::encode_model(&loaded.model.to_proto());
        let one = singles[0].shape().to_vec();
        let plan = TractModel::load(Source::Bytes(&bytes), &[one]).unwrap();
        let (mut tract_alone, mut ranges, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            {
                use rayon::prelude::*;
                singles.par_iter().for_each(|x| {
                    plan.run(std::slice::from_ref(x)).unwrap();
                });
            }
            tract_alone.push(t.elapsed());
            let mut m = loaded.model.clone();
            let t = Instant::now();
            let report = quantize(&mut m, &cfg, None, &mut |_| {}).unwrap();
            total.push(t.elapsed());
            let ms = report
                .timings_ms
                .iter()
                .find(|(k, _)| k == "ranges")
                .map_or(0.0, |(_, v)| *v);
            ranges.push(Duration::from_secs_f64(ms / 1e3));
        }
        let (a, r, q) = (median(tract_alone), median(ranges), median(total));
        println!(
            "{}: tract alone {:.0} ms on {} inputs; noise pass (ranges stage) {:.0} ms = {:.2}x tract; quantize --guard off {:.0} ms (medians of {runs})",
            Path::new(&path).file_name().unwrap().to_string_lossy(),
            a.as_secs_f64() * 1e3,
            used,
            r.as_secs_f64() * 1e3,
            r.as_secs_f64() / a.as_secs_f64(),
            q.as_secs_f64() * 1e3,
        );
    }
}
