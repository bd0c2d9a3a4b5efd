//! The accuracy guard (`src/guard`): it measures what `quantize` wrote, says so in the
//! summary, the JSON report and the exit status, and `--guard fix` repairs what it can.
//!
//! A Fashion-MNIST CNN quantized to 3 bits (weights and activations) is a model the guard must
//! catch: on the 200 fixture images it keeps 63 % top-1 agreement and 5.0 dB SQNR. `fix`
//! weighs the alternatives to the defaults on the guard's own seeded inputs and keeps those
//! that help there; the test checks on the real images that what it kept helps there too.

use crate::common::{fixture, isquant};

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn real_sqnr(float: &str, int8: &std::path::Path, dir: &std::path::Path) -> f64 {
    let j = dir.join(format!(
        "{}.json",
        int8.file_stem().unwrap().to_string_lossy()
    ));
    let r = isquant(&[
        "validate",
        float,
        int8.to_str().unwrap(),
        fixture("data/fashion-mnist-200").to_str().unwrap(),
        "--json",
        j.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    json(&j)["outputs"][0]["sqnr_db"].as_f64().unwrap()
}

#[test]
fn guard_fails_a_broken_model_with_exit_3_and_fix_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let float = fixture("fmnist-small-bn.onnx");
    let float = float.to_str().unwrap();
    let run = |mode: &str, name: &str| {
        let out = dir.path().join(format!("{name}.onnx"));
        let report = dir.path().join(format!("{name}-report.json"));
        let r = isquant(&[
            "quantize",
            float,
            "-o",
            out.to_str().unwrap(),
            "--weight-bits",
            "3",
            "--act-bits",
            "3",
            "--guard",
            mode,
            "--report",
            report.to_str().unwrap(),
        ]);
        (r, out, json(&report))
    };

    let (r, reported, rep) = run("report", "w3a3-report");
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(reported.exists(), "the model is written all the same");
    assert!(r.stdout.contains("guard      FAILED"), "{}", r.stdout);
    assert_eq!(rep["guard"]["passed"], false);
    let before = rep["guard"]["outputs"][0]["sqnr_db"].as_f64().unwrap();
    assert!(before < 8.0, "{before}");
    assert_eq!(
        rep["guard"]["outputs"][0]["families"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let (r, fixed, rep) = run("fix", "w3a3-fix");
    let g = &rep["guard"];
    let after = g["outputs"][0]["sqnr_db"].as_f64().unwrap();
    assert!(
        after > before + 3.0,
        "guard {before} -> {after} dB\n{}",
        r.stdout
    );
    assert_eq!(r.code, if after >= 8.0 { 0 } else { 3 }, "{}", r.stdout);
    let kept: Vec<&str> = g["alternatives"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kept"] == true)
        .map(|a| a["option"].as_str().unwrap())
        .collect();
    assert!(!kept.is_empty(), "{g}");
    // The report's options are the ones the written model was made with.
    if kept.contains(&"--granularity per-channel") {
        assert_eq!(
            rep["config"]["granularity"], "per-channel",
            "{}",
            rep["config"]
        );
    }
    assert!(
        r.stdout.contains("weighed --granularity per-channel"),
        "{}",
        r.stdout
    );

    // What the guard kept on its own inputs helps on the real images too.
    let (q_before, q_after) = (
        real_sqnr(float, &reported, dir.path()),
        real_sqnr(float, &fixed, dir.path()),
    );
    assert!(
        q_after > q_before + 6.0,
        "real-image SQNR {q_before:.2} -> {q_after:.2} dB"
    );
}

#[test]
fn guard_passes_a_good_model_without_requantizing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let r = isquant(&[
        "quantize",
        fixture("fmnist-small-bn.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("guard      passed"), "{}", r.stdout);
    let g = &json(&report)["guard"];
    assert_eq!(g["passed"], true);
    assert_eq!(g["requantized"], 0);
    assert!(g["outputs"][0]["sqnr_db"].as_f64().unwrap() >= 8.0, "{g}");
}

#[test]
fn guard_measures_the_logits_before_a_final_softmax() {
    // The PP-OCR direction classifier ends in MatMul, Add, Softmax, Identity: the guard
    // compares the Add's output. There it finds per-tensor weights short (about 2 dB on its
    // inputs) and `fix` keeps per-channel scales (19.34 -> 19.69 dB and 51 -> 55 of 58
    // agreeing on the 58 text lines of docs/results.md).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let r = isquant(&[
        "quantize",
        fixture("ppocr-textline-cls.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--input-shape",
        "1,3,48,192",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let rep = json(&report);
    let o = &rep["guard"]["outputs"][0];
    assert_eq!(o["name"], "save_infer_model/scale_0.tmp_1", "{o}");
    assert_eq!(o["measured"], "linear_1.tmp_1", "{o}");
    assert_eq!(rep["guard"]["passed"], true);
    assert_eq!(rep["config"]["granularity"], "per-channel");
}

#[test]
fn guard_says_why_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    // Open spatial dimensions and no --input-shape: the guard has no input to make.
    let r = isquant(&[
        "quantize",
        fixture("ppocr-textline-cls.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("guard      not run:"), "{}", r.stdout);
    assert!(r.stdout.contains("--input-shape"), "{}", r.stdout);
}
