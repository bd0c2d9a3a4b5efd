//! The last stage: the IR version and the metadata isquant records in the model.
//!
//! - The IR version goes down to the lowest the opset allows (ONNX Runtime 1.15 rejects IR 10)
//!   when the model uses nothing newer IR versions added. For `convinteger-u8` (made for old
//!   runtimes) node and graph metadata, an IR 10 field that is only informational, is dropped
//!   first so that the version can go down.
//! - Metadata: `isquant.version`, `isquant.method`, `isquant.config` (the options as
//!   [`QuantizeConfig::summary`] spells them), `isquant.rescaled` (values cross-layer
//!   equalization divided per channel, one per line) and `isquant.layers` (the layer table).

use super::config::QuantizeConfig;
use crate::error::{Error, Result};
use crate::graph::Model;
use crate::passes::emit::{EmittedLayer, Format, LAYERS_KEY};
use crate::passes::equalize::EqualizeReport;

/// Metadata key of an int8 model: the values cross-layer equalization divided per channel, one
/// per line. `validate --per-layer` compares those up to one gain per channel.
pub const RESCALED_KEY: &str = "isquant.rescaled";

/// The lowest IR version that supports a default-domain opset (ONNX's versioning table).
#[must_use]
pub fn min_ir_version(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Sets the IR version and writes isquant's metadata.
///
/// # Errors
/// The layer table cannot be encoded as JSON.
pub fn finish(
    model: &mut Model,
    cfg: &QuantizeConfig,
    equalized: Option<&EqualizeReport>,
    table: &[EmittedLayer],
) -> Result<()> {
    let ir = min_ir_version(model.opset().unwrap_or(13));
    if cfg.format == Format::ConvIntegerU8 && model.ir_version() > ir {
        model.strip_ir10_metadata();
    }
    if model.ir_version() > ir && !model.uses_recent_ir_features() {
        model.set_ir_version(ir);
    }
    // An old model (IR 3, opset ≤ 8) whose opset emission raised: its IR version must follow,
    // or onnx.checker rejects the opset; and from IR 4 on initializers need not be graph inputs
    // (IR 3 requires every initializer to be one, which the new scales and integer weights
    // are not).
    if model.ir_version() < ir {
        model.set_ir_version(ir);
    }
    model.set_metadata("isquant.version", env!("CARGO_PKG_VERSION"));
    model.set_metadata(
        "isquant.method",
        "ISQuant: BatchNormalization folded, per-tensor symmetric int8 weights (zero-point 0) rounded with SQuant, data-free activation scales",
    );
    model.set_metadata("isquant.config", &cfg.summary());
    if let Some(e) = equalized.filter(|e| !e.rescaled.is_empty()) {
        model.set_metadata(RESCALED_KEY, &e.rescaled.join("\n"));
    }
    let json = serde_json::to_string(table)
        .map_err(|e| Error::Config(format!("cannot encode the layer table: {e}")))?;
    model.set_metadata(LAYERS_KEY, &json);
    Ok(())
}
