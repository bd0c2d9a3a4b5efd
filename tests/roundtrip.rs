//! `convert` is faithful: every fixture reads and writes back unchanged, and runs in tract
//! with bit-identical outputs.

use isquant::graph::Model;
use isquant::onnx::io::{self, ExternalData};
use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};

use crate::common::{self, fixture, isquant, MODELS};

#[test]
fn every_fixture_round_trips_through_the_graph_unchanged() {
    for (name, ..) in MODELS {
        let proto = common::proto(name);
        let model = Model::from_proto(proto.clone()).unwrap();
        // Every node, attribute, initializer, input/output, metadata entry and header field.
        assert_eq!(model.to_proto(), proto, "{name}: ModelProto changed");
        let original = std::fs::read(fixture(name)).unwrap();
        // These fixtures were written by protobuf's C++ encoder; prost's encoding of the same
        // message is byte-identical.
        assert!(
            io::encode_model(&model.to_proto()) == original,
            "{name}: bytes changed"
        );
    }
}

#[test]
fn convert_twice_gives_identical_bytes_and_identical_outputs_in_tract() {
    let dir = tempfile::tempdir().unwrap();
    for (name, shape, lo, hi) in MODELS {
        let once = dir.path().join(format!("once-{name}"));
        let twice = dir.path().join(format!("twice-{name}"));
        let r = isquant(&[
            "convert",
            fixture(name).to_str().unwrap(),
            "-o",
            once.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let r = isquant(&[
            "convert",
            once.to_str().unwrap(),
            "-o",
            twice.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(
            std::fs::read(&once).unwrap() == std::fs::read(&twice).unwrap(),
            "{name}: second conversion changed bytes"
        );

        let x = seeded_uniform(shape, 7, *lo, *hi);
        let a = TractModel::load(Source::Path(&fixture(name)), &[shape.to_vec()])
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap();
        let b = TractModel::load(Source::Path(&once), &[shape.to_vec()])
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap();
        assert_eq!(a.len(), b.len());
        for (oa, ob) in a.iter().zip(&b) {
            assert_eq!(oa.shape(), ob.shape());
            let same_bits = oa
                .iter()
                .zip(ob.iter())
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same_bits, "{name}: outputs differ");
        }
    }
}

#[test]
fn written_models_are_atomic_and_never_overwrite_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::copy(fixture("usps-cnn-bn.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let r = isquant(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("refusing to write -o") && r.stderr.contains("the input model"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);

    // Writing into a directory that does not exist fails and leaves no temporary file.
    let missing = dir.path().join("nope").join("out.onnx");
    let r = isquant(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("m.onnx")]);
}

/// `--report` and `validate --json` may land neither on the input model nor on the output model;
/// the refusal comes before any file is written. (The output's data file has a fresh name no
/// flag can name: `security.rs`.)
#[test]
fn reports_never_overwrite_a_model_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::copy(fixture("fmnist-small-bn.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out = dir.path().join("q.onnx");
    for (target, extra) in [
        (&input, vec![]),
        (&out, vec![]),
        (&input, vec!["--external-data"]),
    ] {
        for flag in ["--report", "--json"] {
            let mut args = vec![
                "quantize",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                flag,
                target.to_str().unwrap(),
            ];
            if flag == "--json" {
                args.push("--validate");
            }
            args.extend(extra.iter().copied());
            let r = isquant(&args);
            assert_eq!(r.code, 2, "{flag} {}: {}", target.display(), r.stdout);
            assert!(r.stderr.contains("refusing to write"), "{}", r.stderr);
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                1,
                "{flag} {}",
                target.display()
            );
            assert_eq!(std::fs::read(&input).unwrap(), before);
        }
    }
    let r = isquant(&[
        "validate",
        input.to_str().unwrap(),
        input.to_str().unwrap(),
        "--json",
        input.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn writer_spills_to_external_data_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let model = isquant::load(&fixture("mnist-cnn.onnx")).unwrap().model;
    let out = dir.path().join("ext.onnx");
    let w = io::write_model(&model.to_proto(), &out, ExternalData::Always, &[]).unwrap();
    let (data_path, data_len) = w.external.unwrap();
    assert_eq!(data_path.parent(), Some(dir.path()));
    let data_name = data_path.file_name().unwrap().to_str().unwrap();
    assert!(
        data_name.starts_with("ext.onnx.") && data_name.ends_with(".data"),
        "{data_name}"
    );
    assert!(w.model_bytes < 10_000, "model file still holds the weights");
    assert!(data_len >= 1_600_000);
    let back = isquant::load(&out).unwrap();
    let expected = model
        .graph
        .initializers()
        .iter()
        .filter(|t| isquant::onnx::tensor::payload_bytes(t) >= io::EXTERNAL_THRESHOLD)
        .count();
    assert!(expected > 0);
    assert_eq!(back.info.external_tensors, expected);
    for t in model.graph.initializers() {
        let name = t.name.as_deref().unwrap();
        let u = back.model.graph.initializer(name).unwrap();
        assert_eq!(
            isquant::onnx::tensor::to_array(t).unwrap(),
            isquant::onnx::tensor::to_array(u).unwrap(),
            "{name}"
        );
    }
}
