//! The command line: clap types and one file per subcommand. Each subcommand turns its flags
//! into library calls and prints; the library does the work.
//!
//! It lives in the library, not only in the binary, so that the Python wheel's `isquant`
//! command runs this very code ([`main`]), and so that the Python API ([`api`]) parses its
//! options with the same flags, defaults and checks and computes what a command prints without
//! printing it.
//!
//! Files: every command lists what it reads and writes ([`crate::onnx::io::check_files`]) and
//! refuses, before any work, an output that is an input (a model, its external data, a file of
//! `--validate-inputs`/`--calibrate`/`inputs`, `--labels`) or another output (`-o`,
//! `--report`, `--json`, the files of `--save-tensors`).
//!
//! Exit codes: 0 success; 1 validation below a threshold, or `check` found broken rules;
//! 2 error (bad input, bad flags, I/O); 3 `quantize` wrote the model but its accuracy guard
//! failed.

pub mod api;
mod bench;
mod convert;
mod inspect;
mod quantize;
mod validate;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::onnx::io::NamedPath;
use clap::{Parser, Subcommand};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: validation below a threshold, or `check` found broken rules.
pub const EXIT_BELOW_THRESHOLD: u8 = 1;
/// Exit code: an error (bad input, bad flags, I/O).
pub const EXIT_ERROR: u8 = 2;
/// Exit code: `quantize` wrote the model but its accuracy guard failed.
pub const EXIT_GUARD_FAILED: u8 = 3;

/// Runs the command line on `args` (`args[0]` is the program name, as in `std::env::args_os`):
/// parses the flags (printing clap's help, version or usage error), runs the command and prints
/// the error chain on failure. Returns the exit code.
pub fn main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // What `Cli::parse` does, without ending the process: help and version on stdout
            // (exit 0), usage errors on stderr (exit 2).
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(EXIT_ERROR);
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            EXIT_ERROR
        }
    };
    // Inside a Python process nothing flushes Rust's stdout at exit (a binary's runtime does).
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

/// A model argument: a file (the command line) or bytes already in memory (the Python API).
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// A model file (its external data is read beside it).
    Path(PathBuf),
    /// An encoded `ModelProto` with every tensor inline, named `<bytes>` in messages.
    Bytes(bytes::Bytes),
}

/// How messages and the summary name a model given as bytes.
pub const BYTES_LABEL: &str = "<bytes>";

impl ModelInput {
    /// The model's name in messages and summaries.
    fn label(&self) -> String {
        match self {
            ModelInput::Path(p) => p.display().to_string(),
            ModelInput::Bytes(_) => BYTES_LABEL.to_string(),
        }
    }

    /// Reads and checks the model ([`crate::load`], [`crate::load_bytes`]).
    fn load(&self) -> crate::Result<crate::LoadedModel> {
        match self {
            ModelInput::Path(p) => crate::load(p),
            ModelInput::Bytes(b) => crate::load_bytes(b.clone(), Path::new(BYTES_LABEL), None),
        }
    }

    /// The files the model argument reads ([`model_files`]); none for bytes.
    fn files(&self, flag: &str, loaded: Option<&crate::LoadedModel>) -> Vec<NamedPath> {
        match self {
            ModelInput::Path(p) => model_files(flag, p, loaded),
            ModelInput::Bytes(_) => Vec::new(),
        }
    }

    /// The files the loaded model came from, which no output may overwrite; none for bytes.
    fn source_files(&self, loaded: &crate::LoadedModel) -> Vec<PathBuf> {
        match self {
            ModelInput::Path(p) => loaded.source_files(p),
            ModelInput::Bytes(_) => Vec::new(),
        }
    }
}

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
  isquant bench mnv2.onnx mnv2-int8.onnx

Exit codes: 0 success, 1 validation below threshold / check found broken rules,
2 error (bad input, bad flags, I/O), 3 model written but the accuracy guard failed.";

/// Data-free int8 quantization of ONNX CNNs (ISQuant: BN folding + per-tensor SQuant rounding
/// + integer emission). No calibration data, no Python.
#[derive(Parser, Debug)]
#[command(name = "isquant", version, about, after_help = EXAMPLES)]
struct Cli {
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
    /// Time models in tract side by side (one thread, interleaved runs) and print each one's
    /// latency and its ratio to the first: e.g. the int8 model against its float model.
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::BenchArgs),
}

/// Runs one command; the exit code on success (1: a threshold or rule check failed, 3: the
/// guard failed).
///
/// # Errors
/// Whatever the library reports; [`main`] prints it and exits with 2.
fn run(cli: Cli) -> crate::Result<u8> {
    match cli.command {
        Command::Quantize(args) => quantize::run(*args),
        Command::Validate(args) => validate::run(*args),
        Command::Check(args) => inspect::check(&args),
        Command::Inspect(args) => inspect::inspect(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::FoldBn(args) => convert::fold_bn(&args),
        Command::Bench(args) => bench::run(&args),
    }
}

/// Parses a comma-separated list of sizes (`--input-shape`).
fn parse_sizes(s: &str, what: &str) -> crate::Result<Vec<usize>> {
    s.split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            crate::Error::Config(format!(
                "{what} {s:?} is not a comma-separated list of sizes"
            ))
        })
}

/// Describes a written model: `PATH (N bytes[, weights in DATA (M bytes)])`.
fn describe_written(output: &std::path::Path, w: &crate::onnx::io::Written) -> String {
    let mut line = format!("{} ({} bytes", output.display(), w.model_bytes);
    if let Some((data, n)) = &w.external {
        line.push_str(&format!(", weights in {} ({n} bytes)", data.display()));
    }
    line.push(')');
    line
}

/// The files a model argument reads: the model and, once loaded, its external data files.
fn model_files(flag: &str, path: &Path, loaded: Option<&crate::LoadedModel>) -> Vec<NamedPath> {
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
                crate::inputs::expand(std::slice::from_ref(p)).unwrap_or_default()
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
    input: &ModelInput,
    loaded: &crate::LoadedModel,
    output: Option<&std::path::Path>,
) -> Vec<PathBuf> {
    let mut v = input.source_files(loaded);
    v.extend(output.map(crate::output_files).unwrap_or_default());
    v
}
