//! The `isquant` command line. Thin: parse flags, call the library, print, choose the exit
//! code (0 ok, 1 validation below threshold, 2 error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use isquant::onnx::io::{self, ExternalData};

const EXAMPLES: &str = "\
Examples:
  isquant quantize fixtures/fmnist-small-bn.onnx -o fmnist-int8.onnx --validate
  isquant quantize mobilenetv2.onnx -o mnv2-int8.onnx --preset imagenet --report report.json
  isquant quantize model.onnx -o w6a6.onnx --weight-bits 6 --act-bits 6 --rounding nearest
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
    /// Quantize a float model to int8 without data: fold BN, per-tensor symmetric SQuant
    /// weights, data-free activation scales, QuantizeLinear + ConvInteger/MatMulInteger.
    #[command(after_help = QUANTIZE_EXAMPLES)]
    Quantize(Box<QuantizeArgs>),
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

const QUANTIZE_EXAMPLES: &str = "\
Examples:
  isquant quantize fixtures/fmnist-small-bn.onnx -o out.onnx --validate
  isquant quantize mnv2.onnx -o mnv2-int8.onnx --preset imagenet --report mnv2.json
  isquant quantize mnv2.onnx -o w7a7.onnx --weight-bits 7 --act-bits 7
  isquant quantize model.onnx -o out.onnx --skip '/classifier/*' --keep-first-float
  isquant quantize model.onnx -o out.onnx --act-ranges calibrate --calibrate inputs/

Activation ranges (--act-ranges):
  auto       BN statistics where they reach a tensor (the BN-analytic rule), SQuant's noise
             rule elsewhere (default)
  bn         BN statistics only; tensors they do not reach keep a float input
  noise      SQuant's rule: a seeded batch of U[0,1) noise through the float model (tract),
             alpha = k*std (k = 25 at 8 bits, 14 at 6, 12 at 4), /1.25 for signed tensors
  calibrate  your own inputs (--calibrate DIR of float32 .npy files), max|x| or a percentile

The model input has no statistics: give --input-range LO:HI (or --preset imagenet) to quantize
the first layer's input too; otherwise that layer keeps a float input and int8 weights.";

#[derive(clap::Args, Debug)]
struct QuantizeArgs {
    /// The float ONNX model (never modified).
    input: PathBuf,
    /// Where to write the int8 model.
    #[arg(short, long)]
    output: PathBuf,
    /// Weight bits (2..=8), one symmetric scale per tensor, zero-point 0.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=8))]
    weight_bits: u32,
    /// Activation bits (2..=8), one scale per tensor, zero-point 0.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=8))]
    act_bits: u32,
    /// Weight rounding: nearest, squant-e (= nearest), squant-k, squant-c, squant (K then C).
    #[arg(long, default_value = "squant", value_parser = ["nearest", "squant-e", "squant-k", "squant-c", "squant"])]
    rounding: String,
    /// Where activation ranges come from: auto, bn, noise, calibrate.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bn", "noise", "calibrate"])]
    act_ranges: String,
    /// N of the BN rule: a range covers mean ± N·std of each channel.
    #[arg(long, default_value_t = 6.0)]
    bn_sigmas: f64,
    /// Range of the model input, e.g. -2.118:2.640, so the first layer runs in integers too.
    #[arg(long, value_name = "LO:HI", allow_hyphen_values = true)]
    input_range: Option<String>,
    /// Preprocessing preset giving the input range: imagenet = [-2.118, 2.640]
    /// (mean/std-normalised RGB), unit = [0, 1], symmetric = [-1, 1], pixels = [0, 255].
    #[arg(long, value_parser = ["imagenet", "unit", "symmetric", "pixels"])]
    preset: Option<String>,
    /// Keep nodes float: a node name, weight name or glob pattern (`*`, `?`); repeatable.
    #[arg(long, value_name = "NAME_OR_PATTERN")]
    skip: Vec<String>,
    /// Keep the first quantizable layer float.
    #[arg(long)]
    keep_first_float: bool,
    /// Keep the last quantizable layer (usually the classifier) float.
    #[arg(long)]
    keep_last_float: bool,
    /// Inputs in the noise batch (noise rule).
    #[arg(long, default_value_t = 32)]
    noise_batch: usize,
    /// Seed of the noise batch.
    #[arg(long, default_value_t = 0)]
    noise_seed: u64,
    /// Input shape for forward passes when the model leaves dimensions open, e.g. 1,3,48,192.
    #[arg(long, value_name = "N,C,H,W")]
    input_shape: Option<String>,
    /// Directory of float32 .npy inputs for --act-ranges calibrate.
    #[arg(long, value_name = "DIR")]
    calibrate: Option<PathBuf>,
    /// Calibration range: max|x|, or a percentile of |x| with --percentile.
    #[arg(long)]
    percentile: Option<f64>,
    /// Output format (more formats later).
    #[arg(long, default_value = "convinteger", value_parser = ["convinteger"])]
    format: String,
    /// Write the JSON report (per-layer scales, flips, ranges, skipped nodes) here.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Run the float and the int8 model in tract on seeded synthetic inputs and compare.
    #[arg(long)]
    validate: bool,
    /// Print every layer.
    #[arg(short, long)]
    verbose: bool,
    /// Put every initializer of 1 kB or more in `<output>.data`.
    #[arg(long)]
    external_data: bool,
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
        Command::Quantize(args) => quantize(*args)?,
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

fn parse_list(s: &str, what: &str) -> isquant::Result<Vec<usize>> {
    s.split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            isquant::Error::Config(format!(
                "{what} {s:?} is not a comma-separated list of sizes"
            ))
        })
}

fn input_range(args: &QuantizeArgs) -> isquant::Result<Option<(f32, f32)>> {
    if let Some(r) = &args.input_range {
        let parsed = r.split_once(':').and_then(|(a, b)| {
            Some((a.trim().parse::<f32>().ok()?, b.trim().parse::<f32>().ok()?))
        });
        return match parsed {
            Some(p) => Ok(Some(p)),
            None => Err(isquant::Error::Config(format!(
                "--input-range {r:?} is not LO:HI"
            ))),
        };
    }
    Ok(args.preset.as_deref().map(|p| match p {
        "imagenet" => (-2.1179, 2.6400),
        "unit" => (0.0, 1.0),
        "symmetric" => (-1.0, 1.0),
        _ => (0.0, 255.0),
    }))
}

fn quantize(args: QuantizeArgs) -> isquant::Result<()> {
    use isquant::passes::quantize::{self as q, ActRanges, CalibrationMethod, QuantizeConfig};
    use isquant::squant::Rounding;
    let start = Instant::now();
    let rounding = match args.rounding.as_str() {
        "nearest" => Rounding::Nearest,
        "squant-e" => Rounding::SquantE,
        "squant-k" => Rounding::SquantK,
        "squant-c" => Rounding::SquantC,
        _ => Rounding::Squant,
    };
    let act_ranges = match args.act_ranges.as_str() {
        "bn" => ActRanges::Bn,
        "noise" => ActRanges::Noise,
        "calibrate" => ActRanges::Calibrate,
        _ => {
            if args.calibrate.is_some() {
                ActRanges::Calibrate
            } else {
                ActRanges::Auto
            }
        }
    };
    if let Some(p) = args.percentile {
        if !(p > 0.0 && p <= 100.0) {
            return Err(isquant::Error::Config(format!(
                "--percentile must be in (0, 100], got {p}"
            )));
        }
    }
    let cfg = QuantizeConfig {
        weight_bits: args.weight_bits,
        act_bits: args.act_bits,
        rounding,
        act_ranges,
        bn_sigmas: args.bn_sigmas,
        input_range: input_range(&args)?,
        skip: args.skip.clone(),
        keep_first_float: args.keep_first_float,
        keep_last_float: args.keep_last_float,
        noise_batch: args.noise_batch.max(1),
        noise_seed: args.noise_seed,
        input_shape: args
            .input_shape
            .as_deref()
            .map(|s| parse_list(s, "--input-shape"))
            .transpose()?,
        calibration_method: args
            .percentile
            .map_or(CalibrationMethod::MinMax, CalibrationMethod::Percentile),
    };
    let loaded = isquant::load(&args.input)?;
    let original = loaded.model.clone();
    let size_before = isquant::onnx::io::encode_model(&original.to_proto()).len();
    let calibration = match &args.calibrate {
        Some(dir) => {
            let rank = original
                .graph
                .real_inputs()
                .first()
                .and_then(|i| i.r#type.as_ref())
                .and_then(|t| match &t.value {
                    Some(isquant::onnx::pb::type_proto::Value::TensorType(tt)) => {
                        tt.shape.as_ref().map(|s| s.dim.len())
                    }
                    _ => None,
                })
                .unwrap_or(4);
            Some(isquant::data::load_batches(dir, rank)?)
        }
        None => None,
    };
    let mut model = loaded.model.clone();
    let mut progress = |stage: &str| eprintln!("isquant: {stage}...");
    let report = q::quantize(&mut model, &cfg, calibration.as_deref(), &mut progress)?;
    let proto = model.to_proto();
    let size_after = isquant::onnx::io::encode_model(&proto).len();
    let quantized = isquant::LoadedModel {
        model,
        info: loaded.info.clone(),
    };
    let written = write(&quantized, &args.input, &args.output, args.external_data)?;
    print_summary(&args, &report, size_before, size_after);
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| isquant::Error::Config(format!("cannot encode the report: {e}")))?;
        isquant::onnx::io::write_atomic(path, &json)?;
        println!("report     {}", path.display());
    }
    println!("wrote      {written} in {:.2?}", start.elapsed());
    if args.validate {
        validate_synthetic(&original, &quantized.model, &cfg)?;
    }
    Ok(())
}

fn print_summary(
    args: &QuantizeArgs,
    r: &isquant::passes::quantize::QuantizeReport,
    before: usize,
    after: usize,
) {
    use std::collections::BTreeMap;
    println!("isquant {} quantize {}", r.version, args.input.display());
    let fwd = r
        .bn_folded
        .iter()
        .filter(|f| f.direction == "forward")
        .count();
    println!(
        "BN         {} folded ({} backward, {fwd} forward), {} kept",
        r.bn_folded.len(),
        r.bn_folded.len() - fwd,
        r.bn_kept.len()
    );
    for k in &r.bn_kept {
        println!("           kept {}: {}", k.node, k.reason);
    }
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rules: BTreeMap<String, usize> = BTreeMap::new();
    let (mut flips, mut weights) = (0u64, 0usize);
    for l in &r.layers {
        if l.mode == "integer" {
            *ops.entry(if l.op_type == "Conv" {
                "ConvInteger"
            } else {
                "MatMulInteger"
            })
            .or_default() += 1;
        }
        if let Some(a) = &l.activation {
            let rule = serde_json::to_value(a.rule)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *rules.entry(format!("{rule} ({})", a.dtype)).or_default() += 1;
        }
        flips += l.changed_vs_nearest;
        weights += l.weight_shape.iter().product::<usize>();
    }
    let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "layers     {} quantized: {} integer ({}), {} weight-only int8",
        r.layers.len(),
        r.integer_layers(),
        ops.join(", "),
        r.layers.len() - r.integer_layers()
    );
    println!(
        "weights    W{} per-tensor symmetric, rounding {}: {flips} of {weights} weights differ from round-to-nearest",
        r.config.weight_bits, r.rounding
    );
    let rules: Vec<String> = rules.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("activations A{}: {}", r.config.act_bits, rules.join(", "));
    for l in r.layers.iter().filter(|l| l.mode != "integer") {
        if let Some(why) = &l.float_input_reason {
            println!(
                "           {} ({}) keeps a float input: {why}",
                l.node, l.op_type
            );
        }
    }
    for s in &r.skipped {
        println!("skipped    {} ({}): {}", s.node, s.op_type, s.reason);
    }
    if args.verbose {
        println!(
            "{:<40} {:<8} {:<11} {:>11} {:<6} {:<14} {:>11}",
            "layer", "op", "mode", "w scale", "act", "rule", "act scale"
        );
        for l in &r.layers {
            let (dt, rule, sc) = match &l.activation {
                Some(a) => (
                    a.dtype.to_string(),
                    serde_json::to_value(a.rule)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    format!("{:.4e}", a.scale),
                ),
                None => ("float".into(), "-".into(), "-".into()),
            };
            println!(
                "{:<40} {:<8} {:<11} {:>11.4e} {:<6} {:<14} {:>11}",
                l.node, l.op_type, l.mode, l.weight_scale, dt, rule, sc
            );
        }
    }
    println!(
        "size       {:.1} kB -> {:.1} kB ({:.2}x smaller)",
        before as f64 / 1e3,
        after as f64 / 1e3,
        before as f64 / after.max(1) as f64
    );
    let t: Vec<String> = r
        .timings_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.1} ms"))
        .collect();
    println!("time       {}", t.join(", "));
}

fn validate_synthetic(
    float: &isquant::graph::Model,
    int8: &isquant::graph::Model,
    cfg: &isquant::passes::quantize::QuantizeConfig,
) -> isquant::Result<()> {
    use isquant::validate::{compare, seeded_uniform, Source, TractModel};
    let (lo, hi) = cfg.input_range.unwrap_or((-1.0, 1.0));
    let batches = isquant::passes::quantize::forward_batches(
        float,
        cfg.input_shape.as_deref(),
        16,
        8,
        |s, k| seeded_uniform(s, 1000 + k as u64, lo, hi),
    )?;
    let shapes: Vec<Vec<usize>> = batches
        .first()
        .map(|b| b.iter().map(|a| a.shape().to_vec()).collect())
        .unwrap_or_default();
    let fb = isquant::onnx::io::encode_model(&float.to_proto());
    let qb = isquant::onnx::io::encode_model(&int8.to_proto());
    let f = TractModel::load(Source::Bytes(&fb), &shapes)?;
    let q = TractModel::load(Source::Bytes(&qb), &shapes)?;
    let a = compare(&f, &q, &batches)?;
    println!(
        "validate   tract, {} synthetic inputs uniform in [{lo}, {hi}] (not real data): top-1 agreement {:.1} %, SQNR {:.1} dB, cosine {:.5}, max |error| {:.3e}",
        a.rows,
        a.top1_agreement * 100.0,
        a.sqnr_db,
        a.cosine,
        a.max_abs_error
    );
    Ok(())
}
