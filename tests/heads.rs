//! A YOLOv8-style detection head, written as ultralytics exports it (issue 14): BN folded into
//! the convolutions (PyTorch's export does), SiLU as Sigmoid·x, a box branch of 4×16 DFL bins
//! and a class branch concatenated per level, split again, the DFL as Softmax + a constant
//! 1×1 Conv (weights 0…15), boxes decoded to pixels, and one output that concatenates box
//! coordinates (pixels) with Sigmoid class scores (0…1). Random weights, real images (the 20
//! CIFAR-10 fixtures). With default flags and the input range such models take (`--preset
//! unit`: x/255), in tract:
//!
//! - the class-score channels keep SQNR ≥ 20 dB and every class score above 0.25 in float is
//!   above it in int8, and no other (ties within 0.01 of the threshold aside);
//! - the guard compares the output branch by branch (box pixels and class logits), so the
//!   class scores are not judged by the coordinates' larger values.
//!
//! The noise pass that sets the ranges of the SiLU outputs (no BN statistics after folding)
//! used N(0, 1) images whatever the input range: class scores 24.0 dB and 5 of 36 detections
//! lost or added. With uniform noise over a non-negative input range: 36.3 dB, none.

use isquant::graph::Model;
use isquant::inputs::{load_samples, InputSource, Preprocess};
use isquant::metrics::Sums;
use isquant::onnx::pb;
use isquant::runtime::{Source, TractModel};
use ndarray::{ArrayD, Axis, Slice};
use prost::Message;

use crate::common::build::{i, i64s, ints, Builder};
use crate::common::{fixture, isquant, write_proto};

/// SiLU as exporters write it: `x · Sigmoid(x)`.
fn silu(b: Builder, x: &str, y: &str) -> Builder {
    let s = format!("{y}.sig");
    b.node("Sigmoid", &[x], &[&s], vec![])
        .node("Mul", &[x, &s], &[y], vec![])
}

fn yolo_head() -> pb::ModelProto {
    let conv = |stride: i64, pad: i64| {
        vec![
            ints("strides", &[stride, stride]),
            ints("pads", &[pad, pad, pad, pad]),
        ]
    };
    // 8×8 anchors at stride 4 (32×32 input): centres 0.5 … 7.5, in grid units.
    let mut anchors = Vec::new();
    for axis in 0..2 {
        for k in 0..64 {
            let (y, x) = (k / 8, k % 8);
            anchors.push(if axis == 0 { x as f32 } else { y as f32 } + 0.5);
        }
    }
    let dfl: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let mut b = Builder::new(13)
        .input("images", &[1, 3, 32, 32])
        .random("w1", &[16, 3, 3, 3], 0.94, 0.0)
        .random("b1", &[16], 0.2, 0.0)
        .random("w2", &[32, 16, 3, 3], 0.41, 0.0)
        .random("b2", &[32], 0.2, 0.0)
        .random("wb", &[64, 32, 1, 1], 0.9, 0.0)
        .random("bb", &[64], 0.5, 0.0)
        .random("wc1", &[32, 32, 3, 3], 0.29, 0.0)
        .random("bc1", &[32], 0.2, 0.0)
        .random("wc", &[3, 32, 1, 1], 4.0, 0.0)
        .random("bc", &[3], 0.5, -2.0)
        .init("dfl", &[1, 16, 1, 1], dfl)
        .init("anchors", &[1, 2, 64], anchors)
        .init("two", &[], vec![2.0])
        .init("stride", &[], vec![4.0]);
    b = b.node("Conv", &["images", "w1", "b1"], &["c1"], conv(2, 1));
    b = silu(b, "c1", "a1");
    b = b.node("Conv", &["a1", "w2", "b2"], &["c2"], conv(2, 1));
    b = silu(b, "c2", "a2");
    b = b.node("Conv", &["a2", "wb", "bb"], &["box_logits"], conv(1, 0));
    b = b.node("Conv", &["a2", "wc1", "bc1"], &["cc1"], conv(1, 1));
    b = silu(b, "cc1", "ca1");
    b = b
        .node("Conv", &["ca1", "wc", "bc"], &["cls_logits"], conv(1, 0))
        .node(
            "Concat",
            &["box_logits", "cls_logits"],
            &["level"],
            vec![i("axis", 1)],
        )
        .node("Reshape", &["level", "shape_level"], &["flat"], vec![])
        .node(
            "Split",
            &["flat", "split"],
            &["box", "cls"],
            vec![i("axis", 1)],
        )
        .node("Reshape", &["box", "shape_bins"], &["bins"], vec![])
        .node(
            "Transpose",
            &["bins"],
            &["bins_t"],
            vec![ints("perm", &[0, 2, 1, 3])],
        )
        .node("Softmax", &["bins_t"], &["probs"], vec![i("axis", 1)])
        .node("Conv", &["probs", "dfl"], &["dist4"], vec![])
        .node("Reshape", &["dist4", "shape_dist"], &["dist"], vec![])
        .node("Slice", &["dist", "s0", "s2", "ax1"], &["lt"], vec![])
        .node("Slice", &["dist", "s2", "s4", "ax1"], &["rb"], vec![])
        .node("Sub", &["anchors", "lt"], &["x1y1"], vec![])
        .node("Add", &["anchors", "rb"], &["x2y2"], vec![])
        .node("Add", &["x1y1", "x2y2"], &["sum"], vec![])
        .node("Div", &["sum", "two"], &["cxy"], vec![])
        .node("Sub", &["x2y2", "x1y1"], &["wh"], vec![])
        .node("Concat", &["cxy", "wh"], &["xywh"], vec![i("axis", 1)])
        .node("Mul", &["xywh", "stride"], &["boxes"], vec![])
        .node("Sigmoid", &["cls"], &["scores"], vec![])
        .node(
            "Concat",
            &["boxes", "scores"],
            &["output0"],
            vec![i("axis", 1)],
        )
        .output("output0");
    let mut m = b.build();
    let g = m.graph.as_mut().unwrap();
    for t in [
        i64s("shape_level", &[1, 67, 64]),
        i64s("split", &[64, 3]),
        i64s("shape_bins", &[1, 4, 16, 64]),
        i64s("shape_dist", &[1, 4, 64]),
        i64s("s0", &[0]),
        i64s("s2", &[2]),
        i64s("s4", &[4]),
        i64s("ax1", &[1]),
    ] {
        g.initializer.push(t);
    }
    m
}

/// Channels `from..to` of a `[N, C, A]` output.
fn channels(a: &ArrayD<f32>, from: usize, to: usize) -> ArrayD<f32> {
    a.slice_axis(Axis(1), Slice::from(from..to)).to_owned()
}

/// `(image, anchor, class)` of every class score above 0.25, with the score.
fn detections(out: &ArrayD<f32>, image: usize) -> Vec<((usize, usize, usize), f32)> {
    let mut found = Vec::new();
    for a in 0..out.shape()[2] {
        for c in 4..out.shape()[1] {
            let v = out[[0, c, a]];
            if v > 0.25 {
                found.push(((image, a, c - 4), v));
            }
        }
    }
    found
}

#[test]
fn yolo_style_head_keeps_its_class_scores_and_detections() {
    let dir = tempfile::tempdir().unwrap();
    let float = write_proto(dir.path(), "yolo.onnx", &yolo_head());
    // For tools/eval/yolo_head.py (the flag variants of docs/results.md, in ONNX Runtime).
    if let Some(path) = std::env::var_os("ISQUANT_SAVE_YOLO_HEAD") {
        std::fs::copy(&float, path).unwrap();
    }
    let q = dir.path().join("yolo-int8.onnx");
    let report = dir.path().join("r.json");
    let r = isquant(&[
        "quantize",
        float.to_str().unwrap(),
        "-o",
        q.to_str().unwrap(),
        "--preset",
        "unit",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // The guard measured the Concat's two branches: box pixels and the class logits.
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let parts: Vec<&str> = rep["guard"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["measured"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["boxes", "cls"], "{}", rep["guard"]);

    let paths = [fixture("data/cifar10-20")];
    let preprocess = Preprocess::default();
    let loaded = load_samples(
        &InputSource {
            paths: &paths,
            preprocess: &preprocess,
            label_regex: None,
            labels: None,
            limit: None,
            synthetic: 0,
            synthetic_range: (0.0, 1.0),
        },
        &[Some(1), Some(3), Some(32), Some(32)],
    )
    .unwrap();
    assert_eq!(loaded.samples.len(), 20);
    let fb = std::fs::read(&float).unwrap();
    let qm =
        Model::from_proto(pb::ModelProto::decode(&*std::fs::read(&q).unwrap()).unwrap()).unwrap();
    let qb = isquant::onnx::io::encode_model(&qm.to_proto());
    let shape = vec![1usize, 3, 32, 32];
    let f = TractModel::load(Source::Bytes(&fb), std::slice::from_ref(&shape)).unwrap();
    let g = TractModel::load(Source::Bytes(&qb), std::slice::from_ref(&shape)).unwrap();
    let (mut scores, mut boxes) = (Sums::default(), Sums::default());
    let (mut float_dets, mut int8_dets) = (Vec::new(), Vec::new());
    let mut floats = Vec::new();
    for (k, sample) in loaded.samples.iter().enumerate() {
        let x = sample.tensor.clone().insert_axis(ndarray::Axis(0));
        let a = f.run(std::slice::from_ref(&x)).unwrap().remove(0);
        let b = g.run(std::slice::from_ref(&x)).unwrap().remove(0);
        scores.add(&channels(&a, 4, 7), &channels(&b, 4, 7));
        boxes.add(&channels(&a, 0, 4), &channels(&b, 0, 4));
        float_dets.extend(detections(&a, k));
        int8_dets.extend(detections(&b, k));
        floats.push(a);
    }
    let total = 20 * 64 * 3;
    assert!(
        (10..total / 4).contains(&float_dets.len()),
        "a head that detects a few things: {} of {total} scores above 0.25 (max {:.3}, mean {:.3})",
        float_dets.len(),
        floats
            .iter()
            .flat_map(|a| channels(a, 4, 7).into_iter())
            .fold(f32::MIN, f32::max),
        floats
            .iter()
            .flat_map(|a| channels(a, 4, 7).into_iter())
            .sum::<f32>()
            / total as f32
    );
    assert!(
        scores.sqnr_db() >= 20.0,
        "class scores: SQNR {:.2} dB (boxes {:.2} dB)",
        scores.sqnr_db(),
        boxes.sqnr_db()
    );
    // A detection found by one model and not the other counts unless the float score is
    // within 0.01 of the threshold (a tie no rounding can decide).
    let keys = |d: &[((usize, usize, usize), f32)]| -> Vec<(usize, usize, usize)> {
        d.iter().map(|(k, _)| *k).collect()
    };
    let (fk, qk) = (keys(&float_dets), keys(&int8_dets));
    let differ: Vec<_> = fk
        .iter()
        .filter(|k| !qk.contains(k))
        .chain(qk.iter().filter(|k| !fk.contains(k)))
        .filter(|(img, a, c)| (floats[*img][[0, c + 4, *a]] - 0.25).abs() > 0.01)
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} float detections differ in int8: {differ:?} (class scores {:.2} dB)",
        differ.len(),
        fk.len(),
        scores.sqnr_db()
    );
}
