//! Statistics of tensors over a forward pass of the float model (the noise pass, or the user's
//! calibration inputs), streamed batch by batch: [`observe`] runs the pass, [`Observed`] holds
//! what one tensor needs for the range rules of [`crate::stats`].

use std::collections::BTreeMap;

use ndarray::ArrayD;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::graph::Model;
use crate::runtime::{encode_with_outputs, Outputs, Source, TractModel};
use crate::stats::{self, Summary};

/// Streaming statistics of one tensor over a forward pass (f64 sums in a fixed order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    /// Sums of the finite values, their minimum and maximum.
    pub summary: Summary,
    /// Every `stride`-th `|x|` over the whole pass (deterministic subsample for percentiles
    /// and clipping rates).
    #[serde(skip)]
    pub sample: Vec<f32>,
    /// Per-channel sums (channel axis 1, for tensors of rank ≥ 2).
    #[serde(skip)]
    channel_sum: Vec<f64>,
    #[serde(skip)]
    channel_sum_sq: Vec<f64>,
    /// Elements per channel so far.
    #[serde(skip)]
    channel_count: u64,
    /// Rank ≥ 3 (`[N, C, spatial…]`).
    #[serde(skip)]
    feature_map: bool,
    /// Values seen, finite or not (the subsample's position).
    #[serde(skip)]
    seen: u64,
}

impl Observed {
    fn add(&mut self, values: &ArrayD<f32>, sample_stride: usize) {
        // tract's outputs are contiguous: one pass over memory, a channel's run at a time.
        if let Some(slice) = values.as_slice() {
            self.add_contiguous(values.shape(), slice, sample_stride);
            return;
        }
        if values.ndim() >= 2 {
            let c = values.shape()[1];
            self.feature_map = values.ndim() >= 3;
            if self.channel_sum.len() != c {
                self.channel_sum = vec![0.0; c];
                self.channel_sum_sq = vec![0.0; c];
                self.channel_count = 0;
            }
            for (k, lane) in values.axis_iter(ndarray::Axis(1)).enumerate() {
                let (mut s1, mut s2) = (0f64, 0f64);
                for &v in lane.iter() {
                    let x = f64::from(v);
                    s1 += x;
                    s2 += x * x;
                }
                self.channel_sum[k] += s1;
                self.channel_sum_sq[k] += s2;
            }
            self.channel_count += (values.len() / c.max(1)) as u64;
        }
        for &v in values {
            let i = self.seen;
            self.seen += 1;
            if self.summary.add(v) && sample_stride > 0 && i.is_multiple_of(sample_stride as u64) {
                self.sample.push(v.abs());
            }
        }
    }

    /// [`Observed::add`] for a standard-layout tensor: `[N, C, inner…]` is N·C contiguous
    /// runs of `inner` values, channel `(run mod C)`; each run feeds the summary and its
    /// channel's sums in one vectorized pass ([`Summary::add_slice`]).
    fn add_contiguous(&mut self, shape: &[usize], slice: &[f32], sample_stride: usize) {
        let (c, inner) = if shape.len() >= 2 {
            (shape[1].max(1), shape[2..].iter().product::<usize>().max(1))
        } else {
            (1, slice.len().max(1))
        };
        if shape.len() >= 2 {
            self.feature_map = shape.len() >= 3;
            if self.channel_sum.len() != c {
                self.channel_sum = vec![0.0; c];
                self.channel_sum_sq = vec![0.0; c];
                self.channel_count = 0;
            }
        }
        for (r, run) in slice.chunks(inner).enumerate() {
            let (s1, s2) = self.summary.add_slice(run);
            if shape.len() >= 2 {
                self.channel_sum[r % c] += s1;
                self.channel_sum_sq[r % c] += s2;
            }
        }
        if shape.len() >= 2 {
            self.channel_count += (slice.len() / c) as u64;
        }
        if sample_stride > 0 {
            // Every `stride`-th value of the whole pass, finite ones kept.
            let stride = sample_stride as u64;
            let first = (stride - self.seen % stride) % stride;
            let mut i = first;
            while i < slice.len() as u64 {
                let v = slice[i as usize];
                if v.is_finite() {
                    self.sample.push(v.abs());
                }
                i += stride;
            }
        }
        self.seen += slice.len() as u64;
    }

    /// Smallest finite value seen.
    #[must_use]
    pub fn min(&self) -> f64 {
        self.summary.min
    }

    /// Largest finite value seen.
    #[must_use]
    pub fn max(&self) -> f64 {
        self.summary.max
    }

    /// `max|x|`.
    #[must_use]
    pub fn max_abs(&self) -> f64 {
        self.summary.max_abs()
    }

    /// SQuant's noise-rule clip value `α` for `bits` ([`stats::sigma_rule`]).
    #[must_use]
    pub fn sigma_rule(&self, bits: u32) -> f64 {
        stats::sigma_rule(&self.summary, bits).alpha
    }

    /// The `p`-th percentile of `|x|` over the subsample ([`stats::percentile_abs`]; `max|x|`
    /// without a subsample).
    #[must_use]
    pub fn percentile(&self, p: f64) -> f64 {
        if self.sample.is_empty() {
            return self.max_abs();
        }
        stats::percentile_abs(&self.sample, p)
    }

    /// Fraction of the subsample whose `|x|` exceeds `limit` (values a range would clip).
    #[must_use]
    pub fn fraction_above(&self, limit: f64) -> f64 {
        if self.sample.is_empty() {
            return 0.0;
        }
        let n = self
            .sample
            .iter()
            .filter(|&&v| f64::from(v) > limit)
            .count();
        n as f64 / self.sample.len() as f64
    }

    /// Per-channel means (channel axis 1), when the tensor has channels.
    #[must_use]
    pub fn channel_means(&self) -> Option<Vec<f64>> {
        (self.channel_count > 0 && !self.channel_sum.is_empty()).then(|| {
            self.channel_sum
                .iter()
                .map(|s| s / self.channel_count as f64)
                .collect()
        })
    }

    /// The BN rule on per-channel means and (population) variances of the pass,
    /// [`stats::gaussian_bound`]. Only for feature maps (`[N, C, spatial…]`): a `[N, F]` matrix
    /// has just N samples per feature, too few for a per-channel estimate.
    #[must_use]
    pub fn channel_gaussian_bound(&self, n_sigmas: f64) -> Option<f64> {
        let n = self.channel_count as f64;
        if n < 2.0 || self.channel_sum.is_empty() || !self.feature_map {
            return None;
        }
        let means: Vec<f64> = self.channel_sum.iter().map(|s1| s1 / n).collect();
        let vars: Vec<f64> = self
            .channel_sum_sq
            .iter()
            .zip(&means)
            .map(|(s2, mean)| (s2 / n - mean * mean).max(0.0))
            .collect();
        Some(stats::gaussian_bound(&means, &vars, n_sigmas))
    }
}

/// When a forward pass may stop before its last batch: at every checkpoint of `every` inputs
/// from `min` on, the pass stops if the observed values' ranges (`range`) moved by at most
/// `tol` since the previous checkpoint (root mean square of `Δr / r` over the values) and no
/// channel mean moved by more than `tol · r`. Checkpoints fall on input counts, not on threads, so where a pass stops does
/// not depend on the machine.
pub struct Settle<'a> {
    /// Inputs between checkpoints.
    pub every: usize,
    /// Inputs before the first stop is allowed.
    pub min: usize,
    /// Relative tolerance.
    pub tol: f64,
    /// The range a layer would take from these statistics.
    pub range: &'a (dyn Fn(&Observed) -> f64 + Sync),
}

/// What [`observe`] saw.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// Statistics per observed value.
    pub observed: BTreeMap<String, Observed>,
    /// Inputs run.
    pub inputs: usize,
    /// Inputs offered.
    pub offered: usize,
    /// The pass stopped early because the statistics settled.
    pub settled: bool,
    /// At the last checkpoint: the RMS relative range change and the largest channel mean
    /// change ([`Settle`]).
    pub last_change: Option<(f64, f64)>,
}

/// What a checkpoint compares: each value's range and channel means.
type Estimates = Vec<(f64, Vec<f64>)>;

fn estimates(out: &BTreeMap<String, Observed>, settle: &Settle) -> Estimates {
    out.values()
        .map(|o| ((settle.range)(o), o.channel_means().unwrap_or_default()))
        .collect()
}

/// The root mean square over values of the relative range change, and the largest channel
/// mean change relative to its value's range, between two checkpoints (`None` when a range is
/// not finite or the values differ).
fn changes(before: &Estimates, now: &Estimates) -> Option<(f64, f64)> {
    if before.len() != now.len() || now.is_empty() {
        return None;
    }
    let (mut sum_sq, mut mean_change) = (0.0f64, 0.0f64);
    for ((r0, m0), (r1, m1)) in before.iter().zip(now) {
        if !r0.is_finite() || !r1.is_finite() || m0.len() != m1.len() {
            return None;
        }
        let scale = r1.abs().max(f64::MIN_POSITIVE);
        sum_sq += ((r1 - r0) / scale).powi(2);
        for (a, b) in m0.iter().zip(m1) {
            mean_change = mean_change.max((b - a).abs() / scale);
        }
    }
    Some(((sum_sq / now.len() as f64).sqrt(), mean_change))
}

/// Runs the float `model` in tract on each batch of `inputs` and observes `values` (every
/// `sample_stride`-th value is kept for percentiles). Batches up to the next checkpoint run
/// side by side; their statistics are added in batch order, so the sums are the same as one
/// batch after the other. With `settle`, the pass may stop at a checkpoint ([`Settle`]).
///
/// # Errors
/// tract cannot run the model, or a requested value does not exist.
pub fn observe(
    model: &Model,
    values: &[String],
    batches: &[Vec<ArrayD<f32>>],
    sample_stride: usize,
    settle: Option<&Settle>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Pass> {
    // The observed values become the only outputs; tract prunes the rest.
    let bytes = encode_with_outputs(model, Outputs::Only(values))?;
    let count = |b: &Vec<ArrayD<f32>>| {
        b.first()
            .map_or(1, |a| a.shape().first().copied().unwrap_or(1))
    };
    let offered: usize = batches.iter().map(count).sum();
    let mut pass = Pass {
        offered,
        ..Pass::default()
    };
    if batches.is_empty() {
        return Ok(pass);
    }
    // One optimized plan per distinct batch shape (a short last batch gets its own).
    let mut plans: Vec<(Vec<Vec<usize>>, TractModel)> = Vec::new();
    for batch in batches {
        let shapes: Vec<Vec<usize>> = batch.iter().map(|a| a.shape().to_vec()).collect();
        if !plans.iter().any(|(s, _)| *s == shapes) {
            let m = TractModel::load(Source::Bytes(&bytes), &shapes)?;
            plans.push((shapes, m));
        }
    }
    let plan_of = |batch: &Vec<ArrayD<f32>>| -> Option<&TractModel> {
        plans
            .iter()
            .find(|(s, _)| {
                s.iter()
                    .map(Vec::as_slice)
                    .eq(batch.iter().map(ArrayD::shape))
            })
            .map(|(_, m)| m)
    };
    for name in values {
        pass.observed.entry(name.clone()).or_default();
    }
    let every = settle.map_or(usize::MAX, |s| s.every.max(1));
    let mut previous: Option<Estimates> = None;
    let mut next = 0usize;
    let mut checkpoint = every;
    while next < batches.len() {
        // The window: two batches side by side (both cores busy, at most two batches of
        // activations held), or one when the next checkpoint comes after it.
        let mut end = next;
        let mut n = 0usize;
        while end < batches.len() && end < next + 2 {
            n += count(&batches[end]);
            end += 1;
            if settle.is_some() && pass.inputs + n >= checkpoint {
                break;
            }
        }
        let window = &batches[next..end];
        let results: Vec<Vec<ArrayD<f32>>> = window
            .par_iter()
            .map(|batch| match plan_of(batch) {
                Some(m) => m.run(batch),
                None => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        for results in &results {
            // Tensors are independent: their statistics are taken side by side.
            let by_name: BTreeMap<&String, &ArrayD<f32>> = values.iter().zip(results).collect();
            let slots: Vec<(&mut Observed, &ArrayD<f32>)> = pass
                .observed
                .iter_mut()
                .filter_map(|(name, o)| by_name.get(name).map(|r| (o, *r)))
                .collect();
            slots
                .into_par_iter()
                .for_each(|(o, r)| o.add(r, sample_stride));
        }
        pass.inputs += n;
        next = end;
        progress(next, batches.len());
        if let Some(s) = settle {
            if pass.inputs >= checkpoint && next < batches.len() {
                while checkpoint <= pass.inputs {
                    checkpoint = checkpoint.saturating_add(every);
                }
                let now = estimates(&pass.observed, s);
                let moved = previous.as_ref().and_then(|p| changes(p, &now));
                if let Some((rms, mean)) = moved {
                    pass.last_change = Some((rms, mean));
                    if pass.inputs >= s.min && rms <= s.tol && mean <= s.tol {
                        pass.settled = true;
                        break;
                    }
                }
                previous = Some(now);
            }
        }
    }
    Ok(pass)
}
