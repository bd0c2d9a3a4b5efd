//! Mutation fuzzing at scale: decode + graph build + check + inspect + write-back over
//! mutated fixtures, counting panics (which must be zero).
//!
//! `cargo bench --bench fuzz` runs 100,000 cases (`ISQUANT_FUZZ_CASES` to change).

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
    if c.panics > 0 {
        std::process::exit(1);
    }
}
