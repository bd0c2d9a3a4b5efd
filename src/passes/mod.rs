//! Graph passes and the analyses they share.
//!
//! Each pass plans with a shared borrow of the graph (deciding, for every candidate, to apply
//! or to skip with a reason) and then applies its plans with a mutable borrow. A *malformed*
//! model is an [`crate::Error`]; a valid model outside a pass's pattern is a skip with a reason
//! the CLI prints ("why didn't it fold?").

pub mod bias_correction;
pub mod emit;
pub mod equalize;
pub mod fold_bn;
pub mod ranges;
pub mod targets;
pub mod weights;

use serde::Serialize;

/// A node a pass left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// The node's display name.
    pub node: String,
    /// Its `op_type`.
    pub op_type: String,
    /// Why it was left alone.
    pub reason: String,
}
