//! What `validate` prints, the thresholds that make its exit code 1, and the tensors it saves
//! for another runtime to check.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Validation;
use crate::error::{Error, Result};
use crate::inputs::Sample;

/// Thresholds on a validation (`--min-agreement`, `--min-sqnr`, `--max-accuracy-drop`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// Minimum top-1 agreement, percent.
    pub min_agreement: Option<f64>,
    /// Minimum SQNR, dB.
    pub min_sqnr: Option<f64>,
    /// Maximum accuracy drop, points (needs labels).
    pub max_accuracy_drop: Option<f64>,
}

impl Thresholds {
    /// The thresholds `v` misses, one message each (empty: all met).
    ///
    /// # Errors
    /// `max_accuracy_drop` is set but real (not synthetic) inputs carry no labels.
    pub fn failures(&self, v: &Validation) -> Result<Vec<String>> {
        let mut failures = Vec::new();
        for o in &v.outputs {
            if let (Some(fa), Some(qa)) = (o.float_accuracy, o.int8_accuracy) {
                if let Some(max) = self.max_accuracy_drop {
                    if (fa - qa) * 100.0 > max {
                        failures.push(format!(
                            "accuracy drop {:.2} > {max} points",
                            (fa - qa) * 100.0
                        ));
                    }
                }
            } else if self.max_accuracy_drop.is_some() && !v.synthetic {
                return Err(Error::Config(
                    "--max-accuracy-drop needs labels (--label-regex or --labels)".into(),
                ));
            }
            if let (Some(min), Some(t1)) = (self.min_agreement, o.top1_agreement) {
                if t1 * 100.0 < min {
                    failures.push(format!("top-1 agreement {:.2} % < {min} %", t1 * 100.0));
                }
            }
            if let Some(min) = self.min_sqnr {
                if o.sqnr_db < min {
                    failures.push(format!("SQNR {:.2} dB < {min} dB", o.sqnr_db));
                }
            }
        }
        Ok(failures)
    }
}

/// Where the inputs came from, as the first line says it.
#[must_use]
pub fn source_label(paths: &[PathBuf], synthetic: bool) -> String {
    if synthetic {
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
    }
}

/// The text `validate` prints: inputs and speed, one line per output (plus accuracy with
/// labels), and with per-layer metrics the table of layers, worst first.
#[must_use]
pub fn render(v: &Validation, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "validate   tract, {} {source}, {:.1} inputs/s",
        v.samples, v.samples_per_second
    );
    for o in &v.outputs {
        let mut line = format!("output     {} {:?}:", o.name, o.shape);
        if let Some(t1) = o.top1_agreement {
            let _ = write!(line, " top-1 agreement {:.2} %,", t1 * 100.0);
        }
        if let Some(t5) = o.top5_agreement {
            let _ = write!(line, " top-5 {:.2} %,", t5 * 100.0);
        }
        let _ = write!(
            line,
            " SQNR {:.2} dB, cosine {:.5}, max |error| {:.3e}",
            o.sqnr_db, o.cosine, o.max_abs_error
        );
        let _ = writeln!(s, "{line}");
        match &o.details {
            Some(super::OutputKindMetrics::Map {
                channel_sqnr_db,
                mask_iou,
            }) => {
                let worst = channel_sqnr_db
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min);
                let mut line = format!(
                    "           map: {} channel(s), worst channel SQNR {worst:.2} dB",
                    channel_sqnr_db.len()
                );
                if let Some(iou) = mask_iou {
                    let _ = write!(
                        line,
                        ", mask IoU {iou:.4} (value > {})",
                        super::outputs::MASK_THRESHOLD
                    );
                }
                let _ = writeln!(s, "{line}");
            }
            Some(super::OutputKindMetrics::Sequence {
                step_agreement,
                sequences,
                identical_sequences,
            }) => {
                let _ = writeln!(
                    s,
                    "           sequence: per-step argmax agreement {:.2} %, {identical_sequences} of {sequences} decode identically (greedy CTC)",
                    step_agreement * 100.0
                );
            }
            None => {}
        }
        if let (Some(fa), Some(qa)) = (o.float_accuracy, o.int8_accuracy) {
            let _ = writeln!(
                s,
                "accuracy   float {:.2} %, int8 {:.2} % (drop {:.2} points) on {} labeled inputs",
                fa * 100.0,
                qa * 100.0,
                (fa - qa) * 100.0,
                v.labeled
            );
        }
    }
    if !v.layers.is_empty() {
        render_layers(&mut s, v);
    }
    s
}

fn render_layers(s: &mut String, v: &Validation) {
    let _ = writeln!(
        s,
        "per-layer  SQNR of each quantized layer's output vs float, worst first (local dB: the"
    );
    let _ = writeln!(
        s,
        "           layer's own contribution with its input's noise removed; lowest = try --skip):"
    );
    let w = v
        .layers
        .iter()
        .map(|l| l.value.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        s,
        "  {:<w$} {:<26} {:>8}  {:>8} {:>10} {:>10}",
        "value", "op", "SQNR dB", "local dB", "act scale", "w scale"
    );
    for l in &v.layers {
        let f = |x: Option<f32>| x.map_or("-".to_string(), |v| format!("{v:.3e}"));
        let _ = writeln!(
            s,
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
        let _ = writeln!(
            s,
            "           * rescaled per channel by cross-layer equalization: compared up to one gain per channel"
        );
    }
}

/// The files [`save_tensors`] writes into its directory.
pub const SAVED_TENSOR_FILES: [&str; 4] = ["inputs.npy", "float.npy", "int8.npy", "labels.txt"];

/// Writes the preprocessed inputs and both models' first outputs as `.npy` (`inputs.npy`,
/// `float.npy`, `int8.npy`) and `labels.txt` into `dir` (needs a validation run with
/// `keep_outputs`).
///
/// # Errors
/// The directory cannot be written; inputs or outputs of different shapes.
pub fn save_tensors(dir: &Path, samples: &[Sample], v: &Validation) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let views: Vec<_> = samples.iter().map(|s| s.tensor.view()).collect();
    let inputs = ndarray::stack(ndarray::Axis(0), &views)
        .map_err(|e| Error::Config(format!("cannot stack inputs: {e}")))?;
    crate::data::write_npy(&dir.join("inputs.npy"), &inputs)?;
    for (k, name) in [(0usize, "float.npy"), (1, "int8.npy")] {
        let parts: Vec<_> = v
            .kept_outputs
            .iter()
            .map(|o| if k == 0 { o.0.view() } else { o.1.view() })
            .collect();
        let all = ndarray::concatenate(ndarray::Axis(0), &parts)
            .map_err(|e| Error::Config(format!("cannot join outputs: {e}")))?;
        crate::data::write_npy(&dir.join(name), &all)?;
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
    crate::onnx::io::write_atomic(&dir.join("labels.txt"), labels.as_bytes())
}
