//! Latency of models in tract, measured side by side: what `isquant bench` prints, so a user can
//! measure on their own machine what `docs/benchmarks.md` reports on ours.
//!
//! Method: every model is loaded and optimized by tract for its one input at a fixed shape
//! (`--input-shape`, else the declared shape with an open batch set to 1), then run on the same
//! seeded N(0, 1) input. Runs are **interleaved**: round `r` runs model 1, model 2, … once each,
//! so a change of machine load (another process, a CPU clock step) falls on every model alike
//! and the ratios stay fair. The first `warmup` rounds are not counted (tract allocates its
//! scratch space and the caches fill there). Reported per model: the median, the 10th and the
//! 90th percentile (nearest rank) of the counted runs, and the median's ratio to the first
//! model's (list the float model first to read "int8 / float").
//!
//! tract runs on the calling thread (one core), as in the tables of `docs/benchmarks.md`.
//! Preconditions: each model has one input (the forward pass's rule, [`forward_shape`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::pipeline::forward::forward_shape;
use crate::runtime::{Source, TractModel};

/// The seed of the input every model runs on.
pub const INPUT_SEED: u64 = 0x1A7E_2C1E;

/// What to time and how often.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Counted rounds (each runs every model once).
    pub runs: usize,
    /// Rounds run first and not counted.
    pub warmup: usize,
    /// The input shape for every model (else each model's declared shape, batch 1 if open).
    pub input_shape: Option<Vec<usize>>,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            runs: 20,
            warmup: 2,
            input_shape: None,
        }
    }
}

/// One model's timings.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// The model file.
    pub model: PathBuf,
    /// The input shape it ran at.
    pub input_shape: Vec<usize>,
    /// Median of the counted runs, milliseconds.
    pub median_ms: f64,
    /// 10th percentile (nearest rank), milliseconds.
    pub p10_ms: f64,
    /// 90th percentile (nearest rank), milliseconds.
    pub p90_ms: f64,
    /// `median_ms` over the first model's `median_ms`.
    pub vs_first: f64,
}

/// The result of a bench: one [`Timing`] per model, in the order given.
#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    /// The runtime that ran the models.
    pub runtime: &'static str,
    /// Threads tract used.
    pub threads: usize,
    /// Counted rounds.
    pub runs: usize,
    /// Uncounted rounds first.
    pub warmup: usize,
    /// Per model.
    pub models: Vec<Timing>,
}

/// What [`measure`] reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// Loading and optimizing this model.
    Loading(&'a Path),
    /// Round `done` of `total` (warm-up included) finished.
    Round { done: usize, total: usize },
}

/// The `q`-quantile of sorted values by nearest rank (`q` in [0, 1]); `None` when empty.
#[must_use]
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Loads every model of `paths` in tract and times them side by side (see the module docs).
///
/// # Errors
/// A model that does not load (named by its path), has several inputs, leaves dimensions other
/// than the batch open without `input_shape`, or fails in tract; `runs` of 0.
pub fn measure(
    paths: &[PathBuf],
    opts: &LatencyOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Bench> {
    if opts.runs == 0 {
        return Err(crate::Error::Config("--runs must be at least 1".into()));
    }
    crate::limits::count("--runs", opts.runs, MAX_RUNS)?;
    crate::limits::count("--warmup", opts.warmup, MAX_RUNS)?;
    let mut loaded = Vec::with_capacity(paths.len());
    for p in paths {
        progress(Progress::Loading(p));
        let model = crate::load(p)?.model;
        let shape: Vec<usize> = forward_shape(&model, opts.input_shape.as_deref())?
            .iter()
            .map(|d| d.unwrap_or(1))
            .collect();
        crate::limits::elements(
            &format!("the input of {} at shape {shape:?}", p.display()),
            1,
            &shape,
        )?;
        let tract = TractModel::load(Source::Path(p), std::slice::from_ref(&shape))?;
        let x = crate::rng::seeded_normal(&shape, INPUT_SEED);
        loaded.push((tract, x, shape));
    }
    let total = opts.warmup + opts.runs;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(opts.runs); loaded.len()];
    for round in 0..total {
        for ((tract, x, _), t) in loaded.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            tract.run(std::slice::from_ref(x))?;
            if round >= opts.warmup {
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        progress(Progress::Round {
            done: round + 1,
            total,
        });
    }
    let mut models = Vec::with_capacity(loaded.len());
    for ((_, _, shape), (mut t, p)) in loaded.into_iter().zip(times.into_iter().zip(paths)) {
        t.sort_by(f64::total_cmp);
        let at = |q| nearest_rank(&t, q).unwrap_or(f64::NAN);
        models.push(Timing {
            model: p.clone(),
            input_shape: shape,
            median_ms: at(0.5),
            p10_ms: at(0.1),
            p90_ms: at(0.9),
            vs_first: f64::NAN,
        });
    }
    let first = models.first().map_or(f64::NAN, |m| m.median_ms);
    for m in &mut models {
        m.vs_first = m.median_ms / first;
    }
    Ok(Bench {
        runtime: "tract",
        threads: 1,
        runs: opts.runs,
        warmup: opts.warmup,
        models,
    })
}

/// Most rounds `--runs` and `--warmup` may ask for.
pub const MAX_RUNS: usize = 100_000;

/// The bench as text: one line per model, then the ratio of each to the first.
#[must_use]
pub fn render(b: &Bench) -> String {
    let names: Vec<String> = b
        .models
        .iter()
        .map(|m| m.model.display().to_string())
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(5).max(5);
    let mut s = format!(
        "{} on {} thread, median of {} runs (interleaved, after {} warm-up), seeded N(0, 1) input\n",
        b.runtime, b.threads, b.runs, b.warmup
    );
    s.push_str(&format!(
        "{:<width$}  {:>10}  {:>17}  {:>8}  input\n",
        "model", "median ms", "p10-p90 ms", "vs first"
    ));
    for (m, name) in b.models.iter().zip(&names) {
        let shape: Vec<String> = m.input_shape.iter().map(ToString::to_string).collect();
        s.push_str(&format!(
            "{name:<width$}  {:>10.2}  {:>17}  {:>7.2}x  [{}]\n",
            m.median_ms,
            format!("{:.2}-{:.2}", m.p10_ms, m.p90_ms),
            m.vs_first,
            shape.join(", ")
        ));
    }
    if let Some((first, rest)) = b.models.split_first() {
        for m in rest {
            let how = if !m.vs_first.is_finite() {
                "not comparable".to_string()
            } else if (m.vs_first - 1.0).abs() < 0.005 {
                "level".to_string()
            } else if m.vs_first < 1.0 {
                format!("{:.2}x faster", 1.0 / m.vs_first)
            } else {
                "slower".to_string()
            };
            s.push_str(&format!(
                "{}: {:.2}x the time of {} ({how})\n",
                m.model.display(),
                m.vs_first,
                first.model.display()
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(5.0));
        assert_eq!(nearest_rank(&v, 0.1), Some(1.0));
        assert_eq!(nearest_rank(&v, 0.9), Some(9.0));
        assert_eq!(nearest_rank(&v, 1.0), Some(10.0));
        assert_eq!(nearest_rank(&v, 0.0), Some(1.0));
        assert_eq!(nearest_rank(&[3.0], 0.9), Some(3.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
