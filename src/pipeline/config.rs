//! The options of `isquant quantize` ([`QuantizeConfig`]), every check on them
//! ([`QuantizeConfig::validate`]) and their one-line form stored in the model
//! ([`QuantizeConfig::summary`]).
//!
//! Every choice is an enum deriving `clap::ValueEnum` and `serde::Serialize` with the same
//! kebab-case names, so a choice is spelled once: on the command line, in the JSON report and
//! in the `isquant.config` metadata.

use serde::Serialize;

use crate::check::Target;
use crate::error::{Error, Result};
use crate::passes::emit::{Format, QdqOutputs};
use crate::passes::equalize::{Objective, Relu6};
use crate::squant::Rounding;
use crate::value_name;

/// Where activation ranges come from (`--act-ranges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ActRanges {
    /// BN statistics where they reach a tensor (mean ± 6 std per channel); where BN is gone
    /// the same rule on per-channel statistics of a seeded N(0,1) noise pass (mean ± 4 std);
    /// BN moments pushed through a Conv/Gemm/MatMul widen to that pass where it is wider;
    /// tensors that are not feature maps keep SQuant's rule on that pass.
    #[default]
    #[value(alias = "noise-channels")]
    Auto,
    /// BN statistics only (tensors they do not reach keep a float input).
    Bn,
    /// SQuant's rule: a seeded batch of U[0,1) noise through the float model, alpha = k·std
    /// (k = 25 at 8 bits, 14 at 6, 12 at 4), /1.25 for signed tensors.
    Noise,
    /// Your own inputs (--calibrate DIR: images, .npy or IDX), max|x| or a percentile.
    Calibrate,
}

/// Weight scale granularity (`--granularity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One scale per weight tensor (ISQuant).
    #[default]
    PerTensor,
    /// One scale per output channel (what calibrated tools use).
    PerChannel,
}

/// Images of the noise forward pass (`--noise-input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseInput {
    /// N(0, 1) per pixel: what normalised inputs look like by construction.
    #[default]
    Normal,
    /// U[0, 1) per pixel: models that take raw [0, 1] images (and SQuant's own rule).
    Uniform,
}

/// Cross-layer equalization (`--equalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Equalize {
    /// On for models with depthwise convolutions (MobileNet-style), with DFQ's rule where
    /// CLE reaches under half of the convolutions.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Activation encoding (`--activation-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationType {
    /// uint8 where the value is known non-negative (one more bit after Relu), else int8.
    #[default]
    Auto,
    /// int8 everywhere (what TensorRT takes; `--format qdq` implies it).
    Int8,
}

/// An on/off option (`--correct-bias`, `--absorb-bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl Switch {
    /// `true` for [`Switch::On`].
    #[must_use]
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// How calibration data sets a range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// `max|x|`.
    MinMax,
    /// The given percentile of `|x|`.
    Percentile(f64),
}

impl Format {
    /// The format a runtime takes: tract `convinteger`, ONNX Runtime `qdq-u8` (every
    /// convolution fused to QLinearConv), ONNX Runtime before 1.24 `convinteger-u8`,
    /// TensorRT `qdq` (int8 only).
    #[must_use]
    pub fn for_target(target: Target) -> Format {
        match target {
            Target::Tract => Format::ConvInteger,
            Target::Ort => Format::QdqU8,
            Target::OrtLegacy => Format::ConvIntegerU8,
            Target::TensorRt => Format::Qdq,
        }
    }

    /// The format from `--format` and `--target` (default `convinteger`).
    ///
    /// # Errors
    /// Both are given and disagree.
    pub fn resolve(format: Option<Format>, target: Option<Target>) -> Result<Format> {
        match (format, target) {
            (Some(f), Some(t)) if f != Format::for_target(t) => Err(Error::Config(format!(
                "--format {} contradicts --target {} (which means --format {})",
                f.name(),
                value_name(&t),
                Format::for_target(t).name()
            ))),
            (Some(f), _) => Ok(f),
            (None, Some(t)) => Ok(Format::for_target(t)),
            (None, None) => Ok(Format::ConvInteger),
        }
    }
}

impl QdqOutputs {
    /// `--qdq-outputs` when not given: `all` for `--target ort` (measured faster there),
    /// `exact` otherwise. `--target tensorrt` with `all` makes ONNX Runtime fuse every
    /// convolution (MobileNetV2 52/52, ResNet-50 53/53) at −0.2 dB on MobileNetV2, but the
    /// PP-OCR text-line classifier lost 2.7 dB (14.66 → 11.96, 51 → 47 of 58 agreeing), so
    /// TensorRT keeps the exact form unless asked (docs/benchmarks.md, issue 16).
    #[must_use]
    pub fn for_target(target: Option<Target>) -> QdqOutputs {
        if target == Some(Target::Ort) {
            QdqOutputs::All
        } else {
            QdqOutputs::Exact
        }
    }
}

/// Options of `isquant quantize`.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeConfig {
    /// Weight bits, 2..=8.
    pub weight_bits: u32,
    /// Activation bits, 2..=8.
    pub act_bits: u32,
    /// Weight rounding.
    pub rounding: Rounding,
    /// Range source.
    pub act_ranges: ActRanges,
    /// `N` of the BN rule.
    pub bn_sigmas: f64,
    /// `N` of the BN rule applied to per-channel noise statistics (where BN does not reach).
    pub noise_sigmas: f64,
    /// Images of the noise pass for the per-channel rule (SQuant's rule always uses U[0, 1)).
    pub noise_input: NoiseInput,
    /// Range of the model input, if known.
    pub input_range: Option<(f32, f32)>,
    /// Node names, weight names, output value names or glob patterns (`*`, `?`) to keep float.
    pub skip: Vec<String>,
    /// Keep the first quantizable layer float.
    pub keep_first_float: bool,
    /// Keep the last quantizable layer float.
    pub keep_last_float: bool,
    /// Most images in the noise pass (it stops earlier once its ranges settle).
    pub noise_batch: usize,
    /// Seed of the noise batch.
    pub noise_seed: u64,
    /// Input shape for the noise pass when the model leaves dimensions open.
    pub input_shape: Option<Vec<usize>>,
    /// How calibration data sets ranges.
    pub calibration_method: CalibrationMethod,
    /// Output format.
    pub format: Format,
    /// Q/DQ formats: where a `Q → DQ` goes after a layer.
    pub qdq_outputs: QdqOutputs,
    /// Activation encoding.
    pub activation_type: ActivationType,
    /// Weight scale granularity.
    pub granularity: Granularity,
    /// Data-free bias correction from BN statistics (DFQ).
    pub correct_bias: bool,
    /// Cross-layer equalization (DFQ).
    pub equalize: Equalize,
    /// ReLU6 handling under equalization.
    pub relu6: Relu6,
    /// High-bias absorption after equalization.
    pub absorb_bias: bool,
    /// How equalization picks its scales.
    pub equalize_objective: Objective,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            weight_bits: 8,
            act_bits: 8,
            rounding: Rounding::Squant,
            act_ranges: ActRanges::Auto,
            bn_sigmas: 6.0,
            noise_sigmas: 4.0,
            noise_input: NoiseInput::Normal,
            input_range: None,
            skip: Vec::new(),
            keep_first_float: false,
            keep_last_float: false,
            noise_batch: 32,
            noise_seed: 0,
            input_shape: None,
            calibration_method: CalibrationMethod::MinMax,
            format: Format::ConvInteger,
            qdq_outputs: QdqOutputs::Exact,
            activation_type: ActivationType::Auto,
            granularity: Granularity::PerTensor,
            correct_bias: true,
            equalize: Equalize::Auto,
            relu6: Relu6::PerChannel,
            absorb_bias: false,
            equalize_objective: Objective::Noise,
        }
    }
}

impl QuantizeConfig {
    /// Every check on the options, before anything runs. `has_calibration`: the caller has
    /// calibration inputs (needed by `--act-ranges calibrate`).
    ///
    /// # Errors
    /// An option out of range, or options that contradict each other.
    pub fn validate(&self, has_calibration: bool) -> Result<()> {
        for (what, bits) in [
            ("--weight-bits", self.weight_bits),
            ("--act-bits", self.act_bits),
        ] {
            if !(2..=8).contains(&bits) {
                return Err(Error::Config(format!(
                    "{what} must be between 2 and 8, got {bits}"
                )));
            }
        }
        for (what, n) in [
            ("--bn-sigmas", self.bn_sigmas),
            ("--noise-sigmas", self.noise_sigmas),
        ] {
            if !(n > 0.0 && n.is_finite()) {
                return Err(Error::Config(format!("{what} must be positive, got {n}")));
            }
        }
        if let Some((lo, hi)) = self.input_range {
            if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
                || !lo.is_finite()
                || !hi.is_finite()
            {
                return Err(Error::Config(format!(
                    "--input-range {lo}:{hi} is empty or not finite"
                )));
            }
        }
        if let CalibrationMethod::Percentile(p) = self.calibration_method {
            if !(p > 0.0 && p <= 100.0) {
                return Err(Error::Config(format!(
                    "--percentile must be in (0, 100], got {p}"
                )));
            }
        }
        if self.act_ranges == ActRanges::Calibrate && !has_calibration {
            return Err(Error::Config(
                "--act-ranges calibrate needs --calibrate DIR with inputs".into(),
            ));
        }
        if self.qdq_outputs == QdqOutputs::All && !self.format.is_qdq() {
            return Err(Error::Config(format!(
                "--qdq-outputs all needs --format qdq or qdq-u8 (the format is {})",
                self.format.name()
            )));
        }
        if let Some(shape) = &self.input_shape {
            if shape.is_empty() || shape.contains(&0) {
                return Err(Error::Config(format!(
                    "--input-shape {shape:?} needs positive dimensions"
                )));
            }
        }
        if self.noise_batch == 0 {
            return Err(Error::Config("--noise-batch must be at least 1".into()));
        }
        crate::limits::count(
            "--noise-batch",
            self.noise_batch,
            crate::limits::MAX_NOISE_BATCH,
        )?;
        Ok(())
    }

    /// One-line summary of the options, stored in the model's `isquant.config` metadata.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "format={} granularity={} weight-bits={} act-bits={} rounding={} act-ranges={} bn-sigmas={}",
            self.format.name(),
            value_name(&self.granularity),
            self.weight_bits,
            self.act_bits,
            value_name(&self.rounding),
            value_name(&self.act_ranges),
            self.bn_sigmas
        );
        if let Some((lo, hi)) = self.input_range {
            s.push_str(&format!(" input-range={lo}:{hi}"));
        }
        if matches!(self.act_ranges, ActRanges::Auto | ActRanges::Noise) {
            s.push_str(&format!(
                " noise-batch={} noise-seed={} noise-sigmas={} noise-input={}",
                self.noise_batch,
                self.noise_seed,
                self.noise_sigmas,
                value_name(&self.noise_input)
            ));
        }
        for p in &self.skip {
            s.push_str(&format!(" skip={p}"));
        }
        if self.keep_first_float {
            s.push_str(" keep-first-float");
        }
        if self.keep_last_float {
            s.push_str(" keep-last-float");
        }
        s.push_str(if self.correct_bias {
            " correct-bias=on"
        } else {
            " correct-bias=off"
        });
        s.push_str(&format!(" equalize={}", value_name(&self.equalize)));
        if self.equalize != Equalize::Off {
            s.push_str(&format!(
                " equalize-by={}",
                value_name(&self.equalize_objective)
            ));
        }
        if self.absorb_bias {
            s.push_str(" absorb-bias=on");
        }
        if self.format.is_qdq() {
            s.push_str(&format!(" qdq-outputs={}", self.qdq_outputs.name()));
        }
        if self.activation_type == ActivationType::Int8 {
            s.push_str(" activation-type=int8");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_target_and_refuses_contradictions() {
        assert_eq!(
            Format::resolve(None, Some(Target::TensorRt)).ok(),
            Some(Format::Qdq)
        );
        assert_eq!(Format::resolve(None, None).ok(), Some(Format::ConvInteger));
        assert_eq!(
            Format::resolve(Some(Format::QdqU8), Some(Target::Ort)).ok(),
            Some(Format::QdqU8)
        );
        let e = Format::resolve(Some(Format::Qdq), Some(Target::Tract));
        assert!(e.is_err_and(|e| e.to_string().contains("contradicts --target tract")));
    }

    #[test]
    fn the_summary_spells_choices_as_the_command_line_does() {
        let s = QuantizeConfig::default().summary();
        assert!(
            s.starts_with("format=convinteger granularity=per-tensor"),
            "{s}"
        );
        assert!(s.contains("rounding=squant act-ranges=auto"), "{s}");
        assert!(s.contains("equalize=auto equalize-by=noise"), "{s}");
    }
}
