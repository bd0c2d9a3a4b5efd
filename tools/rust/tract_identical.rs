//! Runs two models in tract on the same seeded input and reports whether every output is
//! bit-identical (used to check `convert` by hand over models outside `fixtures/`).
//!
//! `cargo run --release --example tract_identical -- ORIGINAL.onnx CONVERTED.onnx 1,3,224,224`

use std::path::Path;
use std::process::ExitCode;

use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        eprintln!("usage: tract_identical ORIGINAL.onnx CONVERTED.onnx SHAPE (e.g. 1,3,224,224)");
        return ExitCode::from(2);
    }
    let shape: Vec<usize> = args[2].split(',').filter_map(|d| d.parse().ok()).collect();
    let x = seeded_uniform(&shape, 11, -1.0, 1.0);
    let run = |p: &str| {
        TractModel::load(Source::Path(Path::new(p)), std::slice::from_ref(&shape))
            .and_then(|m| m.run(std::slice::from_ref(&x)))
    };
    match (run(&args[0]), run(&args[1])) {
        (Ok(a), Ok(b)) => {
            let same = a.len() == b.len()
                && a.iter().zip(&b).all(|(p, q)| {
                    p.shape() == q.shape()
                        && p.iter()
                            .zip(q.iter())
                            .all(|(u, v)| u.to_bits() == v.to_bits())
                });
            println!(
                "{} vs {}: {} output(s), {}",
                args[0],
                args[1],
                a.len(),
                if same {
                    "bit-identical in tract"
                } else {
                    "DIFFERENT"
                }
            );
            if same {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            let mut c = std::error::Error::source(&e);
            while let Some(s) = c {
                eprintln!("  caused by: {s}");
                c = s.source();
            }
            ExitCode::from(2)
        }
    }
}
