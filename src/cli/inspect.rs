//! `isquant inspect` and `isquant check`.

use std::path::PathBuf;

use crate::check::Target;

use super::{out, ModelInput, EXIT_BELOW_THRESHOLD, EXIT_OK};

#[derive(clap::Args, Debug)]
pub(super) struct InspectArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub(super) struct CheckArgs {
    /// The ONNX model.
    model: PathBuf,
    /// The runtime whose rules to check.
    #[arg(long, value_enum)]
    target: Target,
}

/// What `inspect` reports on a model.
pub(super) fn report(model: &ModelInput) -> crate::Result<crate::inspect::Inspection> {
    let loaded = model.load()?;
    crate::inspect::inspect(&loaded.model, &model.label(), &loaded.info)
}

/// The report as `--json` prints it.
pub(super) fn json(report: &crate::inspect::Inspection) -> crate::Result<String> {
    serde_json::to_string_pretty(report)
        .map_err(|e| crate::Error::Config(format!("cannot encode JSON: {e}")))
}

pub(super) fn inspect(args: &InspectArgs) -> crate::Result<u8> {
    let report = report(&ModelInput::Path(args.model.clone()))?;
    if args.json {
        out!("{}", json(&report)?);
    } else {
        out!("{}", crate::inspect::render(&report).trim_end());
    }
    Ok(EXIT_OK)
}

pub(super) fn check(args: &CheckArgs) -> crate::Result<u8> {
    let loaded = crate::load(&args.model)?;
    let target = crate::value_name(&args.target);
    let v = crate::check::check(&loaded.model, args.target);
    let speed = crate::deploy::written_form(&loaded.model.metadata())
        .and_then(|(f, o)| crate::deploy::for_target(f, o, args.target));
    if v.is_empty() {
        out!("{}: conforms to the {target} rules", args.model.display());
        if let Some(line) = speed {
            out!("speed: {line}");
        }
        return Ok(EXIT_OK);
    }
    if let Some(line) = &speed {
        out!("speed: {line}");
    }
    out!(
        "{}: {} rule(s) of {target} broken",
        args.model.display(),
        v.len()
    );
    for x in &v {
        out!("  {x}");
    }
    Ok(EXIT_BELOW_THRESHOLD)
}
