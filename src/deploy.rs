//! Which output form runs fastest where: the one deployment line `quantize` ends with and
//! `check --target` repeats.
//!
//! The factors are inference latency of the int8 model over the float model, batch 1, one
//! thread, measured with `python tools/formats/bench.py` (ONNX Runtime 1.32 CPU, tract 0.23.9)
//! on a ResNet-50 and on MobileNetV2 (`docs/benchmarks.md`, "Output formats: latency"). They
//! are this machine's numbers for two models, quoted so a user knows the order of magnitude:
//! `isquant`'s own latency check is `tools/formats/bench.py` on their machine.

use serde::Serialize;

use crate::check::Target;
use crate::passes::emit::{Format, QdqOutputs};

/// Latency of one form, int8 over float, in one runtime: `(ResNet-50, MobileNetV2)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Factor {
    resnet50: f64,
    mobilenetv2: f64,
}

/// ONNX Runtime (1 thread) and tract factors of a written form; `None` where not measured or
/// not run.
fn factors(format: Format, outputs: QdqOutputs) -> (Option<Factor>, Option<Factor>) {
    let f = |resnet50, mobilenetv2| {
        Some(Factor {
            resnet50,
            mobilenetv2,
        })
    };
    match (format, outputs) {
        // `python tools/formats/bench.py`, one run (docs/benchmarks.md, "issue 16").
        (Format::ConvInteger, _) => (f(3.40, 8.13), f(0.97, 4.05)),
        (Format::ConvIntegerU8, _) => (f(0.94, 2.26), None),
        (Format::Qdq, QdqOutputs::Exact) => (f(0.69, 1.41), None),
        (Format::Qdq, QdqOutputs::All) => (f(0.38, 0.80), None),
        (Format::QdqU8, QdqOutputs::Exact) => (f(0.57, 1.56), f(1.48, 3.34)),
        (Format::QdqU8, QdqOutputs::All) => (f(0.30, 0.53), None),
    }
}

/// The form `--target` picks for each runtime, and what it measured there.
const ORT_BEST: (&str, Format, QdqOutputs) = ("--target ort", Format::QdqU8, QdqOutputs::All);

fn show(f: Factor) -> String {
    format!(
        "{:.2}x float on ResNet-50, {:.2}x on MobileNetV2",
        f.resnet50, f.mobilenetv2
    )
}

/// The deployment line of a written model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeployHint {
    /// The form written (`--format`, with `--qdq-outputs` for the Q/DQ forms).
    pub format: String,
    /// The flag that writes a faster form for ONNX Runtime (CPU), when this is not it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faster_for_ort: Option<String>,
    /// The flag that writes the form tract runs in integers, when this is not it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faster_for_tract: Option<String>,
    /// The line the summary prints (after `deploy    `).
    pub line: String,
}

/// The deployment line for a model written as `format` with `outputs`.
#[must_use]
pub fn hint(format: Format, outputs: QdqOutputs) -> DeployHint {
    let name = if format.is_qdq() {
        format!("{} --qdq-outputs {}", format.name(), outputs.name())
    } else {
        format.name()
    };
    let (ort, tract) = factors(format, outputs);
    let (flag, best_format, best_outputs) = ORT_BEST;
    let ort_is_best = format == best_format && outputs == best_outputs;
    let faster_for_ort = (!ort_is_best).then(|| flag.to_string());
    let faster_for_tract = (format != Format::ConvInteger).then(|| "--target tract".to_string());
    let mut parts = Vec::new();
    match format {
        Format::ConvInteger => parts.push(format!(
            "{name}: integer kernels in tract ({})",
            tract.map_or_else(String::new, show)
        )),
        Format::ConvIntegerU8 => parts.push(format!(
            "{name}: for ONNX Runtime before 1.24 ({})",
            ort.map_or_else(String::new, show)
        )),
        Format::Qdq => parts.push(format!(
            "{name}: int8 only, for TensorRT; ONNX Runtime {}",
            ort.map_or_else(String::new, show)
        )),
        Format::QdqU8 => parts.push(format!(
            "{name}: ONNX Runtime's CPU kernels ({})",
            ort.map_or_else(String::new, show)
        )),
    }
    if let (Some(flag), Some(best)) = (&faster_for_ort, factors(best_format, best_outputs).0) {
        let here = ort.map_or_else(String::new, |f| format!(" (this form: {})", show(f)));
        parts.push(format!(
            "for ONNX Runtime {flag} is faster: {}{here}",
            show(best)
        ));
    }
    if faster_for_tract.is_some() {
        parts.push("for tract --target tract (integer kernels)".to_string());
    }
    DeployHint {
        format: name,
        faster_for_ort,
        faster_for_tract,
        line: format!("{}; docs/benchmarks.md", parts.join("; ")),
    }
}

/// What `check --target T` adds about speed for a model written as `format`: the line, when
/// the form is not the fastest isquant writes for `target`; `None` when it is, or for
/// TensorRT (whose speed was not measured) and older ONNX Runtime.
#[must_use]
pub fn for_target(format: Format, outputs: QdqOutputs, target: Target) -> Option<String> {
    let h = hint(format, outputs);
    match target {
        Target::Ort => h.faster_for_ort.map(|_| h.line),
        Target::Tract => h.faster_for_tract.map(|_| h.line),
        Target::OrtLegacy | Target::TensorRt => None,
    }
}

/// The form a model isquant wrote says it was written in (`isquant.config` metadata), if any.
#[must_use]
pub fn written_form(metadata: &[(String, String)]) -> Option<(Format, QdqOutputs)> {
    use clap::ValueEnum;
    let config = metadata
        .iter()
        .find(|(k, _)| k == "isquant.config")
        .map(|(_, v)| v.as_str())?;
    let field = |key: &str| {
        config
            .split_whitespace()
            .find_map(|p| p.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let format = Format::from_str(field("format")?, false).ok()?;
    let outputs = field("qdq-outputs")
        .and_then(|v| QdqOutputs::from_str(v, false).ok())
        .unwrap_or_default();
    Some((format, outputs))
}

#[cfg(test)]
mod tests {
    use super::{for_target, hint, written_form};
    use crate::check::Target;
    use crate::passes::emit::{Format, QdqOutputs};

    #[test]
    fn every_form_but_the_fastest_names_the_flag_that_is_faster() {
        let default = hint(Format::ConvInteger, QdqOutputs::Exact);
        assert_eq!(default.faster_for_ort.as_deref(), Some("--target ort"));
        assert!(default.faster_for_tract.is_none());
        assert!(
            default.line.contains("3.40x float on ResNet-50"),
            "{}",
            default.line
        );
        assert!(
            default.line.contains("0.30x float on ResNet-50"),
            "{}",
            default.line
        );
        let ort = hint(Format::QdqU8, QdqOutputs::All);
        assert!(ort.faster_for_ort.is_none());
        assert_eq!(ort.faster_for_tract.as_deref(), Some("--target tract"));
        assert!(!ort.line.contains("is faster"), "{}", ort.line);
        for f in [Format::ConvIntegerU8, Format::Qdq, Format::QdqU8] {
            assert!(hint(f, QdqOutputs::Exact).faster_for_ort.is_some());
        }
        assert!(for_target(Format::ConvInteger, QdqOutputs::Exact, Target::Ort).is_some());
        assert!(for_target(Format::ConvInteger, QdqOutputs::Exact, Target::Tract).is_none());
        assert!(for_target(Format::QdqU8, QdqOutputs::All, Target::Ort).is_none());
    }

    #[test]
    fn the_written_form_is_read_back_from_the_metadata() {
        let meta = |c: &str| vec![("isquant.config".to_string(), c.to_string())];
        assert_eq!(
            written_form(&meta(
                "format=qdq-u8 granularity=per-tensor qdq-outputs=all"
            )),
            Some((Format::QdqU8, QdqOutputs::All))
        );
        assert_eq!(
            written_form(&meta("format=convinteger weight-bits=8")),
            Some((Format::ConvInteger, QdqOutputs::Exact))
        );
        assert_eq!(written_form(&[]), None);
    }
}
