//! fold-bn: exact in tract for every layer kind, never folds what it must not.

use isquant::graph::Model;
use isquant::onnx::pb;
use isquant::passes::fold_bn::{fold_batch_norms, FoldReport};
use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};
use ndarray::ArrayD;
use prost::Message;

use crate::common::build::{f, i, ints, Builder};
use crate::common::{fixture, MODELS};

fn run(m: &pb::ModelProto, x: &ArrayD<f32>) -> ArrayD<f32> {
    let bytes = m.encode_to_vec();
    TractModel::load(Source::Bytes(&bytes), &[x.shape().to_vec()])
        .unwrap()
        .run(std::slice::from_ref(x))
        .unwrap()
        .remove(0)
}

fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn fold(m: &pb::ModelProto) -> (pb::ModelProto, FoldReport) {
    let mut model = Model::from_proto(m.clone()).unwrap();
    let report = fold_batch_norms(&mut model).unwrap();
    model.graph.check().unwrap();
    (model.to_proto(), report)
}

fn bn_count(m: &pb::ModelProto) -> usize {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
        .count()
}

/// Folds, checks that `expect_folded` BNs went away and that tract's outputs agree to 1e-4.
fn check_exact(m: pb::ModelProto, x_shape: &[usize], expect_folded: usize) -> FoldReport {
    let (folded, report) = fold(&m);
    assert_eq!(report.folded.len(), expect_folded, "{report:?}");
    assert_eq!(bn_count(&folded), bn_count(&m) - expect_folded);
    let x = seeded_uniform(x_shape, 5, -2.0, 2.0);
    let e = rel_err(&run(&m, &x), &run(&folded, &x));
    assert!(e < 1e-4, "relative error {e}");
    report
}

#[test]
fn conv_with_and_without_bias_any_group_and_rank() {
    // (input shape, weight shape, group, bias, pads)
    type Case<'a> = (&'a [usize], &'a [usize], i64, bool, Vec<i64>);
    let cases: &[Case] = &[
        (&[1, 3, 8, 8], &[4, 3, 3, 3], 1, true, vec![1, 1, 1, 1]),
        (&[1, 3, 8, 8], &[4, 3, 3, 3], 1, false, vec![0, 0, 0, 0]),
        (&[1, 4, 8, 8], &[6, 2, 3, 3], 2, true, vec![1, 1, 1, 1]),
        (&[1, 4, 8, 8], &[4, 1, 3, 3], 4, false, vec![1, 1, 1, 1]),
        (&[1, 3, 16], &[4, 3, 3], 1, true, vec![1, 1]),
        (&[1, 2, 4, 4, 4], &[3, 2, 2, 2, 2], 1, true, vec![0; 6]),
    ];
    for (k, (x, w, group, bias, pads)) in cases.iter().enumerate() {
        let o = w[0];
        let mut b = Builder::new(13)
            .input("x", &x.iter().map(|&d| d as i64).collect::<Vec<_>>())
            .random("w", w, 1.0, 0.0)
            .bn_params("bn", o, if k % 2 == 0 { 1.0 } else { -1.0 });
        let mut ins = vec!["x", "w"];
        if *bias {
            b = b.random("b", &[o], 1.0, 0.0);
            ins.push("b");
        }
        let m = b
            .node(
                "Conv",
                &ins,
                &["y"],
                vec![i("group", *group), ints("pads", pads)],
            )
            .bn("y", "bn", "z")
            .output("z")
            .build();
        check_exact(m, x, 1);
    }
}

#[test]
fn conv_transpose_groups_one_and_two() {
    for (x, w, group) in [
        ([1usize, 3, 5, 5], [3usize, 4, 3, 3], 1i64),
        ([1, 4, 5, 5], [4, 3, 3, 3], 2),
    ] {
        let o = w[1] * group as usize;
        let m = Builder::new(13)
            .input("x", &x.map(|d| d as i64))
            .random("w", &w, 1.0, 0.0)
            .random("b", &[o], 1.0, 0.0)
            .bn_params("bn", o, -1.0)
            .node(
                "ConvTranspose",
                &["x", "w", "b"],
                &["y"],
                vec![i("group", group)],
            )
            .bn("y", "bn", "z")
            .output("z")
            .build();
        check_exact(m, &x, 1);
    }
}

#[test]
fn gemm_both_layouts_with_alpha_beta_and_no_c() {
    let m = Builder::new(13)
        .input("x", &[2, 5])
        .random("w", &[4, 5], 1.0, 0.0)
        .random("c", &[4], 1.0, 0.0)
        .bn_params("bn", 4, 1.0)
        .node(
            "Gemm",
            &["x", "w", "c"],
            &["y"],
            vec![i("transB", 1), f("alpha", 0.5), f("beta", 2.0)],
        )
        .bn("y", "bn", "z")
        .output("z")
        .build();
    check_exact(m, &[2, 5], 1);
    let m = Builder::new(13)
        .input("x", &[2, 5])
        .random("w", &[5, 4], 1.0, 0.0)
        .bn_params("bn", 4, -1.0)
        .node("Gemm", &["x", "w"], &["y"], vec![])
        .bn("y", "bn", "z")
        .output("z")
        .build();
    check_exact(m, &[2, 5], 1);
}

#[test]
fn matmul_with_and_without_bias_add() {
    let m = Builder::new(13)
        .input("x", &[2, 5])
        .random("w", &[5, 4], 1.0, 0.0)
        .random("c", &[4], 1.0, 0.0)
        .bn_params("bn", 4, 1.0)
        .node("MatMul", &["x", "w"], &["y0"], vec![])
        .node("Add", &["y0", "c"], &["y"], vec![])
        .bn("y", "bn", "z")
        .output("z")
        .build();
    check_exact(m, &[2, 5], 1);
    let m = Builder::new(13)
        .input("x", &[2, 5])
        .random("w", &[5, 4], 1.0, 0.0)
        .bn_params("bn", 4, 1.0)
        .node("MatMul", &["x", "w"], &["y"], vec![])
        .bn("y", "bn", "z")
        .output("z")
        .build();
    check_exact(m, &[2, 5], 1);
}

/// Conv → Relu → BN → (op) → Conv, for the forward-fold rules.
fn bn_after_relu(next_pads: i64, gamma_sign: f32, pool: bool) -> pb::ModelProto {
    let mut b = Builder::new(13)
        .input("x", &[1, 3, 10, 10])
        .random("w1", &[4, 3, 3, 3], 1.0, 0.0)
        .random("w2", &[5, 4, 3, 3], 1.0, 0.0)
        .random("b2", &[5], 1.0, 0.0)
        .bn_params("bn", 4, gamma_sign)
        .node("Conv", &["x", "w1"], &["c1"], vec![])
        .node("Relu", &["c1"], &["r1"], vec![])
        .bn("r1", "bn", "n1");
    let mut feed = "n1";
    if pool {
        b = b.node(
            "MaxPool",
            &["n1"],
            &["p1"],
            vec![ints("kernel_shape", &[2, 2])],
        );
        feed = "p1";
    }
    b.node(
        "Conv",
        &[feed, "w2", "b2"],
        &["z"],
        vec![ints("pads", &[next_pads; 4])],
    )
    .output("z")
    .build()
}

#[test]
fn bn_after_relu_folds_forward_only_when_exact() {
    let r = check_exact(bn_after_relu(0, 1.0, false), &[1, 3, 10, 10], 1);
    assert_eq!(r.folded[0].direction, "forward");
    let r = check_exact(bn_after_relu(0, 1.0, true), &[1, 3, 10, 10], 1);
    assert_eq!(r.folded[0].direction, "forward");

    // Padding after the BN: not exact, kept and reported.
    let r = check_exact(bn_after_relu(1, 1.0, false), &[1, 3, 10, 10], 0);
    assert!(r.kept[0].reason.contains("follows Relu"), "{:?}", r.kept);
    assert!(r.kept[0].reason.contains("pads its input"), "{:?}", r.kept);
    // Negative scale through MaxPool: max does not commute; kept.
    let r = check_exact(bn_after_relu(0, -1.0, true), &[1, 3, 10, 10], 0);
    assert!(r.kept[0].reason.contains("not positive"), "{:?}", r.kept);
}

#[test]
fn bn_before_flatten_gemm_folds_forward() {
    let m = Builder::new(13)
        .input("x", &[2, 3, 2, 2])
        .bn_params("bn", 3, -1.0)
        .random("w", &[4, 12], 1.0, 0.0)
        .random("c", &[4], 1.0, 0.0)
        .node("Relu", &["x"], &["r"], vec![])
        .bn("r", "bn", "n")
        .node("Flatten", &["n"], &["fl"], vec![i("axis", 1)])
        .node(
            "Gemm",
            &["fl", "w", "c"],
            &["z"],
            vec![i("transB", 1), f("alpha", 0.7)],
        )
        .output("z")
        .build();
    let r = check_exact(m, &[2, 3, 2, 2], 1);
    assert_eq!(r.folded[0].direction, "forward");
}

#[test]
fn illegal_folds_are_skipped_with_reasons() {
    // Training mode.
    let m = Builder::new(15)
        .input("x", &[1, 3, 6, 6])
        .random("w", &[4, 3, 3, 3], 1.0, 0.0)
        .bn_params("bn", 4, 1.0)
        .node("Conv", &["x", "w"], &["y"], vec![])
        .node(
            "BatchNormalization",
            &["y", "bn.gamma", "bn.beta", "bn.mean", "bn.var"],
            &["z"],
            vec![i("training_mode", 1)],
        )
        .output("z")
        .build();
    let (_, r) = fold(&m);
    assert_eq!(r.folded.len(), 0);
    assert!(r.kept[0].reason.contains("training_mode=1"));

    // The conv output has a second consumer.
    let m = Builder::new(13)
        .input("x", &[1, 3, 6, 6])
        .random("w", &[4, 3, 3, 3], 1.0, 0.0)
        .bn_params("bn", 4, 1.0)
        .node("Conv", &["x", "w"], &["y"], vec![])
        .bn("y", "bn", "z")
        .node("Relu", &["y"], &["r"], vec![])
        .output("z")
        .output("r")
        .build();
    let r = check_exact(m, &[1, 3, 6, 6], 0);
    assert!(r.kept[0].reason.contains("other consumers"), "{:?}", r.kept);

    // Weight is a graph input, not a constant.
    let m = Builder::new(13)
        .input("x", &[1, 3, 6, 6])
        .input("w", &[4, 3, 3, 3])
        .bn_params("bn", 4, 1.0)
        .node("Conv", &["x", "w"], &["y"], vec![])
        .bn("y", "bn", "z")
        .output("z")
        .build();
    let (_, r) = fold(&m);
    assert!(
        r.kept[0].reason.contains("is not a constant"),
        "{:?}",
        r.kept
    );
}

#[test]
fn every_fixture_with_bn_folds_exactly() {
    for (name, shape, lo, hi) in MODELS {
        let proto = crate::common::proto(name);
        if bn_count(&proto) == 0 {
            continue;
        }
        let (folded, report) = fold(&proto);
        let kept_on_purpose = usize::from(name.starts_with("cifar10"));
        assert_eq!(
            bn_count(&folded),
            kept_on_purpose,
            "{name}: {:?}",
            report.kept
        );
        let x = seeded_uniform(shape, 9, *lo, *hi);
        let bytes = folded.encode_to_vec();
        let a = TractModel::load(Source::Path(&fixture(name)), &[shape.to_vec()])
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        let b = TractModel::load(Source::Bytes(&bytes), &[shape.to_vec()])
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        let e = rel_err(&a, &b);
        assert!(e < 1e-4, "{name}: relative error {e}");
        if name.starts_with("cifar10") {
            // Every BN follows a ReLU: none may be folded backward. Five fold forward; the
            // first has a dead channel (running var ≈ 5e-8) whose forward fold would scale
            // one input channel 185x the median, so it stays float and says why.
            assert_eq!(report.folded.len(), 5);
            assert!(
                report.folded.iter().all(|f| f.direction == "forward"),
                "{report:?}"
            );
            assert!(report.kept[0]
                .reason
                .contains("inflating its per-tensor weight range"));
        }
    }
}

/// BN parameters made at run time by `ConstantOfShape` of a constant shape (exporters write
/// all-ones scales and all-zeros means this way) are constants: every BN still folds, where
/// it used to stay unfolded while `inspect` called it foldable.
#[test]
fn bn_parameters_from_constant_of_shape_fold() {
    let mut m = crate::common::proto("fmnist-small-bn.onnx");
    let before = bn_count(&m);
    let g = m.graph.as_mut().unwrap();
    let mut replaced = 0;
    let bns: Vec<(String, String)> = g
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
        .map(|n| (n.input[1].clone(), n.input[3].clone()))
        .collect();
    for (scale, mean) in bns {
        for (name, value) in [(scale, 1.0f32), (mean, 0.0)] {
            let k = g.initializer.iter().position(|t| t.name() == name).unwrap();
            let channels = g.initializer[k].dims[0];
            g.initializer.remove(k);
            let shape = format!("{name}_shape");
            g.initializer
                .push(crate::common::build::i64s(&shape, &[channels]));
            let mut node = pb::NodeProto {
                op_type: Some("ConstantOfShape".into()),
                name: Some(format!("{name}_fill")),
                input: vec![shape],
                output: vec![name.clone()],
                ..Default::default()
            };
            node.attribute.push(pb::AttributeProto {
                name: Some("value".into()),
                r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
                t: Some(isquant::onnx::tensor::from_f32(
                    "value",
                    ndarray::arr1(&[value]).into_dyn(),
                )),
                ..Default::default()
            });
            g.node.insert(0, node);
            replaced += 1;
        }
    }
    assert!(replaced >= 2);
    check_exact(m, &[1, 1, 28, 28], before);
}
