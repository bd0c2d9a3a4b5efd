//! Fresh names for values, nodes and initializers that passes create.
//!
//! The suffixes are defined here and nowhere else (`{base}_quantized`, `{base}_scale`,
//! `{base}_zero_point`, ... as ONNX Runtime's quantizer spells them). A name that is already
//! taken gets `_1`, `_2`, ... appended. Nothing ever parses a name back.

use std::collections::HashSet;

/// Generates names that collide neither with the graph nor with each other.
#[derive(Debug, Clone, Default)]
pub struct NameGen {
    taken: HashSet<String>,
}

impl NameGen {
    /// Starts from the set of names already in use (see [`super::Graph::taken_names`]).
    pub fn new(taken: HashSet<String>) -> Self {
        NameGen { taken }
    }

    /// Returns `base` + `suffix`, or that with `_1`, `_2`, ... appended if it is taken, and
    /// reserves it.
    pub fn fresh(&mut self, base: &str, suffix: &str) -> String {
        let first = format!("{base}{suffix}");
        let mut candidate = first.clone();
        let mut k = 1usize;
        while self.taken.contains(&candidate) {
            candidate = format!("{first}_{k}");
            k += 1;
        }
        self.taken.insert(candidate.clone());
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_collide() {
        let mut g = NameGen::new(["w_scale".to_string(), "w_scale_1".to_string()].into());
        assert_eq!(g.fresh("w", "_scale"), "w_scale_2");
        assert_eq!(g.fresh("w", "_scale"), "w_scale_3");
        assert_eq!(g.fresh("x", "_quantized"), "x_quantized");
    }
}
