//! The commands as functions, for the Python binding (`python/`): each takes its models (files
//! or bytes) and its options by flag name, parses the options with the command line's own
//! parser (the same flags, defaults, checks and messages), runs what the command runs and
//! returns what the command would print and write, printing nothing.
//!
//! `quantize` with an output writes it as `isquant quantize -o` does (atomically, never over an
//! input); `--report`, `--json` and `--save-tensors` are written as on the command line too.
//! Errors are the library's [`Error`]; a flag the parser refuses is an [`Error::Config`]
//! carrying clap's message. [`error_kind`] names the family of an error (the Python exception
//! class).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, FromArgMatches};

use super::{inspect, quantize as q, validate as v, Cli, Command, ModelInput};
use crate::{Error, Result};

/// The version of the library and of the command line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An option's value, given by the option's name (the Python API's keyword arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// A switch (`--keep-first-float`) given or not, or `on`/`off` for the flags that take
    /// those values (`--correct-bias`).
    Bool(bool),
    /// One value (`--weight-bits 6`).
    Text(OsString),
    /// Values of a repeatable flag (`--skip a --skip b`).
    List(Vec<OsString>),
}

/// A float32 array in memory, in C order (the Python API's numpy inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// The inputs of [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// Files and folders of images, `.npy` or IDX files; none: seeded synthetic inputs.
    Files(Vec<PathBuf>),
    /// Arrays: each either a batch (as many dimensions as the model input) or one input (one
    /// fewer), with one label per input if given.
    Arrays {
        /// The arrays.
        arrays: Vec<Array>,
        /// One class label per input.
        labels: Option<Vec<usize>>,
    },
}

/// What [`quantize`] made.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The int8 model, encoded with every tensor inline: the bytes `isquant quantize -o`
    /// writes with the same options (unless its weights go to external data).
    pub model: Vec<u8>,
    /// The JSON report, as `--report` writes it.
    pub report: Vec<u8>,
    /// The summary and the guard's lines: what the command line prints before its `report` and
    /// `wrote` lines (no trailing newline).
    pub summary: String,
    /// The validation, when `validate` or `validate_inputs` was given.
    pub validation: Option<Validated>,
    /// The accuracy guard ran and failed.
    pub guard_failed: bool,
}

impl Quantized {
    /// The command line's exit code for this run: 1 when the validation missed a threshold,
    /// else 3 when the guard failed, else 0.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if self
            .validation
            .as_ref()
            .is_some_and(|v| !v.failures.is_empty())
        {
            super::EXIT_BELOW_THRESHOLD
        } else if self.guard_failed {
            super::EXIT_GUARD_FAILED
        } else {
            super::EXIT_OK
        }
    }
}

/// What [`validate`] measured.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The metrics as JSON, as `--json` writes them.
    pub metrics: Vec<u8>,
    /// The text the command line prints (no trailing newline).
    pub summary: String,
    /// The thresholds missed (the command line then exits with 1).
    pub failures: Vec<String>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The report as JSON (`isquant inspect --json`).
    pub report: String,
    /// The text `isquant inspect` prints (no trailing newline).
    pub summary: String,
}

/// The family of an error, as the Python exception classes name it: `file` (a file cannot be
/// read or written, or is not a regular file), `model` (not a valid or usable model), `config`
/// (an option, input or request that cannot be carried out, a refused flag), `limit` (over a
/// size limit), `runtime` (tract failed). The command line exits with 2 for every one.
#[must_use]
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } | Error::File { .. } => "file",
        Error::Decode { .. }
        | Error::Model { .. }
        | Error::Node { .. }
        | Error::Tensor { .. }
        | Error::Graph(_) => "model",
        Error::Config(_) => "config",
        Error::Limit { .. } => "limit",
        Error::Tract { .. } => "runtime",
    }
}

/// The options a command takes by name (its flags' long names with `_` for `-`), without the
/// ones the functions take as arguments (models, inputs, `output`).
///
/// # Errors
/// `command` is not one of the command line's subcommands.
pub fn option_names(command: &str) -> Result<Vec<String>> {
    let cmd = Cli::command();
    let sub = subcommand(&cmd, command)?;
    Ok(sub
        .get_arguments()
        .filter(|a| by_name(a))
        .map(|a| a.get_id().to_string())
        .collect())
}

fn subcommand<'a>(cmd: &'a clap::Command, name: &str) -> Result<&'a clap::Command> {
    cmd.find_subcommand(name)
        .ok_or_else(|| Error::Config(format!("no command `{name}`")))
}

/// Whether an argument is an option given by name (not a positional, `--output`, help or
/// version).
fn by_name(a: &clap::Arg) -> bool {
    a.get_long().is_some()
        && a.get_id() != "output"
        && !matches!(
            a.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// The flags of `command` for `options`, e.g. `[("weight_bits", Text("6"))]` →
/// `["--weight-bits=6"]`.
///
/// # Errors
/// An unknown option, or a value of the wrong form (a list for a flag that takes one value, a
/// bool for one that takes a value other than `on`/`off`).
pub fn flags(command: &str, options: &[(String, OptionValue)]) -> Result<Vec<OsString>> {
    let cmd = Cli::command();
    let sub = subcommand(&cmd, command)?;
    let mut out = Vec::new();
    for (name, value) in options {
        let arg = sub
            .get_arguments()
            .find(|a| a.get_id() == name.as_str() && by_name(a))
            .ok_or_else(|| Error::Config(format!("{command}: no option `{name}`")))?;
        let long = arg.get_long().unwrap_or_default();
        let with = |v: &OsString| {
            let mut f = OsString::from(format!("--{long}="));
            f.push(v);
            f
        };
        let switch = arg
            .get_possible_values()
            .iter()
            .map(|p| p.get_name())
            .eq(["on", "off"]);
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, OptionValue::Bool(b)) => {
                if *b {
                    out.push(OsString::from(format!("--{long}")));
                }
            }
            (ArgAction::Set, OptionValue::Bool(b)) if switch => {
                out.push(with(&OsString::from(if *b { "on" } else { "off" })));
            }
            (ArgAction::Set | ArgAction::Append, OptionValue::Text(t)) => out.push(with(t)),
            (ArgAction::Append, OptionValue::List(vs)) => out.extend(vs.iter().map(with)),
            (ArgAction::SetTrue, _) => {
                return Err(Error::Config(format!(
                    "{command}: `{name}` (--{long}) is True or False"
                )))
            }
            (ArgAction::Set, OptionValue::List(_)) => {
                return Err(Error::Config(format!(
                    "{command}: `{name}` (--{long}) takes one value, not a list"
                )))
            }
            _ => {
                return Err(Error::Config(format!(
                    "{command}: `{name}` (--{long}) takes a value, not True or False"
                )))
            }
        }
    }
    Ok(out)
}

/// Parses `isquant <command> <flags> -- <positionals>` with the command line's parser (`-o`
/// optional). clap's refusals become [`Error::Config`] with clap's message.
fn parse(command: &str, flags: &[OsString], positionals: Vec<OsString>) -> Result<Command> {
    let mut argv: Vec<OsString> = vec!["isquant".into(), command.into()];
    argv.extend(flags.iter().cloned());
    argv.push("--".into());
    argv.extend(positionals);
    let cmd =
        Cli::command().mut_subcommand("quantize", |s| s.mut_arg("output", |a| a.required(false)));
    let matches = cmd.try_get_matches_from(argv).map_err(usage)?;
    Ok(Cli::from_arg_matches(&matches).map_err(usage)?.command)
}

/// clap's message without its `error: ` prefix, usage and tip.
fn usage(e: clap::Error) -> Error {
    let text = e.render().to_string();
    let text = text.trim_start_matches("error: ");
    let end = ["\n\nUsage:", "\n\nFor more information", "\n\n  tip:"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    Error::Config(text[..end].trim_end().to_string())
}

/// The positional argument a model takes: its path, or the label of bytes.
fn positional(model: &ModelInput) -> OsString {
    match model {
        ModelInput::Path(p) => p.clone().into_os_string(),
        ModelInput::Bytes(_) => super::BYTES_LABEL.into(),
    }
}

/// `isquant quantize MODEL [-o OUTPUT] FLAGS`: quantizes, writes `output` (and `--report`)
/// when given, validates when asked. `progress` hears each stage (from several threads during
/// a validation).
///
/// # Errors
/// As the command line: bad flags, an unreadable or invalid model, files that would overwrite
/// an input, I/O.
pub fn quantize(
    model: &ModelInput,
    output: Option<PathBuf>,
    flags: &[OsString],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Quantized> {
    let Command::Quantize(mut args) = parse("quantize", flags, vec![positional(model)])? else {
        return Err(Error::Config("quantize: not parsed as quantize".into()));
    };
    args.output = output;
    let out = q::quantize(&args, model, &mut |s| progress(s))?;
    if let Some(path) = &args.report {
        crate::write_file(path, &out.report_json, &out.keep)?;
    }
    let validation = if args.validates() {
        let m = v::measure(
            &out.original,
            &out.int8,
            &v::Inputs::Files(&args.validate_inputs),
            &args.inputs,
            out.input_shape.as_deref(),
            &|done, total| progress(&format!("validate: {done} of {total} batches")),
        )?;
        let failures = v::conclude(&m, &args.inputs, &out.keep)?;
        Some(Validated {
            metrics: v::metrics_json(&m.validation)?,
            summary: m.text,
            failures,
        })
    } else {
        None
    };
    Ok(Quantized {
        model: out.model_bytes,
        report: out.report_json,
        summary: out.summary,
        validation,
        guard_failed: out.guard_failed,
    })
}

/// `isquant validate FLOAT INT8 [INPUTS] FLAGS`, on files or arrays. `progress` hears each
/// batch, from several threads.
///
/// # Errors
/// As the command line: bad flags, unreadable or invalid models or inputs, models that do not
/// fit each other, I/O.
pub fn validate(
    float: &ModelInput,
    int8: &ModelInput,
    inputs: &Inputs,
    flags: &[OsString],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Validated> {
    let mut positionals = vec![positional(float), positional(int8)];
    if let Inputs::Files(paths) = inputs {
        positionals.extend(paths.iter().map(|p| p.clone().into_os_string()));
    }
    let Command::Validate(args) = parse("validate", flags, positionals)? else {
        return Err(Error::Config("validate: not parsed as validate".into()));
    };
    let (f, i, keep) = v::load_models(float, int8, &args.inputs_paths, &args.inputs)?;
    let inputs = match inputs {
        Inputs::Files(_) => v::Inputs::Files(&args.inputs_paths),
        Inputs::Arrays { arrays, labels } => v::Inputs::Arrays {
            arrays,
            labels: labels.as_deref(),
        },
    };
    let m = v::measure(
        &f.model,
        &i.model,
        &inputs,
        &args.inputs,
        None,
        &|done, total| progress(&format!("validate: {done} of {total} batches")),
    )?;
    let failures = v::conclude(&m, &args.inputs, &keep)?;
    Ok(Validated {
        metrics: v::metrics_json(&m.validation)?,
        summary: m.text,
        failures,
    })
}

/// `isquant inspect MODEL`: the report as JSON and as text.
///
/// # Errors
/// An unreadable or invalid model.
pub fn inspect(model: &ModelInput) -> Result<Inspected> {
    let report = inspect::report(model)?;
    Ok(Inspected {
        report: inspect::json(&report)?,
        summary: crate::inspect::render(&report).trim_end().to_string(),
    })
}
