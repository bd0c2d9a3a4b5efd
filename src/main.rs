//! The `isquant` command line. Thin: parse flags, call the library, print, choose the exit
//! code (0 ok, 1 validation below threshold, 2 error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use isquant::onnx::io::{self, ExternalData};

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
2 error (bad input, bad flags, I/O).";

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
    /// Run a float model and its int8 version in tract on the same inputs and compare:
    /// agreement, accuracy (with labels), SQNR, cosine, and the worst layers (--per-layer).
    #[command(after_help = VALIDATE_EXAMPLES)]
    Validate(Box<ValidateArgs>),
    /// List every rule of a deployment runtime the model breaks (exit 1 if any).
    #[command(
        after_help = "Examples:\n  isquant check int8.onnx --target tensorrt\n  isquant check int8.onnx --target ort-legacy"
    )]
    Check {
        /// The ONNX model.
        model: PathBuf,
        /// tract, ort (ONNX Runtime >= 1.24), ort-legacy (< 1.24), tensorrt.
        #[arg(long, value_parser = ["tract", "ort", "ort-legacy", "tensorrt"])]
        target: String,
    },
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
  auto       BN statistics where they reach a tensor (the BN-analytic rule, mean +- 6 std per
             channel); where BN is gone (BN-folded exports, models without BN) the same rule
             on per-channel statistics of a seeded N(0,1) noise pass (mean +- 4 std); BN
             moments pushed through a Conv/Gemm/MatMul widen to that pass where it is wider;
             tensors that are not feature maps keep SQuant's rule on that pass (default)
  noise-channels  the old name of auto
  bn         BN statistics only; tensors they do not reach keep a float input
  noise      SQuant's rule: a seeded batch of U[0,1) noise through the float model (tract),
             alpha = k*std (k = 25 at 8 bits, 14 at 6, 12 at 4), /1.25 for signed tensors
  calibrate  your own inputs (--calibrate DIR: images, .npy or IDX), max|x| or a percentile

The model input has no statistics: give --input-range LO:HI (or --preset imagenet) to quantize
the first layer's input too; otherwise that layer keeps a float input and int8 weights.";

const VALIDATE_EXAMPLES: &str = "\
Examples:
  isquant validate float.onnx int8.onnx                       # seeded synthetic inputs
  isquant validate mnv2.onnx mnv2-int8.onnx photos/ --preset imagenet --per-layer
  isquant validate mnv2.onnx mnv2-int8.onnx val/ --preset imagenet --label-regex '_(\\d+)\\.jpg$'
  isquant validate fm.onnx fm-int8.onnx t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz \\
      --preset fashion-mnist --max-accuracy-drop 0.3 --json fm.json

Presets: imagenet (shorter side 256, centre crop 224, ImageNet mean/std, RGB), mnist and
fashion-mnist ((x/255 - mean)/std, gray), unit (x/255), symmetric ((x/255 - 0.5)/0.5),
pixels (raw 0..255). Thresholds make the exit code 1 when missed.";

#[derive(clap::Args, Debug)]
struct ValidateArgs {
    /// The float model.
    float: PathBuf,
    /// The quantized model.
    int8: PathBuf,
    /// Images (JPEG/PNG), .npy files, IDX image files, or folders of them; none: synthetic.
    inputs_paths: Vec<PathBuf>,
    #[command(flatten)]
    inputs: InputArgs,
}

/// Inputs, preprocessing, labels, metrics output and thresholds (validate and quantize).
#[derive(clap::Args, Debug)]
struct InputArgs {
    /// Preprocessing preset (also the input range for quantize): imagenet, mnist,
    /// fashion-mnist, unit, symmetric, pixels.
    #[arg(long, value_parser = ["imagenet", "mnist", "fashion-mnist", "unit", "symmetric", "pixels"])]
    preset: Option<String>,
    /// Resize: N (shorter side) or HxW (exact).
    #[arg(long, value_name = "N|HxW")]
    resize: Option<String>,
    /// Centre crop HxW (or N for NxN).
    #[arg(long, value_name = "HxW")]
    crop: Option<String>,
    /// Crop before resizing (default: resize, then crop).
    #[arg(long)]
    crop_first: bool,
    /// Mean subtracted after scaling: one value or one per channel (comma-separated).
    #[arg(long, value_name = "M[,M,M]", allow_hyphen_values = true)]
    mean: Option<String>,
    /// Std divided by: one value or one per channel.
    #[arg(long, value_name = "S[,S,S]")]
    std: Option<String>,
    /// Pixel multiplier applied to 0..255 values (default 1/255).
    #[arg(long)]
    scale: Option<f32>,
    /// BGR channel order.
    #[arg(long)]
    bgr: bool,
    /// One gray channel.
    #[arg(long)]
    gray: bool,
    /// Tensor layout of image inputs.
    #[arg(long, default_value = "nchw", value_parser = ["nchw", "nhwc"])]
    layout: String,
    /// Labels from file names: the first capture group of this regex, e.g. '_(\d+)\.jpg$'.
    #[arg(long, value_name = "REGEX")]
    label_regex: Option<String>,
    /// Labels file: IDX labels, or text with one label per line (input order) or
    /// `FILE LABEL` lines.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Use at most N inputs.
    #[arg(long)]
    limit: Option<usize>,
    /// Number of synthetic inputs when none are given.
    #[arg(long, default_value_t = 32)]
    synthetic: usize,
    /// Inputs per run (default: 16 when the batch dimension is free, else the fixed batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Compare every quantized layer's output and list the worst first (values cross-layer
    /// equalization rescaled are compared up to one gain per channel, marked `*`).
    #[arg(long)]
    per_layer: bool,
    /// Write the metrics as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Save the preprocessed inputs and both models' first outputs as .npy (inputs.npy,
    /// float.npy, int8.npy) and labels.txt here, e.g. to check them in another runtime.
    #[arg(long, value_name = "DIR")]
    save_tensors: Option<PathBuf>,
    /// Minimum top-1 agreement in percent (exit code 1 below).
    #[arg(long, value_name = "PERCENT")]
    min_agreement: Option<f64>,
    /// Minimum SQNR in dB (exit code 1 below).
    #[arg(long, value_name = "DB")]
    min_sqnr: Option<f64>,
    /// Maximum accuracy drop in points (exit code 1 above; needs labels).
    #[arg(long, value_name = "POINTS")]
    max_accuracy_drop: Option<f64>,
}

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
    /// Weight scales: per-tensor (ISQuant) or per-channel (one per output channel, what
    /// calibrated tools use; applied in the rescale or a per-axis DequantizeLinear).
    #[arg(long, default_value = "per-tensor", value_parser = ["per-tensor", "per-channel"])]
    granularity: String,
    /// Data-free bias correction: subtract the expected output shift of the rounded weights,
    /// with E[x] from BatchNormalization statistics (DFQ), else from the per-channel means of
    /// the noise / calibration pass; layers neither reaches are left alone.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    correct_bias: String,
    /// Cross-layer equalization (DFQ): rescale Conv→(Relu)→Conv chains so each tensor's
    /// channels share one range; the float model is unchanged. auto: on for models with
    /// depthwise convolutions (MobileNet-style), with DFQ's rule where it reaches under half of
    /// the convolutions, and off under --qdq-outputs all when BN statistics exist (as measured).
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    equalize: String,
    /// High-bias absorption after equalization (DFQ): move `max(0, μ − 3σ)` of each equalized
    /// layer's bias into the next layer's bias (needs --equalize on and BN statistics).
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    absorb_bias: String,
    /// How equalization picks each channel's scale: noise (minimise the modelled int8 noise of
    /// both layers' weights and of the activation between them, from BN statistics; pairs
    /// without statistics use weights) or weights (DFQ: equal weight ranges).
    #[arg(long, default_value = "noise", value_parser = ["noise", "weights"])]
    equalize_by: String,
    /// ReLU6 between equalized layers: per-channel (exact: Relu + Min(6/s)), relu (replace,
    /// changes the float model), stop (do not equalize across it).
    #[arg(long, default_value = "per-channel", value_parser = ["per-channel", "relu", "stop"])]
    relu6: String,
    /// Weight rounding: nearest, squant-e (= nearest), squant-k, squant-c, squant (K then C).
    #[arg(long, default_value = "squant", value_parser = ["nearest", "squant-e", "squant-k", "squant-c", "squant"])]
    rounding: String,
    /// Where activation ranges come from: auto (BN statistics where they reach a tensor, else
    /// the same rule on per-channel statistics of a seeded noise pass), bn (BN only), noise
    /// (SQuant's per-tensor noise rule everywhere), calibrate (--calibrate DIR);
    /// noise-channels is the old name of auto.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bn", "noise", "noise-channels", "calibrate"])]
    act_ranges: String,
    /// N of the BN rule: a range covers mean ± N·std of each channel.
    #[arg(long, default_value_t = 6.0)]
    bn_sigmas: f64,
    /// N of the same rule on per-channel statistics of the noise pass (where BN statistics do
    /// not reach: BN-folded exports, models without BN).
    #[arg(long, default_value_t = 4.0)]
    noise_sigmas: f64,
    /// Images of the noise pass: normal (N(0,1), for normalised inputs) or uniform (U[0,1), for
    /// models that take raw [0,1] images). --act-ranges noise always uses uniform (SQuant).
    #[arg(long, default_value = "normal", value_parser = ["normal", "uniform"])]
    noise_input: String,
    /// Range of the model input, e.g. -2.118:2.640, so the first layer runs in integers too.
    #[arg(long, value_name = "LO:HI", allow_hyphen_values = true)]
    input_range: Option<String>,
    /// Keep layers float: a node name, weight name, output value name (as `validate
    /// --per-layer` lists them) or glob pattern (`*`, `?`); repeatable.
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
    /// Directory of your own inputs for --act-ranges calibrate: images (with the
    /// preprocessing flags or --preset), float32 .npy arrays, or IDX files.
    #[arg(long, value_name = "DIR")]
    calibrate: Option<PathBuf>,
    /// Calibration range: max|x|, or a percentile of |x| with --percentile.
    #[arg(long)]
    percentile: Option<f64>,
    /// Output format: convinteger (QuantizeLinear + ConvInteger/MatMulInteger: tract, ONNX
    /// Runtime >= 1.24), convinteger-u8 (the same re-encoded for every ONNX Runtime version),
    /// qdq (QuantizeLinear/DequantizeLinear around float ops, int8 only: TensorRT), qdq-u8
    /// (the same with uint8 non-negative activations that absorb Relu/Clip: fast ONNX Runtime).
    #[arg(long, value_parser = ["convinteger", "convinteger-u8", "qdq", "qdq-u8"])]
    format: Option<String>,
    /// Pick the format for a runtime: tract (convinteger), ort (qdq-u8 --qdq-outputs all:
    /// every convolution fused to QLinearConv),
    /// ort-legacy (convinteger-u8), tensorrt (qdq, int8 only).
    #[arg(long, value_parser = ["tract", "ort", "ort-legacy", "tensorrt"])]
    target: Option<String>,
    /// Q/DQ formats: exact puts a Q -> DQ after a layer only where the next layers quantize
    /// that value at the same scale anyway, so the model computes what convinteger computes;
    /// all also quantizes every other layer output and both inputs of residual Adds, so ONNX
    /// Runtime fuses every convolution (faster), at the cost of extra rounding. Default: all
    /// with --target ort, else exact.
    #[arg(long, value_parser = ["exact", "all"])]
    qdq_outputs: Option<String>,
    /// Activation encoding: auto (uint8 where the value is non-negative, e.g. after Relu; else
    /// int8) or int8 everywhere (TensorRT; --format qdq always uses int8).
    #[arg(long, default_value = "auto", value_parser = ["auto", "int8"])]
    activation_type: String,
    /// Write the JSON report (per-layer scales, flips, ranges, skipped nodes) here.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Run the float and the int8 model in tract and compare them (on --validate-inputs, or
    /// seeded synthetic inputs).
    #[arg(long)]
    validate: bool,
    /// Images (JPEG/PNG), .npy files, IDX files or folders for --validate.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    validate_inputs: Vec<PathBuf>,
    #[command(flatten)]
    inputs: InputArgs,
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
        Command::Quantize(args) => return quantize(*args),
        Command::Validate(args) => {
            let float = isquant::load(&args.float)?.model;
            let int8 = isquant::load(&args.int8)?.model;
            return run_validation(&float, &int8, &args.inputs_paths, &args.inputs, None);
        }
        Command::Check { model, target } => {
            let loaded = isquant::load(&model)?;
            let t = isquant::check::Target::parse(&target)
                .ok_or_else(|| isquant::Error::Config(format!("unknown target {target}")))?;
            let v = isquant::check::check(&loaded.model, t);
            if v.is_empty() {
                out!("{}: conforms to the {target} rules", model.display());
                return Ok(ExitCode::SUCCESS);
            }
            out!(
                "{}: {} rule(s) of {target} broken",
                model.display(),
                v.len()
            );
            for x in &v {
                out!("  {x}");
            }
            return Ok(ExitCode::from(1));
        }
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
                out!("{text}");
            } else {
                out!("{}", isquant::inspect::render(&report).trim_end());
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
            out!("{line}");
            if loaded.info.external_tensors > 0 && written.external.is_none() {
                out!(
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
            out!(
                "folded {} BatchNormalization node(s), kept {}",
                report.folded.len(),
                report.kept.len()
            );
            for f in &report.folded {
                out!("  fold  {} -> {} ({})", f.bn, f.layer, f.direction);
            }
            for k in &report.kept {
                out!("  keep  {}: {}", k.node, k.reason);
            }
            out!("wrote {written} in {:.2?}", start.elapsed());
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
    Ok(args.inputs.preset.as_deref().map(preset_range))
}

fn quantize(args: QuantizeArgs) -> isquant::Result<ExitCode> {
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
        "noise-channels" => ActRanges::NoiseChannels,
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
    use isquant::passes::emit::Format;
    let format = match (args.format.as_deref(), args.target.as_deref()) {
        (Some(f), Some(t)) => {
            let implied = match t {
                "tract" => "convinteger",
                "ort-legacy" => "convinteger-u8",
                "ort" => "qdq-u8",
                _ => "qdq",
            };
            if f != implied {
                return Err(isquant::Error::Config(format!(
                    "--format {f} contradicts --target {t} (which means --format {implied})"
                )));
            }
            f
        }
        (Some(f), None) => f,
        (None, Some("ort")) => "qdq-u8",
        (None, Some("tensorrt")) => "qdq",
        (None, Some("ort-legacy")) => "convinteger-u8",
        (None, _) => "convinteger",
    };
    let format = match format {
        "qdq" => Format::Qdq,
        "qdq-u8" => Format::QdqU8,
        "convinteger-u8" => Format::ConvIntegerU8,
        _ => Format::ConvInteger,
    };
    let qdq_outputs =
        args.qdq_outputs
            .as_deref()
            .unwrap_or(if args.target.as_deref() == Some("ort") {
                "all"
            } else {
                "exact"
            });
    if qdq_outputs == "all" && !format.is_qdq() {
        return Err(isquant::Error::Config(format!(
            "--qdq-outputs all needs --format qdq or qdq-u8 (the format is {})",
            format.name()
        )));
    }
    let cfg = QuantizeConfig {
        format,
        qdq_outputs: if qdq_outputs == "all" {
            isquant::passes::emit::QdqOutputs::All
        } else {
            isquant::passes::emit::QdqOutputs::Exact
        },
        activation_type: if args.activation_type == "int8" {
            q::ActivationType::Int8
        } else {
            q::ActivationType::Auto
        },
        correct_bias: args.correct_bias == "on",
        equalize: match args.equalize.as_str() {
            "on" => q::Equalize::On,
            "off" => q::Equalize::Off,
            _ => q::Equalize::Auto,
        },
        absorb_bias: args.absorb_bias == "on",
        equalize_objective: if args.equalize_by == "weights" {
            isquant::passes::equalize::Objective::Weights
        } else {
            isquant::passes::equalize::Objective::Noise
        },
        relu6: match args.relu6.as_str() {
            "relu" => isquant::passes::equalize::Relu6::Relu,
            "stop" => isquant::passes::equalize::Relu6::Stop,
            _ => isquant::passes::equalize::Relu6::PerChannel,
        },
        granularity: if args.granularity == "per-channel" {
            q::Granularity::PerChannel
        } else {
            q::Granularity::PerTensor
        },
        weight_bits: args.weight_bits,
        act_bits: args.act_bits,
        rounding,
        act_ranges,
        bn_sigmas: args.bn_sigmas,
        noise_sigmas: args.noise_sigmas,
        noise_input: if args.noise_input == "uniform" {
            q::NoiseInput::Uniform
        } else {
            q::NoiseInput::Normal
        },
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
        Some(dir) => Some(calibration_batches(
            &original,
            dir,
            &args.inputs,
            cfg.input_shape.as_deref(),
        )?),
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
        out!("report     {}", path.display());
    }
    out!("wrote      {written} in {:.2?}", start.elapsed());
    if args.validate || !args.validate_inputs.is_empty() {
        return run_validation(
            &original,
            &quantized.model,
            &args.validate_inputs,
            &args.inputs,
            cfg.input_shape.as_deref(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(
    args: &QuantizeArgs,
    r: &isquant::passes::quantize::QuantizeReport,
    before: usize,
    after: usize,
) {
    use std::collections::BTreeMap;
    out!("isquant {} quantize {}", r.version, args.input.display());
    let fwd = r
        .bn_folded
        .iter()
        .filter(|f| f.direction == "forward")
        .count();
    out!(
        "BN         {} folded ({} backward, {fwd} forward), {} kept",
        r.bn_folded.len(),
        r.bn_folded.len() - fwd,
        r.bn_kept.len()
    );
    for k in &r.bn_kept {
        out!("           kept {}: {}", k.node, k.reason);
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
    out!(
        "layers     {} quantized: {} integer ({}), {} weight-only int8",
        r.layers.len(),
        r.integer_layers(),
        ops.join(", "),
        r.layers.len() - r.integer_layers()
    );
    out!(
        "weights    W{} per-tensor symmetric, rounding {}: {flips} of {weights} weights differ from round-to-nearest",
        r.config.weight_bits, r.rounding
    );
    if let Some(e) = &r.equalized {
        out!(
            "equalize   {} layer pairs in {} passes, {} ReLU6 rewritten",
            e.pairs.len(),
            e.passes,
            e.relu6_rewritten
        );
        if let Some(why) = &r.equalize_note {
            out!("           {why}");
        }
        if let Some(c) = &e.float_change {
            out!(
                "           ReLU6 replaced by Relu changed the float model: SQNR {:.2} dB against the original, max |diff| {:.3e}, top-1 agreement {:.2} % ({} seeded N(0,1) inputs)",
                c.sqnr_db,
                c.max_abs,
                100.0 * c.top1_agreement,
                c.inputs
            );
        }
    }
    if r.config.correct_bias {
        out!(
            "bias       {} layers corrected (data-free: E[x] from BN statistics, else from the noise pass)",
            r.bias_corrected
        );
    }
    let rules: Vec<String> = rules.iter().map(|(k, v)| format!("{v} {k}")).collect();
    out!("activations A{}: {}", r.config.act_bits, rules.join(", "));
    for l in r.layers.iter().filter(|l| l.mode != "integer") {
        if let Some(why) = &l.float_input_reason {
            out!(
                "           {} ({}) keeps a float input: {why}",
                l.node,
                l.op_type
            );
        }
    }
    for s in &r.skipped {
        out!("skipped    {} ({}): {}", s.node, s.op_type, s.reason);
    }
    if args.verbose {
        out!(
            "{:<40} {:<8} {:<11} {:>11} {:<6} {:<14} {:>11}",
            "layer",
            "op",
            "mode",
            "w scale",
            "act",
            "rule",
            "act scale"
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
            out!(
                "{:<40} {:<8} {:<11} {:>11.4e} {:<6} {:<14} {:>11}",
                l.node,
                l.op_type,
                l.mode,
                l.weight_scale,
                dt,
                rule,
                sc
            );
        }
    }
    out!(
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
    out!("time       {}", t.join(", "));
}

fn preset_range(p: &str) -> (f32, f32) {
    match p {
        "imagenet" => (-2.1179, 2.6400),
        "mnist" => (-0.4242, 2.8215),
        "fashion-mnist" => (-0.8102, 2.0227),
        "unit" => (0.0, 1.0),
        "symmetric" => (-1.0, 1.0),
        _ => (0.0, 255.0),
    }
}

fn floats(s: &str, what: &str) -> isquant::Result<Vec<f32>> {
    s.split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            isquant::Error::Config(format!(
                "{what} {s:?} is not a comma-separated list of numbers"
            ))
        })
}

fn hw(s: &str, what: &str) -> isquant::Result<(u32, u32)> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
    match nums.as_deref() {
        Some([n]) => Ok((*n, *n)),
        Some([h, w]) => Ok((*h, *w)),
        _ => Err(isquant::Error::Config(format!(
            "{what} {s:?} is not N or HxW"
        ))),
    }
}

fn preprocess(a: &InputArgs) -> isquant::Result<isquant::inputs::Preprocess> {
    use isquant::inputs::Preprocess;
    let mut p = match a.preset.as_deref() {
        Some("imagenet") => Preprocess::imagenet(),
        Some("mnist") => Preprocess {
            mean: vec![0.1307],
            std: vec![0.3081],
            gray: true,
            ..Preprocess::default()
        },
        Some("fashion-mnist") => Preprocess {
            mean: vec![0.2860],
            std: vec![0.3530],
            gray: true,
            ..Preprocess::default()
        },
        Some("symmetric") => Preprocess {
            mean: vec![0.5],
            std: vec![0.5],
            ..Preprocess::default()
        },
        Some("pixels") => Preprocess {
            scale: 1.0,
            ..Preprocess::default()
        },
        _ => Preprocess::default(),
    };
    if let Some(r) = &a.resize {
        if r.contains(['x', 'X']) {
            p.resize_exact = Some(hw(r, "--resize")?);
            p.resize_shorter = None;
        } else {
            p.resize_shorter = Some(hw(r, "--resize")?.0);
            p.resize_exact = None;
        }
    }
    if let Some(c) = &a.crop {
        p.crop = Some(hw(c, "--crop")?);
    }
    if let Some(m) = &a.mean {
        p.mean = floats(m, "--mean")?;
    }
    if let Some(sd) = &a.std {
        p.std = floats(sd, "--std")?;
        if p.std.contains(&0.0) {
            return Err(isquant::Error::Config("--std may not contain 0".into()));
        }
    }
    if let Some(sc) = a.scale {
        p.scale = sc;
    }
    p.crop_first |= a.crop_first;
    p.bgr |= a.bgr;
    p.gray |= a.gray;
    p.nhwc = a.layout == "nhwc";
    Ok(p)
}

/// The model input's dimensions (`None` = symbolic or unknown).
fn input_dims(m: &isquant::graph::Model) -> isquant::Result<Vec<Option<usize>>> {
    let inputs = m.graph.real_inputs();
    let [input] = inputs.as_slice() else {
        return Err(isquant::Error::Config(format!(
            "validation supports models with one input; this one has {}",
            inputs.len()
        )));
    };
    Ok(m.graph
        .input_dims(input.name.as_deref().unwrap_or(""))
        .unwrap_or_default())
}

fn load_labels(
    path: &Path,
    samples: &[isquant::inputs::Sample],
) -> isquant::Result<Vec<Option<usize>>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("idx1") {
        let l = isquant::inputs::load_idx_labels(path)?;
        return Ok(samples
            .iter()
            .enumerate()
            .map(|(i, _)| l.get(i).copied())
            .collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| isquant::Error::io("read", path, e))?;
    let mut by_name = std::collections::HashMap::new();
    let mut in_order = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| {
            s.parse::<usize>().map_err(|_| isquant::Error::Model {
                path: path.into(),
                reason: format!("line {}: `{s}` is not a class index", n + 1),
            })
        };
        match parts.as_slice() {
            [l] => in_order.push(parse(l)?),
            [f, l] => {
                by_name.insert(f.to_string(), parse(l)?);
            }
            _ => {
                return Err(isquant::Error::Model {
                    path: path.into(),
                    reason: format!("line {}: expected `LABEL` or `FILE LABEL`", n + 1),
                })
            }
        }
    }
    Ok(samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            by_name
                .get(&s.name)
                .copied()
                .or_else(|| in_order.get(i).copied())
        })
        .collect())
}

fn run_validation(
    float: &isquant::graph::Model,
    int8: &isquant::graph::Model,
    paths: &[PathBuf],
    a: &InputArgs,
    input_shape: Option<&[usize]>,
) -> isquant::Result<ExitCode> {
    let p = preprocess(a)?;
    let dims = match input_shape {
        Some(s) => s.iter().map(|&d| Some(d)).collect(),
        None => input_dims(float)?,
    };
    let model_hw = if dims.len() == 4 {
        let (h, w) = if p.nhwc {
            (dims[1], dims[2])
        } else {
            (dims[2], dims[3])
        };
        h.zip(w).map(|(h, w)| (h as u32, w as u32))
    } else {
        None
    };
    let (samples, synthetic) = load_samples(paths, a, &dims, &p, model_hw)?;
    let batch = a.batch.unwrap_or(match dims.first() {
        Some(Some(b)) => *b,
        _ => 16,
    });
    let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    let started = Instant::now();
    let progress = |done: usize, total: usize| {
        if started.elapsed().as_secs_f64() < 1.0 && done < total {
            return;
        }
        if let Ok(mut b) = bar.lock() {
            let pb = b.get_or_insert_with(|| {
                let pb = indicatif::ProgressBar::new(total as u64);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "validate   [{bar:30}] {pos}/{len} batches, {per_sec}, eta {eta}",
                ) {
                    pb.set_style(style.progress_chars("=> "));
                }
                pb
            });
            pb.set_position(done as u64);
        }
    };
    let v = isquant::validate::validate(
        float,
        int8,
        &samples,
        &isquant::validate::ValidateOptions {
            synthetic,
            batch,
            per_layer: a.per_layer,
            keep_outputs: a.save_tensors.is_some(),
        },
        &progress,
    )?;
    if let Ok(mut b) = bar.lock() {
        if let Some(pb) = b.take() {
            pb.finish_and_clear();
        }
    }
    let source = if synthetic {
        "seeded synthetic inputs (not real data: agreement only)".to_string()
    } else {
        format!(
            "inputs from {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    out!(
        "validate   tract, {} {source}, {:.1} inputs/s",
        v.samples,
        v.samples_per_second
    );
    let mut failures = Vec::new();
    for o in &v.outputs {
        let mut line = format!("output     {} {:?}:", o.name, o.shape);
        if let Some(t1) = o.top1_agreement {
            line.push_str(&format!(" top-1 agreement {:.2} %,", t1 * 100.0));
        }
        if let Some(t5) = o.top5_agreement {
            line.push_str(&format!(" top-5 {:.2} %,", t5 * 100.0));
        }
        line.push_str(&format!(
            " SQNR {:.2} dB, cosine {:.5}, max |error| {:.3e}",
            o.sqnr_db, o.cosine, o.max_abs_error
        ));
        out!("{line}");
        if let (Some(fa), Some(qa)) = (o.float_accuracy, o.int8_accuracy) {
            out!(
                "accuracy   float {:.2} %, int8 {:.2} % (drop {:.2} points) on {} labeled inputs",
                fa * 100.0,
                qa * 100.0,
                (fa - qa) * 100.0,
                v.labeled
            );
            if let Some(max) = a.max_accuracy_drop {
                if (fa - qa) * 100.0 > max {
                    failures.push(format!(
                        "accuracy drop {:.2} > {max} points",
                        (fa - qa) * 100.0
                    ));
                }
            }
        } else if a.max_accuracy_drop.is_some() && !synthetic {
            return Err(isquant::Error::Config(
                "--max-accuracy-drop needs labels (--label-regex or --labels)".into(),
            ));
        }
        if let (Some(min), Some(t1)) = (a.min_agreement, o.top1_agreement) {
            if t1 * 100.0 < min {
                failures.push(format!("top-1 agreement {:.2} % < {min} %", t1 * 100.0));
            }
        }
        if let Some(min) = a.min_sqnr {
            if o.sqnr_db < min {
                failures.push(format!("SQNR {:.2} dB < {min} dB", o.sqnr_db));
            }
        }
    }
    if a.per_layer {
        out!(
            "per-layer  SQNR of each quantized layer's output vs float, worst first (local dB: the"
        );
        out!("           layer's own contribution with its input's noise removed; lowest = try --skip):");
        let w = v
            .layers
            .iter()
            .map(|l| l.value.len())
            .max()
            .unwrap_or(5)
            .max(5);
        out!(
            "  {:<w$} {:<26} {:>8}  {:>8} {:>10} {:>10}",
            "value",
            "op",
            "SQNR dB",
            "local dB",
            "act scale",
            "w scale"
        );
        for l in &v.layers {
            let f = |x: Option<f32>| x.map_or("-".to_string(), |v| format!("{v:.3e}"));
            out!(
                "  {:<w$} {:<26} {:>8.2}{} {:>8.2} {:>10} {:>10}",
                l.value,
                l.op,
                l.sqnr_db,
                if l.rescaled { "*" } else { " " },
                l.local_sqnr_db,
                f(l.act_scale),
                f(l.weight_scale)
            );
        }
        if v.layers.iter().any(|l| l.rescaled) {
            out!("           * rescaled per channel by cross-layer equalization: compared up to one gain per channel");
        }
    }
    if let Some(dir) = &a.save_tensors {
        save_tensors(dir, &samples, &v)?;
    }
    if let Some(path) = &a.json {
        let json = serde_json::to_vec_pretty(&v)
            .map_err(|e| isquant::Error::Config(format!("cannot encode JSON: {e}")))?;
        io::write_atomic(path, &json)?;
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("below threshold: {}", failures.join("; "));
        Ok(ExitCode::from(1))
    }
}

fn save_tensors(
    dir: &Path,
    samples: &[isquant::inputs::Sample],
    v: &isquant::validate::Validation,
) -> isquant::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| isquant::Error::io("create", dir, e))?;
    let views: Vec<_> = samples.iter().map(|s| s.tensor.view()).collect();
    let inputs = ndarray::stack(ndarray::Axis(0), &views)
        .map_err(|e| isquant::Error::Config(format!("cannot stack inputs: {e}")))?;
    isquant::data::write_npy(&dir.join("inputs.npy"), &inputs)?;
    for (k, name) in [(0usize, "float.npy"), (1, "int8.npy")] {
        let parts: Vec<_> = v
            .kept_outputs
            .iter()
            .map(|o| if k == 0 { o.0.view() } else { o.1.view() })
            .collect();
        let all = ndarray::concatenate(ndarray::Axis(0), &parts)
            .map_err(|e| isquant::Error::Config(format!("cannot join outputs: {e}")))?;
        isquant::data::write_npy(&dir.join(name), &all)?;
    }
    let labels: String = samples
        .iter()
        .map(|s| {
            format!(
                "{} {}\n",
                s.name,
                s.label.map_or("-".to_string(), |l| l.to_string())
            )
        })
        .collect();
    isquant::onnx::io::write_atomic(&dir.join("labels.txt"), labels.as_bytes())
}

/// Loads inputs from files/folders (or synthetic ones when none are given), applies the limit,
/// labels and a shape check. Returns the samples and whether they are synthetic.
fn load_samples(
    paths: &[PathBuf],
    a: &InputArgs,
    dims: &[Option<usize>],
    p: &isquant::inputs::Preprocess,
    model_hw: Option<(u32, u32)>,
) -> isquant::Result<(Vec<isquant::inputs::Sample>, bool)> {
    use isquant::inputs::{self, Kind};
    let p = p.clone();
    let files = inputs::expand(paths)?;
    let synthetic = files.is_empty();
    let mut samples = Vec::new();
    if synthetic {
        if dims.iter().skip(1).any(Option::is_none) || dims.is_empty() {
            return Err(isquant::Error::Config(
                "the model input has open dimensions: give inputs, or --input-shape to quantize"
                    .into(),
            ));
        }
        let shape: Vec<usize> = dims.iter().skip(1).map(|d| d.unwrap_or(1)).collect();
        let (lo, hi) = a.preset.as_deref().map_or((-1.0, 1.0), preset_range);
        samples = inputs::synthetic(&shape, a.synthetic.max(1), lo, hi);
    }
    let re = a
        .label_regex
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| isquant::Error::Config(format!("--label-regex: {e}")))?;
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match inputs::kind(f) {
            Some(Kind::Image) => samples.push(inputs::Sample {
                tensor: inputs::load_image(f, &p, model_hw)?,
                label: re
                    .as_ref()
                    .and_then(|re| inputs::label_from_name(&name, re)),
                name,
            }),
            Some(Kind::Npy) => {
                let t = isquant::data::read_npy(f)?;
                let t = if t.ndim() == dims.len() && t.shape().first() == Some(&1) {
                    t.index_axis_move(ndarray::Axis(0), 0)
                } else {
                    t
                };
                samples.push(inputs::Sample {
                    tensor: t,
                    label: re
                        .as_ref()
                        .and_then(|re| inputs::label_from_name(&name, re)),
                    name,
                });
            }
            Some(Kind::Idx) => samples.extend(inputs::load_idx_images(f, &p, a.limit)?),
            None => {
                return Err(isquant::Error::Config(format!(
                    "{} is not an image (.jpg/.png), .npy or IDX file",
                    f.display()
                )))
            }
        }
    }
    if let Some(l) = a.limit {
        samples.truncate(l);
    }
    if let Some(lp) = &a.labels {
        let labels = load_labels(lp, &samples)?;
        for (s, l) in samples.iter_mut().zip(labels) {
            if l.is_some() {
                s.label = l;
            }
        }
    }
    let expected: Vec<usize> = dims.iter().skip(1).filter_map(|d| *d).collect();
    if let Some(s) = samples.first() {
        let open = dims.iter().skip(1).any(Option::is_none);
        if !open && s.tensor.shape() != expected.as_slice() {
            return Err(isquant::Error::Config(format!(
                "input `{}` has shape {:?} after preprocessing, but the model expects {:?} (check --resize/--crop/--gray/--layout)",
                s.name,
                s.tensor.shape(),
                expected
            )));
        }
    }
    Ok((samples, synthetic))
}

/// Calibration inputs (images with the preprocessing flags, `.npy`, IDX) as batches of 8.
fn calibration_batches(
    model: &isquant::graph::Model,
    dir: &Path,
    a: &InputArgs,
    input_shape: Option<&[usize]>,
) -> isquant::Result<Vec<Vec<ndarray::ArrayD<f32>>>> {
    let p = preprocess(a)?;
    let dims: Vec<Option<usize>> = match input_shape {
        Some(s) => s.iter().map(|&d| Some(d)).collect(),
        None => input_dims(model)?,
    };
    let model_hw = model_hw(&dims, &p);
    let (samples, synthetic) = load_samples(&[dir.to_path_buf()], a, &dims, &p, model_hw)?;
    if synthetic || samples.is_empty() {
        return Err(isquant::Error::Config(format!(
            "{} holds no calibration inputs (images, .npy or IDX files)",
            dir.display()
        )));
    }
    let per = match dims.first() {
        Some(Some(b)) => *b,
        _ => 8,
    };
    samples
        .chunks(per)
        .map(|c| {
            let views: Vec<_> = c.iter().map(|s| s.tensor.view()).collect();
            ndarray::stack(ndarray::Axis(0), &views)
                .map(|b| vec![b])
                .map_err(|e| {
                    isquant::Error::Config(format!("calibration inputs differ in shape: {e}"))
                })
        })
        .collect()
}

fn model_hw(dims: &[Option<usize>], p: &isquant::inputs::Preprocess) -> Option<(u32, u32)> {
    if dims.len() != 4 {
        return None;
    }
    let (h, w) = if p.nhwc {
        (dims[1], dims[2])
    } else {
        (dims[2], dims[3])
    };
    h.zip(w).map(|(h, w)| (h as u32, w as u32))
}
