//! The range rules, one implementation each (module docs of [`super`]):
//!
//! - [`gaussian_range`]: `(min_c μ_c − N·σ_c, max_c μ_c + N·σ_c)` over channels (the BN rule,
//!   `docs/algorithm.md` §6), and [`gaussian_bound`], its largest magnitude `max_c |μ_c ± N·σ_c|`
//!   (the same rule on per-channel statistics of a noise pass);
//! - [`percentile_abs`]: the nearest-rank percentile of `|x|` (calibration);
//! - [`sigma_rule`]: SQuant's noise-batch rule (§2.4) on streaming sums ([`Summary`]), so a
//!   forward pass never keeps a tensor whole.

use serde::Serialize;

/// `(min_c μ_c − N·σ_c, max_c μ_c + N·σ_c)` over channels, `σ_c = √max(var_c, 0)`
/// (§6 option 1, BN-analytic ranges; DFQ uses `N = 6`).
///
/// Pairs `means[c]`, `vars[c]` up to the shorter slice; channels with a NaN mean or variance
/// are skipped. No usable channel gives `(0, 0)`.
#[must_use]
pub fn gaussian_range(means: &[f64], vars: &[f64], n_sigmas: f64) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for (&m, &v) in means.iter().zip(vars.iter()) {
        if m.is_nan() || v.is_nan() {
            continue;
        }
        let s = v.max(0.0).sqrt();
        lo = lo.min(m - n_sigmas * s);
        hi = hi.max(m + n_sigmas * s);
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Nearest-rank `p`-th percentile of `|x|` over the non-NaN entries (for calibration with
/// data): the `⌈p·n/100⌉`-th smallest `|x|`, so `p = 100` is `max|x|`.
///
/// `p` is clamped to `(0, 100]` (`p ≤ 0` gives `min|x|`, NaN `p` gives `max|x|`). Empty or
/// all-NaN input gives 0. Uses `select_nth_unstable` on a copy: O(n), deterministic.
#[must_use]
pub fn percentile_abs(values: &[f32], p: f64) -> f64 {
    let mut abs: Vec<f32> = values
        .iter()
        .filter(|v| !v.is_nan())
        .map(|v| v.abs())
        .collect();
    let n = abs.len();
    if n == 0 {
        return 0.0;
    }
    let p = if p.is_nan() {
        100.0
    } else {
        p.clamp(0.0, 100.0)
    };
    let rank = (p * n as f64 / 100.0).ceil();
    // rank ∈ [0, n]; as an index (rank − 1) clamped to [0, n − 1].
    let idx = if rank >= 1.0 { rank as usize - 1 } else { 0 }.min(n - 1);
    let (_, v, _) = abs.select_nth_unstable_by(idx, f32::total_cmp);
    f64::from(*v)
}

/// `max_c |μ_c ± N·σ_c|`: the largest magnitude of [`gaussian_range`] (0 without a usable
/// channel).
#[must_use]
pub fn gaussian_bound(means: &[f64], vars: &[f64], n_sigmas: f64) -> f64 {
    let (lo, hi) = gaussian_range(means, vars, n_sigmas);
    lo.abs().max(hi.abs())
}

// ---------------------------------------------------------------------------------------
// SQuant σ rule
// ---------------------------------------------------------------------------------------

/// Streaming sums of a tensor's finite values: what [`sigma_rule`] needs, in one pass and
/// f64 (summed in the order values arrive, so the result is deterministic).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of finite values.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Their sum of squares.
    pub sum_sq: f64,
    /// Number of positive values. (No separate sums of the positive values are needed: the
    /// rule reads them only when no value is negative, and then they are `sum` and `sum_sq`
    /// bit for bit, zeros adding +0 either way.)
    pub count_pos: u64,
    /// Smallest value (+∞ before any).
    pub min: f64,
    /// Largest value (−∞ before any).
    pub max: f64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            count_pos: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Summary {
    /// The summary of the finite values of a slice.
    #[must_use]
    pub fn of(values: &[f32]) -> Self {
        let mut s = Summary::default();
        for &v in values {
            s.add(v);
        }
        s
    }

    /// Adds a slice's finite values and returns their sum and sum of squares (the caller's
    /// per-channel sums). Eight lanes of f64 accumulators, combined in a fixed order: the
    /// compiler vectorizes this (per-element [`Summary::add`] does not, it is a serial chain
    /// of f64 adds), so the noise pass's statistics cost a fraction of the forward pass.
    /// Deterministic: the same slice gives the same bits, whatever the thread.
    pub fn add_slice(&mut self, values: &[f32]) -> (f64, f64) {
        const L: usize = 8;
        let (mut s1, mut s2) = ([0f64; L], [0f64; L]);
        let (mut n, mut np) = ([0u64; L], [0u64; L]);
        let (mut lo, mut hi) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
        let mut chunks = values.chunks_exact(L);
        // Nearly every slice is all finite: that loop needs no per-value select, and adds the
        // same values to the same lanes in the same order, so the sums are the same bits.
        if values.iter().all(|v| v.is_finite()) {
            for c in &mut chunks {
                for k in 0..L {
                    let v = c[k];
                    let x = f64::from(v);
                    s1[k] += x;
                    s2[k] += x * x;
                    np[k] += u64::from(v > 0.0);
                    lo[k] = lo[k].min(v);
                    hi[k] = hi[k].max(v);
                }
            }
            n = [(values.len() / L) as u64; L];
        }
        for c in &mut chunks {
            for k in 0..L {
                let v = c[k];
                let ok = v.is_finite();
                let x = if ok { f64::from(v) } else { 0.0 };
                s1[k] += x;
                s2[k] += x * x;
                n[k] += u64::from(ok);
                np[k] += u64::from(x > 0.0);
                lo[k] = if ok { lo[k].min(v) } else { lo[k] };
                hi[k] = if ok { hi[k].max(v) } else { hi[k] };
            }
        }
        let (mut t1, mut t2) = (0f64, 0f64);
        for k in 0..L {
            t1 += s1[k];
            t2 += s2[k];
            self.count += n[k];
            self.count_pos += np[k];
            if n[k] > 0 {
                self.min = self.min.min(f64::from(lo[k]));
                self.max = self.max.max(f64::from(hi[k]));
            }
        }
        for &v in chunks.remainder() {
            if self.add(v) {
                t1 += f64::from(v);
                t2 += f64::from(v) * f64::from(v);
            }
        }
        // `add` already put the remainder in `sum`/`sum_sq`; the lanes go in here.
        let lanes1: f64 = s1.iter().sum();
        let lanes2: f64 = s2.iter().sum();
        self.sum += lanes1;
        self.sum_sq += lanes2;
        (t1, t2)
    }

    /// Adds one value (non-finite values are ignored; returns whether it counted).
    pub fn add(&mut self, v: f32) -> bool {
        if !v.is_finite() {
            return false;
        }
        let x = f64::from(v);
        self.count += 1;
        self.sum += x;
        self.sum_sq += x * x;
        if x > 0.0 {
            self.count_pos += 1;
        }
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        true
    }

    /// `max|x|` (0 before any value).
    #[must_use]
    pub fn max_abs(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.max.abs().max(self.min.abs())
        }
    }
}

/// Unbiased standard deviation from streaming sums, `√max(0, (Σx² − (Σx)²/n)/(n − 1))`; 0 for
/// fewer than two values.
fn streaming_std(n: u64, sum: f64, sum_sq: f64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let n = n as f64;
    ((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0).sqrt()
}

/// Result of [`sigma_rule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmaRule {
    /// Clipping bound: range `[0, α]` if unsigned, `[−α, α]` if signed; 0 only when every
    /// finite value is 0 (or there is none).
    pub alpha: f64,
    /// Whether the tensor is treated as signed (`min < 0`).
    pub signed: bool,
    /// The σ used: unbiased std of the positive values (unsigned) or of all values (signed).
    pub sigma: f64,
    /// The multiplier `k` used for these bits.
    pub k: f64,
    /// Whether `α` was capped at `max|x|` (the `bits < 6` rule).
    pub capped: bool,
    /// Whether `k·σ` was not positive (σ = 0) and `α` fell back to `max|x|`.
    pub fallback: bool,
}

/// SQuant's multiplier `k` for a bit width: 12 at ≤ 4 bits, 14 at 6, 25 at ≥ 8 bits
/// (the official values); 13 at 5 and 19.5 at 7 bits are our linear interpolations.
#[must_use]
pub fn sigma_rule_k(bits: u32) -> f64 {
    match bits {
        0..=4 => 12.0,
        5 => 13.0,
        6 => 14.0,
        7 => 19.5,
        _ => 25.0,
    }
}

/// SQuant's activation clipping rule on a noise-batch tensor (`docs/algorithm.md` §2.4):
///
/// 1. `signed := min < 0`;
/// 2. `σ` = unbiased std of the values `> 0` (unsigned) or of all values (signed), from the
///    streaming sums (one pass);
/// 3. `α = k·σ`, or `k·σ/1.25` if signed, with `k` = [`sigma_rule_k`]`(bits)`;
/// 4. below 6 bits, `α = min(α, max|x|)`. (SQuant's reference caps at the signed maximum
///    `max(x)`, which clips a signed tensor with a small positive side hard; isquant's ranges
///    are symmetric, so it caps at the largest magnitude.)
///
/// If `α` is not positive and finite (σ = 0: no values, one qualifying value, a constant
/// tensor, an unsigned tensor without positive values) it falls back to `max|x|`.
#[must_use]
pub fn sigma_rule(s: &Summary, bits: u32) -> SigmaRule {
    let k = sigma_rule_k(bits);
    let signed = s.min < 0.0;
    let sigma = if signed {
        streaming_std(s.count, s.sum, s.sum_sq)
    } else {
        // No value is negative: the positive values' sums are `sum` and `sum_sq`.
        streaming_std(s.count_pos, s.sum, s.sum_sq)
    };
    let mut alpha = if signed { k * sigma / 1.25 } else { k * sigma };
    let mut capped = false;
    if bits < 6 && alpha > s.max_abs() {
        alpha = s.max_abs();
        capped = true;
    }
    let fallback = alpha.is_nan() || alpha <= 0.0 || !alpha.is_finite();
    if fallback {
        alpha = s.max_abs();
    }
    SigmaRule {
        alpha,
        signed,
        sigma,
        k,
        capped,
        fallback,
    }
}
