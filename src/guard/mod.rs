//! The data-free accuracy guard: after emission, run the float and the int8 model side by side
//! on the guard's own seeded inputs ([`inputs`]) and say, per graph output, how far apart they
//! are; with [`GuardMode::Fix`], keep the layers that lose the most float until the outputs
//! pass or a limit is reached.
//!
//! **What is measured.** For each graph output, the value the post-processing reads before a
//! final `Sigmoid` / `Softmax` / `LogSoftmax` (its *logits*) when the output is made by one
//! (through Identity, Reshape, Flatten, Squeeze, Unsqueeze, Transpose), else the output itself:
//! a saturated Sigmoid (a text map that is 0 almost everywhere on inputs without text) or a
//! Softmax over thousands of classes hides the error in values near 0 or 1, while the logits
//! carry it. Per input family `f`, `SQNR_f = 10·log10(Σ ref² / Σ (ref − q)²)` over the family's
//! inputs; the output's guard SQNR is the median over the three families
//! ([`inputs::FAMILIES`]), so one family the model finds meaningless (a classifier's logits are
//! flat on stripes) neither passes nor fails it alone. An output passes when its guard SQNR is
//! at least `min_sqnr_db`. With the user's own inputs (`--validate-inputs`, `--calibrate`) the
//! guard measures on those instead, as one family. The default threshold, 8 dB, lies between
//! the broken int8 models measured (PP-OCRv4 recogniser 6.4 dB, a random-weight MobileNetV3
//! −105 dB) and the working ones (10.9 dB and up); `docs/results.md` has the table.
//!
//! **What it cannot see.** The inputs are not the user's data: a model can pass here and fail
//! on real inputs, or the reverse. The measured agreement with real data, model by model, is in
//! `docs/results.md` ("The guard against real data"); the guard is a tripwire for int8 models
//! that are broken on every input, not a substitute for `validate` on real data.
//!
//! **Fix.** When an output fails, the guard weighs, one at a time and each on top of those
//! kept, per-channel weight scales instead of per-tensor, then SQuant's noise rule for
//! activation ranges instead of `auto`, then bias correction off. Each is a full quantize of
//! the float model; it is kept when it raises the worst output's guard SQNR by at least
//! 0.5 dB and, except for per-channel weights, lands at 5 dB or more (below that the guard's
//! numbers do not predict real data: `ALTERNATIVES`). Then, while an output still fails and
//! fewer than `max_float_layers` layers are kept float, the guard runs the per-layer
//! comparison ([`crate::validate::layers`]) on the same inputs, adds the layer with the lowest
//! *local* SQNR (the noise it adds itself) to `--skip`, quantizes again and measures again; a
//! layer that does not raise the worst output by 0.5 dB to at least 5 dB is undone and the
//! search stops.

pub mod inputs;

use serde::Serialize;

use crate::error::Result;
use crate::graph::Model;
use crate::inputs::Sample;
use crate::metrics::finite_or_string;
use crate::pipeline::{self, ActRanges, Granularity, QuantizeConfig, QuantizeReport};
use crate::validate::{self, ValidateOptions};

/// `--guard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuardMode {
    /// No guard.
    Off,
    /// Measure and report; the exit status says whether it passed.
    Report,
    /// Measure; when an output fails, weigh alternatives to the defaults and keep the layers
    /// that lose the most float (up to a limit), and report each.
    #[default]
    Fix,
}

/// Options of the guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardOptions {
    /// Off, report or fix.
    pub mode: GuardMode,
    /// An output passes at this guard SQNR or above, dB.
    pub min_sqnr_db: f64,
    /// Most layers `fix` keeps float.
    pub max_float_layers: usize,
    /// Inputs per family; `None`: 4, fewer for large inputs (see [`per_family`]).
    pub per_family: Option<usize>,
    /// Seed of the inputs.
    pub seed: u64,
    /// The user's own inputs (`--validate-inputs`, `--calibrate`): when given, the guard
    /// measures on them instead of its seeded families.
    pub user_inputs: Vec<Sample>,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            mode: GuardMode::Fix,
            min_sqnr_db: DEFAULT_MIN_SQNR_DB,
            max_float_layers: 4,
            per_family: None,
            seed: 0,
            user_inputs: Vec::new(),
        }
    }
}

/// Elements of the weight (input 1) of the node that produces `value` in `float`; 0 when
/// there is none.
fn weight_elements(float: &Model, value: &str) -> usize {
    let producers = float.graph.producers();
    producers
        .get(value)
        .and_then(|&i| float.graph.nodes.get(i))
        .and_then(|n| n.input(1))
        .and_then(|w| float.graph.constant_with(w, &producers).ok().flatten())
        .and_then(|(t, _)| crate::onnx::tensor::element_count(&t).ok())
        .unwrap_or(0)
}

/// The default threshold, dB (see the module docs and `docs/results.md`).
pub const DEFAULT_MIN_SQNR_DB: f64 = 8.0;

/// One graph output, as the guard measured it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardOutput {
    /// The graph output.
    pub name: String,
    /// The value compared: the output, or the logits before its final Sigmoid / Softmax.
    pub measured: String,
    /// `measured` is one branch of the Concat that makes the output (one entry per branch).
    pub branch: bool,
    /// SQNR per input family, dB, in [`inputs::FAMILIES`] order.
    pub families: Vec<(String, f64)>,
    /// The median over families, dB.
    #[serde(serialize_with = "finite_or_string")]
    pub sqnr_db: f64,
    /// Whether `sqnr_db` reaches the threshold.
    pub passed: bool,
}

/// A layer the guard kept float.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeptFloat {
    /// The layer's output value (what `--skip` was given).
    pub value: String,
    /// Its op in the int8 model before it was kept float.
    pub op: String,
    /// Float weights it keeps (the elements of its weight tensor).
    pub weights: usize,
    /// Its local SQNR on the guard's inputs, dB.
    #[serde(serialize_with = "finite_or_string")]
    pub local_sqnr_db: f64,
    /// Worst output's guard SQNR before and after keeping it float, dB.
    pub worst_before_db: f64,
    /// After.
    pub worst_after_db: f64,
}

/// A choice `fix` weighed: the option it changed and what the guard measured with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alternative {
    /// The option as the command line spells it, e.g. `--granularity per-channel`.
    pub option: String,
    /// Worst output's guard SQNR before, dB.
    pub worst_before_db: f64,
    /// With the option, dB.
    pub worst_after_db: f64,
    /// Kept (it raised the worst output by at least 0.5 dB).
    pub kept: bool,
}

/// What the guard measured and did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardReport {
    /// Report or fix.
    pub mode: GuardMode,
    /// The inputs, in words.
    pub inputs: String,
    /// The threshold, dB.
    pub min_sqnr_db: f64,
    /// Per graph output, for the model written.
    pub outputs: Vec<GuardOutput>,
    /// Every output reaches the threshold (false when the guard could not run).
    pub passed: bool,
    /// Why the guard could not run (several inputs, open dimensions without `--input-shape`,
    /// a model tract cannot run); the model is written as quantized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_run: Option<String>,
    /// Layers kept float by `fix`, in the order they were chosen.
    pub kept_float: Vec<KeptFloat>,
    /// The alternatives `fix` weighed, in order.
    pub alternatives: Vec<Alternative>,
    /// A layer `fix` tried and undid (it did not help), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undone: Option<KeptFloat>,
    /// Quantize runs the guard made beyond the first.
    pub requantized: usize,
    /// Wall time of the guard, seconds.
    pub seconds: f64,
}

impl GuardReport {
    /// The worst output's guard SQNR, dB.
    #[must_use]
    pub fn worst_db(&self) -> f64 {
        worst(&self.outputs)
    }

    /// The summary lines.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if let Some(why) = &self.not_run {
            let _ = writeln!(s, "guard      not run: {why}");
            return s;
        }
        let verdict = if self.passed { "passed" } else { "FAILED" };
        let _ = writeln!(
            s,
            "guard      {verdict}: every output ≥ {:.1} dB SQNR on {} ({:.1} s{})",
            self.min_sqnr_db,
            self.inputs,
            self.seconds,
            if self.inputs.starts_with("your") {
                ""
            } else {
                "; not your data: `isquant validate` on real inputs, or --validate-inputs"
            }
        );
        for o in &self.outputs {
            let fams: Vec<String> = o
                .families
                .iter()
                .map(|(f, v)| format!("{f} {}", db(*v)))
                .collect();
            let what = if o.branch {
                format!("{} (Concat branch `{}`)", o.name, o.measured)
            } else if o.measured == o.name {
                o.name.clone()
            } else {
                format!("{} (logits `{}`)", o.name, o.measured)
            };
            let _ = writeln!(
                s,
                "           {} {what}: {} dB ({})",
                if o.passed { "ok  " } else { "FAIL" },
                db(o.sqnr_db),
                fams.join(", ")
            );
        }
        for a in &self.alternatives {
            let _ = writeln!(
                s,
                "           weighed {}: worst output {} -> {} dB, {}",
                a.option,
                db(a.worst_before_db),
                db(a.worst_after_db),
                if a.kept { "kept" } else { "not kept" }
            );
        }
        for k in &self.kept_float {
            let _ = writeln!(
                s,
                "           kept float {} ({}, {} weights): local SQNR {} dB; worst output {} -> {} dB",
                k.value,
                k.op,
                k.weights,
                db(k.local_sqnr_db),
                db(k.worst_before_db),
                db(k.worst_after_db)
            );
        }
        if let Some(k) = &self.undone {
            let _ = writeln!(
                s,
                "           tried keeping {} float: worst output {} -> {} dB, undone",
                k.value,
                db(k.worst_before_db),
                db(k.worst_after_db)
            );
        }
        if !self.passed && self.mode == GuardMode::Report {
            let _ = writeln!(
                s,
                "           try --guard fix, --granularity per-channel, or --skip the lowest `local dB` layers of `isquant validate --per-layer`"
            );
        }
        s
    }
}

fn db(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else if v > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

fn worst(outputs: &[GuardOutput]) -> f64 {
    outputs
        .iter()
        .map(|o| o.sqnr_db)
        .fold(f64::INFINITY, f64::min)
}

/// Quantizes a copy of `float` ([`pipeline::quantize`]) and runs the guard on it.
///
/// Returns the int8 model, its report, and the guard's report (`None` when off). With
/// [`GuardMode::Fix`] the returned model and report are those of the last accepted attempt.
///
/// # Errors
/// Whatever [`pipeline::quantize`] or a tract run of either model reports.
pub fn quantize(
    float: &Model,
    cfg: &QuantizeConfig,
    calibration: Option<&[Vec<ndarray::ArrayD<f32>>]>,
    opts: &GuardOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(Model, QuantizeReport, Option<GuardReport>)> {
    let mut model = float.clone();
    let report = pipeline::quantize(&mut model, cfg, calibration, progress)?;
    if opts.mode == GuardMode::Off {
        return Ok((model, report, None));
    }
    progress("guard");
    let start = std::time::Instant::now();
    let not_run = |why: String, mode| GuardReport {
        mode,
        inputs: String::new(),
        min_sqnr_db: opts.min_sqnr_db,
        outputs: Vec::new(),
        passed: false,
        not_run: Some(why),
        alternatives: Vec::new(),
        kept_float: Vec::new(),
        undone: None,
        requantized: 0,
        seconds: start.elapsed().as_secs_f64(),
    };
    // The guard needs one input of known shape and both models running in tract; where it
    // cannot have them, it says why and the model is written as quantized.
    let shape = match pipeline::forward::forward_shape(float, cfg.input_shape.as_deref()) {
        Ok(s) => s,
        Err(e) => return Ok((model, report, Some(not_run(e.to_string(), opts.mode)))),
    };
    let sample_shape: Vec<usize> = shape.iter().skip(1).map(|d| d.unwrap_or(1)).collect();
    let n = opts
        .per_family
        .unwrap_or_else(|| per_family(sample_shape.iter().product()));
    // One input per run where the batch is open: tract runs single inputs faster than
    // batches (see `pipeline::activations::observe`).
    let batch = shape.first().copied().flatten().unwrap_or(1);
    if batch > pipeline::forward::MAX_FIXED_BATCH {
        return Ok((
            model,
            report,
            Some(not_run(
                format!("the model input declares a batch of {batch}: give --input-shape with a smaller one"),
                opts.mode,
            )),
        ));
    }
    if let Err(e) = crate::limits::elements(
        &format!("the guard's {} inputs of shape {sample_shape:?}", 3 * n),
        3 * n,
        &sample_shape,
    ) {
        return Ok((model, report, Some(not_run(e.to_string(), opts.mode))));
    }
    let families: Vec<(&str, Vec<Sample>)> = if opts.user_inputs.is_empty() {
        inputs::FAMILIES
            .iter()
            .map(|f| {
                (
                    *f,
                    inputs::family(f, &sample_shape, n, cfg.input_range, opts.seed),
                )
            })
            .collect()
    } else {
        vec![("yours", opts.user_inputs.clone())]
    };
    let measured = measured_values(float, &model);
    let outputs = match measure(float, &model, &measured, &families, batch, opts) {
        Ok(o) => o,
        Err(e) => return Ok((model, report, Some(not_run(e.to_string(), opts.mode)))),
    };
    let mut best = Attempt {
        cfg: cfg.clone(),
        model,
        report,
        outputs,
    };
    let mut alternatives = Vec::new();
    let mut kept_float = Vec::new();
    let mut undone = None;
    let mut requantized = 0;
    let failing = |a: &Attempt| a.outputs.iter().any(|o| !o.passed);
    if opts.mode == GuardMode::Fix && failing(&best) {
        for (option, needs_floor, change) in ALTERNATIVES {
            let mut next_cfg = best.cfg.clone();
            if !change(&mut next_cfg) {
                continue;
            }
            progress(&format!("guard: weighing {option}"));
            // An alternative that cannot be quantized or run is not weighed.
            let Ok(next) = attempt(float, next_cfg, calibration, &families, batch, opts) else {
                continue;
            };
            requantized += 1;
            let (before, after) = (worst(&best.outputs), worst(&next.outputs));
            let kept = after >= before + MIN_GAIN_DB && (!needs_floor || after >= INFORMATIVE_DB);
            alternatives.push(Alternative {
                option: (*option).to_string(),
                worst_before_db: before,
                worst_after_db: after,
                kept,
            });
            if kept {
                best = next;
            }
        }
    }
    while opts.mode == GuardMode::Fix && failing(&best) && kept_float.len() < opts.max_float_layers
    {
        let Ok(Some((value, op, local))) =
            worst_layer(float, &best.model, &families, batch, &best.cfg.skip)
        else {
            break;
        };
        progress(&format!("guard: keeping {value} float"));
        let mut next_cfg = best.cfg.clone();
        next_cfg.skip.push(value.clone());
        let Ok(next) = attempt(float, next_cfg, calibration, &families, batch, opts) else {
            break;
        };
        requantized += 1;
        let step = KeptFloat {
            weights: weight_elements(float, &value),
            value,
            op,
            local_sqnr_db: local,
            worst_before_db: worst(&best.outputs),
            worst_after_db: worst(&next.outputs),
        };
        if step.worst_after_db < step.worst_before_db + MIN_GAIN_DB
            || step.worst_after_db < INFORMATIVE_DB
        {
            undone = Some(step);
            break;
        }
        kept_float.push(step);
        best = next;
    }
    let outputs = best.outputs;
    let passed = outputs.iter().all(|o| o.passed);
    let range = match cfg.input_range {
        Some((lo, hi)) => format!("in [{lo}, {hi}]"),
        None => "in [-1, 1] (noise: N(0, 1); give --input-range or --preset for yours)".into(),
    };
    let described = if opts.user_inputs.is_empty() {
        format!(
            "{} seeded inputs ({n} noise, {n} smooth, {n} strokes) {range}",
            3 * n
        )
    } else {
        format!("your {} inputs", opts.user_inputs.len())
    };
    let guard = GuardReport {
        mode: opts.mode,
        inputs: described,
        min_sqnr_db: opts.min_sqnr_db,
        outputs,
        passed,
        not_run: None,
        alternatives,
        kept_float,
        undone,
        requantized,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((best.model, best.report, Some(guard)))
}

/// Inputs per family for samples of `elements` values: 4 up to 150,528 (3×224×224), then
/// fewer so the guard's tract runs stay a fraction of the quantize time (1 at 3×640×640).
#[must_use]
pub fn per_family(elements: usize) -> usize {
    let e = elements.max(1);
    ((4 * 150_528 + e / 2) / e).clamp(1, 4)
}

/// A step of `fix` must raise the worst output's guard SQNR by this much to be kept, dB.
const MIN_GAIN_DB: f64 = 0.5;

/// A quantized model with the options that made it and what the guard measured on it.
struct Attempt {
    cfg: QuantizeConfig,
    model: Model,
    report: QuantizeReport,
    outputs: Vec<GuardOutput>,
}

/// Quantizes a copy of `float` with `cfg` and measures it.
fn attempt(
    float: &Model,
    cfg: QuantizeConfig,
    calibration: Option<&[Vec<ndarray::ArrayD<f32>>]>,
    families: &[(&str, Vec<Sample>)],
    batch: usize,
    opts: &GuardOptions,
) -> Result<Attempt> {
    let mut model = float.clone();
    let report = pipeline::quantize(&mut model, &cfg, calibration, &mut |_| {})?;
    let measured = measured_values(float, &model);
    let outputs = measure(float, &model, &measured, families, batch, opts)?;
    Ok(Attempt {
        cfg,
        model,
        report,
        outputs,
    })
}

/// A change `fix` may weigh: applies it to the options, or says it does not apply.
type Change = fn(&mut QuantizeConfig) -> bool;

/// The alternatives `fix` weighs, in order, and whether a step to it must also land at or
/// above [`INFORMATIVE_DB`] (see the module docs).
///
/// Measured on the grid of `docs/results.md` (W8/W7/W6, 9 models, "The guard against real
/// data"): per-channel weights, kept by the guard's measure alone, raised the real-data SQNR
/// wherever they were kept on their own (up to +15.4 dB); SQuant's noise ranges and bias
/// correction off, kept on guard values below 5 dB, lost up to 5.7 dB on real data, while the
/// noise ranges kept at 12.3 → 13.2 dB took the PP-OCRv4 recogniser from 11 to 31 of 40 lines.
/// Equalization off is not weighed: the guard's inputs rank it against real data on the
/// BN-folded MobileNetV2 and the PP-OCR direction classifier, and it lost 3.9 dB where kept.
const ALTERNATIVES: &[(&str, bool, Change)] = &[
    ("--granularity per-channel", false, |c| {
        let apply = c.granularity == Granularity::PerTensor;
        c.granularity = Granularity::PerChannel;
        apply
    }),
    ("--act-ranges noise", true, |c| {
        let apply = c.act_ranges == ActRanges::Auto;
        c.act_ranges = ActRanges::Noise;
        apply
    }),
    ("--correct-bias off", true, |c| {
        let apply = c.correct_bias;
        c.correct_bias = false;
        apply
    }),
];

/// Below this guard SQNR an int8 output is mostly noise on the guard's inputs and the
/// difference between two such models says little about real data: steps other than
/// per-channel weights must land at or above it, dB.
const INFORMATIVE_DB: f64 = 5.0;

/// For each graph output, the values to compare, `(output, value, branch)`: the input of a
/// final Sigmoid / Softmax / LogSoftmax when both models compute it under the same name, else
/// the output. An output made by a Concat (detection heads: box coordinates in pixels beside
/// class scores in 0…1) is compared branch by branch (`branch` true), each branch the same way,
/// so the class scores are not drowned by the larger coordinates.
fn measured_values(float: &Model, int8: &Model) -> Vec<(String, String, bool)> {
    let produced = |m: &Model, v: &str| {
        m.graph
            .nodes
            .iter()
            .any(|n| n.outputs.iter().any(|o| o == v))
    };
    let producer = |v: &str| {
        float
            .graph
            .nodes
            .iter()
            .find(|n| n.outputs.first().is_some_and(|o| o == v))
    };
    // Walks back through ops that only move or rename values.
    let moved_from = |v: &str| {
        let mut node = producer(v);
        while let Some(n) = node.filter(|n| {
            matches!(
                n.op_type.as_str(),
                "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Transpose"
            )
        }) {
            node = n.inputs.first().and_then(|i| producer(i));
        }
        node
    };
    let logits_or_self = |v: &str| -> String {
        moved_from(v)
            .filter(|n| matches!(n.op_type.as_str(), "Sigmoid" | "Softmax" | "LogSoftmax"))
            .and_then(|n| n.inputs.first().cloned())
            .filter(|l| produced(float, l) && produced(int8, l))
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = Vec::new();
    for name in float.graph.outputs.iter().filter_map(|o| o.name.clone()) {
        let branches: Vec<String> = moved_from(&name)
            .filter(|n| n.op_type == "Concat")
            .map(|n| {
                n.inputs
                    .iter()
                    .filter(|i| produced(float, i) && produced(int8, i))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if branches.len() >= 2 {
            for b in branches {
                out.push((name.clone(), logits_or_self(&b), true));
            }
        } else {
            out.push((name.clone(), logits_or_self(&name), false));
        }
    }
    out
}

/// Copies of `m` whose graph outputs are exactly `values`.
fn with_outputs(m: &Model, values: &[String]) -> Model {
    let mut c = m.clone();
    c.graph.outputs = values
        .iter()
        .map(|v| crate::onnx::pb::ValueInfoProto {
            name: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    c
}

/// Per-output guard SQNR of `int8` against `float` on every family.
fn measure(
    float: &Model,
    int8: &Model,
    measured: &[(String, String, bool)],
    families: &[(&str, Vec<Sample>)],
    batch: usize,
    opts: &GuardOptions,
) -> Result<Vec<GuardOutput>> {
    let values: Vec<String> = measured.iter().map(|(_, m, _)| m.clone()).collect();
    let fm = with_outputs(float, &values);
    let qm = with_outputs(int8, &values);
    let mut per_family: Vec<Vec<(String, f64)>> = vec![Vec::new(); values.len()];
    // One validation over every family: each model is loaded once, the families' batches run
    // side by side, and results come back per family in family order.
    let groups: Vec<&[Sample]> = families.iter().map(|(_, s)| s.as_slice()).collect();
    let runs = validate::validate_groups(
        &fm,
        &qm,
        &groups,
        &ValidateOptions {
            synthetic: true,
            batch,
            per_layer: false,
            keep_outputs: false,
        },
        &|_, _| {},
    )?;
    for ((name, _), v) in families.iter().zip(runs) {
        for (k, o) in v.outputs.iter().enumerate() {
            if let Some(slot) = per_family.get_mut(k) {
                slot.push(((*name).to_string(), o.sqnr_db));
            }
        }
    }
    Ok(measured
        .iter()
        .zip(per_family)
        .map(|((name, m, branch), fams)| {
            let sqnr = median(fams.iter().map(|(_, v)| *v).collect());
            GuardOutput {
                name: name.clone(),
                measured: m.clone(),
                branch: *branch,
                families: fams,
                sqnr_db: sqnr,
                passed: sqnr >= opts.min_sqnr_db,
            }
        })
        .collect())
}

/// The median (NaN counts as −∞: a broken output must not pass).
fn median(mut v: Vec<f64>) -> f64 {
    for x in &mut v {
        if x.is_nan() {
            *x = f64::NEG_INFINITY;
        }
    }
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NEG_INFINITY,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The quantized layer with the lowest local SQNR over all families that is not skipped yet:
/// `(value, op, local dB)`.
fn worst_layer(
    float: &Model,
    int8: &Model,
    families: &[(&str, Vec<Sample>)],
    batch: usize,
    skip: &[String],
) -> Result<Option<(String, String, f64)>> {
    let samples: Vec<Sample> = families.iter().flat_map(|(_, s)| s.clone()).collect();
    let v = validate::validate(
        float,
        int8,
        &samples,
        &ValidateOptions {
            synthetic: true,
            batch,
            per_layer: true,
            keep_outputs: false,
        },
        &|_, _| {},
    )?;
    Ok(v.layers
        .iter()
        .filter(|l| !l.op.contains("weight-only") && !skip.contains(&l.value))
        .filter(|l| !l.local_sqnr_db.is_nan())
        .min_by(|a, b| a.local_sqnr_db.total_cmp(&b.local_sqnr_db))
        .map(|l| (l.value.clone(), l.op.clone(), l.local_sqnr_db)))
}

#[cfg(test)]
mod tests {
    use super::{median, per_family};

    #[test]
    fn fewer_inputs_for_large_models() {
        assert_eq!(per_family(3 * 48 * 320), 4);
        assert_eq!(per_family(3 * 224 * 224), 4);
        assert_eq!(per_family(3 * 320 * 320), 2);
        assert_eq!(per_family(3 * 640 * 640), 1);
    }

    #[test]
    fn median_counts_nan_as_the_worst() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![f64::NAN, 5.0, 6.0]), 5.0);
        assert_eq!(median(vec![f64::NAN, f64::NAN, 6.0]), f64::NEG_INFINITY);
        assert_eq!(median(vec![]), f64::NEG_INFINITY);
    }
}
