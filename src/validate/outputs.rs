//! Metrics for outputs that are not class scores.
//!
//! - **Maps** (`[N, C, H, W]` with `H·W > 1`: segmentation and detection maps): the SQNR of each
//!   channel, and, where the float model's values are probabilities (all in `[0, 1]`), the IoU
//!   of the two masks `value > threshold` (the text mask of a DB text detector at 0.3).
//! - **Sequences** (`[N, T, C]` with `C > 1`: CTC recognisers): the share of steps whose argmax
//!   agrees, and how many sequences decode to the same string under greedy CTC (argmax per
//!   step, repeats merged, class 0 taken as the blank and dropped).
//!
//! Accumulated batch by batch and merged in batch order.

use ndarray::{ArrayD, Axis};
use serde::Serialize;

use crate::metrics::finite_or_string;

/// Threshold of the masks compared on probability maps.
pub const MASK_THRESHOLD: f32 = 0.3;

/// Partial sums of one output over some batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Partial {
    /// Maps: per channel (signal, noise).
    channels: Vec<(f64, f64)>,
    /// Maps: mask intersection and union.
    inter: u64,
    union: u64,
    /// Maps: whether every float value was in `[0, 1]`.
    probabilities: bool,
    /// Sequences: steps, agreeing steps, sequences, identical decodings.
    steps: u64,
    agree: u64,
    seqs: u64,
    same: u64,
}

/// What kind of output a shape is.
fn kind(shape: &[usize]) -> Option<Kind> {
    match shape {
        [_, _, h, w] if h * w > 1 => Some(Kind::Map),
        [_, t, c] if *t > 1 && *c > 1 => Some(Kind::Sequence),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Sequence,
}

/// Greedy CTC: argmax per step, repeats merged, blanks (class 0) dropped.
fn ctc(argmax: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = usize::MAX;
    for &k in argmax {
        if k != prev && k != 0 {
            out.push(k);
        }
        prev = k;
    }
    out
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

impl Partial {
    /// Accumulates one batch of the float (`a`) and int8 (`b`) output.
    pub(super) fn add(&mut self, a: &ArrayD<f32>, b: &ArrayD<f32>) {
        match kind(a.shape()) {
            Some(Kind::Map) if a.shape() == b.shape() => {
                let c = a.shape()[1];
                if self.channels.len() != c {
                    *self = Partial {
                        channels: vec![(0.0, 0.0); c],
                        probabilities: true,
                        ..Partial::default()
                    };
                }
                for (k, (ca, cb)) in a.axis_iter(Axis(1)).zip(b.axis_iter(Axis(1))).enumerate() {
                    let (mut s, mut n) = (0f64, 0f64);
                    for (&x, &y) in ca.iter().zip(cb.iter()) {
                        let (x64, y64) = (f64::from(x), f64::from(y));
                        s += x64 * x64;
                        n += (x64 - y64) * (x64 - y64);
                        self.probabilities &= (0.0..=1.0).contains(&x);
                        let (mx, my) = (x > MASK_THRESHOLD, y > MASK_THRESHOLD);
                        self.inter += u64::from(mx && my);
                        self.union += u64::from(mx || my);
                    }
                    self.channels[k].0 += s;
                    self.channels[k].1 += n;
                }
            }
            Some(Kind::Sequence) if a.shape() == b.shape() => {
                let c = a.shape()[2];
                for (sa, sb) in a.axis_iter(Axis(0)).zip(b.axis_iter(Axis(0))) {
                    let fa: Vec<f32> = sa.iter().copied().collect();
                    let fb: Vec<f32> = sb.iter().copied().collect();
                    let ma: Vec<usize> = fa.chunks(c).map(argmax).collect();
                    let mb: Vec<usize> = fb.chunks(c).map(argmax).collect();
                    self.steps += ma.len() as u64;
                    self.agree += ma.iter().zip(&mb).filter(|(x, y)| x == y).count() as u64;
                    self.seqs += 1;
                    self.same += u64::from(ctc(&ma) == ctc(&mb));
                }
            }
            _ => {}
        }
    }

    /// Merges the partial sums of a later batch.
    pub(super) fn merge(&mut self, o: &Partial) {
        if self.channels.is_empty() && self.steps == 0 && self.seqs == 0 {
            self.clone_from(o);
            return;
        }
        for (x, y) in self.channels.iter_mut().zip(&o.channels) {
            x.0 += y.0;
            x.1 += y.1;
        }
        self.probabilities &= o.probabilities || o.channels.is_empty();
        self.inter += o.inter;
        self.union += o.union;
        self.steps += o.steps;
        self.agree += o.agree;
        self.seqs += o.seqs;
        self.same += o.same;
    }

    /// The metrics these sums give.
    pub(super) fn metrics(&self) -> Option<OutputKindMetrics> {
        if !self.channels.is_empty() {
            let db = |(s, n): &(f64, f64)| {
                if *n == 0.0 {
                    f64::INFINITY
                } else {
                    10.0 * (s / n).log10()
                }
            };
            return Some(OutputKindMetrics::Map {
                channel_sqnr_db: self.channels.iter().map(db).collect(),
                mask_iou: (self.probabilities && self.union > 0)
                    .then(|| self.inter as f64 / self.union as f64),
            });
        }
        (self.seqs > 0).then(|| OutputKindMetrics::Sequence {
            step_agreement: self.agree as f64 / self.steps.max(1) as f64,
            sequences: self.seqs as usize,
            identical_sequences: self.same as usize,
        })
    }
}

/// Metrics of a map or a sequence output.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OutputKindMetrics {
    /// A `[N, C, H, W]` map.
    Map {
        /// SQNR of each channel, dB.
        #[serde(serialize_with = "finite_vec")]
        channel_sqnr_db: Vec<f64>,
        /// IoU of the masks `value > 0.3`, when the float values are probabilities.
        #[serde(skip_serializing_if = "Option::is_none")]
        mask_iou: Option<f64>,
    },
    /// A `[N, T, C]` sequence of class scores.
    Sequence {
        /// Share of steps whose argmax agrees.
        step_agreement: f64,
        /// Sequences compared.
        sequences: usize,
        /// Sequences whose greedy CTC decodings are identical.
        identical_sequences: usize,
    },
}

fn finite_vec<S: serde::Serializer>(v: &[f64], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        seq.serialize_element(&Finite(*x))?;
    }
    seq.end()
}

struct Finite(f64);

impl Serialize for Finite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        finite_or_string(&self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        assert_eq!(ctc(&[0, 3, 3, 0, 3, 5, 5, 0]), vec![3, 3, 5]);
        assert!(ctc(&[0, 0]).is_empty());
    }

    #[test]
    fn maps_give_channel_sqnr_and_mask_iou() {
        let a = ArrayD::from_shape_fn(IxDyn(&[1, 1, 2, 2]), |i| {
            [0.1, 0.9, 0.8, 0.2][i[2] * 2 + i[3]]
        });
        let b = ArrayD::from_shape_fn(IxDyn(&[1, 1, 2, 2]), |i| {
            [0.1, 0.9, 0.2, 0.2][i[2] * 2 + i[3]]
        });
        let mut p = Partial::default();
        p.add(&a, &b);
        let Some(OutputKindMetrics::Map {
            mask_iou,
            channel_sqnr_db,
        }) = p.metrics()
        else {
            panic!("not a map");
        };
        assert_eq!(mask_iou, Some(0.5));
        assert!(channel_sqnr_db[0] > 0.0 && channel_sqnr_db[0].is_finite());
    }

    #[test]
    fn sequences_compare_steps_and_decodings() {
        // Two sequences of 3 steps over 3 classes; the second differs in one step.
        let a = ArrayD::from_shape_vec(
            IxDyn(&[2, 3, 3]),
            vec![
                0., 1., 0., 0., 1., 0., 1., 0., 0., 0., 0., 1., 1., 0., 0., 0., 1., 0.,
            ],
        )
        .unwrap();
        let mut bv = a.clone();
        bv[[1, 2, 1]] = 0.0;
        bv[[1, 2, 2]] = 1.0;
        let mut p = Partial::default();
        p.add(&a, &bv);
        let Some(OutputKindMetrics::Sequence {
            step_agreement,
            sequences,
            identical_sequences,
        }) = p.metrics()
        else {
            panic!("not a sequence");
        };
        assert!((step_agreement - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!((sequences, identical_sequences), (2, 1));
    }
}
