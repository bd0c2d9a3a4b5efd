//! `isquant inspect` and `isquant check`.

use std::path::PathBuf;
use std::process::ExitCode;

use isquant::check::Target;

use super::out;

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

pub(super) fn inspect(args: &InspectArgs) -> isquant::Result<ExitCode> {
    let loaded = isquant::load(&args.model)?;
    let report = isquant::inspect::inspect(
        &loaded.model,
        &args.model.display().to_string(),
        &loaded.info,
    )?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| isquant::Error::Config(format!("cannot encode JSON: {e}")))?;
        out!("{text}");
    } else {
        out!("{}", isquant::inspect::render(&report).trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn check(args: &CheckArgs) -> isquant::Result<ExitCode> {
    let loaded = isquant::load(&args.model)?;
    let target = isquant::value_name(&args.target);
    let v = isquant::check::check(&loaded.model, args.target);
    let speed = isquant::deploy::written_form(&loaded.model.metadata())
        .and_then(|(f, o)| isquant::deploy::for_target(f, o, args.target));
    if v.is_empty() {
        out!("{}: conforms to the {target} rules", args.model.display());
        if let Some(line) = speed {
            out!("speed: {line}");
        }
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::from(1))
}
