//! External data: a real `onnx.save(save_as_external_data=True)` output loads, converts, and a
//! missing data file is a clear error.

use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};

use crate::common::{fixture, isquant};

#[test]
fn external_data_model_loads_to_the_same_tensors_as_the_inline_one() {
    let inline = isquant::load(&fixture("fmnist-small-bn.onnx")).unwrap();
    let ext = isquant::load(&fixture("fmnist-small-bn-external.onnx")).unwrap();
    assert_eq!(ext.info.external_tensors, 17);
    assert_eq!(
        ext.info.external_files,
        vec!["fmnist-small-bn-external.onnx.data"]
    );
    for t in inline.model.graph.initializers() {
        let name = t.name.as_deref().unwrap();
        let u = ext.model.graph.initializer(name).unwrap();
        assert_eq!(
            isquant::onnx::tensor::to_array(t).unwrap(),
            isquant::onnx::tensor::to_array(u).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn convert_with_external_data_runs_in_tract_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let r = isquant(&[
        "convert",
        fixture("fmnist-small-bn-external.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--external-data",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("weights in") && r.stdout.contains("out.onnx."),
        "{}",
        r.stdout
    );
    let shape = vec![1, 1, 28, 28];
    let x = seeded_uniform(&shape, 3, -1.0, 2.8);
    let a = TractModel::load(
        Source::Path(&fixture("fmnist-small-bn.onnx")),
        std::slice::from_ref(&shape),
    )
    .unwrap()
    .run(std::slice::from_ref(&x))
    .unwrap();
    let b = TractModel::load(Source::Path(&out), &[shape])
        .unwrap()
        .run(std::slice::from_ref(&x))
        .unwrap();
    assert_eq!(a, b);
    // Converting the external-data output again (inline) gives the inline model's bytes.
    let inline = dir.path().join("inline.onnx");
    let r = isquant(&[
        "convert",
        out.to_str().unwrap(),
        "-o",
        inline.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("inline"), "{}", r.stdout);
}

#[test]
fn missing_external_data_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("fmnist-small-bn-external.onnx");
    std::fs::copy(fixture("fmnist-small-bn-external.onnx"), &lonely).unwrap();
    let r = isquant(&["inspect", lonely.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    let first = r.stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("cannot read external data file")
            && first.contains("fmnist-small-bn-external.onnx.data"),
        "{}",
        r.stderr
    );
}
