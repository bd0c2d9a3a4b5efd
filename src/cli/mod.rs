//! The command line: clap types and one file per subcommand. Each subcommand turns its flags
//! into library calls and prints; the library does the work.
//!
//! Files: every command lists what it reads and writes ([`isquant::onnx::io::check_files`]) and
//! refuses, before any work, an output that is an input (a model, its external data, a file of
//! `--validate-inputs`/`--calibrate`/`inputs`, `--labels`) or another output (`-o`,
//! `--report`, `--json`, the files of `--save-tensors`).
//!
//! Exit codes: 0 success; 1 validation below a threshold, or `check` found broken rules;
//! 2 error (bad input, bad flags, I/O); 3 `quantize` wrote the model but its accuracy guard
//! failed.

mod convert;
mod inspect;
mod quantize;
mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isquant::onnx::io::NamedPath;

/// `println!` that ends the process quietly when stdout is closed (`isquant … | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}
pub(crate) use out;

const EXAMPLES: &str = "\
Examples:
  isquant quantize fixtures/fmnist-small-bn.onnx -o fmnist-int8.onnx --validate
  isquant quantize mobilenetv2.onnx -o mnv2-int8.onnx --preset imagenet --report report.json
  isquant quantize model.onnx -o w6a6.onnx --weight-bits 6 --act-bits 6 --rounding nearest
  isquant inspect fixtures/fmnist-small-bn.onnx
  isquant inspect model.onnx --json > model.json
  isquant convert model.onnx -o copy.onnx
  isquant convert big.onnx -o big-ext.onnx --external-data

Exit codes: 0 success, 1 validation below threshold / check found broken rules,
2 error (bad input, bad flags, I/O), 3 model written but the accuracy guard failed.";

/// Data-free int8 quantization of ONNX CNNs (ISQuant: BN folding + per-tensor SQuant rounding
/// + integer emission). No calibration data, no Python.
#[derive(Parser, Debug)]
#[command(name = "isquant", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize a float model to int8 without data: fold BN, per-tensor symmetric SQuant
    /// weights, data-free activation scales, QuantizeLinear + ConvInteger/MatMulInteger.
    #[command(after_help = quantize::EXAMPLES)]
    Quantize(Box<quantize::QuantizeArgs>),
    /// Run a float model and its int8 version in tract on the same inputs and compare:
    /// agreement, accuracy (with labels), SQNR, cosine, and the worst layers (--per-layer).
    #[command(after_help = validate::EXAMPLES)]
    Validate(Box<validate::ValidateArgs>),
    /// List every rule of a deployment runtime the model breaks (exit 1 if any).
    #[command(
        after_help = "Examples:\n  isquant check int8.onnx --target tensorrt\n  isquant check int8.onnx --target ort-legacy"
    )]
    Check(inspect::CheckArgs),
    /// Show what a model holds: versions, inputs/outputs, ops, weights, the BNs fold-bn would
    /// fold (backward and forward) and the layers a quantizer would touch.
    #[command(after_help = "Example:\n  isquant inspect fixtures/mnist-cnn.onnx --json")]
    Inspect(inspect::InspectArgs),
    /// Load a model and write it back (checks that isquant reads it faithfully; moves weights
    /// to or from external data).
    #[command(
        after_help = "Examples:\n  isquant convert in.onnx -o out.onnx\n  isquant convert in.onnx -o out.onnx --external-data   # weights to out.onnx.<random>.data"
    )]
    Convert(convert::ConvertArgs),
    /// Fold BatchNormalization into the neighbouring Conv/ConvTranspose/Gemm/MatMul (the first
    /// step of `quantize`), and report the BNs that cannot be folded.
    #[command(
        name = "fold-bn",
        after_help = "Example:\n  isquant fold-bn fixtures/fmnist-small-bn.onnx -o folded.onnx"
    )]
    FoldBn(convert::ConvertArgs),
}

/// Runs one command; the exit code on success (1: a threshold or rule check failed).
///
/// # Errors
/// Whatever the library reports; the caller prints it and exits with 2.
pub fn run(cli: Cli) -> isquant::Result<ExitCode> {
    match cli.command {
        Command::Quantize(args) => quantize::run(*args),
        Command::Validate(args) => validate::run(*args),
        Command::Check(args) => inspect::check(&args),
        Command::Inspect(args) => inspect::inspect(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::FoldBn(args) => convert::fold_bn(&args),
    }
}

/// Parses a comma-separated list of sizes (`--input-shape`).
fn parse_sizes(s: &str, what: &str) -> isquant::Result<Vec<usize>> {
    s.split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            isquant::Error::Config(format!(
                "{what} {s:?} is not a comma-separated list of sizes"
            ))
        })
}

/// Describes a written model: `PATH (N bytes[, weights in DATA (M bytes)])`.
fn describe_written(output: &std::path::Path, w: &isquant::onnx::io::Written) -> String {
    let mut line = format!("{} ({} bytes", output.display(), w.model_bytes);
    if let Some((data, n)) = &w.external {
        line.push_str(&format!(", weights in {} ({n} bytes)", data.display()));
    }
    line.push(')');
    line
}

/// The files a model argument reads: the model and, once loaded, its external data files.
fn model_files(flag: &str, path: &Path, loaded: Option<&isquant::LoadedModel>) -> Vec<NamedPath> {
    let mut v = vec![NamedPath::new(flag, path)];
    if let Some(l) = loaded {
        v.extend(
            l.source_files(path)
                .into_iter()
                .skip(1)
                .map(|f| NamedPath::new(format!("external data of {flag}"), f)),
        );
    }
    v
}

/// The files input paths (files or folders) make a command read, named by `flag`. A path that
/// cannot be listed is kept as given (reading it reports the problem later).
fn input_files(flag: &str, paths: &[PathBuf]) -> Vec<NamedPath> {
    paths
        .iter()
        .flat_map(|p| {
            let files = if p.is_dir() {
                isquant::inputs::expand(std::slice::from_ref(p)).unwrap_or_default()
            } else {
                Vec::new()
            };
            std::iter::once(p.clone()).chain(files)
        })
        .map(|f| NamedPath::new(flag, f))
        .collect()
}

/// The protected files of a run: the input model, its external data, and the output model
/// and its data file (a report may overwrite none of them).
fn protected(
    input: &std::path::Path,
    loaded: &isquant::LoadedModel,
    output: Option<&std::path::Path>,
) -> Vec<PathBuf> {
    let mut v = loaded.source_files(input);
    v.extend(output.map(isquant::output_files).unwrap_or_default());
    v
}
