//! `isquant bench`: latency of models in tract, side by side ([`crate::latency`]).

use std::path::PathBuf;

use crate::latency::{LatencyOptions, Progress};
use crate::onnx::io::{check_files, NamedPath};

use super::{out, parse_sizes, EXIT_OK};

pub(super) const EXAMPLES: &str = "\
Examples:
  isquant bench mnv2.onnx mnv2-int8.onnx                  # the int8 model's time over the float's
  isquant bench det.onnx det-int8.onnx --input-shape 1,3,640,640 --runs 10
  isquant bench float.onnx a.onnx b.onnx --json latency.json

The first model is the baseline of the `vs first` column: list the float model first.";

#[derive(clap::Args, Debug)]
pub(super) struct BenchArgs {
    /// The models to time (the first is the baseline of the ratios).
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// The input shape for every model, e.g. 1,3,224,224 (default: each model's declared
    /// shape, batch 1 where it is open).
    #[arg(long, value_name = "N,C,H,W")]
    input_shape: Option<String>,
    /// Counted runs per model.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Runs per model before counting.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Write the timings as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(super) fn run(args: &BenchArgs) -> crate::Result<u8> {
    let inputs: Vec<NamedPath> = args
        .models
        .iter()
        .map(|m| NamedPath::new("a model", m))
        .collect();
    let outputs: Vec<NamedPath> = args
        .json
        .iter()
        .map(|j| NamedPath::new("--json", j))
        .collect();
    check_files(&inputs, &outputs)?;
    let opts = LatencyOptions {
        runs: args.runs,
        warmup: args.warmup,
        input_shape: args
            .input_shape
            .as_deref()
            .map(|s| parse_sizes(s, "--input-shape"))
            .transpose()?,
    };
    let mut last_shown = 0usize;
    let b = crate::latency::measure(&args.models, &opts, &mut |p| match p {
        Progress::Loading(m) => eprintln!("isquant: loading {}...", m.display()),
        Progress::Round { done, total } => {
            // About ten progress lines whatever the run count.
            if done == total || done >= last_shown + total.div_ceil(10) {
                eprintln!("isquant: round {done} of {total}");
                last_shown = done;
            }
        }
    })?;
    out!("{}", crate::latency::render(&b).trim_end());
    if let Some(j) = &args.json {
        let text = serde_json::to_vec_pretty(&b)
            .map_err(|e| crate::Error::Config(format!("cannot encode JSON: {e}")))?;
        crate::write_file(j, &text, &args.models)?;
    }
    Ok(EXIT_OK)
}
