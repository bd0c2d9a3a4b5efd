//! Mutation fuzzing of decode + graph build + analyses (shared by the `fuzz` test and the
//! `fuzz` bench, which runs it at scale).
//!
//! Each case takes a real fixture's bytes, applies one seeded mutation (bit flips, byte
//! overwrites, truncation, insertion, chunk duplication, or a random varint/length splice),
//! and runs everything `isquant inspect` and `convert` run on it. A panic is a failure;
//! errors are expected and counted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bytes::Bytes;

/// The crate's seeded generator.
pub use isquant::rng::SplitMix64 as Rng;

/// Applies one random mutation.
pub fn mutate(src: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = src.to_vec();
    match rng.below(7) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
        }
        2 => v.truncate(rng.below(v.len())),
        3 => {
            let i = rng.below(v.len());
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(i..i, ins);
        }
        4 => {
            let a = rng.below(v.len());
            let len = rng.below(64).min(v.len() - a);
            let chunk = v[a..a + len].to_vec();
            let at = rng.below(v.len());
            v.splice(at..at, chunk);
        }
        5 => {
            // Overwrite with a large varint: stresses lengths and counts.
            let i = rng.below(v.len());
            for (k, b) in [0xff, 0xff, 0xff, 0xff, 0x0f].iter().enumerate() {
                if i + k < v.len() {
                    v[i + k] = *b;
                }
            }
        }
        _ => {
            let a = rng.below(v.len());
            let b = rng.below(v.len());
            let (a, b) = (a.min(b), a.max(b));
            v.drain(a..b.min(a + 256));
        }
    }
    v
}

/// Outcome counts of a fuzz run.
#[derive(Debug, Default)]
pub struct Counts {
    pub cases: usize,
    pub loaded: usize,
    pub rejected: usize,
    pub panics: usize,
}

/// Runs decode, graph build and check, inspect, fold-bn analysis and write-back.
pub fn exercise(bytes: &[u8]) -> Result<(), isquant::Error> {
    let loaded = isquant::load_bytes(Bytes::copy_from_slice(bytes), Path::new("<fuzz>"), None)?;
    let _ = isquant::inspect::inspect(&loaded.model, "<fuzz>", &loaded.info)?;
    let _ = loaded.model.graph.topological_order()?;
    let _ = isquant::onnx::io::encode_model(&loaded.model.to_proto());
    for t in loaded.model.graph.initializers() {
        let _ = isquant::onnx::tensor::to_array(t);
    }
    Ok(())
}

/// Runs `n` mutated cases over `seeds` (fixture bytes), starting from `seed`.
pub fn run(seeds: &[Vec<u8>], n: usize, seed: u64) -> Counts {
    let mut rng = Rng::new(seed);
    let mut c = Counts::default();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..n {
        let src = &seeds[rng.below(seeds.len())];
        let case = mutate(src, &mut rng);
        c.cases += 1;
        match catch_unwind(AssertUnwindSafe(|| exercise(&case))) {
            Ok(Ok(())) => c.loaded += 1,
            Ok(Err(_)) => c.rejected += 1,
            Err(_) => c.panics += 1,
        }
    }
    std::panic::set_hook(prev);
    c
}
