//! The model input's range (`--input-range`, `--preset`) carried to the layers that read the
//! input through ops that only move, select, pad, convert or affinely rescale its values.
//!
//! tf2onnx NHWC exports put a `Transpose` before the first Conv, YOLOX-style "focus" stems a
//! `Slice`×4 + `Concat`, other exporters a `Pad` or a `Cast`, and some models normalise inside
//! the graph (`(x / 255 − mean) / std`). The value the first layer reads is then not the graph
//! input, but its range follows from `[lo, hi]`:
//!
//! | op | range of the output |
//! |---|---|
//! | Identity, Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Slice, Gather, Split, Expand, Tile, DepthToSpace, SpaceToDepth, MaxPool, Cast (to a float type), Resize / Upsample (`nearest` or `linear`) | the input's |
//! | Concat | the hull of its inputs' (all of them input-derived or constant) |
//! | Pad | the input's; `constant` mode widened to include the pad value (0 unless given) |
//! | AveragePool | the input's, widened to include 0 when padding counts |
//! | Add, Sub, Mul, Div with one constant operand `c` (any shape) | `[min, max]` of `x ∘ c` over `x ∈ {lo, hi}` and every value of `c` (Div: `c` must not contain 0 or change sign) |
//!
//! The interval is exact for the moving ops and a sound bound for the others (it contains every
//! value the op can produce from inputs in `[lo, hi]`). Anything else (a Conv, a nonlinearity,
//! two input-derived operands) stops the propagation.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::graph::Graph;
use crate::onnx::attrs;

/// A value derived from a graph input: its range and the ops between (for the report).
#[derive(Debug, Clone, PartialEq)]
pub struct InputDerived {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
    /// The graph input it comes from.
    pub input: String,
    /// The op types on the way, in order (empty for the input itself).
    pub path: Vec<String>,
}

/// Every value computed from a graph input through the ops of the module table, with its
/// range when `range` is given (`None`: the ops are still followed, the bounds are NaN, so a
/// caller can say which layers would need `--input-range`).
///
/// # Errors
/// Malformed attributes or constants.
pub fn input_derived(
    graph: &Graph,
    range: Option<(f32, f32)>,
) -> Result<BTreeMap<String, InputDerived>> {
    let producers = graph.producers();
    let (lo, hi) = range.map_or((f64::NAN, f64::NAN), |(a, b)| (f64::from(a), f64::from(b)));
    let mut out: BTreeMap<String, InputDerived> = graph
        .real_input_names()
        .into_iter()
        .map(|name| {
            (
                name.clone(),
                InputDerived {
                    lo,
                    hi,
                    input: name,
                    path: Vec::new(),
                },
            )
        })
        .collect();
    let constant = |v: &str| graph.constant_f32(v, &producers).ok().flatten();
    for idx in graph.topological_order()? {
        let node = &graph.nodes[idx];
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            continue;
        }
        let Some(x) = node.input(0) else { continue };
        let op = node.op_type.as_str();
        let derived = match op {
            "Identity" | "Transpose" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze"
            | "Slice" | "Gather" | "Split" | "Expand" | "Tile" | "DepthToSpace"
            | "SpaceToDepth" | "MaxPool" => out.get(x).cloned(),
            "Cast" => {
                // 1 float, 10 float16, 11 double, 16 bfloat16.
                let to = attrs::int(&node.attributes, "to").map_err(|e| node.error(e))?;
                out.get(x)
                    .filter(|_| matches!(to, Some(1 | 10 | 11 | 16)))
                    .cloned()
            }
            "Resize" | "Upsample" => {
                let mode = attrs::string(&node.attributes, "mode").map_err(|e| node.error(e))?;
                out.get(x)
                    .filter(|_| matches!(mode.as_deref(), None | Some("nearest" | "linear")))
                    .cloned()
            }
            "Pad" => {
                let mode = attrs::string(&node.attributes, "mode").map_err(|e| node.error(e))?;
                out.get(x).cloned().and_then(|d| {
                    if mode.as_deref().is_some_and(|m| m != "constant") {
                        return Some(d);
                    }
                    let value = match node.input(2) {
                        Some(v) => f64::from(*constant(v)?.iter().next()?),
                        None => 0.0,
                    };
                    Some(InputDerived {
                        lo: d.lo.min(value),
                        hi: d.hi.max(value),
                        ..d
                    })
                })
            }
            "AveragePool" => {
                let counts = attrs::int(&node.attributes, "count_include_pad")
                    .map_err(|e| node.error(e))?
                    .unwrap_or(0)
                    != 0;
                out.get(x).cloned().map(|d| {
                    if counts {
                        InputDerived {
                            lo: d.lo.min(0.0),
                            hi: d.hi.max(0.0),
                            ..d
                        }
                    } else {
                        d
                    }
                })
            }
            "Concat" => {
                let parts: Vec<&str> = node
                    .inputs
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(String::as_str)
                    .collect();
                let mut acc: Option<InputDerived> = None;
                let mut ok = true;
                for p in &parts {
                    let (plo, phi) = if let Some(d) = out.get(*p) {
                        if acc.is_none() {
                            acc = Some(d.clone());
                        }
                        (d.lo, d.hi)
                    } else if let Some(c) = constant(p) {
                        let (a, b) = c
                            .iter()
                            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                                (a.min(f64::from(v)), b.max(f64::from(v)))
                            });
                        (a, b)
                    } else {
                        ok = false;
                        break;
                    };
                    if let Some(a) = acc.as_mut() {
                        a.lo = a.lo.min(plo);
                        a.hi = a.hi.max(phi);
                    }
                }
                acc.filter(|_| ok)
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (node.input(0), node.input(1));
                let (d, c, x_first) = match (a.and_then(|v| out.get(v)), b.and_then(|v| out.get(v)))
                {
                    (Some(d), None) => (d.clone(), b.and_then(&constant), true),
                    (None, Some(d)) => (d.clone(), a.and_then(&constant), false),
                    _ => (
                        InputDerived {
                            lo: 0.0,
                            hi: 0.0,
                            input: String::new(),
                            path: Vec::new(),
                        },
                        None,
                        true,
                    ),
                };
                c.and_then(|c| affine(op, &d, c.iter().map(|&v| f64::from(v)), x_first))
            }
            _ => None,
        };
        if let Some(mut d) = derived {
            d.path.push(op.to_string());
            for o in node.outputs.iter().filter(|o| !o.is_empty()) {
                out.insert(o.clone(), d.clone());
            }
        }
    }
    Ok(out)
}

/// `x ∘ c` (or `c ∘ x` when `!x_first`) over `x ∈ {lo, hi}` and every `c`; `None` for a
/// division by a constant that contains 0 or changes sign, or an empty constant.
fn affine(
    op: &str,
    d: &InputDerived,
    c: impl Iterator<Item = f64>,
    x_first: bool,
) -> Option<InputDerived> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut signs = (false, false);
    for c in c {
        signs.0 |= c < 0.0;
        signs.1 |= c > 0.0;
        for x in [d.lo, d.hi] {
            let v = match (op, x_first) {
                ("Add", _) => x + c,
                ("Sub", true) => x - c,
                ("Sub", false) => c - x,
                ("Mul", _) => x * c,
                ("Div", true) if c != 0.0 => x / c,
                _ => return None,
            };
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if op == "Div" && signs.0 && signs.1 {
        return None;
    }
    (lo <= hi || (d.lo.is_nan() && d.hi.is_nan())).then(|| InputDerived {
        lo: if d.lo.is_nan() { f64::NAN } else { lo },
        hi: if d.hi.is_nan() { f64::NAN } else { hi },
        ..d.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::{affine, InputDerived};

    fn d(lo: f64, hi: f64) -> InputDerived {
        InputDerived {
            lo,
            hi,
            input: "x".into(),
            path: Vec::new(),
        }
    }

    #[test]
    fn affine_ops_bound_every_value() {
        // (x / 255 − 0.5) for x in [0, 255].
        let a = affine("Div", &d(0.0, 255.0), [255.0].into_iter(), true).unwrap();
        let b = affine("Sub", &a, [0.5].into_iter(), true).unwrap();
        assert_eq!((b.lo, b.hi), (-0.5, 0.5));
        // Per-channel mean and std (ImageNet): each op takes the hull over the channels, so
        // the bound is sound but wider than per channel ([−2.118, 2.640] exactly).
        let m = affine("Sub", &d(0.0, 1.0), [0.485, 0.456, 0.406].into_iter(), true).unwrap();
        let s = affine("Div", &m, [0.229, 0.224, 0.225].into_iter(), true).unwrap();
        assert!((s.lo - (-0.485 / 0.224)).abs() < 1e-9, "{}", s.lo);
        assert!((s.hi - (0.594 / 0.224)).abs() < 1e-9, "{}", s.hi);
        // c − x and a negative scale flip the interval.
        let r = affine("Sub", &d(0.0, 1.0), [1.0].into_iter(), false).unwrap();
        assert_eq!((r.lo, r.hi), (0.0, 1.0));
        let n = affine("Mul", &d(0.0, 2.0), [-1.0].into_iter(), true).unwrap();
        assert_eq!((n.lo, n.hi), (-2.0, 0.0));
    }

    #[test]
    fn division_by_zero_or_mixed_signs_and_c_over_x_stop() {
        assert!(affine("Div", &d(0.0, 1.0), [0.0].into_iter(), true).is_none());
        assert!(affine("Div", &d(0.0, 1.0), [-1.0, 1.0].into_iter(), true).is_none());
        assert!(affine("Div", &d(1.0, 2.0), [2.0].into_iter(), false).is_none());
        assert!(affine("Pow", &d(0.0, 1.0), [2.0].into_iter(), true).is_none());
    }
}
