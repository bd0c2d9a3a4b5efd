//! `isquant quantize`.

use std::path::PathBuf;
use std::time::Instant;

use crate::check::Target;
use crate::guard::{GuardMode, GuardOptions};
use crate::inputs::Preset;
use crate::passes::emit::{Format, QdqOutputs};
use crate::passes::equalize::{Objective, Relu6};
use crate::pipeline::{
    ActRanges, ActivationType, CalibrationMethod, Equalize, Granularity, NoiseInput,
    QuantizeConfig, RenderOptions, Switch,
};
use crate::squant::Rounding;

use super::validate::{run_validation, InputArgs};
use super::{
    describe_written, input_files, out, parse_sizes, protected, ModelInput, EXIT_GUARD_FAILED,
    EXIT_OK,
};
use crate::onnx::io::{check_files, NamedPath};

pub(super) const EXAMPLES: &str = "\
Examples:
  isquant quantize fixtures/fmnist-small-bn.onnx -o out.onnx --validate
  isquant quantize mnv2.onnx -o mnv2-int8.onnx --preset imagenet --report mnv2.json
  isquant quantize mnv2.onnx -o w7a7.onnx --weight-bits 7 --act-bits 7
  isquant quantize model.onnx -o out.onnx --skip '/classifier/*' --keep-first-float
  isquant quantize model.onnx -o out.onnx --act-ranges calibrate --calibrate inputs/
  isquant quantize det.onnx -o det-int8.onnx --input-shape 1,3,640,640 --preset unit
  isquant quantize model.onnx -o out.onnx --validate-inputs images/ --preset imagenet
      (the accuracy guard then measures on your images; exit 3 if it fails)

The model input has no statistics: give --input-range LO:HI (or --preset imagenet) to quantize
the first layer's input too; otherwise that layer keeps a float input and int8 weights.";

#[derive(clap::Args, Debug)]
pub(super) struct QuantizeArgs {
    /// The float ONNX model (never modified).
    pub(super) input: PathBuf,
    /// Where to write the int8 model.
    // Required on the command line; the Python API makes it optional (`api::quantize`).
    #[arg(short, long, required = true)]
    pub(super) output: Option<PathBuf>,
    /// Weight bits (2..=8), one symmetric scale per tensor, zero-point 0.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=8))]
    weight_bits: u32,
    /// Activation bits (2..=8), one scale per tensor, zero-point 0.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=8))]
    act_bits: u32,
    /// Weight scales: one per tensor (ISQuant) or one per output channel (what calibrated
    /// tools use; applied in the rescale or a per-axis DequantizeLinear).
    #[arg(long, value_enum, default_value_t = Granularity::PerTensor)]
    granularity: Granularity,
    /// Data-free bias correction: subtract the expected output shift of the rounded weights,
    /// with E[x] from BatchNormalization statistics (DFQ), else from the per-channel means of
    /// the noise / calibration pass; layers neither reaches are left alone.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    correct_bias: Switch,
    /// Cross-layer equalization (DFQ): rescale Conv→(Relu)→Conv chains so each tensor's
    /// channels share one range; the float model is unchanged.
    #[arg(long, value_enum, default_value_t = Equalize::Auto)]
    equalize: Equalize,
    /// High-bias absorption after equalization (DFQ): move `max(0, μ − 3σ)` of each equalized
    /// layer's bias into the next layer's bias (needs --equalize on and BN statistics).
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    absorb_bias: Switch,
    /// How equalization picks each channel's scale.
    #[arg(long, value_enum, default_value_t = Objective::Noise)]
    equalize_by: Objective,
    /// ReLU6 between equalized layers.
    #[arg(long, value_enum, default_value_t = Relu6::PerChannel)]
    relu6: Relu6,
    /// Weight rounding.
    #[arg(long, value_enum, default_value_t = Rounding::Squant)]
    rounding: Rounding,
    /// Where activation ranges come from (noise-channels: the old name of auto).
    #[arg(long, value_enum, default_value_t = ActRanges::Auto)]
    act_ranges: ActRanges,
    /// N of the BN rule: a range covers mean ± N·std of each channel.
    #[arg(long, default_value_t = 6.0)]
    bn_sigmas: f64,
    /// N of the same rule on per-channel statistics of the noise pass (where BN statistics do
    /// not reach: BN-folded exports, models without BN).
    #[arg(long, default_value_t = 4.0)]
    noise_sigmas: f64,
    /// Images of the noise pass (--act-ranges noise always uses uniform, as SQuant does).
    #[arg(long, value_enum, default_value_t = NoiseInput::Normal)]
    noise_input: NoiseInput,
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
    /// Most inputs in the noise pass (it stops from 16 on once its ranges settle).
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
    /// Output format (default convinteger, or what --target implies).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Pick the format for a runtime: tract (convinteger), ort (qdq-u8 --qdq-outputs all:
    /// every convolution fused to QLinearConv), ort-legacy (convinteger-u8), tensorrt (qdq,
    /// int8 only).
    #[arg(long, value_enum)]
    target: Option<Target>,
    /// Q/DQ formats: where a Q -> DQ goes after a layer. Default: all with --target ort, else
    /// exact.
    #[arg(long, value_enum)]
    qdq_outputs: Option<QdqOutputs>,
    /// Activation encoding (--format qdq always uses int8).
    #[arg(long, value_enum, default_value_t = ActivationType::Auto)]
    activation_type: ActivationType,
    /// Write the JSON report (per-layer scales, flips, ranges, the layer table, skipped nodes)
    /// here.
    #[arg(long, value_name = "FILE.json")]
    pub(super) report: Option<PathBuf>,
    /// Run the float and the int8 model in tract and compare them (on --validate-inputs, or
    /// seeded synthetic inputs).
    #[arg(long)]
    validate: bool,
    /// Images (JPEG/PNG), .npy files, IDX files or folders for --validate.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub(super) validate_inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub(super) inputs: InputArgs,
    /// The data-free accuracy guard: run float and int8 on seeded inputs (noise, smooth
    /// images, strokes) and compare each output (its logits before a final Sigmoid/Softmax).
    /// report: say so, exit 3 when an output fails; fix: when one fails, also weigh
    /// per-channel weights, noise ranges and bias correction off, then keep the worst layers
    /// float (up to --guard-max-float), keeping what helps.
    #[arg(long, value_enum, default_value_t = GuardMode::Fix)]
    guard: GuardMode,
    /// Guard threshold: the median SQNR over the three input families, dB.
    #[arg(long, default_value_t = crate::guard::DEFAULT_MIN_SQNR_DB, value_name = "DB")]
    guard_min_sqnr: f64,
    /// Most layers --guard fix keeps float.
    #[arg(long, default_value_t = 4, value_name = "N")]
    guard_max_float: usize,
    /// Print every layer.
    #[arg(short, long)]
    verbose: bool,
    /// Put every initializer of 1 kB or more in a fresh `<output>.<random>.data` (the data file
    /// the replaced output referenced is removed once the new model is in place).
    #[arg(long)]
    external_data: bool,
}

impl QuantizeArgs {
    /// Whether the run ends with a validation (`--validate`, or `--validate-inputs` given).
    pub(super) fn validates(&self) -> bool {
        self.validate || !self.validate_inputs.is_empty()
    }

    fn input_range(&self) -> crate::Result<Option<(f32, f32)>> {
        let Some(r) = &self.input_range else {
            return Ok(self.inputs.preset.map(Preset::input_range));
        };
        let parsed = r.split_once(':').and_then(|(a, b)| {
            Some((a.trim().parse::<f32>().ok()?, b.trim().parse::<f32>().ok()?))
        });
        parsed
            .map(Some)
            .ok_or_else(|| crate::Error::Config(format!("--input-range {r:?} is not LO:HI")))
    }

    fn config(&self) -> crate::Result<QuantizeConfig> {
        Ok(QuantizeConfig {
            format: Format::resolve(self.format, self.target)?,
            qdq_outputs: self
                .qdq_outputs
                .unwrap_or(QdqOutputs::for_target(self.target)),
            activation_type: self.activation_type,
            correct_bias: self.correct_bias.is_on(),
            equalize: self.equalize,
            absorb_bias: self.absorb_bias.is_on(),
            equalize_objective: self.equalize_by,
            relu6: self.relu6,
            granularity: self.granularity,
            weight_bits: self.weight_bits,
            act_bits: self.act_bits,
            rounding: self.rounding,
            act_ranges: match self.act_ranges {
                ActRanges::Auto if self.calibrate.is_some() => ActRanges::Calibrate,
                other => other,
            },
            bn_sigmas: self.bn_sigmas,
            noise_sigmas: self.noise_sigmas,
            noise_input: self.noise_input,
            input_range: self.input_range()?,
            skip: self.skip.clone(),
            keep_first_float: self.keep_first_float,
            keep_last_float: self.keep_last_float,
            noise_batch: self.noise_batch,
            noise_seed: self.noise_seed,
            input_shape: self
                .input_shape
                .as_deref()
                .map(|s| parse_sizes(s, "--input-shape"))
                .transpose()?,
            calibration_method: self
                .percentile
                .map_or(CalibrationMethod::MinMax, CalibrationMethod::Percentile),
        })
    }
}

/// What a quantize run made, before anything is printed: the same for the command line and
/// the Python API.
pub(super) struct Outcome {
    /// The int8 model, encoded with every tensor inline (what `-o` holds unless the weights
    /// went to external data).
    pub(super) model_bytes: Vec<u8>,
    /// The JSON report with the guard's (what `--report` writes).
    pub(super) report_json: Vec<u8>,
    /// The text the command line prints first: the summary, then the guard's lines (no
    /// trailing newline).
    pub(super) summary: String,
    /// What was written to `-o`, if it was given.
    pub(super) written: Option<crate::onnx::io::Written>,
    /// The guard ran and failed (exit 3 once the model is written).
    pub(super) guard_failed: bool,
    /// The float model as loaded (validation compares with it).
    pub(super) original: crate::graph::Model,
    /// The int8 model.
    pub(super) int8: crate::graph::Model,
    /// Files no report or metrics file may overwrite.
    pub(super) keep: Vec<PathBuf>,
    /// The `--input-shape` given, parsed.
    pub(super) input_shape: Option<Vec<usize>>,
}

/// Quantizes `input` as `args` say and writes the model to `args.output` when given; computes
/// the report and the summary but writes and prints neither. `progress` hears each stage.
pub(super) fn quantize(
    args: &QuantizeArgs,
    input: &ModelInput,
    progress: &mut dyn FnMut(&str),
) -> crate::Result<Outcome> {
    let cfg = args.config()?;
    cfg.validate(args.calibrate.is_some())?;
    // No output may be an input or another output: refused before any work (again once the
    // model's external data files are known).
    let files = |loaded: Option<&crate::LoadedModel>| {
        let mut inputs = input.files("the input model", loaded);
        inputs.extend(input_files("--validate-inputs", &args.validate_inputs));
        inputs.extend(input_files("--calibrate", args.calibrate.as_slice()));
        let mut outputs: Vec<NamedPath> = args
            .output
            .iter()
            .map(|p| NamedPath::new("-o", p))
            .collect();
        outputs.extend(args.report.iter().map(|p| NamedPath::new("--report", p)));
        args.inputs.files(&mut inputs, &mut outputs);
        check_files(&inputs, &outputs)
    };
    files(None)?;
    let loaded = input.load()?;
    files(Some(&loaded))?;
    let keep = protected(input, &loaded, args.output.as_deref());
    let original = loaded.model.clone();
    let size_before = crate::onnx::io::encode_model(&original.to_proto()).len();
    let calibration = match &args.calibrate {
        Some(dir) => {
            let preprocess = args.inputs.preprocess()?;
            let dims = args.inputs.dims(&original, cfg.input_shape.as_deref())?;
            let paths = [dir.clone()];
            let source = args.inputs.source(&paths, &preprocess);
            Some(crate::inputs::calibration_batches(&source, &dims)?)
        }
        None => None,
    };
    // The guard measures on the user's inputs when there are any (validation, calibration).
    let own: Vec<PathBuf> = args
        .validate_inputs
        .iter()
        .chain(args.calibrate.iter())
        .cloned()
        .collect();
    let user_inputs = if own.is_empty() || args.guard == GuardMode::Off {
        Vec::new()
    } else {
        let preprocess = args.inputs.preprocess()?;
        let dims = args.inputs.dims(&original, cfg.input_shape.as_deref())?;
        crate::inputs::load_samples(&args.inputs.source(&own, &preprocess), &dims)?.samples
    };
    let guard_opts = GuardOptions {
        mode: args.guard,
        min_sqnr_db: args.guard_min_sqnr,
        max_float_layers: args.guard_max_float,
        user_inputs,
        ..GuardOptions::default()
    };
    let (model, report, guard) = crate::guard::quantize(
        &original,
        &cfg,
        calibration.as_deref(),
        &guard_opts,
        progress,
    )?;
    let model_bytes = crate::onnx::io::encode_model(&model.to_proto());
    let written = match &args.output {
        Some(output) => Some(crate::save(
            &model,
            output,
            args.external_data,
            &input.source_files(&loaded),
        )?),
        None => None,
    };
    let mut summary = report
        .render(&RenderOptions {
            input: &input.label(),
            size_before,
            size_after: model_bytes.len(),
            verbose: args.verbose,
        })
        .trim_end()
        .to_string();
    if let Some(g) = &guard {
        summary.push('\n');
        summary.push_str(g.render().trim_end());
    }
    /// The report with the guard's beside it (flattened, so numbers keep their f32 form).
    #[derive(serde::Serialize)]
    struct Full<'a> {
        #[serde(flatten)]
        report: &'a crate::pipeline::QuantizeReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        guard: Option<&'a crate::guard::GuardReport>,
    }
    let full = Full {
        report: &report,
        guard: guard.as_ref(),
    };
    let report_json = serde_json::to_vec_pretty(&full)
        .map_err(|e| crate::Error::Config(format!("cannot encode the report: {e}")))?;
    let guard_failed = guard
        .as_ref()
        .is_some_and(|g| !g.passed && g.not_run.is_none());
    Ok(Outcome {
        model_bytes,
        report_json,
        summary,
        written,
        guard_failed,
        original,
        int8: model,
        keep,
        input_shape: cfg.input_shape,
    })
}

pub(super) fn run(args: QuantizeArgs) -> crate::Result<u8> {
    let start = Instant::now();
    let input = ModelInput::Path(args.input.clone());
    let mut progress = |stage: &str| eprintln!("isquant: {stage}...");
    let q = quantize(&args, &input, &mut progress)?;
    out!("{}", q.summary);
    if let Some(path) = &args.report {
        crate::write_file(path, &q.report_json, &q.keep)?;
        out!("report     {}", path.display());
    }
    if let (Some(output), Some(written)) = (&args.output, &q.written) {
        out!(
            "wrote      {} in {:.2?}",
            describe_written(output, written),
            start.elapsed()
        );
    }
    if args.validates() {
        let code = run_validation(
            &q.original,
            &q.int8,
            &args.validate_inputs,
            &args.inputs,
            q.input_shape.as_deref(),
            &q.keep,
        )?;
        if code != EXIT_OK {
            return Ok(code);
        }
    }
    if q.guard_failed {
        eprintln!("isquant: the guard failed (exit 3): the int8 model was written; see the guard lines above");
        return Ok(EXIT_GUARD_FAILED);
    }
    Ok(EXIT_OK)
}
