//! Activations written as several elementwise ops, propagated exactly.
//!
//! Exporters often write an activation as a small subgraph that reads one value twice:
//! HardSwish as `x · clip(x + 3, 0, 6) / 6` (Paddle), SiLU as `x · sigmoid(x)`, GELU as
//! `x · 0.5 · (1 + erf(x/√2))`. Step by step, the BN rule can only bound the product
//! `x · g(x)` as if `x` and `g(x)` were unrelated (`|x·g| ≤ max g · |x|`), which treats
//! HardSwish as the identity: its range then keeps the whole negative side of `x` instead of
//! `−0.375`, and through a deep stack of such layers the propagated ranges grow without bound
//! while the real values do not.
//!
//! So every value that is an elementwise function of one *source* value (a value whose BN-rule
//! distribution has per-channel moments) carries that function as an [`Expr`]: the chain of
//! unary ops, ops with constant operands (per channel or scalar) and binary ops whose operands
//! both depend on the same source. Where a binary op joins two operands of the same source,
//! the result is computed from the source exactly: per channel `c`, the moments of `f(X_c)`
//! with `X_c ~ N(μ_c, σ_c²)` by quadrature ([`stats::map_moments`]), and the range
//! `f([μ_c − N·σ_c, μ_c + N·σ_c])` by dense sampling ([`stats::range_of_fn`]).
//!
//! Preconditions: constants are scalars or one value per channel (axis 1); expressions are
//! kept up to [`MAX_NODES`] ops deep.

use std::collections::HashMap;
use std::sync::Arc;

use super::bn::{activation, channel_constant, Act};
use super::{Dist, RangeRule};
use crate::error::Result;
use crate::graph::{Graph, Node};
use crate::stats::{self, Moments};

/// Expressions deeper than this are not tracked (the value becomes a source of its own).
pub(super) const MAX_NODES: usize = 32;

/// An elementwise function of one source value.
#[derive(Debug, Clone)]
pub(super) enum Expr {
    /// The source value itself.
    X,
    /// A constant: one value, or one per channel.
    Const(Arc<Vec<f64>>),
    /// An activation of an expression.
    Act(Act, Box<Expr>),
    /// A binary op.
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

/// The binary ops an expression holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

impl Expr {
    fn eval(&self, x: f64, c: usize) -> f64 {
        match self {
            Expr::X => x,
            Expr::Const(v) => {
                if v.len() == 1 {
                    v[0]
                } else {
                    v.get(c).copied().unwrap_or(0.0)
                }
            }
            Expr::Act(a, e) => a.eval(e.eval(x, c)),
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval(x, c), b.eval(x, c));
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Min => a.min(b),
                    BinOp::Max => a.max(b),
                }
            }
        }
    }

    fn nodes(&self) -> usize {
        match self {
            Expr::X | Expr::Const(_) => 1,
            Expr::Act(_, e) => 1 + e.nodes(),
            Expr::Bin(_, a, b) => 1 + a.nodes() + b.nodes(),
        }
    }

    /// Whether the expression reads the source (a constant expression does not).
    fn reads_x(&self) -> bool {
        match self {
            Expr::X => true,
            Expr::Const(_) => false,
            Expr::Act(_, e) => e.reads_x(),
            Expr::Bin(_, a, b) => a.reads_x() || b.reads_x(),
        }
    }
}

/// Elementwise functions of sources, by value name: (source value, expression).
#[derive(Debug, Default)]
pub(super) struct Tracker {
    exprs: HashMap<String, (String, Expr)>,
}

impl Tracker {
    /// Records the expression of `node`'s output when `node` is elementwise in one source, and
    /// returns its exact distribution when the node joins two operands of that source.
    ///
    /// # Errors
    /// Malformed constants or attributes.
    pub(super) fn step(
        &mut self,
        graph: &Graph,
        node: &Node,
        dists: &std::collections::BTreeMap<String, Dist>,
        producers: &HashMap<&str, usize>,
        n_sigmas: f64,
    ) -> Result<Option<Dist>> {
        let Some(out) = node.outputs.first() else {
            return Ok(None);
        };
        // An operand: its source and expression, or a constant.
        let operand = |i: usize| -> Result<Option<(Option<String>, Expr)>> {
            let Some(name) = node.input(i) else {
                return Ok(None);
            };
            if let Some((src, e)) = self.exprs.get(name) {
                return Ok(Some((Some(src.clone()), e.clone())));
            }
            if let Some(c) = graph.constant_f32(name, producers)? {
                return Ok(channel_constant(&c).map(|v| (None, Expr::Const(Arc::new(v)))));
            }
            Ok(dists
                .get(name)
                .filter(|d| d.moments.is_some())
                .map(|_| (Some(name.to_string()), Expr::X)))
        };
        let op = match node.op_type.as_str() {
            "Add" => Some(BinOp::Add),
            "Sub" => Some(BinOp::Sub),
            "Mul" => Some(BinOp::Mul),
            "Div" => Some(BinOp::Div),
            "Min" if node.inputs.len() == 2 => Some(BinOp::Min),
            "Max" if node.inputs.len() == 2 => Some(BinOp::Max),
            _ => None,
        };
        let (src, expr, joins) = if let Some(op) = op.filter(|_| node.domain.is_empty()) {
            let (Some((sa, ea)), Some((sb, eb))) = (operand(0)?, operand(1)?) else {
                return Ok(None);
            };
            let src = match (&sa, &sb) {
                (Some(a), Some(b)) if a != b => return Ok(None),
                (Some(a), _) | (None, Some(a)) => a.clone(),
                (None, None) => return Ok(None),
            };
            let joins = ea.reads_x() && eb.reads_x();
            (src, Expr::Bin(op, Box::new(ea), Box::new(eb)), joins)
        } else if let Some(act) = activation(node, graph, producers)? {
            let Some((Some(src), e)) = operand(0)? else {
                return Ok(None);
            };
            (src, Expr::Act(act, Box::new(e)), false)
        } else {
            return Ok(None);
        };
        if expr.nodes() > MAX_NODES {
            return Ok(None);
        }
        let exact = if joins {
            dists
                .get(&src)
                .and_then(|d| d.moments.as_ref())
                .and_then(|m| through(&expr, m, n_sigmas))
        } else {
            None
        };
        self.exprs.insert(out.clone(), (src, expr));
        Ok(exact)
    }
}

/// The distribution of `f(X)` per channel from the source's moments (see module docs).
fn through(f: &Expr, m: &[Moments], n_sigmas: f64) -> Option<Dist> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let moments: Vec<Moments> = m
        .iter()
        .enumerate()
        .map(|(c, &mc)| {
            let sd = mc.var.max(0.0).sqrt();
            let (a, b) =
                stats::range_of_fn(mc.mean - n_sigmas * sd, mc.mean + n_sigmas * sd, |x| {
                    f.eval(x, c)
                });
            lo = lo.min(a);
            hi = hi.max(b);
            stats::map_moments(mc, |x| f.eval(x, c))
        })
        .collect();
    let mut d = Dist::interval(lo, hi)?;
    d.moments = Some(moments);
    d.rule = RangeRule::BnPropagated;
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposed_hardswish_is_hardswish() {
        // x · clip(x + 3, 0, 6) / 6
        let gate = Expr::Act(
            Act::Clip(0.0, 6.0),
            Box::new(Expr::Bin(
                BinOp::Add,
                Box::new(Expr::X),
                Box::new(Expr::Const(Arc::new(vec![3.0]))),
            )),
        );
        let f = Expr::Bin(
            BinOp::Div,
            Box::new(Expr::Bin(BinOp::Mul, Box::new(Expr::X), Box::new(gate))),
            Box::new(Expr::Const(Arc::new(vec![6.0]))),
        );
        let d = through(&f, &[Moments::new(0.0, 4.0)], 6.0).unwrap();
        // HardSwish on [−12, 12]: minimum −0.375 at −1.5, maximum 12.
        assert!((d.lo + 0.375).abs() < 1e-6, "{}", d.lo);
        assert!((d.hi - 12.0).abs() < 1e-9, "{}", d.hi);
        let direct = stats::map_moments(Moments::new(0.0, 4.0), |x| Act::HardSwish.eval(x));
        let m = d.moments.unwrap()[0];
        assert!((m.mean - direct.mean).abs() < 1e-9 && (m.var - direct.var).abs() < 1e-9);
    }
}
