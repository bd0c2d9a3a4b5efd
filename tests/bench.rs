//! `isquant bench` (issue 16, item 5): times models in tract side by side and prints each
//! one's median and its ratio to the first.

use crate::common::{fixture, isquant};

#[test]
fn bench_times_float_and_int8_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let float = fixture("fmnist-small-bn.onnx");
    let int8 = dir.path().join("q.onnx");
    let r = isquant(&[
        "quantize",
        float.to_str().unwrap(),
        "-o",
        int8.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let json = dir.path().join("latency.json");
    let (f, q, j) = (
        float.to_str().unwrap(),
        int8.to_str().unwrap(),
        json.to_str().unwrap(),
    );
    let r = isquant(&["bench", f, q, "--runs", "5", "--warmup", "1", "--json", j]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("median of 5 runs"), "{}", r.stdout);
    assert!(r.stdout.contains("[1, 1, 28, 28]"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("{q}: ")) && r.stdout.contains(&format!("the time of {f}")),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("round 6 of 6"), "{}", r.stderr);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["runtime"], "tract");
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["vs_first"], 1.0);
    for m in models {
        let (p10, med, p90) = (
            m["p10_ms"].as_f64().unwrap(),
            m["median_ms"].as_f64().unwrap(),
            m["p90_ms"].as_f64().unwrap(),
        );
        assert!(p10 > 0.0 && p10 <= med && med <= p90, "{m}");
    }
    let ratio = models[1]["median_ms"].as_f64().unwrap() / models[0]["median_ms"].as_f64().unwrap();
    assert!((models[1]["vs_first"].as_f64().unwrap() - ratio).abs() < 1e-9);
}

#[test]
fn bench_names_what_it_needs() {
    // A detector with open height and width: the shape must be given.
    let det = fixture("ppocrv4-det.onnx");
    let r = isquant(&["bench", det.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--input-shape 1,3,H,W"), "{}", r.stderr);
    // --json may not overwrite a model it times.
    let m = fixture("mnist-cnn.onnx");
    let r = isquant(&["bench", m.to_str().unwrap(), "--json", m.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--json"), "{}", r.stderr);
    let r = isquant(&["bench", m.to_str().unwrap(), "--runs", "0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--runs"), "{}", r.stderr);
    let r = isquant(&["bench"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}
