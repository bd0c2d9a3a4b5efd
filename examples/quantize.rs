//! The library in one page: load a float model, quantize it without data, save it, and compare
//! it with the float model in tract.
//!
//! `cargo run --release --example quantize -- [MODEL.onnx [OUT.onnx]]`
//! (defaults: `fixtures/fmnist-small-bn.onnx`, `target/example-int8.onnx`).

use std::path::PathBuf;

use isquant::inputs::synthetic;
use isquant::pipeline::{quantize, QuantizeConfig, RenderOptions};
use isquant::validate::{render, validate, ValidateOptions};

fn main() -> isquant::Result<()> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let input = args
        .next()
        .unwrap_or_else(|| PathBuf::from("fixtures/fmnist-small-bn.onnx"));
    let output = args
        .next()
        .unwrap_or_else(|| PathBuf::from("target/example-int8.onnx"));

    // 1. Load (external data is resolved; the file is never modified).
    let loaded = isquant::load(&input)?;

    // 2. Quantize a copy with the default options (the CLI's defaults).
    let mut model = loaded.model.clone();
    let cfg = QuantizeConfig::default();
    let report = quantize(&mut model, &cfg, None, &mut |stage| eprintln!("{stage}..."))?;

    // 3. Save atomically, never over the input or its data files.
    let written = isquant::save(&model, &output, false, &loaded.source_files(&input))?;
    let encoded = |m: &isquant::graph::Model| isquant::onnx::io::encode_model(&m.to_proto()).len();
    print!(
        "{}",
        report.render(&RenderOptions {
            input: &input.display().to_string(),
            size_before: encoded(&loaded.model),
            size_after: written.model_bytes,
            verbose: false,
        })
    );
    println!(
        "wrote      {} ({} bytes)",
        output.display(),
        written.model_bytes
    );

    // 4. Compare float and int8 in tract on 32 seeded inputs of the model's shape.
    let (_, dims) = loaded.model.graph.single_input("validation")?;
    let shape: Vec<usize> = dims.iter().skip(1).map(|d| d.unwrap_or(1)).collect();
    let samples = synthetic(&shape, 32, -1.0, 1.0);
    let v = validate(
        &loaded.model,
        &model,
        &samples,
        &ValidateOptions {
            synthetic: true,
            batch: 16,
            per_layer: true,
            keep_outputs: false,
        },
        &|_, _| {},
    )?;
    print!("{}", render::render(&v, "seeded synthetic inputs"));
    Ok(())
}
