//! Cross-layer equalization leaves the float model unchanged (ReLU6 kept exact per channel)
//! and evens out per-channel weight ranges.

use isquant::graph::Model;
use isquant::passes::equalize::{equalize, Objective, Options, Relu6};
use isquant::passes::fold_bn::fold_batch_norms;
use isquant::rng::seeded_uniform;
use isquant::runtime::{Source, TractModel};
use prost::Message;

use crate::common::{proto, MODELS};

/// Default options (noise objective) with the given ReLU6 handling and bias absorption.
fn opts(relu6: Relu6, absorb_bias: bool) -> Options {
    Options {
        relu6,
        absorb_bias,
        ..Options::default()
    }
}

/// `max |a − b| / max |a|` of the first outputs of two encoded models on `x` in tract.
fn relative_change(before: &[u8], after: &[u8], x: &ndarray::ArrayD<f32>) -> f32 {
    let run = |b: &[u8]| {
        TractModel::load(Source::Bytes(b), &[x.shape().to_vec()])
            .unwrap()
            .run(std::slice::from_ref(x))
            .unwrap()
            .remove(0)
    };
    let (a, b) = (run(before), run(after));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
        / scale
}

#[test]
fn equalization_keeps_every_fixture_float_exact() {
    // Both scale rules: the noise objective (default, uses the BN statistics of these
    // fixtures) and DFQ's equal weight ranges.
    for objective in [Objective::Noise, Objective::Weights] {
        let mut applied = 0;
        for (name, shape, lo, hi) in MODELS {
            let mut m = Model::from_proto(proto(name)).unwrap();
            let mut fold = fold_batch_norms(&mut m).unwrap();
            m.graph.sort_topologically().unwrap();
            let before = m.to_proto().encode_to_vec();
            let o = Options {
                objective,
                ..Options::default()
            };
            let report = equalize(&mut m, &mut fold.stats, &o).unwrap();
            m.graph.check().unwrap();
            m.graph.sort_topologically().unwrap();
            let after = m.to_proto().encode_to_vec();
            if report.pairs.is_empty() {
                continue;
            }
            applied += 1;
            let x = seeded_uniform(shape, 17, *lo, *hi);
            let err = relative_change(&before, &after, &x);
            assert!(
                err < 1e-4,
                "{name} ({objective:?}): {} pairs, relative error {err}",
                report.pairs.len()
            );
        }
        assert!(applied >= 2, "CLE applied to only {applied} fixtures");
    }
}

/// Conv (4 channels with very different ranges) → Clip(0, 6) → depthwise → Relu → Conv.
pub fn relu6_chain() -> isquant::onnx::pb::ModelProto {
    use crate::common::build::{ints, Builder};
    let mut b = Builder::new(13).input("x", &[1, 3, 8, 8]);
    let mut w1 = crate::common::build::seeded(4 * 3 * 9, 5);
    for (i, v) in w1.iter_mut().enumerate() {
        *v *= [0.05, 1.0, 8.0, 0.3][i / 27];
    }
    b = b
        .init("w1", &[4, 3, 3, 3], w1)
        .random("b1", &[4], 1.0, 0.0)
        .init("lo", &[], vec![0.0])
        .init("hi", &[], vec![6.0])
        .random("w2", &[4, 1, 3, 3], 1.0, 0.0)
        .random("b2", &[4], 0.5, 0.0)
        .random("w3", &[5, 4, 1, 1], 1.0, 0.0)
        .node(
            "Conv",
            &["x", "w1", "b1"],
            &["c1"],
            vec![ints("pads", &[1, 1, 1, 1])],
        )
        .node("Clip", &["c1", "lo", "hi"], &["r1"], vec![])
        .node(
            "Conv",
            &["r1", "w2", "b2"],
            &["c2"],
            vec![
                ints("pads", &[1, 1, 1, 1]),
                crate::common::build::i("group", 4),
            ],
        )
        .node("Relu", &["c2"], &["r2"], vec![])
        .node("Conv", &["r2", "w3"], &["y"], vec![])
        .output("y");
    b.build()
}

#[test]
fn relu6_stays_exact_and_ranges_even_out() {
    let p = relu6_chain();
    let mut m = Model::from_proto(p.clone()).unwrap();
    let mut stats = Default::default();
    let r = equalize(&mut m, &mut stats, &opts(Relu6::PerChannel, false)).unwrap();
    assert_eq!(r.pairs.len(), 2, "{r:?}");
    assert_eq!(r.relu6_rewritten, 1);
    m.graph.check().unwrap();
    let x = seeded_uniform(&[1, 3, 8, 8], 4, -3.0, 3.0);
    let err = relative_change(&p.encode_to_vec(), &m.to_proto().encode_to_vec(), &x);
    assert!(err < 1e-4, "relative error {err}");
    // The first layer's per-channel ranges moved toward each other.
    let producers = m.graph.producers();
    let conv = m.graph.nodes.iter().find(|n| n.is("Conv")).unwrap();
    let w = m
        .graph
        .constant_f32(conv.input(1).unwrap(), &producers)
        .unwrap()
        .unwrap();
    let ranges: Vec<f32> = w
        .outer_iter()
        .map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let spread = ranges.iter().cloned().fold(0f32, f32::max)
        / ranges.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread < 20.0, "ranges after CLE {ranges:?}");
}

#[test]
fn high_bias_absorption_is_exact_when_preactivations_stay_above_c() {
    use crate::common::build::Builder;
    use isquant::passes::fold_bn::ChannelStats;
    // A: 1x1 conv with a large positive bias (pre-activation ≈ 10 ± small), Relu, B: 1x1 conv.
    let p = Builder::new(13)
        .input("x", &[1, 3, 4, 4])
        .random("wa", &[4, 3, 1, 1], 0.2, 0.0)
        .init("ba", &[4], vec![10.0, 12.0, 8.0, 11.0])
        .random("wb", &[2, 4, 1, 1], 1.0, 0.0)
        .random("bb", &[2], 1.0, 0.0)
        .node("Conv", &["x", "wa", "ba"], &["ya"], vec![])
        .node("Relu", &["ya"], &["ra"], vec![])
        .node("Conv", &["ra", "wb", "bb"], &["y"], vec![])
        .output("y")
        .build();
    let mut m = Model::from_proto(p.clone()).unwrap();
    let mut stats = std::collections::BTreeMap::new();
    stats.insert(
        "ya".to_string(),
        ChannelStats {
            mean: vec![10.0, 12.0, 8.0, 11.0],
            std: vec![0.5, 0.5, 0.5, 0.5],
            source: "test".into(),
        },
    );
    let r = equalize(&mut m, &mut stats, &opts(Relu6::PerChannel, true)).unwrap();
    assert_eq!(r.pairs.len(), 1);
    // A's bias lost c = μ/s − 3σ/s: the recorded mean dropped accordingly.
    assert!(
        stats["ya"].mean.iter().all(|&v| v < 5.0),
        "{:?}",
        stats["ya"].mean
    );
    let x = seeded_uniform(&[1, 3, 4, 4], 8, -1.0, 1.0);
    let err = relative_change(&p.encode_to_vec(), &m.to_proto().encode_to_vec(), &x);
    assert!(err < 1e-4, "relative error {err}");
}

/// `--relu6 relu` changes the float model and the report says by how much; the default
/// per-channel bound changes nothing and reports nothing.
#[test]
fn relu6_replacement_reports_the_float_change() {
    use isquant::pipeline::{quantize, Equalize, QuantizeConfig};
    let run = |relu6: Relu6| {
        let mut m = Model::from_proto(relu6_chain()).unwrap();
        let cfg = QuantizeConfig {
            equalize: Equalize::On,
            relu6,
            ..QuantizeConfig::default()
        };
        quantize(&mut m, &cfg, None, &mut |_| {})
            .unwrap()
            .equalized
            .unwrap()
    };
    let replaced = run(Relu6::Relu);
    assert_eq!(replaced.relu6_rewritten, 1);
    let c = replaced.float_change.expect("float change measured");
    assert_eq!(c.inputs, 8);
    // Channel 2's pre-activations (weights ×8) pass 6 on N(0,1) inputs: the outputs move.
    assert!(c.max_abs > 1e-3 && c.sqnr_db.is_finite(), "{c:?}");
    assert!(run(Relu6::PerChannel).float_change.is_none());
}

#[test]
fn auto_uses_dfq_where_cle_reaches_few_convolutions() {
    use isquant::pipeline::{quantize, Equalize, QuantizeConfig};
    // ppocr has depthwise convolutions, but most of its chains go through HardSwish: CLE
    // reaches 6 of 53 convolutions. There the noise objective measured worse and DFQ's rule
    // better (docs/experiments.md, "ppocr: DFQ's rule where CLE reaches under half of the
    // convolutions"), so auto switches to DFQ's rule and says so; `on` keeps the objective
    // asked for.
    let run = |equalize| {
        let mut m = Model::from_proto(proto("ppocr-textline-cls.onnx")).unwrap();
        let cfg = QuantizeConfig {
            equalize,
            input_shape: Some(vec![1, 3, 48, 192]),
            ..QuantizeConfig::default()
        };
        quantize(&mut m, &cfg, None, &mut |_| {}).unwrap()
    };
    let auto = run(Equalize::Auto);
    assert_eq!(auto.equalized.as_ref().map(|e| e.pairs.len()), Some(6));
    let why = auto
        .equalize_note
        .clone()
        .expect("auto should say why it chose DFQ's rule");
    assert!(why.contains("6 layer pairs of 53 convolutions"), "{why}");
    let on = run(Equalize::On);
    assert_eq!(on.equalized.as_ref().map(|e| e.pairs.len()), Some(6));
    assert!(on.equalize_note.is_none());
    // The two rules give different weight scales.
    let scales = |r: &isquant::pipeline::QuantizeReport| -> Vec<f32> {
        r.layers.iter().map(|l| l.weight_scale).collect()
    };
    assert_ne!(scales(&auto), scales(&on));
}

#[test]
fn a_weight_shared_with_another_layer_is_left_intact() {
    // x → Conv(w1) → Relu → Conv(w2) → y is equalized; z → Conv(w2) → y2 shares w2. CLE must
    // give its B layer a new weight and leave w2 (which it could otherwise rescale in place)
    // to the other layer.
    use crate::common::build::{seeded, Builder};
    let p = Builder::new(13)
        .input("x", &[1, 3, 6, 6])
        .input("z", &[1, 4, 6, 6])
        .init("w1", &[4, 3, 1, 1], {
            let mut w = seeded(12, 3);
            for (i, v) in w.iter_mut().enumerate() {
                *v *= [0.05, 1.0, 8.0, 0.3][i / 3];
            }
            w
        })
        .init("w2", &[5, 4, 1, 1], seeded(20, 4))
        .node("Conv", &["x", "w1"], &["c1"], vec![])
        .node("Relu", &["c1"], &["r1"], vec![])
        .node("Conv", &["r1", "w2"], &["y"], vec![])
        .node("Conv", &["z", "w2"], &["y2"], vec![])
        .output("y")
        .output("y2")
        .build();
    let mut m = Model::from_proto(p.clone()).unwrap();
    let mut stats = Default::default();
    let r = equalize(&mut m, &mut stats, &opts(Relu6::PerChannel, false)).unwrap();
    assert_eq!(r.pairs.len(), 1, "{r:?}");
    m.graph.check().unwrap();
    let producers = m.graph.producers();
    let shared = m.graph.constant_f32("w2", &producers).unwrap().unwrap();
    assert_eq!(shared.iter().copied().collect::<Vec<f32>>(), seeded(20, 4));
    let (x, z) = (
        seeded_uniform(&[1, 3, 6, 6], 8, -2.0, 2.0),
        seeded_uniform(&[1, 4, 6, 6], 9, -2.0, 2.0),
    );
    let run = |b: &[u8]| {
        TractModel::load(Source::Bytes(b), &[x.shape().to_vec(), z.shape().to_vec()])
            .unwrap()
            .run(&[x.clone(), z.clone()])
            .unwrap()
    };
    let (a, b) = (run(&p.encode_to_vec()), run(&m.to_proto().encode_to_vec()));
    for (k, (ya, yb)) in a.iter().zip(&b).enumerate() {
        let scale = ya.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = ya
            .iter()
            .zip(yb.iter())
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= 1e-4 * scale, "output {k}: error {err} of {scale}");
    }
}
