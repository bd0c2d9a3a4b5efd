//! Integration tests: one binary (every test binary would link tract otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod bad_input;
mod bench;
mod equalize;
mod external;
mod fold_bn;
mod formats;
mod fuzz;
mod graph_edit;
mod guard;
mod heads;
mod limits;
mod ocr;
mod quantize;
mod robustness;
mod roundtrip;
mod security;
mod validate;
