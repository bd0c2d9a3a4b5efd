//! Output formats: every fixture in every format runs in tract; convinteger-u8 is a lossless
//! re-encoding of convinteger; the Q/DQ forms stay within quantization noise of it; the
//! TensorRT rules hold for `qdq`.

use isquant::graph::Model;
use isquant::metrics::Sums;
use isquant::onnx::pb;
use isquant::onnx::tensor::to_array;
use isquant::onnx::DataType;
use isquant::passes::emit::{Format, QdqOutputs};
use isquant::pipeline::{quantize, ActivationType, QuantizeConfig};
use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};
use prost::Message;

use crate::common::build::value_info;
use crate::common::{fixture, isquant, proto, MODELS};

fn run(m: &pb::ModelProto, x: &ndarray::ArrayD<f32>) -> ndarray::ArrayD<f32> {
    let b = m.encode_to_vec();
    TractModel::load(Source::Bytes(&b), &[x.shape().to_vec()])
        .unwrap()
        .run(std::slice::from_ref(x))
        .unwrap()
        .remove(0)
}

fn quantized(name: &str, format: Format) -> pb::ModelProto {
    quantized_with(
        name,
        QuantizeConfig {
            format,
            ..QuantizeConfig::default()
        },
    )
}

fn quantized_with(name: &str, cfg: QuantizeConfig) -> pb::ModelProto {
    let mut m = Model::from_proto(proto(name)).unwrap();
    let cfg = QuantizeConfig {
        input_shape: name.starts_with("ppocr").then(|| vec![1, 3, 48, 192]),
        ..cfg
    };
    quantize(&mut m, &cfg, None, &mut |_| {}).unwrap();
    m.graph.check().unwrap();
    m.to_proto()
}

fn sqnr(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f64 {
    let mut s = Sums::default();
    s.add(a, b);
    s.sqnr_db()
}

#[test]
fn every_format_of_every_fixture_runs_and_agrees() {
    for (name, shape, lo, hi) in MODELS {
        let x = seeded_uniform(shape, 21, *lo, *hi);
        let float = run(&proto(name), &x);
        let base = run(&quantized(name, Format::ConvInteger), &x);
        let base_db = sqnr(&float, &base);
        // Lossless re-encoding: identical up to tract's rounding at exact ties.
        let u8 = run(&quantized(name, Format::ConvIntegerU8), &x);
        let same = sqnr(&base, &u8);
        assert!(
            same > 40.0,
            "{name}: convinteger-u8 vs convinteger {same:.1} dB"
        );
        // qdq-u8 has the default's encodings plus a Q after each layer: within 7 dB. qdq is
        // int8 only (TensorRT): every non-negative tensor loses a bit, and on ppocr's
        // hardswish/squeeze-excite stacks that compounds (real text lines: docs/results.md,
        // "Output formats on MobileNetV2"), so its bound is 13 dB.
        for (f, margin) in [(Format::Qdq, 13.0), (Format::QdqU8, 7.0)] {
            let y = run(&quantized(name, f), &x);
            let db = sqnr(&float, &y);
            assert!(
                db > base_db - margin,
                "{name}: {} SQNR {db:.1} dB vs convinteger {base_db:.1} dB",
                f.name()
            );
        }
    }
}

/// A QuantizeLinear of `m`: output, input, scale, and the lowest and highest real value it
/// represents.
fn quantize_nodes(m: &pb::ModelProto) -> Vec<(String, String, f32, f32, f32)> {
    let init = |n: &str| {
        m.graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(n))
            .map(|t| to_array(t).unwrap())
            .unwrap()
    };
    let mut out = Vec::new();
    for n in &m.graph.as_ref().unwrap().node {
        if n.op_type.as_deref() != Some("QuantizeLinear") {
            continue;
        }
        let s = init(&n.input[1]).to_f32().iter().copied().next().unwrap();
        let zp = init(&n.input[2]);
        let z = zp.to_f32().iter().copied().next().unwrap();
        let (lo, hi) = match zp.data_type() {
            DataType::Uint8 => (0.0, 255.0),
            DataType::Int8 => (-128.0, 127.0),
            t => panic!("zero-point type {t:?}"),
        };
        out.push((
            n.output[0].clone(),
            n.input[0].clone(),
            s,
            (lo - z) * s,
            (hi - z) * s,
        ));
    }
    out
}

/// Per tensor, how far `other` is from `base` given the same quantized inputs, in levels of
/// the base's QuantizeLinear (what `tools/formats/agreement.py` measures in ONNX Runtime).
/// Every QuantizeLinear of `other` that `base` also has (same output name) reads the value the
/// base quantizes, fed as an extra graph input, so a rounding flip upstream (float summation
/// order) cannot spread through later layers and each tensor shows what the format itself
/// changes. Returns the largest difference and where it is.
fn max_level_difference(
    base: &pb::ModelProto,
    other: &pb::ModelProto,
    x: &ndarray::ArrayD<f32>,
) -> (f32, String) {
    let qs = quantize_nodes(base);
    let with_outputs = |m: &pb::ModelProto, names: &[String]| {
        let mut m = m.clone();
        let g = m.graph.as_mut().unwrap();
        g.output.clear();
        for v in names {
            g.output.push(pb::ValueInfoProto {
                name: Some(v.clone()),
                ..Default::default()
            });
        }
        m
    };
    let base_in: Vec<String> = qs.iter().map(|q| q.1.clone()).collect();
    let base_vals = run_all(&with_outputs(base, &base_in), std::slice::from_ref(x));
    // The other model: shared QuantizeLinears read graph inputs.
    let mut m = other.clone();
    let g = m.graph.as_mut().unwrap();
    let mut inputs = vec![x.clone()];
    let mut wanted = Vec::new();
    for (k, (q_out, q_in, ..)) in qs.iter().enumerate() {
        match g
            .node
            .iter_mut()
            .find(|n| n.op_type.as_deref() == Some("QuantizeLinear") && &n.output[0] == q_out)
        {
            Some(n) => {
                wanted.push(n.input[0].clone());
                let fed = format!("forced_{k}");
                n.input[0] = fed.clone();
                let shape: Vec<i64> = base_vals[k].shape().iter().map(|&d| d as i64).collect();
                g.input.push(value_info(&fed, &shape));
                inputs.push(base_vals[k].clone());
            }
            None => wanted.push(q_in.clone()),
        }
    }
    let got = run_all(&with_outputs(&m, &wanted), &inputs);
    let mut worst = (0.0f32, String::new());
    for ((q, a), b) in qs.iter().zip(&base_vals).zip(&got) {
        let level = |v: f32| (v.clamp(q.3, q.4) / q.2).round_ties_even();
        let d = a
            .iter()
            .zip(b.iter())
            .map(|(&a, &b)| (level(a) - level(b)).abs())
            .fold(0.0, f32::max);
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, q.1.clone());
        }
    }
    worst
}

fn run_all(m: &pb::ModelProto, inputs: &[ndarray::ArrayD<f32>]) -> Vec<ndarray::ArrayD<f32>> {
    let b = m.encode_to_vec();
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|x| x.shape().to_vec()).collect();
    TractModel::load(Source::Bytes(&b), &shapes)
        .unwrap()
        .run(inputs)
        .unwrap()
}

/// The acceptance criterion of the formats: with the same quantized inputs, every tensor of
/// every format is within one quantization step of the integer format with the same
/// activation encoding (`qdq` is int8 only, so it is compared with `convinteger
/// --activation-type int8`). `--qdq-outputs all` adds quantization points and is allowed to
/// differ; it is checked to really differ somewhere, so the comparison can fail.
#[test]
fn every_format_is_within_one_step_of_the_integer_format_per_tensor() {
    let mut all_differs = false;
    for (name, shape, lo, hi) in MODELS {
        let x = seeded_uniform(shape, 22, *lo, *hi);
        let base = quantized(name, Format::ConvInteger);
        let int8 = quantized_with(
            name,
            QuantizeConfig {
                activation_type: ActivationType::Int8,
                ..QuantizeConfig::default()
            },
        );
        for (other, reference, label) in [
            (
                quantized(name, Format::ConvIntegerU8),
                &base,
                "convinteger-u8",
            ),
            (quantized(name, Format::QdqU8), &base, "qdq-u8"),
            (quantized(name, Format::Qdq), &int8, "qdq"),
        ] {
            let (d, at) = max_level_difference(reference, &other, &x);
            assert!(d <= 1.0, "{name}: {label} is {d} levels off at {at}");
        }
        let all = quantized_with(
            name,
            QuantizeConfig {
                format: Format::QdqU8,
                qdq_outputs: QdqOutputs::All,
                ..QuantizeConfig::default()
            },
        );
        all_differs |= max_level_difference(&base, &all, &x).0 > 1.0;
    }
    assert!(
        all_differs,
        "--qdq-outputs all never differed: the comparison is blind"
    );
}

/// TensorRT's Q/DQ rules (docs/runtime-rules.md §3.1): int8 only, zero-point 0, positive constant
/// scales, weights per-tensor (or per-channel on axis 0) behind a DequantizeLinear, no
/// ConvInteger/MatMulInteger, no contrib ops.
fn tensorrt_violations(m: &pb::ModelProto) -> Vec<String> {
    let model = Model::from_proto(m.clone()).unwrap();
    isquant::check::check(&model, isquant::check::Target::TensorRt)
        .into_iter()
        .map(|v| v.to_string())
        .collect()
}

#[test]
fn qdq_output_passes_the_tensorrt_rules_and_convinteger_does_not() {
    for (name, ..) in MODELS {
        let v = tensorrt_violations(&quantized(name, Format::Qdq));
        assert!(v.is_empty(), "{name}: {v:?}");
        // `--target tensorrt --qdq-outputs all`, with its per-reader fan-out.
        let all = quantized_with(
            name,
            QuantizeConfig {
                format: Format::Qdq,
                qdq_outputs: QdqOutputs::All,
                ..QuantizeConfig::default()
            },
        );
        let v = tensorrt_violations(&all);
        assert!(v.is_empty(), "{name} (all): {v:?}");
        let v = tensorrt_violations(&quantized(name, Format::ConvInteger));
        assert!(
            v.iter()
                .any(|r| r.contains("ConvInteger") || r.contains("MatMulInteger")),
            "{name}: {v:?}"
        );
        let v = tensorrt_violations(&quantized(name, Format::QdqU8));
        assert!(v.iter().any(|r| r.contains("uint8")), "{name}: {v:?}");
    }
}

#[test]
fn every_format_keeps_accuracy_on_labeled_images() {
    let dir = tempfile::tempdir().unwrap();
    for (model, data, preset) in [
        (
            "cifar10-keras-bn-after-relu.onnx",
            "data/cifar10-20",
            "pixels",
        ),
        ("mnist-cnn.onnx", "data/mnist-20", "mnist"),
    ] {
        for f in ["convinteger", "convinteger-u8", "qdq", "qdq-u8"] {
            let out = dir.path().join(format!("{f}-{model}"));
            let r = isquant(&[
                "quantize",
                fixture(model).to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--format",
                f,
            ]);
            assert_eq!(r.code, 0, "{f}: {}", r.stderr);
            let r = isquant(&[
                "validate",
                fixture(model).to_str().unwrap(),
                out.to_str().unwrap(),
                fixture(data).to_str().unwrap(),
                "--preset",
                preset,
                "--label-regex",
                r"_(\d+)\.png$",
                "--max-accuracy-drop",
                "5",
            ]);
            assert_eq!(r.code, 0, "{model} {f}: {}{}", r.stdout, r.stderr);
        }
    }
}

#[test]
fn per_channel_weights_run_in_every_format_and_keep_the_rules() {
    use isquant::pipeline::Granularity;
    for (name, shape, lo, hi) in MODELS {
        let x = seeded_uniform(shape, 33, *lo, *hi);
        let float = run(&proto(name), &x);
        for format in [Format::ConvInteger, Format::Qdq, Format::QdqU8] {
            let mut m = Model::from_proto(proto(name)).unwrap();
            let cfg = QuantizeConfig {
                format,
                granularity: Granularity::PerChannel,
                input_shape: name.starts_with("ppocr").then(|| vec![1, 3, 48, 192]),
                ..QuantizeConfig::default()
            };
            let report = quantize(&mut m, &cfg, None, &mut |_| {}).unwrap();
            let opset = m.opset().unwrap();
            // The opset is never raised to 13 for per-axis DequantizeLinear.
            assert_eq!(opset, proto(name).opset_import[0].version(), "{name}");
            let p = m.to_proto();
            let y = run(&p, &x);
            assert!(
                sqnr(&float, &y) > 3.0,
                "{name} {}: {:.1} dB",
                format.name(),
                sqnr(&float, &y)
            );
            if format == Format::ConvInteger {
                assert!(
                    report
                        .layers
                        .iter()
                        .any(|l| l.weight_channel_scales.is_some()),
                    "{name}"
                );
            }
            if format == Format::Qdq {
                let v = tensorrt_violations(&p);
                assert!(v.is_empty(), "{name}: {v:?}");
            }
        }
    }
}

/// `--target ort` fuses every convolution (`--qdq-outputs all`); `--target tensorrt` and
/// `--format qdq-u8` alone are the exact form; `all` is refused for the integer formats. The choice is recorded in the model.
#[test]
fn target_ort_picks_all_outputs_and_format_alone_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("mnist-cnn.onnx");
    let config_of = |args: &[&str]| -> String {
        let out = dir.path().join("m.onnx");
        let mut full = vec![
            "quantize",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        let r = isquant(&full);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let m = isquant::load(&out).unwrap().model;
        m.metadata()
            .into_iter()
            .find(|(k, _)| k == "isquant.config")
            .map(|(_, v)| v)
            .unwrap()
    };
    assert!(config_of(&["--target", "ort"]).contains("format=qdq-u8"));
    assert!(config_of(&["--target", "ort"]).contains("qdq-outputs=all"));
    assert!(config_of(&["--target", "ort", "--qdq-outputs", "exact"]).contains("qdq-outputs=exact"));
    assert!(config_of(&["--format", "qdq-u8"]).contains("qdq-outputs=exact"));
    assert!(config_of(&["--target", "tensorrt"]).contains("qdq-outputs=exact"));
    assert!(config_of(&["--target", "tensorrt"]).contains("format=qdq "));
    assert!(
        config_of(&["--target", "tensorrt", "--qdq-outputs", "all"]).contains("qdq-outputs=all")
    );
    let out = dir.path().join("x.onnx");
    let r = isquant(&[
        "quantize",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--qdq-outputs",
        "all",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--qdq-outputs all needs --format qdq"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

/// The summary and the JSON report name the form written and, unless it is the fastest for
/// ONNX Runtime, the flag that is; `check --target ort` says the same of the written file.
#[test]
fn summary_json_and_check_name_the_faster_form() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("mnist-cnn.onnx");
    let run = |args: &[&str]| {
        let out = dir.path().join("m.onnx");
        let json = dir.path().join("m.json");
        let mut full = vec![
            "quantize",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--report",
            json.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        let r = isquant(&full);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let check = isquant(&["check", "--target", "ort", out.to_str().unwrap()]);
        (r.stdout, report, check.stdout)
    };
    let (summary, report, check) = run(&[]);
    let line = summary
        .lines()
        .find(|l| l.starts_with("deploy "))
        .unwrap_or_else(|| panic!("no deploy line in:\n{summary}"));
    assert!(
        line.contains("convinteger") && line.contains("--target ort is faster"),
        "{line}"
    );
    let deploy = report
        .get("deploy")
        .unwrap_or_else(|| panic!("no deploy in the JSON report: {report}"));
    assert_eq!(deploy["format"], "convinteger");
    assert_eq!(deploy["faster_for_ort"], "--target ort");
    assert!(check.contains("--target ort is faster"), "{check}");
    let (summary, report, check) = run(&["--target", "ort"]);
    assert!(!summary.contains("is faster"), "{summary}");
    assert!(report["deploy"].get("faster_for_ort").is_none());
    assert_eq!(report["deploy"]["format"], "qdq-u8 --qdq-outputs all");
    assert!(!check.contains("speed:"), "{check}");
}

/// `--qdq-outputs all`: every QuantizeLinear has one DequantizeLinear reader, so ONNX Runtime
/// turns every int8 pair into uint8 and fuses every convolution (a residual tensor read by a
/// Conv and an Add kept int8 and left 15 of MobileNetV2's 52 Convs float). The per-reader
/// `Q_i` behind a one-input `Sum` must compute exactly the shared Q's integers.
#[test]
fn all_outputs_give_each_quantize_linear_one_reader_and_requantize_exactly() {
    let name = "ppocr-textline-cls.onnx";
    for format in [Format::QdqU8, Format::Qdq] {
        let m = quantized_with(
            name,
            QuantizeConfig {
                format,
                qdq_outputs: QdqOutputs::All,
                ..QuantizeConfig::default()
            },
        );
        let mut model = Model::from_proto(m).unwrap();
        let g = &model.graph;
        let consumers = g.consumers();
        let producers = g.producers();
        let outputs: std::collections::HashSet<&str> =
            g.outputs.iter().filter_map(|o| o.name.as_deref()).collect();
        let read = |v: &str| consumers.contains_key(v) || outputs.contains(v);
        let mut pairs = Vec::new();
        for n in g.nodes.iter().filter(|n| n.is("QuantizeLinear")) {
            let readers: Vec<usize> = consumers
                .get(n.outputs[0].as_str())
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|&r| read(&g.nodes[r].outputs[0]))
                .collect();
            assert!(
                readers.len() <= 1,
                "{format:?}: {} has {} readers",
                n.name,
                readers.len()
            );
            // A Q behind a fan-out Sum: Sum ← DQ ← the shared Q.
            let Some(&sum) = producers.get(n.inputs[0].as_str()) else {
                continue;
            };
            if !g.nodes[sum].is("Sum") {
                continue;
            }
            let dq = producers[g.nodes[sum].inputs[0].as_str()];
            assert!(g.nodes[dq].is("DequantizeLinear"), "{}", g.nodes[dq].name);
            pairs.push((g.nodes[dq].inputs[0].clone(), n.outputs[0].clone()));
        }
        assert!(pairs.len() >= 7, "{format:?}: {} fan-out Qs", pairs.len());
        // Run with every shared Q and every per-reader Q as outputs: equal integers.
        let names: Vec<String> = pairs
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect();
        model.graph.outputs = names
            .iter()
            .map(|v| pb::ValueInfoProto {
                name: Some(v.clone()),
                ..Default::default()
            })
            .collect();
        let x = seeded_uniform(&[1, 3, 48, 192], 5, -1.0, 1.0);
        let got = run_all(&model.to_proto(), std::slice::from_ref(&x));
        for (k, (shared, own)) in pairs.iter().enumerate() {
            assert_eq!(
                got[2 * k],
                got[2 * k + 1],
                "{format:?}: {own} differs from {shared}"
            );
        }
    }
}

/// Equalization keeps ReLU6 exact as `Relu → Min(per-channel bound)`. The Q/DQ formats now put
/// the readers' Q right after the convolution before that pair too (ONNX Runtime then fuses
/// `DQ → Conv → Q`: 2 → 36 of MobileNetV2's 52 convolutions in `--target tensorrt`), and the
/// model still computes what the integer format computes (one step at most).
#[test]
fn a_relu_min_pair_gets_the_q_after_the_convolution_and_stays_exact() {
    use isquant::pipeline::config::Equalize;
    let x = seeded_uniform(&[1, 3, 8, 8], 9, -1.0, 1.0);
    let float = Model::from_proto(crate::equalize::relu6_chain()).unwrap();
    let make = |format, activation_type| {
        let mut m = float.clone();
        let cfg = QuantizeConfig {
            format,
            activation_type,
            equalize: Equalize::On,
            input_range: Some((-1.0, 1.0)),
            ..QuantizeConfig::default()
        };
        quantize(&mut m, &cfg, None, &mut |_| {}).unwrap();
        m.to_proto()
    };
    for (format, act, label) in [
        (Format::QdqU8, ActivationType::Auto, "qdq-u8"),
        (Format::Qdq, ActivationType::Int8, "qdq"),
    ] {
        let q = make(format, ActivationType::Auto);
        let g = q.graph.as_ref().unwrap();
        let op_of = |v: &str| {
            g.node
                .iter()
                .find(|n| n.output.iter().any(|o| o == v))
                .and_then(|n| n.op_type.clone())
                .unwrap_or_default()
        };
        let min = g
            .node
            .iter()
            .find(|n| n.op_type.as_deref() == Some("Min"))
            .expect("equalization rewrote the ReLU6");
        // Min ← [Relu ←] DQ ← Q ← Conv (qdq-u8 removes the Relu: its uint8 Q clamps at 0).
        let mut v = min.input[0].clone();
        if op_of(&v) == "Relu" {
            let relu = g.node.iter().find(|n| n.output[0] == v).unwrap();
            v = relu.input[0].clone();
        }
        assert_eq!(op_of(&v), "DequantizeLinear", "{label}");
        let dq = g.node.iter().find(|n| n.output[0] == v).unwrap();
        assert_eq!(op_of(&dq.input[0]), "QuantizeLinear", "{label}");
        let qn = g.node.iter().find(|n| n.output[0] == dq.input[0]).unwrap();
        assert_eq!(op_of(&qn.input[0]), "Conv", "{label}");
        let base = make(Format::ConvInteger, act);
        let (d, at) = max_level_difference(&base, &q, &x);
        assert!(d <= 1.0, "{label} is {d} levels off at {at}");
    }
}

/// A `Min(x, c)` read only by QuantizeLinears that saturate at or below every bound
/// (`c ≥ q_max·s`) is an Identity: the integers are the same bit for bit. Where one bound is
/// below the Q's top, the Min stays.
#[test]
fn min_bounds_above_the_quantizers_top_become_identities_and_change_nothing() {
    use crate::common::build::Builder;
    use isquant::onnx::tensor::from_array;
    use isquant::onnx::tensor::TensorData;
    // Q top: uint8 255 · 0.01 = 2.55 and int8 127 · 0.01 = 1.27.
    let build = |bound: [f32; 3], unsigned: bool| {
        let zp = if unsigned {
            TensorData::U8(ndarray::arr0(0u8).into_dyn())
        } else {
            TensorData::I8(ndarray::arr0(0i8).into_dyn())
        };
        Builder::new(13)
            .input("x", &[1, 3, 4, 4])
            .init("c", &[1, 3, 1, 1], bound.to_vec())
            .init("s", &[], vec![0.01])
            .init_tensor(from_array("z", &zp))
            // A 1×1 convolution in front: the bound's channels are checked against its weight.
            .init(
                "w",
                &[3, 3, 1, 1],
                vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            )
            .node("Conv", &["x", "w"], &["cx"], vec![])
            .node("Relu", &["cx"], &["r"], vec![])
            .node("Min", &["r", "c"], &["m"], vec![])
            .node("QuantizeLinear", &["m", "s", "z"], &["q"], vec![])
            .node("DequantizeLinear", &["q", "s", "z"], &["y"], vec![])
            .output("y")
            .build()
    };
    let x = seeded_uniform(&[1, 3, 4, 4], 3, -4.0, 8.0);
    for (bound, unsigned, dropped) in [
        ([2.6, 3.0, 5.0], true, 1),
        ([2.5, 3.0, 5.0], true, 0),
        ([1.3, 1.27, 9.0], false, 1),
        ([1.2, 3.0, 5.0], false, 0),
    ] {
        let proto = build(bound, unsigned);
        let mut m = Model::from_proto(proto.clone()).unwrap();
        let n = isquant::passes::emit::drop_saturated_bounds(&mut m.graph);
        assert_eq!(n, dropped, "{bound:?} unsigned {unsigned}");
        let ops: Vec<&str> = m.graph.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops.contains(&"Min"), dropped == 0, "{ops:?}");
        let (a, b) = (run(&proto, &x), run(&m.to_proto(), &x));
        if dropped == 1 {
            assert_eq!(a, b, "{bound:?}: the Identity changed the integers");
        } else {
            // Where it stays, dropping it by hand would change the integers: the inputs reach
            // the bound, so the check above can fail.
            let mut forced = proto.clone();
            let g = forced.graph.as_mut().unwrap();
            let min = g.node.iter_mut().find(|n| n.op_type() == "Min").unwrap();
            min.op_type = Some("Identity".into());
            min.input.truncate(1);
            assert_ne!(a, run(&forced, &x), "{bound:?}");
        }
        // Some inputs are above the bounds, so a dropped Min that mattered would show.
        assert!(x.iter().any(|&v| v > 5.0));
    }
    // A bound with more channels than the convolution makes (it would broadcast `x` to a larger
    // shape) and a NaN bound stay.
    let mut wide = build([2.6, 3.0, 5.0], true);
    let g = wide.graph.as_mut().unwrap();
    let w = g.initializer.iter_mut().find(|t| t.name() == "w").unwrap();
    w.dims = vec![1, 3, 1, 1];
    w.float_data.truncate(3);
    let mut m = Model::from_proto(wide).unwrap();
    assert_eq!(
        isquant::passes::emit::drop_saturated_bounds(&mut m.graph),
        0
    );
    let mut m = Model::from_proto(build([f32::NAN, 3.0, 5.0], true)).unwrap();
    assert_eq!(
        isquant::passes::emit::drop_saturated_bounds(&mut m.graph),
        0
    );
}

/// `qdq-u8` removes a Relu / Clip(0, c) right after a layer because its uint8 Q clamps at 0;
/// a Clip whose lower bound is above 0 must stay (the Q would not apply it), and the model
/// must still compute what the integer format computes.
#[test]
fn a_clip_above_zero_is_not_absorbed_by_the_uint8_q() {
    use crate::common::build::{ints, Builder};
    let proto = Builder::new(13)
        .input("x", &[1, 3, 8, 8])
        .random("w1", &[4, 3, 3, 3], 1.0, 0.0)
        .random("b1", &[4], 1.0, 0.0)
        .init("lo", &[], vec![0.5])
        .init("hi", &[], vec![6.0])
        .random("w2", &[5, 4, 1, 1], 1.0, 0.0)
        .node(
            "Conv",
            &["x", "w1", "b1"],
            &["c1"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Clip", &["c1", "lo", "hi"], &["r1"], vec![])
        .node("Conv", &["r1", "w2"], &["y"], vec![])
        .output("y")
        .build();
    let float = Model::from_proto(proto).unwrap();
    let make = |format| {
        let mut m = float.clone();
        let cfg = QuantizeConfig {
            format,
            input_range: Some((-1.0, 1.0)),
            ..QuantizeConfig::default()
        };
        quantize(&mut m, &cfg, None, &mut |_| {}).unwrap();
        m.to_proto()
    };
    let q = make(Format::QdqU8);
    assert!(
        q.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .any(|n| n.op_type() == "Clip"),
        "the Clip(0.5, 6) was removed"
    );
    let x = seeded_uniform(&[1, 3, 8, 8], 4, -1.0, 1.0);
    let (d, at) = max_level_difference(&make(Format::ConvInteger), &q, &x);
    assert!(d <= 1.0, "qdq-u8 is {d} levels off at {at}");
}
