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
