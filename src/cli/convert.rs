//! `isquant convert` and `isquant fold-bn`: read a model, (fold BN,) write it back.

use std::path::PathBuf;
use std::time::Instant;

use crate::onnx::io::Written;

use super::{describe_written, model_files, out, EXIT_OK};
use crate::onnx::io::{check_files, NamedPath};

#[derive(clap::Args, Debug)]
pub(super) struct ConvertArgs {
    /// The ONNX model to read (never modified).
    input: PathBuf,
    /// Where to write the model.
    #[arg(short, long)]
    output: PathBuf,
    /// Put every initializer of 1 kB or more in a fresh `<output>.<random>.data` (done
    /// automatically when the model would exceed protobuf's 2 GB limit); the data file the
    /// replaced output referenced is removed once the new model is in place.
    #[arg(long)]
    external_data: bool,
}

/// Writes the (possibly edited) model next to nothing it was read from.
fn save(loaded: &crate::LoadedModel, args: &ConvertArgs) -> crate::Result<Written> {
    crate::save(
        &loaded.model,
        &args.output,
        args.external_data,
        &loaded.source_files(&args.input),
    )
}

/// Loads the input after checking that `-o` is not one of the files it reads.
fn load(args: &ConvertArgs) -> crate::Result<crate::LoadedModel> {
    let outputs = [NamedPath::new("-o", &args.output)];
    check_files(&model_files("the input model", &args.input, None), &outputs)?;
    let loaded = crate::load(&args.input)?;
    check_files(
        &model_files("the input model", &args.input, Some(&loaded)),
        &outputs,
    )?;
    Ok(loaded)
}

pub(super) fn convert(args: &ConvertArgs) -> crate::Result<u8> {
    let start = Instant::now();
    let loaded = load(args)?;
    let written = save(&loaded, args)?;
    out!(
        "wrote {} in {:.2?}",
        describe_written(&args.output, &written),
        start.elapsed()
    );
    if loaded.info.external_tensors > 0 && written.external.is_none() {
        out!(
            "note: the input kept {} tensors in external data; the output holds them inline (use --external-data to keep them apart)",
            loaded.info.external_tensors
        );
    }
    Ok(EXIT_OK)
}

pub(super) fn fold_bn(args: &ConvertArgs) -> crate::Result<u8> {
    let start = Instant::now();
    let mut loaded = load(args)?;
    let report = crate::passes::fold_bn::fold_batch_norms(&mut loaded.model)?;
    let written = save(&loaded, args)?;
    out!(
        "folded {} BatchNormalization node(s), kept {}",
        report.folded.len(),
        report.kept.len()
    );
    for f in &report.folded {
        out!("  fold  {} -> {} ({})", f.bn, f.layer, f.direction);
    }
    for k in &report.kept {
        out!("  keep  {}: {}", k.node, k.reason);
    }
    out!(
        "wrote {} in {:.2?}",
        describe_written(&args.output, &written),
        start.elapsed()
    );
    Ok(EXIT_OK)
}
