//! Layer selection: the quantization targets ([`crate::passes::targets`]) minus what the user
//! keeps float (`--skip`, `--keep-first-float`, `--keep-last-float`).
//!
//! A layer is named by its node, its weight, or its output value (after BN folding: the value
//! `validate --per-layer` lists); `--skip` takes any of them, or a glob (`*`, `?`).

use super::config::QuantizeConfig;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::passes::targets::{self, Target};
use crate::passes::Skip;

/// The layers to quantize and the layer-like nodes left float.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Layers to quantize, in node order.
    pub chosen: Vec<Target>,
    /// Layers left float, with reasons.
    pub skipped: Vec<Skip>,
}

/// Chooses the layers to quantize.
///
/// # Errors
/// A malformed constant, or nothing left to quantize.
pub fn select(graph: &Graph, cfg: &QuantizeConfig) -> Result<Selection> {
    let (all, mut skipped) = targets::find_targets(graph)?;
    let first = all.first().map(|t| t.node);
    let last = all.last().map(|t| t.node);
    let mut chosen = Vec::new();
    for t in all {
        let node = &graph.nodes[t.node];
        let output = node.outputs.first().map(String::as_str).unwrap_or("");
        let pattern = cfg.skip.iter().find(|p| {
            glob_match(p, &node.name)
                || glob_match(p, &t.name)
                || glob_match(p, &t.weight)
                || glob_match(p, output)
        });
        let reason = if let Some(p) = pattern {
            Some(format!("--skip {p}"))
        } else if cfg.keep_first_float && Some(t.node) == first {
            Some("--keep-first-float".to_string())
        } else if cfg.keep_last_float && Some(t.node) == last {
            Some("--keep-last-float".to_string())
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skip {
                node: t.name.clone(),
                op_type: t.op_type.clone(),
                reason: format!(
                    "{reason} (keeps {} float weights)",
                    t.weight_shape.iter().product::<usize>()
                ),
            }),
            None => chosen.push(t),
        }
    }
    if chosen.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .map(|s| format!("{} ({}): {}", s.node, s.op_type, s.reason))
            .collect();
        return Err(Error::Config(format!(
            "nothing to quantize: the model has no Conv/ConvTranspose/Gemm/MatMul with constant float weights{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" left to quantize ({})", why.join("; "))
            }
        )));
    }
    Ok(Selection { chosen, skipped })
}

/// Minimal glob: `*` any run, `?` one character.
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("/features.0/*", "/features.0/Conv"));
        assert!(glob_match("*Conv", "/0/Conv"));
        assert!(glob_match("Conv?", "Conv7"));
        assert!(!glob_match("Conv?", "Conv"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
    }
}
