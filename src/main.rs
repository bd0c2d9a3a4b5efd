//! The `isquant` command line. Thin: parse flags, call the library, print, choose the exit
//! code (0 ok, 1 validation below threshold, 2 error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use isquant::onnx::io::{self, ExternalData};

const EXAMPLES: &str = "\
Examples:
  isquant inspect fixtures/fmnist-small-bn.onnx
  isquant inspect model.onnx --json > model.json
  isquant convert model.onnx -o copy.onnx
  isquant convert big.onnx -o big-ext.onnx --external-data

Exit codes: 0 success, 1 validation below threshold, 2 error (bad input, bad flags, I/O).";

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
    /// Show what a model holds: versions, inputs/outputs, ops, weights, foldable BNs and the
    /// layers a quantizer would touch.
    #[command(after_help = "Example:\n  isquant inspect fixtures/mnist-cnn.onnx --json")]
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load a model and write it back (checks that isquant reads it faithfully; moves weights
    /// to or from external data).
    #[command(
        after_help = "Examples:\n  isquant convert in.onnx -o out.onnx\n  isquant convert in.onnx -o out.onnx --external-data   # weights to out.onnx.data"
    )]
    Convert {
        /// The ONNX model to read (never modified).
        input: PathBuf,
        /// Where to write the model.
        #[arg(short, long)]
        output: PathBuf,
        /// Put every initializer of 1 kB or more in `<output>.data` (done automatically when
        /// the model would exceed protobuf's 2 GB limit).
        #[arg(long)]
        external_data: bool,
    },
    /// Fold BatchNormalization into the neighbouring Conv/ConvTranspose/Gemm/MatMul (the first
    /// step of `quantize`), and report the BNs that cannot be folded.
    #[command(
        name = "fold-bn",
        after_help = "Example:\n  isquant fold-bn fixtures/fmnist-small-bn.onnx -o folded.onnx"
    )]
    FoldBn {
        /// The ONNX model to read (never modified).
        input: PathBuf,
        /// Where to write the folded model.
        #[arg(short, long)]
        output: PathBuf,
        /// Put every initializer of 1 kB or more in `<output>.data`.
        #[arg(long)]
        external_data: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> isquant::Result<ExitCode> {
    match cli.command {
        Command::Inspect { model, json } => {
            let loaded = isquant::load(&model)?;
            let report = isquant::inspect::inspect(
                &loaded.model,
                &model.display().to_string(),
                &loaded.info,
            )?;
            if json {
                let text = serde_json::to_string_pretty(&report)
                    .map_err(|e| isquant::Error::Config(format!("cannot encode JSON: {e}")))?;
                println!("{text}");
            } else {
                print!("{}", isquant::inspect::render(&report));
            }
        }
        Command::Convert {
            input,
            output,
            external_data,
        } => {
            let start = Instant::now();
            let loaded = isquant::load(&input)?;
            let external = if external_data {
                ExternalData::Always
            } else {
                ExternalData::Auto
            };
            let inputs = input_files(&input, &loaded.info);
            let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
            let written = io::write_model(&loaded.model.to_proto(), &output, external, &inputs)?;
            let mut line = format!("wrote {} ({} bytes", output.display(), written.model_bytes);
            if let Some((data, n)) = &written.external {
                line.push_str(&format!(", weights in {} ({n} bytes)", data.display()));
            }
            line.push_str(&format!(") in {:.2?}", start.elapsed()));
            println!("{line}");
            if loaded.info.external_tensors > 0 && written.external.is_none() {
                println!(
                    "note: the input kept {} tensors in external data; the output holds them inline (use --external-data to keep them apart)",
                    loaded.info.external_tensors
                );
            }
        }
        Command::FoldBn {
            input,
            output,
            external_data,
        } => {
            let start = Instant::now();
            let mut loaded = isquant::load(&input)?;
            let report = isquant::passes::fold_bn::fold_batch_norms(&mut loaded.model)?;
            let written = write(&loaded, &input, &output, external_data)?;
            println!(
                "folded {} BatchNormalization node(s), kept {}",
                report.folded.len(),
                report.kept.len()
            );
            for f in &report.folded {
                println!("  fold  {} -> {} ({})", f.bn, f.layer, f.direction);
            }
            for k in &report.kept {
                println!("  keep  {}: {}", k.node, k.reason);
            }
            println!("wrote {written} in {:.2?}", start.elapsed());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a model next to its inputs' rules (never over them) and describes what was written.
fn write(
    loaded: &isquant::LoadedModel,
    input: &Path,
    output: &Path,
    external_data: bool,
) -> isquant::Result<String> {
    let external = if external_data {
        ExternalData::Always
    } else {
        ExternalData::Auto
    };
    let inputs = input_files(input, &loaded.info);
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let written = io::write_model(&loaded.model.to_proto(), output, external, &inputs)?;
    let mut line = format!("{} ({} bytes", output.display(), written.model_bytes);
    if let Some((data, n)) = &written.external {
        line.push_str(&format!(", weights in {} ({n} bytes)", data.display()));
    }
    line.push(')');
    Ok(line)
}

/// The model file and the external data files it was read from: outputs may overwrite none.
fn input_files(model: &Path, info: &io::LoadInfo) -> Vec<PathBuf> {
    let dir = model.parent().unwrap_or(Path::new(""));
    std::iter::once(model.to_path_buf())
        .chain(info.external_files.iter().map(|f| dir.join(f)))
        .collect()
}
