//! `isquant validate`, and the input flags it shares with `quantize --validate` and
//! `--calibrate`.

use std::path::PathBuf;
use std::time::Instant;

use crate::graph::Model;
use crate::inputs::{InputSource, Layout, Preprocess, Preset, Sample};
use crate::onnx::io::{check_files, NamedPath};
use crate::validate::render::{render, save_tensors, source_label, SAVED_TENSOR_FILES};
use crate::validate::{Thresholds, ValidateOptions, Validation};

use super::{input_files, out, ModelInput, EXIT_BELOW_THRESHOLD, EXIT_OK};

pub(super) const EXAMPLES: &str = "\
Examples:
  isquant validate float.onnx int8.onnx                       # seeded synthetic inputs
  isquant validate mnv2.onnx mnv2-int8.onnx photos/ --preset imagenet --per-layer
  isquant validate mnv2.onnx mnv2-int8.onnx val/ --preset imagenet --label-regex '_(\\d+)\\.jpg$'
  isquant validate fm.onnx fm-int8.onnx t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz \\
      --preset fashion-mnist --max-accuracy-drop 0.3 --json fm.json

Thresholds make the exit code 1 when missed.";

#[derive(clap::Args, Debug)]
pub(super) struct ValidateArgs {
    /// The float model.
    float: PathBuf,
    /// The quantized model.
    int8: PathBuf,
    /// Images (JPEG/PNG), .npy files, IDX image files, or folders of them; none: synthetic.
    pub(super) inputs_paths: Vec<PathBuf>,
    #[command(flatten)]
    pub(super) inputs: InputArgs,
}

/// Inputs, preprocessing, labels, metrics output and thresholds (validate and quantize).
#[derive(clap::Args, Debug)]
pub(super) struct InputArgs {
    /// Preprocessing preset (also the input range for quantize).
    #[arg(long, value_enum)]
    pub(super) preset: Option<Preset>,
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
    #[arg(long, value_enum, default_value_t = Layout::Nchw)]
    layout: Layout,
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
    /// Inputs per run (default: 1 when the batch dimension is free, else the fixed batch;
    /// tract runs single inputs faster than batches, and runs them side by side).
    #[arg(long)]
    batch: Option<usize>,
    /// Compare every quantized layer's output and list the worst first (values cross-layer
    /// equalization rescaled are compared up to one gain per channel, marked `*`).
    #[arg(long)]
    per_layer: bool,
    /// Write the metrics as JSON.
    #[arg(long, value_name = "FILE")]
    pub(super) json: Option<PathBuf>,
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

fn floats(s: &str, what: &str) -> crate::Result<Vec<f32>> {
    s.split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            crate::Error::Config(format!(
                "{what} {s:?} is not a comma-separated list of numbers"
            ))
        })
}

fn hw(s: &str, what: &str) -> crate::Result<(u32, u32)> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
    match nums.as_deref() {
        Some([n]) => Ok((*n, *n)),
        Some([h, w]) => Ok((*h, *w)),
        _ => Err(crate::Error::Config(format!(
            "{what} {s:?} is not N or HxW"
        ))),
    }
}

impl InputArgs {
    /// The preprocessing: the preset's, with the flags given on top.
    pub(super) fn preprocess(&self) -> crate::Result<Preprocess> {
        let mut p = self.preset.map(Preset::preprocess).unwrap_or_default();
        if let Some(r) = &self.resize {
            if r.contains(['x', 'X']) {
                p.resize_exact = Some(hw(r, "--resize")?);
                p.resize_shorter = None;
            } else {
                p.resize_shorter = Some(hw(r, "--resize")?.0);
                p.resize_exact = None;
            }
        }
        if let Some(c) = &self.crop {
            p.crop = Some(hw(c, "--crop")?);
        }
        if let Some(m) = &self.mean {
            p.mean = floats(m, "--mean")?;
        }
        if let Some(sd) = &self.std {
            p.std = floats(sd, "--std")?;
            if p.std.contains(&0.0) {
                return Err(crate::Error::Config("--std may not contain 0".into()));
            }
        }
        if let Some(sc) = self.scale {
            p.scale = sc;
        }
        p.crop_first |= self.crop_first;
        p.bgr |= self.bgr;
        p.gray |= self.gray;
        p.nhwc = self.layout == Layout::Nhwc;
        Ok(p)
    }

    /// The model input's dimensions: `input_shape` if given, else the declared ones.
    pub(super) fn dims(
        &self,
        model: &Model,
        input_shape: Option<&[usize]>,
    ) -> crate::Result<Vec<Option<usize>>> {
        Ok(match input_shape {
            Some(s) => s.iter().map(|&d| Some(d)).collect(),
            None => model.graph.single_input("validation")?.1,
        })
    }

    /// Adds the files these flags read (`--labels`) and write (`--json`, `--save-tensors`).
    pub(super) fn files(&self, inputs: &mut Vec<NamedPath>, outputs: &mut Vec<NamedPath>) {
        inputs.extend(self.labels.iter().map(|p| NamedPath::new("--labels", p)));
        outputs.extend(self.json.iter().map(|p| NamedPath::new("--json", p)));
        if let Some(dir) = &self.save_tensors {
            outputs.extend(
                SAVED_TENSOR_FILES
                    .iter()
                    .map(|f| NamedPath::new("--save-tensors", dir.join(f))),
            );
        }
    }

    /// Where inputs come from, for the library's loader.
    pub(super) fn source<'a>(
        &'a self,
        paths: &'a [PathBuf],
        preprocess: &'a Preprocess,
    ) -> InputSource<'a> {
        InputSource {
            paths,
            preprocess,
            label_regex: self.label_regex.as_deref(),
            labels: self.labels.as_deref(),
            limit: self.limit,
            synthetic: self.synthetic,
            synthetic_range: self.preset.map_or((-1.0, 1.0), Preset::input_range),
        }
    }
}

/// Where the inputs of a validation come from.
pub(super) enum Inputs<'a> {
    /// Files and folders (none: seeded synthetic inputs).
    Files(&'a [PathBuf]),
    /// Arrays in memory (the Python API), with labels by position.
    Arrays {
        /// The arrays: each a batch (the model input's rank) or one input (one dimension less).
        arrays: &'a [super::api::Array],
        /// One label per input, if given.
        labels: Option<&'a [usize]>,
    },
}

/// The models of a validation, loaded after checking that no output is one of the files they
/// come from; also the files no metrics file may overwrite.
pub(super) fn load_models(
    float: &ModelInput,
    int8: &ModelInput,
    paths: &[PathBuf],
    a: &InputArgs,
) -> crate::Result<(crate::LoadedModel, crate::LoadedModel, Vec<PathBuf>)> {
    // No output may be an input or another output: checked before reading the models, and
    // again with their external data files.
    let files = |f: Option<&crate::LoadedModel>, i: Option<&crate::LoadedModel>| {
        let mut inputs = float.files("the float model", f);
        inputs.extend(int8.files("the int8 model", i));
        inputs.extend(input_files("an input", paths));
        let mut outputs = Vec::new();
        a.files(&mut inputs, &mut outputs);
        check_files(&inputs, &outputs)
    };
    files(None, None)?;
    let f = float.load()?;
    let i = int8.load()?;
    files(Some(&f), Some(&i))?;
    let mut keep = float.source_files(&f);
    keep.extend(int8.source_files(&i));
    Ok((f, i, keep))
}

pub(super) fn run(args: ValidateArgs) -> crate::Result<u8> {
    let (float, int8, keep) = load_models(
        &ModelInput::Path(args.float.clone()),
        &ModelInput::Path(args.int8.clone()),
        &args.inputs_paths,
        &args.inputs,
    )?;
    run_validation(
        &float.model,
        &int8.model,
        &args.inputs_paths,
        &args.inputs,
        None,
        &keep,
    )
}

/// A validation run, before anything is printed or written.
pub(super) struct Measured {
    /// The metrics.
    pub(super) validation: Validation,
    /// The inputs (for `--save-tensors`).
    samples: Vec<Sample>,
    /// The text the command line prints (no trailing newline).
    pub(super) text: String,
}

/// Loads the inputs and runs both models on them. `progress(done, total)` hears each batch.
pub(super) fn measure(
    float: &Model,
    int8: &Model,
    inputs: &Inputs<'_>,
    a: &InputArgs,
    input_shape: Option<&[usize]>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> crate::Result<Measured> {
    let p = a.preprocess()?;
    let dims = a.dims(float, input_shape)?;
    let (loaded, source) = match inputs {
        Inputs::Files(paths) => {
            let loaded = crate::inputs::load_samples(&a.source(paths, &p), &dims)?;
            let source = source_label(paths, loaded.synthetic);
            (loaded, source)
        }
        Inputs::Arrays { arrays, labels } => {
            let samples = array_samples(arrays, *labels, dims.len())?;
            let loaded = crate::inputs::given_samples(samples, &a.source(&[], &p), &dims)?;
            (loaded, "inputs from arrays".to_string())
        }
    };
    let batch = a.batch.unwrap_or(match dims.first() {
        Some(Some(b)) => *b,
        _ => 1,
    });
    let v = crate::validate::validate(
        float,
        int8,
        &loaded.samples,
        &ValidateOptions {
            synthetic: loaded.synthetic,
            batch,
            per_layer: a.per_layer,
            keep_outputs: a.save_tensors.is_some(),
        },
        progress,
    )?;
    let text = render(&v, &source).trim_end().to_string();
    Ok(Measured {
        validation: v,
        samples: loaded.samples,
        text,
    })
}

/// The samples of arrays given in memory: an array of the model input's rank is a batch (split
/// along its first axis), one of a dimension less is one input; `labels` go by position.
fn array_samples(
    arrays: &[super::api::Array],
    labels: Option<&[usize]>,
    rank: usize,
) -> crate::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (k, a) in arrays.iter().enumerate() {
        let t = ndarray::ArrayD::from_shape_vec(a.shape.clone(), a.data.clone()).map_err(|e| {
            crate::Error::Config(format!(
                "array {k}: {} values do not fill the shape {:?}: {e}",
                a.data.len(),
                a.shape
            ))
        })?;
        if rank > 0 && t.ndim() == rank {
            samples.extend(t.outer_iter().map(|s| s.to_owned()));
        } else if t.ndim() + 1 == rank {
            samples.push(t);
        } else {
            return Err(crate::Error::Config(format!(
                "array {k} has shape {:?}: the model input has {rank} dimensions, so give a batch of {rank} dimensions or one input of {}",
                a.shape,
                rank.saturating_sub(1)
            )));
        }
    }
    if let Some(l) = labels {
        if l.len() != samples.len() {
            return Err(crate::Error::Config(format!(
                "{} labels for {} inputs: give one label per input",
                l.len(),
                samples.len()
            )));
        }
    }
    Ok(samples
        .into_iter()
        .enumerate()
        .map(|(i, tensor)| Sample {
            name: format!("array#{i}"),
            tensor,
            label: labels.and_then(|l| l.get(i).copied()),
        })
        .collect())
}

/// The metrics as JSON (what `--json` writes).
pub(super) fn metrics_json(v: &Validation) -> crate::Result<Vec<u8>> {
    serde_json::to_vec_pretty(v)
        .map_err(|e| crate::Error::Config(format!("cannot encode JSON: {e}")))
}

/// Checks the thresholds, writes `--save-tensors` and `--json` (never over `protected`); the
/// thresholds missed.
pub(super) fn conclude(
    m: &Measured,
    a: &InputArgs,
    protected: &[PathBuf],
) -> crate::Result<Vec<String>> {
    let thresholds = Thresholds {
        min_agreement: a.min_agreement,
        min_sqnr: a.min_sqnr,
        max_accuracy_drop: a.max_accuracy_drop,
    };
    let failures = thresholds.failures(&m.validation)?;
    if let Some(dir) = &a.save_tensors {
        save_tensors(dir, &m.samples, &m.validation)?;
    }
    if let Some(path) = &a.json {
        crate::write_file(path, &metrics_json(&m.validation)?, protected)?;
    }
    Ok(failures)
}

/// Loads the inputs, runs both models, prints the metrics and writes what was asked for;
/// exit code 1 when a threshold is missed. `protected`: files `--json` may not overwrite.
pub(super) fn run_validation(
    float: &Model,
    int8: &Model,
    paths: &[PathBuf],
    a: &InputArgs,
    input_shape: Option<&[usize]>,
    protected: &[PathBuf],
) -> crate::Result<u8> {
    let bar = ProgressBar::new();
    let m = measure(
        float,
        int8,
        &Inputs::Files(paths),
        a,
        input_shape,
        &|done, total| bar.show(done, total),
    )?;
    bar.finish();
    out!("{}", m.text);
    let failures = conclude(&m, a, protected)?;
    if failures.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!("below threshold: {}", failures.join("; "));
        Ok(EXIT_BELOW_THRESHOLD)
    }
}

/// A progress bar for validations that take more than a second.
struct ProgressBar {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    started: Instant,
}

impl ProgressBar {
    fn new() -> Self {
        ProgressBar {
            bar: std::sync::Mutex::new(None),
            started: Instant::now(),
        }
    }

    fn show(&self, done: usize, total: usize) {
        if self.started.elapsed().as_secs_f64() < 1.0 && done < total {
            return;
        }
        if let Ok(mut b) = self.bar.lock() {
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
    }

    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(pb) = b.take() {
                pb.finish_and_clear();
            }
        }
    }
}
