//! Mutation fuzzing at scale: decode + graph build + check + inspect + write-back over
//! mutated fixtures, counting panics (which must be zero).
//!
//! `cargo bench --bench fuzz` runs 100,000 byte-level cases (`ISQUANT_FUZZ_CASES` to change)
//! and then 10,000 structured mutants through `quantize` end to end, tract included
//! (`ISQUANT_FUZZ_QUANTIZE` to change; 0 skips it). Prints the totals, the slowest quantize
//! case and the process's peak memory (VmHWM); exits 1 on any panic. `ISQUANT_FUZZ_PROGRESS=1`
//! prints the count every 256 quantize cases; `ISQUANT_FUZZ_FROM=k` skips the cases before k and
//! `ISQUANT_FUZZ_SAVE=dir` writes each case run to `dir/case-<i>.onnx`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/fuzz.rs"]
mod fuzz;

use std::time::Instant;

fn main() {
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let cases: usize = std::env::var("ISQUANT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 200 } else { 100_000 });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let names = [
        "fmnist-small-bn.onnx",
        "usps-cnn-bn.onnx",
        "ppocr-textline-cls.onnx",
        "fmnist-small-bn-external.onnx",
    ];
    let seeds: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    let t = Instant::now();
    let c = fuzz::run(&seeds, cases, 0x15_0A_17);
    println!(
        "fuzz: {} mutated models of {} fixtures in {:.1?}: {} loaded, {} rejected with an error, {} panics",
        c.cases,
        names.len(),
        t.elapsed(),
        c.loaded,
        c.rejected,
        c.panics
    );
    let q_cases: usize = std::env::var("ISQUANT_FUZZ_QUANTIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 20 } else { 10_000 });
    let mut q_panics = 0;
    if q_cases > 0 {
        let t = Instant::now();
        let q = fuzz::run_quantize(&seeds, q_cases, 0x15_0A_18);
        println!(
            "fuzz quantize: {} structured mutants in {:.1?}: {} quantized, {} rejected with an error, {} panics; slowest case {:.2?} (case {})",
            q.cases, t.elapsed(), q.quantized, q.rejected, q.panics, q.slowest, q.slowest_case
        );
        for (i, secs) in &q.slow_cases {
            println!("  case {i} took {secs:.1} s");
        }
        for (i, kb) in &q.memory_steps {
            println!("  peak memory {kb} kB after the chunk from case {i}");
        }
        for (i, msg) in &q.panic_cases {
            println!("  panic in case {i}: {msg}");
        }
        q_panics = q.panics;
    }
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!("peak memory: {}", hwm.trim_start_matches("VmHWM:").trim());
    if c.panics > 0 || q_panics > 0 {
        std::process::exit(1);
    }
}
