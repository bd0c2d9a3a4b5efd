//! A bounded mutation-fuzz run in the test suite (the `fuzz` bench runs 100,000+ cases).

use crate::common::{fixture, fuzz};

#[test]
fn mutated_fixtures_never_panic() {
    let seeds: Vec<Vec<u8>> = ["fmnist-small-bn.onnx", "usps-cnn-bn.onnx"]
        .iter()
        .map(|n| std::fs::read(fixture(n)).unwrap())
        .collect();
    let c = fuzz::run(&seeds, 3000, 0xC0FFEE);
    assert_eq!(c.panics, 0, "{c:?}");
    assert_eq!(c.cases, 3000);
    // The harness must reach deep code, not only the decoder.
    assert!(c.loaded > 100, "{c:?}");
    assert!(c.rejected > 100, "{c:?}");
}

/// Structured mutants (hostile dims, missing inputs, bad attributes, swapped ops, NaN or
/// truncated weights, odd opsets) through `quantize` end to end, noise pass and guard in
/// tract included: errors are fine, panics are not. The `fuzz` bench runs 100,000 of them.
#[test]
fn mutated_models_never_panic_in_quantize() {
    let seeds: Vec<Vec<u8>> = ["fmnist-small-bn.onnx", "usps-cnn-bn.onnx", "mnist-cnn.onnx"]
        .iter()
        .map(|n| std::fs::read(fixture(n)).unwrap())
        .collect();
    let c = fuzz::run_quantize(&seeds, 300, 0x17);
    assert_eq!(c.panics, 0, "{c:?}");
    // Some mutants must get through the whole pipeline, and some must be refused.
    assert!(c.quantized > 20, "{c:?}");
    assert!(c.rejected > 20, "{c:?}");
}
