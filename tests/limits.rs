//! Untrusted sizes and values (issue 17, M and W rows): every allocation sized from the model,
//! a file or the command line is bounded before it is made, and non-finite values are named
//! instead of being quantized into a model that agrees with nothing.

use crate::common::{fixture, isquant};

fn quantize_rejects(name: &str, extra: &[&str], expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let model = fixture(name);
    let mut args = vec![
        "quantize",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = isquant(&args);
    assert_eq!(r.code, 2, "{name}: {}", r.stderr);
    for e in expect {
        assert!(r.stderr.contains(e), "{name}: wanted {e:?} in {}", r.stderr);
    }
    assert!(!out.exists(), "{name}: a refused quantize left its output");
}

/// M2: a model input declared 2^31 or 30000×30000 asked the noise pass for 1.9 TB and 10.8 GB
/// (abort). Now the batch is sized, found over the budget, and refused.
#[test]
fn declared_input_sizes_are_bounded_before_allocation() {
    // (The fuzzed 2^31 model also has a kernel_shape that does not match its weight, which
    // the load-time validation reports first.)
    quantize_rejects("redteam/fuzz-oom-input-dim-2p31.onnx", &[], &["error: "]);
    quantize_rejects(
        "redteam/oom-input-declared-30000x30000.onnx",
        &[],
        &[
            "[3, 30000, 30000]",
            "forward-pass inputs",
            "over the limit",
            "ISQUANT_MAX_ELEMENTS",
        ],
    );
}

/// M3: `--noise-batch` without a bound.
#[test]
fn noise_batch_is_bounded() {
    quantize_rejects(
        "fmnist-small-bn.onnx",
        &["--noise-batch", "100000000"],
        &["--noise-batch", "over the limit of 4096"],
    );
}

/// M4: a 241-byte PNG declaring 1×40000 pixels, resized to a shorter side of 256 (7.9 GB).
/// M3: `--synthetic` without a bound.
#[test]
fn image_and_synthetic_sizes_are_bounded() {
    let model = fixture("fmnist-small-bn.onnx");
    let m = model.to_str().unwrap();
    let png = fixture("redteam/thin-1x40000.png");
    let r = isquant(&[
        "validate",
        m,
        m,
        png.to_str().unwrap(),
        "--preset",
        "imagenet",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("thin-1x40000.png"), "{}", r.stderr);
    assert!(r.stderr.contains("pixels on a side"), "{}", r.stderr);
    let r = isquant(&["validate", m, m, "--synthetic", "1000000000"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--synthetic"), "{}", r.stderr);
}

/// W1: a NaN in a BN mean or a conv bias made the float model output NaN while the int8
/// model printed finite numbers, exit 0. Now the node and the tensor are named.
#[test]
fn non_finite_weights_are_named() {
    quantize_rejects(
        "redteam/silent-nan-bn-mean.onnx",
        &[],
        &["(BatchNormalization)", "`mu`", "NaN or infinite"],
    );
    quantize_rejects(
        "redteam/silent-nan-conv-bias.onnx",
        &[],
        &["(Conv)", "`B`", "NaN or infinite"],
    );
}

/// W2: an all-NaN input read "SQNR 36.81 dB" and passed `--min-sqnr 30`.
#[test]
fn non_finite_inputs_are_named() {
    let model = fixture("fmnist-small-bn.onnx");
    let m = model.to_str().unwrap();
    let npy = fixture("redteam/nan-input-1x28x28.npy");
    let r = isquant(&["validate", m, m, npy.to_str().unwrap(), "--min-sqnr", "30"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nan-input-1x28x28.npy"), "{}", r.stderr);
    assert!(r.stderr.contains("784 NaN"), "{}", r.stderr);
}

/// W5: one 1e36 weight set the per-tensor scale so that 8,191 of 8,192 weights rounded to 0,
/// with no word. The model is still written (it is what was asked), with a warning in the
/// summary and the JSON report.
#[test]
fn a_scale_that_zeroes_most_weights_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let model = fixture("redteam/silent-outlier-weight-1e36.onnx");
    let r = isquant(&[
        "quantize",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(r.code == 0 || r.code == 3, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("warning"))
        .unwrap_or_else(|| panic!("no warning in {}", r.stdout));
    assert!(line.contains("8191 of 8192 weights"), "{line}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let warnings = json["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // A healthy model has none.
    let r = isquant(&[
        "quantize",
        fixture("fmnist-small-bn.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("warning"), "{}", r.stdout);
}

/// A model declaring a fixed batch of 30,000 made the noise pass run 30,000 images at once:
/// within the input budget, but tract's activations took 3 GB (found by the quantize fuzzer).
#[test]
fn a_huge_fixed_batch_asks_for_input_shape() {
    use isquant::onnx::pb;
    let dir = tempfile::tempdir().unwrap();
    let mut m = crate::common::proto("fmnist-small-bn.onnx");
    let input = &mut m.graph.as_mut().unwrap().input[0];
    if let Some(pb::type_proto::Value::TensorType(t)) =
        input.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[0].value =
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(30_000));
    }
    let p = crate::common::write_proto(dir.path(), "batch.onnx", &m);
    let out = dir.path().join("q.onnx");
    let r = isquant(&[
        "quantize",
        p.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--act-ranges",
        "noise",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("declares a batch of 30000"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--input-shape 8,1,28,28"), "{}", r.stderr);
}

/// A text-line classifier given one 30,000×255 image computed 1.59 G values per tract run:
/// quantizing it took 49 s and 2.9 GB (fuzz case 94492). One run's work is now bounded (the
/// sum of every node's output elements, 4 × the element budget) and the shape named.
#[test]
fn the_work_of_one_forward_pass_is_bounded() {
    quantize_rejects(
        "ppocr-textline-cls.onnx",
        &["--input-shape", "1,3,30000,255", "--noise-batch", "4"],
        &[
            "one run of the model at input shape [1, 3, 30000, 255]",
            "values, over the limit of 1073741824",
            "ISQUANT_MAX_ELEMENTS",
        ],
    );
    // The classifier at its own size is well within the limit.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let model = fixture("ppocr-textline-cls.onnx");
    let r = isquant(&[
        "quantize",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--input-shape",
        "1,3,48,192",
    ]);
    assert!(r.code == 0 || r.code == 3, "{}", r.stderr);
}
