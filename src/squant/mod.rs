//! SQuant data-free rounding of weights onto an integer grid (SQuant-E / -K / -C).
//!
//! Spec: `docs/algorithm.md` §2.3 (algorithm, ties, invariants, worked example) and §4.1
//! (per-tensor symmetric scale). Paper: Guo et al., "SQuant: On-the-fly Data-Free
//! Quantization via Diagonal Hessian Approximation", ICLR 2022. Written from the spec;
//! no reference code was used.
//!
//! Before: `x = W / s` in grid units, viewed as `[O, I, K]` (O output channels, I input
//! channels per group, K kernel elements; `K = 1` for Gemm/MatMul/1×1 conv). A *kernel*
//! is one `(o, i)` row of length K, a *channel* one `o` slice of length `I·K`.
//! After: `q` in `[qmin, qmax]` with every `q ∈ {floor(x), ceil(x)}` (then clamped).
//!
//! # Formula
//!
//! `q₀ = rne(x)` and `e = q − x` (`e > 0`: rounded up). A *flip* moves `q` by `d = ±1`
//! and costs `1 − 2|e|`, so candidates are ranked by priority `|e|`, descending.
//! `can_up = e₀ < 0 ∧ x < qmax`, `can_down = e₀ > 0 ∧ x > qmin`, with `e₀` the RTN error.
//!
//! 1. **E stage** (SQuant-E = [`Rounding::Nearest`]): `q₀ = rne(x)`.
//! 2. **K stage** (skipped when `K == 1`), per kernel: `S = Σ e`; skip if `S == 0`;
//!    `d = +1` if `S < 0` else `−1`; flip the `k = rne(|S|)` best `can_d` elements.
//!    If `k ≥ |S|` (over-flipped or exact) the *last* flipped element becomes an undo
//!    candidate for direction `−d` with priority `|e_new| ≥ 0.5`; otherwise the next-best
//!    unflipped `can_d` element becomes a candidate for `d` with priority `|e| ≤ 0.5`.
//! 3. **C stage**, per channel: `S = Σ e` after the K stage; skip if `S == 0`; apply the
//!    `k = rne(|S|)` best candidates of direction `d`: an undo returns the element to
//!    `q₀`, any other candidate moves it to `q₀ + d`. Without a K stage every `can_d`
//!    element of the channel is a candidate with priority `|e|`.
//! 4. Clamp to `[qmin, qmax]`.
//!
//! # Ties and precision
//!
//! - `rne` is round-half-to-even for both `q₀ = rne(x)` and `k = rne(|S|)`
//!   (`|S| = 0.5 → k = 0`, `1.5 → 2`, `2.5 → 2`), as `torch.round` does.
//! - Over/under test `k ≥ |S|` is a float comparison; equality counts as over.
//! - Equal priorities: lower flat index (within the channel) first. The comparator is a
//!   strict total order, so partial selection (`select_nth_unstable_by`) picks the same
//!   set as a stable full sort would.
//! - `S == 0` in the K stage: no flip and no candidate (spec deviation D1).
//! - Fewer candidates than `k`: flip only the candidates (spec deviation D2; only possible
//!   when some `x` lies beyond `qmin`/`qmax`). The over/under test still uses `k`.
//! - Errors and sums are f64 (x is widened exactly from f32, so every RTN error is
//!   exact). Kernel sums run in index order, channel sums in a fixed four-lane order,
//!   and each channel is one sequential task, so results are bit-identical for any
//!   thread count. The f32 reference, or another summation order, can differ only when
//!   `|S|` is within rounding noise (~1e−6 in f32) of a `.5` boundary or of 0.
//!
//! # Invariants (tested below)
//!
//! With `|x| ≤ qmax` and `qmin ≤ −qmax`: after K, `|Σ_kernel e| ≤ 0.5`; after K+C,
//! `|Σ_channel e| ≤ 0.5` and `|Σ_kernel e| < 1`; integer inputs are unchanged; for
//! depthwise (`I = 1`) the C stage is a no-op after K. Elements beyond the grid can break
//! the sum bounds (too few candidates, and the final clamp).
//!
//! # Preconditions
//!
//! `x` finite. Non-finite inputs do not panic: NaN maps to 0 and ±∞ to the grid edge
//! (then clamped), but the rest of that kernel/channel is rounded on NaN sums, so its
//! result is unspecified. `qmin ≤ qmax` (swapped otherwise).

use std::cmp::Ordering;
use std::ops::{Add, AddAssign};

use ndarray::{Array, Array3, ArrayView, ArrayView2, ArrayView3, ArrayViewMut2, Dimension};
use rayon::prelude::*;

/// Rounding mode: which SQuant stages run (`--mode` in the SQuant CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Rounding {
    /// Round to nearest, ties to even (RTN).
    Nearest,
    /// SQuant-E: element-wise only, identical to nearest.
    SquantE,
    /// SQuant-K: kernel stage only (equals RTN when `K == 1`).
    SquantK,
    /// SQuant-C: channel stage only, over every flippable element.
    SquantC,
    /// Full SQuant: kernel stage then channel stage (the SQuant default).
    #[default]
    Squant,
}

impl Rounding {
    /// Which stages run for kernel length `k` as `(kernel_stage, channel_stage)`.
    pub fn stages(self, k: usize) -> (bool, bool) {
        match self {
            Rounding::Nearest | Rounding::SquantE => (false, false),
            Rounding::SquantK => (k > 1, false),
            Rounding::SquantC => (false, true),
            Rounding::Squant => (k > 1, true),
        }
    }
}

/// Counts of the moves made relative to round-to-nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlipStats {
    /// Weights processed (`O·I·K`).
    pub elements: u64,
    /// Elements flipped by the kernel stage.
    pub kernel_flips: u64,
    /// Moves made by the channel stage, undos included.
    pub channel_flips: u64,
    /// Channel-stage moves that undid a kernel-stage flip.
    pub channel_undos: u64,
    /// Elements whose final value differs from clamped RTN.
    pub changed: u64,
}

impl Add for FlipStats {
    type Output = FlipStats;

    fn add(self, rhs: FlipStats) -> FlipStats {
        FlipStats {
            elements: self.elements + rhs.elements,
            kernel_flips: self.kernel_flips + rhs.kernel_flips,
            channel_flips: self.channel_flips + rhs.channel_flips,
            channel_undos: self.channel_undos + rhs.channel_undos,
            changed: self.changed + rhs.changed,
        }
    }
}

impl AddAssign for FlipStats {
    fn add_assign(&mut self, rhs: FlipStats) {
        *self = *self + rhs;
    }
}

/// Largest code of the narrow symmetric `bits`-bit grid, `2^(bits−1) − 1`
/// (127 for 8 bits); `bits` is clamped to `2..=31`.
pub fn symmetric_qmax(bits: u32) -> i32 {
    let bits = bits.clamp(2, 31);
    ((1i64 << (bits - 1)) - 1) as i32
}

/// Per-tensor symmetric scale `s = max|W| / qmax` (spec §4.1), computed in f64 and
/// returned as f32; derive `x = W / s` from this stored value.
///
/// Returns 1 when no weight is non-zero (so `q = 0`, never NaN). Non-finite weights are
/// ignored, `qmax < 1` is treated as 1 and the result is at least `f32::MIN_POSITIVE`.
pub fn symmetric_scale<D: Dimension>(w: ArrayView<'_, f32, D>, qmax: i32) -> f32 {
    let max_abs = w
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    if max_abs == 0.0 {
        return 1.0;
    }
    let scale = (f64::from(max_abs) / f64::from(qmax.max(1))) as f32;
    scale.max(f32::MIN_POSITIVE)
}

/// Round to nearest with ties to even, then clamp to `[qmin, qmax]` (SQuant-E).
/// NaN maps to 0 (then clamped).
pub fn round_nearest<D: Dimension>(
    x: ArrayView<'_, f32, D>,
    qmin: i32,
    qmax: i32,
) -> Array<i32, D> {
    let (qmin, qmax) = ordered(qmin, qmax);
    x.mapv(|v| rne_pair(f64::from(v)).1.clamp(qmin, qmax))
}

/// Round `x` (weights divided by the scale, viewed as `[O, I, K]`) onto `[qmin, qmax]`
/// with the given mode; returns the codes and the flip counts.
///
/// Output channels run in parallel on the current rayon pool; the result does not
/// depend on the number of threads.
pub fn round_squant(
    x: ArrayView3<'_, f32>,
    qmin: i32,
    qmax: i32,
    mode: Rounding,
) -> (Array3<i32>, FlipStats) {
    let (qmin, qmax) = ordered(qmin, qmax);
    let (o, i, k) = x.dim();
    let elements = (o * i * k) as u64;
    let (use_k, use_c) = mode.stages(k);
    if !(use_k || use_c) {
        let stats = FlipStats {
            elements,
            ..FlipStats::default()
        };
        return (round_nearest(x, qmin, qmax), stats);
    }
    let mut q = Array3::<i32>::zeros((o, i, k));
    if elements == 0 {
        return (q, FlipStats::default());
    }
    let grid = Grid {
        qmin,
        qmax,
        k,
        use_k,
        use_c,
    };
    let q_channels: Vec<ArrayViewMut2<'_, i32>> = q.outer_iter_mut().collect();
    let x_channels: Vec<ArrayView2<'_, f32>> = x.outer_iter().collect();
    let stats = q_channels
        .into_par_iter()
        .zip(x_channels)
        .with_min_len(MIN_TASK_ELEMENTS.div_ceil(i * k))
        .map_init(
            || Scratch::with_len(i * k),
            |scratch, (mut qc, xc)| {
                match xc.as_slice() {
                    Some(xs) => scratch.load(xs.iter()),
                    None => scratch.load(xc.iter()),
                }
                let mut stats = scratch.round_channel(&grid);
                stats.changed = match qc.as_slice_mut() {
                    Some(qs) => scratch.store(qs.iter_mut(), &grid),
                    None => scratch.store(qc.iter_mut(), &grid),
                };
                stats
            },
        )
        .reduce(FlipStats::default, Add::add);
    (q, stats)
}

/// Channels are grouped so that one rayon task rounds at least this many weights
/// (tiny depthwise channels would otherwise cost more in scheduling than in work).
const MIN_TASK_ELEMENTS: usize = 1 << 14;

/// Returns `(min, max)` of the two bounds, so `clamp` can never panic.
fn ordered(a: i32, b: i32) -> (i32, i32) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// `1.5 · 2^52`: adding it to `|v| < 2^51` leaves no fraction bits, so the hardware
/// rounds at the units place, half to even (the default rounding mode).
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// Round half to even. The [`MAGIC`] add/subtract avoids a `roundeven` libcall on
/// x86-64 without SSE4.1; `|v| ≥ 2^51` (and ±∞, NaN) are returned as is, every f32 of
/// that size being an integer already.
#[inline]
fn rne(v: f64) -> f64 {
    if v.abs() < 2_251_799_813_685_248.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

/// `rne(v)` as f64 and as i32 (saturating, NaN → 0). Below `2^31` the integer is read
/// from the low mantissa bits of `v + MAGIC`, which are `rne(v)` in two's complement;
/// this is cheaper than a saturating float-to-int cast.
#[inline]
fn rne_pair(v: f64) -> (f64, i32) {
    if v.abs() < 2_147_483_648.0 {
        let t = v + MAGIC;
        (t - MAGIC, t.to_bits() as u32 as i32)
    } else {
        (v, v as i32)
    }
}

/// Layer-wide constants of one call.
struct Grid {
    qmin: i32,
    qmax: i32,
    k: usize,
    use_k: bool,
    use_c: bool,
}

/// A flip candidate: priority key, flat index within the channel, and the offset from
/// `q₀` the element takes when the candidate is applied.
#[derive(Clone, Copy)]
struct Candidate {
    /// `priority.to_bits()`: priorities are `|e| ≥ 0`, for which the bit pattern orders
    /// like the value (as `f64::total_cmp`), so comparisons are plain integer ones.
    key: u64,
    index: usize,
    target: i8,
}

impl Candidate {
    const EMPTY: Candidate = Candidate {
        key: 0,
        index: 0,
        target: 0,
    };

    fn new(priority: f64, index: usize, target: i8) -> Candidate {
        Candidate {
            key: priority.abs().to_bits(),
            index,
            target,
        }
    }

    /// Rank in one integer: priority in the high half, reversed index in the low half,
    /// so "higher rank" is [`by_priority`]'s "first" and a max scan needs no branch
    /// on ties.
    #[inline]
    fn rank(&self) -> u128 {
        (u128::from(self.key) << 64) | u128::from(u64::MAX - self.index as u64)
    }
}

/// Priority descending, then lower index first: a strict total order.
fn by_priority(a: &Candidate, b: &Candidate) -> Ordering {
    b.key.cmp(&a.key).then(a.index.cmp(&b.index))
}

/// Up to this many picks a branch-free partial selection sort (`n` max scans) beats
/// `select_nth_unstable_by`; the kernel stage nearly always needs 1–3.
const FEW_PICKS: usize = 4;

/// Moves the best `n` candidates (by [`by_priority`]) to the front, in any order, and
/// returns the position of the `n`-th best (the worst of the front part). `None` when
/// `n == 0` or `n > pool.len()`. The order is strict and total, so the chosen set and
/// the `n`-th element are those of a stable full sort.
fn partition_best(pool: &mut [Candidate], n: usize) -> Option<usize> {
    let nth = n.checked_sub(1).filter(|&nth| nth < pool.len())?;
    if n <= FEW_PICKS {
        for p in 0..n {
            let mut best = p;
            let mut best_rank = pool[p].rank();
            for (j, c) in pool.iter().enumerate().skip(p + 1) {
                let rank = c.rank();
                if rank > best_rank {
                    best = j;
                    best_rank = rank;
                }
            }
            pool.swap(p, best);
        }
    } else {
        pool.select_nth_unstable_by(nth, by_priority);
    }
    Some(nth)
}

/// Sum in a fixed order (four interleaved lanes, then the tail), independent of
/// threading; lanes shorten the floating-point dependency chain.
fn sum_fixed_order(v: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let chunks = v.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for &x in tail {
        sum += x;
    }
    sum
}

/// Per-channel working buffers, reused across the channels of one rayon task.
struct Scratch {
    /// Current error `q − x` of each element.
    e: Vec<f64>,
    /// RTN code `rne(x)` (saturated to i32, not clamped).
    q0: Vec<i32>,
    /// Current offset from `q0`: −1, 0 or +1.
    flip: Vec<i8>,
    /// Selection buffer; only a prefix is live.
    pool: Vec<Candidate>,
    /// Channel-stage candidates left by the kernel stage, by direction.
    up: Vec<Candidate>,
    down: Vec<Candidate>,
}

impl Scratch {
    fn with_len(n: usize) -> Scratch {
        Scratch {
            e: Vec::with_capacity(n),
            q0: Vec::with_capacity(n),
            flip: Vec::with_capacity(n),
            pool: Vec::new(),
            up: Vec::new(),
            down: Vec::new(),
        }
    }

    /// Reads one channel (`I·K` values in `[I, K]` order) and rounds it to nearest.
    fn load<'a>(&mut self, x: impl ExactSizeIterator<Item = &'a f32>) {
        let n = x.len();
        self.e.resize(n, 0.0);
        self.q0.resize(n, 0);
        self.flip.clear();
        self.flip.resize(n, 0);
        for ((e, q0), &v) in self.e.iter_mut().zip(self.q0.iter_mut()).zip(x) {
            let v = f64::from(v);
            let (r, q) = rne_pair(v);
            *e = r - v;
            *q0 = q;
        }
        self.up.clear();
        self.down.clear();
    }

    /// Collects the elements of `start..end` that may move by `d` from `q0` into
    /// `pool[..m]` (index order) and returns `m`. Uses the RTN error, so call it only on
    /// unflipped elements. `e < 0 ∧ x < qmax` ⇔ `e < 0 ∧ q0 < qmax` because
    /// `x ∈ (q0, q0 + 0.5]`; likewise downwards. Branch-free: the sign of `e` is random.
    fn gather(&mut self, start: usize, end: usize, d: i8, grid: &Grid) -> usize {
        let len = end - start;
        if self.pool.len() < len {
            self.pool.resize(len, Candidate::EMPTY);
        }
        let mut m = 0;
        let errors = self.e[start..end].iter().zip(&self.q0[start..end]);
        for (index, (&e, &q0)) in (start..).zip(errors) {
            let ok = if d > 0 {
                (e < 0.0) & (q0 < grid.qmax)
            } else {
                (e > 0.0) & (q0 > grid.qmin)
            };
            if let Some(slot) = self.pool.get_mut(m) {
                *slot = Candidate::new(e, index, d);
            }
            m += usize::from(ok);
        }
        m
    }

    /// Runs the enabled stages on the loaded channel.
    fn round_channel(&mut self, grid: &Grid) -> FlipStats {
        let mut stats = FlipStats {
            elements: self.e.len() as u64,
            ..FlipStats::default()
        };
        if grid.use_k {
            for start in (0..self.e.len()).step_by(grid.k) {
                stats.kernel_flips += self.round_kernel(start, grid);
            }
        }
        if grid.use_c {
            let (flips, undos) = self.round_channel_stage(grid);
            stats.channel_flips = flips;
            stats.channel_undos = undos;
        }
        stats
    }

    /// K stage for the kernel starting at `start`; returns the number of flips.
    fn round_kernel(&mut self, start: usize, grid: &Grid) -> u64 {
        let end = start + grid.k;
        let sum = self.e[start..end].iter().fold(0.0f64, |s, &v| s + v);
        if sum == 0.0 {
            return 0; // D1: no flip, no candidate
        }
        let d: i8 = if sum < 0.0 { 1 } else { -1 };
        let abs = sum.abs();
        let k = rne(abs);
        let m = self.gather(start, end, d, grid);
        let k_n = k as usize; // saturating; k is a small non-negative integer
        let n_flip = k_n.min(m);
        if k >= abs {
            // Over-flipped or exact: the last flipped element may be undone.
            let Some(last) = partition_best(&mut self.pool[..m], n_flip) else {
                return 0;
            };
            self.apply_kernel_flips(n_flip, d);
            let index = self.pool[last].index;
            let undo = Candidate::new(self.e[index], index, 0);
            if d > 0 {
                self.down.push(undo);
            } else {
                self.up.push(undo);
            }
        } else if k_n < m {
            // Under-flipped: the next-best element is the channel-stage candidate.
            let Some(next) = partition_best(&mut self.pool[..m], k_n + 1) else {
                return 0;
            };
            self.apply_kernel_flips(k_n, d);
            let fresh = self.pool[next];
            if d > 0 {
                self.up.push(fresh);
            } else {
                self.down.push(fresh);
            }
        } else {
            // Under-flipped with every candidate used (D2): nothing left to offer.
            self.apply_kernel_flips(n_flip, d);
        }
        n_flip as u64
    }

    /// Flips the first `n` pool entries by `d`.
    fn apply_kernel_flips(&mut self, n: usize, d: i8) {
        for c in &self.pool[..n] {
            self.flip[c.index] = d;
            self.e[c.index] += f64::from(d);
        }
    }

    /// C stage over the whole channel; returns `(moves, undos)`.
    fn round_channel_stage(&mut self, grid: &Grid) -> (u64, u64) {
        let sum = sum_fixed_order(&self.e);
        if sum == 0.0 {
            return (0, 0);
        }
        let d: i8 = if sum < 0.0 { 1 } else { -1 };
        let k = rne(sum.abs()) as usize; // saturating
        if k == 0 {
            return (0, 0);
        }
        let pool = if grid.use_k {
            if d > 0 {
                &mut self.up[..]
            } else {
                &mut self.down[..]
            }
        } else {
            let m = self.gather(0, self.e.len(), d, grid);
            &mut self.pool[..m]
        };
        let n = k.min(pool.len());
        if n < pool.len() {
            partition_best(pool, n);
        }
        let mut undos = 0;
        for c in &pool[..n] {
            self.flip[c.index] = c.target;
            undos += u64::from(c.target == 0);
        }
        (n as u64, undos)
    }

    /// Writes `clamp(q0 + flip)` in `[I, K]` order; returns how many differ from
    /// `clamp(q0)`.
    fn store<'a>(&self, q: impl Iterator<Item = &'a mut i32>, grid: &Grid) -> u64 {
        let mut changed = 0;
        for ((out, &q0), &f) in q.zip(&self.q0).zip(&self.flip) {
            let v = q0.saturating_add(i32::from(f)).clamp(grid.qmin, grid.qmax);
            changed += u64::from(v != q0.clamp(grid.qmin, grid.qmax));
            *out = v;
        }
        changed
    }
}

#[cfg(test)]
mod tests;
