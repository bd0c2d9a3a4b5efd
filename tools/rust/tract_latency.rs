//! Median latency of a model in tract (1 thread), for `tools/formats/bench.py`.
//!
//! `cargo run --release --example tract_latency -- MODEL.onnx 1,3,224,224 [RUNS]` prints
//! `<median ms> ms`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: tract_latency MODEL.onnx SHAPE [RUNS]");
        return ExitCode::from(2);
    }
    let shape: Vec<usize> = args[1].split(',').filter_map(|d| d.parse().ok()).collect();
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(20);
    let m = match TractModel::load(
        Source::Path(Path::new(&args[0])),
        std::slice::from_ref(&shape),
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let x = seeded_uniform(&shape, 1, -2.1, 2.6);
    let mut times = Vec::with_capacity(runs);
    for k in 0..runs + 2 {
        let t = Instant::now();
        if let Err(e) = m.run(std::slice::from_ref(&x)) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        if k >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    println!("{:.2} ms", times[times.len() / 2]);
    ExitCode::SUCCESS
}
