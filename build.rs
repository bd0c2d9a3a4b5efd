//! Compiles the vendored `proto/onnx.proto` to Rust with prost-build, using the pure-Rust
//! `protox` compiler so that no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // `raw_data` becomes `bytes::Bytes`: decoding from a `Bytes` buffer is zero-copy.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
