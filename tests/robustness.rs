//! Hostile models (issue 17: C2, H1, P1, P2): deep chains never overflow the stack, dead
//! chains are removed in linear time, wrapping byte counts and malformed nodes are clear
//! errors (exit 2) naming the node or tensor, for every command, before tract sees the model.

use std::path::Path;

use isquant::onnx::pb;

use crate::common::build::{i, i64s, ints, Builder};
use crate::common::{fixture, isquant, write_proto};

/// `x [1,2,4,4] → Conv(w, bias)`, where the bias goes through `n` Reshapes of an initializer
/// (constant resolution used to recurse once per Reshape).
fn reshape_chain(n: usize) -> pb::ModelProto {
    let mut b = Builder::new(13)
        .input("x", &[1, 2, 4, 4])
        .output("y")
        .random("w", &[2, 2, 3, 3], 1.0, 0.0)
        .init("b0", &[2], vec![0.1, -0.2]);
    b = b.init_tensor(i64s("s", &[2]));
    for k in 0..n {
        b = b.node(
            "Reshape",
            &[&format!("b{k}"), "s"],
            &[&format!("b{}", k + 1)],
            vec![],
        );
    }
    b.node(
        "Conv",
        &["x", "w", &format!("b{n}")],
        &["y"],
        vec![ints("pads", &[1, 1, 1, 1])],
    )
    .build()
}

/// A live Conv plus a chain of `n` Relus nobody reads (dead-node removal used to take one
/// pass over the graph per node: 30,000 nodes took about two minutes).
fn dead_chain(n: usize) -> pb::ModelProto {
    let mut b = Builder::new(13)
        .input("x", &[1, 2, 4, 4])
        .output("y")
        .random("w", &[2, 2, 1, 1], 1.0, 0.0)
        .node("Conv", &["x", "w"], &["y"], vec![]);
    for k in 0..n {
        let from = if k == 0 {
            "x".to_string()
        } else {
            format!("d{k}")
        };
        b = b.node("Relu", &[&from], &[&format!("d{}", k + 1)], vec![]);
    }
    b.build()
}

fn ok(args: &[&str]) {
    let r = isquant(args);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
}

#[test]
fn a_chain_of_20000_reshapes_runs_every_command_on_the_main_stack() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_proto(dir.path(), "chain.onnx", &reshape_chain(20_000));
    let m = m.to_str().unwrap();
    let out = dir.path().join("out.onnx");
    let out = out.to_str().unwrap();
    ok(&["inspect", m]);
    ok(&["fold-bn", m, "-o", out]);
    ok(&["quantize", m, "-o", out, "--guard", "off"]);
    // The red-team reproducer (3,500 Reshapes): inspect overflowed the stack.
    ok(&[
        "inspect",
        fixture("redteam/stack-overflow-reshape-chain-3500.onnx")
            .to_str()
            .unwrap(),
    ]);
}

#[test]
fn fold_bn_removes_a_30000_node_dead_chain() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_proto(dir.path(), "dead.onnx", &dead_chain(30_000));
    let out = dir.path().join("out.onnx");
    ok(&["fold-bn", m.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let r = isquant(&["inspect", out.to_str().unwrap()]);
    assert!(r.stdout.contains("nodes      1: Conv 1"), "{}", r.stdout);
}

/// Every command answers exit 2 with a message naming `needle`, writes nothing, and never
/// reaches tract (no tract error, no panic in the message).
fn rejected(model: &Path, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let m = model.to_str().unwrap();
    let o = out.to_str().unwrap();
    for args in [
        vec!["inspect", m],
        vec!["convert", m, "-o", o],
        vec!["fold-bn", m, "-o", o],
        vec!["quantize", m, "-o", o],
    ] {
        let r = isquant(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(
            !r.stderr.contains("tract could not") && !r.stderr.contains("panicked"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(!out.exists(), "{args:?} wrote {o}");
    }
}

#[test]
fn red_team_models_are_refused_before_any_pass_or_tract() {
    for (name, needle) in [
        (
            "passthrough-conv-no-inputs.onnx",
            "node `conv1` (Conv): has 0 input(s)",
        ),
        (
            "passthrough-group-not-dividing.onnx",
            "node `conv1` (Conv): input `x` has 3 channels",
        ),
        (
            "fuzz-tract-panic-conv-pads-len3.onnx",
            "`pads` has 3 value(s)",
        ),
        (
            "fuzz-tract-panic-conv-stride-zero.onnx",
            "`strides` holds 0",
        ),
        (
            "fuzz-tract-panic-flatten-axis255.onnx",
            "(Flatten): attribute `axis` is 255",
        ),
        ("fuzz-tract-panic-flatten-no-inputs.onnx", "node `"),
        ("fuzz-tract-panic-maxpool-2d-input.onnx", "node `"),
        ("fuzz-tract-panic-maxpool-no-inputs.onnx", "node `"),
        (
            "fuzz-tract-panic-maxpool-dilations-len1.onnx",
            "(MaxPool): attribute `dilations` has 1 value(s)",
        ),
        (
            "fuzz-tract-panic-maxpool-strides-len1.onnx",
            "(MaxPool): attribute `strides` has 1 value(s)",
        ),
        (
            "fuzz-tract-panic-maxpool-rank1-input.onnx",
            "(MaxPool): input `5.running_var` has rank 1",
        ),
        (
            "dims-wrap-2p62.onnx",
            "tensor `W`: shape [4611686018427387904]",
        ),
    ] {
        rejected(&fixture(&format!("redteam/{name}")), needle);
    }
}

#[test]
fn built_malformed_nodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conv = |opset: i64, attrs| {
        Builder::new(opset)
            .input("x", &[1, 2, 8, 8])
            .output("y")
            .random("w", &[4, 2, 3, 3], 1.0, 0.0)
            .node("Conv", &["x", "w"], &["y"], attrs)
            .build()
    };
    for (k, (m, needle)) in [
        (conv(99, vec![]), "opset 99 is not supported"),
        (
            conv(13, vec![ints("strides", &[1, 0])]),
            "node `Conv_0` (Conv): attribute `strides` holds 0",
        ),
        (
            conv(13, vec![ints("dilations", &[1])]),
            "(Conv): attribute `dilations` has 1 value(s), expected 2",
        ),
        (
            conv(13, vec![i("group", 3)]),
            "(Conv): attribute `group` 3 does not divide",
        ),
        (
            Builder::new(13)
                .input("x", &[1, 2, 8, 8])
                .output("y")
                .node("Flatten", &["x"], &["y"], vec![i("axis", -5)])
                .build(),
            "(Flatten): attribute `axis` is -5",
        ),
        (
            Builder::new(13)
                .input("x", &[1, 2, 8, 8])
                .output("y")
                .node("MaxPool", &["x"], &["y"], vec![])
                .build(),
            "(MaxPool): attribute `kernel_shape` is missing",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        rejected(&write_proto(dir.path(), &format!("m{k}.onnx"), &m), needle);
    }
}
