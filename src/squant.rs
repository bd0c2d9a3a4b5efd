//! SQuant data-free rounding of weights onto an integer grid (SQuant-E / -K / -C).
//!
//! Spec: `algorithm.md` §2.3 (algorithm, ties, invariants, worked example) and §4.1
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
    /// SQuant-E: element-wise only, identical to [`Rounding::Nearest`].
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ndarray::{Array3, Axis, ShapeBuilder};

    const MODES: [Rounding; 5] = [
        Rounding::Nearest,
        Rounding::SquantE,
        Rounding::SquantK,
        Rounding::SquantC,
        Rounding::Squant,
    ];

    /// SplitMix64: tiny seeded generator, identical on every machine.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// Roughly Gaussian (Irwin–Hall of 4), zero mean.
        fn normal(&mut self) -> f64 {
            (0..4).map(|_| self.uniform()).sum::<f64>() - 2.0
        }
    }

    /// A layer like the spec's flow: Gaussian weights, per-tensor scale, `|x| ≤ qmax`.
    fn random_layer(shape: (usize, usize, usize), qmax: i32, seed: u64) -> Array3<f32> {
        let mut rng = SplitMix64(seed);
        let w = Array3::from_shape_simple_fn(shape, || rng.normal() as f32);
        let s = symmetric_scale(w.view(), qmax);
        let lim = qmax as f32;
        w.mapv(|v| (v / s).clamp(-lim, lim))
    }

    /// Literal transcription of the spec §2.3.2 pseudo-code (global priority arrays,
    /// full stable sorts, `target_d` from the original rounding), used as an oracle.
    fn reference(x: &Array3<f32>, qmin: i32, qmax: i32, mode: Rounding) -> Array3<i32> {
        let (o_n, i_n, k_n) = x.dim();
        let xs: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let n = xs.len();
        let q_orig: Vec<f64> = xs.iter().map(|v| v.round_ties_even()).collect();
        let mut q = q_orig.clone();
        let mut e: Vec<f64> = (0..n).map(|j| q[j] - xs[j]).collect();
        let can_up: Vec<bool> = (0..n)
            .map(|j| e[j] < 0.0 && xs[j] < f64::from(qmax))
            .collect();
        let can_down: Vec<bool> = (0..n)
            .map(|j| e[j] > 0.0 && xs[j] > f64::from(qmin))
            .collect();
        let can = |d: f64, j: usize| if d > 0.0 { can_up[j] } else { can_down[j] };
        let (mut use_k, use_c) = match mode {
            Rounding::Nearest | Rounding::SquantE => (false, false),
            Rounding::SquantK => (true, false),
            Rounding::SquantC => (false, true),
            Rounding::Squant => (true, true),
        };
        if k_n == 1 {
            use_k = false;
        }
        let mut pri_up = vec![0.0f64; n];
        let mut pri_down = vec![0.0f64; n];
        let by_prio = |p: &dyn Fn(usize) -> f64, list: &mut Vec<usize>| {
            list.sort_by(|&a, &b| p(b).partial_cmp(&p(a)).unwrap().then(a.cmp(&b)));
        };
        if use_k {
            for g in 0..o_n * i_n {
                let idx: Vec<usize> = (g * k_n..(g + 1) * k_n).collect();
                let s: f64 = idx.iter().fold(0.0, |a, &j| a + e[j]);
                if s == 0.0 {
                    continue;
                }
                let d = if s < 0.0 { 1.0 } else { -1.0 };
                let mut c: Vec<usize> = idx.iter().copied().filter(|&j| can(d, j)).collect();
                let ec = e.clone();
                by_prio(&|j| ec[j].abs(), &mut c);
                let k = s.abs().round_ties_even();
                let f = (k as usize).min(c.len());
                for &j in &c[..f] {
                    q[j] += d;
                    e[j] += d;
                }
                if k >= s.abs() {
                    if f > 0 {
                        let l = c[f - 1];
                        let p = if d > 0.0 { &mut pri_down } else { &mut pri_up };
                        p[l] = e[l].abs();
                    }
                } else if (k as usize) < c.len() {
                    let nx = c[k as usize];
                    let p = if d > 0.0 { &mut pri_up } else { &mut pri_down };
                    p[nx] = e[nx].abs();
                }
            }
        } else {
            for j in 0..n {
                pri_up[j] = if can_up[j] { e[j].abs() } else { 0.0 };
                pri_down[j] = if can_down[j] { e[j].abs() } else { 0.0 };
            }
        }
        if use_c {
            let len = i_n * k_n;
            for o in 0..o_n {
                let idx: Vec<usize> = (o * len..(o + 1) * len).collect();
                let s: f64 = idx.iter().fold(0.0, |a, &j| a + e[j]);
                if s == 0.0 {
                    continue;
                }
                let d = if s < 0.0 { 1.0 } else { -1.0 };
                let pri = if d > 0.0 { &pri_up } else { &pri_down };
                let mut c: Vec<usize> = idx.iter().copied().filter(|&j| pri[j] > 0.0).collect();
                by_prio(&|j| pri[j], &mut c);
                let k = s.abs().round_ties_even() as usize;
                for &j in c.iter().take(k) {
                    q[j] = if can(d, j) { q_orig[j] + d } else { q_orig[j] };
                    e[j] = q[j] - xs[j];
                }
            }
        }
        let out: Vec<i32> = q.iter().map(|&v| (v as i32).clamp(qmin, qmax)).collect();
        Array3::from_shape_vec((o_n, i_n, k_n), out).unwrap()
    }

    fn codes(v: &serde_json::Value) -> Vec<i32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_i64().unwrap() as i32)
            .collect()
    }

    #[test]
    fn golden_vectors_match_every_mode() {
        let text = include_str!("../fixtures/golden/squant-golden-vectors.json");
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        let cases = json["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 28);
        let modes = [
            ("rtn", Rounding::Nearest),
            ("rtn", Rounding::SquantE),
            ("k_only", Rounding::SquantK),
            ("c_only", Rounding::SquantC),
            ("k_then_c", Rounding::Squant),
        ];
        let mut passed = 0;
        for (n, case) in cases.iter().enumerate() {
            let shape = codes(&case["shape_OIK"]);
            let shape = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
            let qmin = case["qmin"].as_i64().unwrap() as i32;
            let qmax = case["qmax"].as_i64().unwrap() as i32;
            let x: Vec<f32> = case["x"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let x = Array3::from_shape_vec(shape, x).unwrap();
            for (key, mode) in modes {
                let expected = codes(&case[key]);
                let (q, _) = round_squant(x.view(), qmin, qmax, mode);
                let got: Vec<i32> = q.iter().copied().collect();
                assert_eq!(got, expected, "case {n} {shape:?} mode {mode:?} ({key})");
                passed += 1;
            }
            let rtn: Vec<i32> = round_nearest(x.view(), qmin, qmax)
                .iter()
                .copied()
                .collect();
            assert_eq!(rtn, codes(&case["rtn"]), "case {n} round_nearest");
        }
        assert_eq!(passed, 28 * 5);
    }

    fn layer(shape: (usize, usize, usize), x: &[f32]) -> Array3<f32> {
        Array3::from_shape_vec(shape, x.to_vec()).unwrap()
    }

    fn run(x: &Array3<f32>, mode: Rounding) -> Vec<i32> {
        round_squant(x.view(), -127, 127, mode)
            .0
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn worked_example_conv_matches_spec() {
        let x = layer(
            (1, 2, 4),
            &[-2.02, 1.48, -1.54, 0.56, -0.74, 1.41, 0.21, -0.63],
        );
        assert_eq!(run(&x, Rounding::Nearest), [-2, 1, -2, 1, -1, 1, 0, -1]);
        assert_eq!(run(&x, Rounding::SquantK), [-2, 1, -2, 1, -1, 2, 0, -1]);
        assert_eq!(run(&x, Rounding::SquantC), [-2, 2, -1, 1, -1, 1, 0, -1]);
        let (q, stats) = round_squant(x.view(), -127, 127, Rounding::Squant);
        assert_eq!(
            q.iter().copied().collect::<Vec<_>>(),
            [-2, 2, -2, 1, -1, 2, 0, -1]
        );
        let expected = FlipStats {
            elements: 8,
            kernel_flips: 1,
            channel_flips: 1,
            channel_undos: 0,
            changed: 2,
        };
        assert_eq!(stats, expected);
        let residual: f64 = q
            .iter()
            .zip(&x)
            .map(|(&q, &x)| f64::from(q) - f64::from(x))
            .sum();
        assert!(
            (residual - 0.27).abs() < 1e-6,
            "channel residual {residual}"
        );
    }

    #[test]
    fn worked_example_linear_matches_spec() {
        let x = layer(
            (2, 5, 1),
            &[0.74, 1.45, 1.77, 2.65, 1.44, 2.53, -2.83, -0.21, 2.66, 0.89],
        );
        assert_eq!(run(&x, Rounding::Nearest), [1, 1, 2, 3, 1, 3, -3, 0, 3, 1]);
        assert_eq!(run(&x, Rounding::SquantK), [1, 1, 2, 3, 1, 3, -3, 0, 3, 1]);
        assert_eq!(run(&x, Rounding::Squant), [1, 1, 2, 3, 1, 2, -3, 0, 3, 1]);
        assert_eq!(run(&x, Rounding::SquantC), run(&x, Rounding::Squant));
    }

    #[test]
    fn ties_round_half_to_even() {
        for (v, r) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
        ] {
            assert_eq!(rne(v), r, "rne({v})");
        }
        let mut rng = SplitMix64(7);
        for _ in 0..100_000 {
            let v = (rng.normal() * 10f64.powi((rng.uniform() * 12.0) as i32 - 3)) as f32;
            let v = f64::from(v);
            assert_eq!(rne(v), v.round_ties_even(), "rne({v})");
            let h = (v * 2.0).round() / 2.0; // exact halves
            assert_eq!(rne(h), h.round_ties_even(), "rne({h})");
        }
        for v in [
            1e20,
            -1e20,
            2f64.powi(51) + 1.0,
            2f64.powi(52) + 1.0,
            f64::INFINITY,
        ] {
            assert_eq!(rne(v), v.round_ties_even(), "rne({v})");
        }
        let edges = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            2147483520.0,
            -2147483648.0,
            2147483648.0,
            3e9,
        ];
        for v in edges
            .into_iter()
            .chain([-3e9, f64::NAN, f64::INFINITY, -1e300])
        {
            let (r, q) = rne_pair(v);
            assert_eq!(q, v.round_ties_even() as i32, "rne_pair({v})");
            assert!(r == v.round_ties_even() || v.is_nan(), "rne_pair({v})");
        }
        for _ in 0..100_000 {
            let v = f64::from((rng.normal() * 3e9) as f32);
            assert_eq!(
                rne_pair(v),
                (v.round_ties_even(), v.round_ties_even() as i32)
            );
            let v = f64::from((rng.normal() * 300.0) as f32);
            assert_eq!(
                rne_pair(v),
                (v.round_ties_even(), v.round_ties_even() as i32)
            );
        }
        // |S| = 0.5 gives k = 0 (no flip); |S| = 1.5 and 2.5 give k = 2.
        let x = layer((1, 1, 2), &[0.25, 0.25]); // S = −0.5
        assert_eq!(run(&x, Rounding::SquantK), [0, 0]);
        let x = layer((1, 1, 4), &[0.25, 0.25, 0.5, 0.5]); // e = −.25 −.25 −.5 −.5 (RTN 0 0 0 0)
        assert_eq!(run(&x, Rounding::Nearest), [0, 0, 0, 0]);
        assert_eq!(run(&x, Rounding::SquantK), [0, 0, 1, 1]); // S = −1.5 → k = 2
        let x = layer((1, 1, 5), &[0.5; 5]); // S = −2.5 → k = 2, equal priorities
        assert_eq!(run(&x, Rounding::SquantK), [1, 1, 0, 0, 0]); // lower index first
    }

    #[test]
    fn equal_priorities_prefer_lower_index_in_channel_stage() {
        let x = layer((1, 6, 1), &[2.5, 0.5, 4.5, 6.5, 8.5, 10.5]);
        // RTN = 2 0 4 6 8 10, e = −0.5 each, S = −3 → k = 3, all priorities 0.5.
        assert_eq!(run(&x, Rounding::Squant), [3, 1, 5, 6, 8, 10]);
        assert_eq!(
            round_squant(x.view(), -127, 127, Rounding::Squant).0,
            reference(&x, -127, 127, Rounding::Squant)
        );
    }

    /// Shapes: Gemm (K = 1), depthwise (I = 1), O = 1, 3×3, 5×5, 1×2 and tiny.
    const SHAPES: [(usize, usize, usize); 9] = [
        (8, 16, 9),
        (5, 64, 1),
        (16, 1, 9),
        (1, 12, 9),
        (1, 40, 1),
        (3, 4, 25),
        (6, 7, 2),
        (1, 1, 1),
        (2, 3, 4),
    ];

    fn kernel_sums(q: &Array3<i32>, x: &Array3<f32>) -> Vec<f64> {
        let q_rows = q.rows().into_iter();
        q_rows
            .zip(x.rows())
            .map(|(qk, xk)| {
                qk.iter()
                    .zip(&xk)
                    .map(|(&q, &x)| f64::from(q) - f64::from(x))
                    .sum()
            })
            .collect()
    }

    fn channel_sums(q: &Array3<i32>, x: &Array3<f32>) -> Vec<f64> {
        q.outer_iter()
            .zip(x.outer_iter())
            .map(|(qo, xo)| {
                qo.iter()
                    .zip(&xo)
                    .map(|(&q, &x)| f64::from(q) - f64::from(x))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn outputs_are_floor_or_ceil_and_within_grid() {
        for (s, &shape) in SHAPES.iter().enumerate() {
            for (qmin, qmax) in [(-127, 127), (-128, 127), (-8, 7)] {
                let x = random_layer(shape, qmax, 100 + s as u64);
                for mode in MODES {
                    let (q, stats) = round_squant(x.view(), qmin, qmax, mode);
                    assert_eq!(stats.elements as usize, x.len());
                    let rtn = round_nearest(x.view(), qmin, qmax);
                    let mut changed = 0;
                    for ((&q, &x), &r) in q.iter().zip(&x).zip(&rtn) {
                        let (lo, hi) = (x.floor() as i32, x.ceil() as i32);
                        let ok = q == lo.clamp(qmin, qmax) || q == hi.clamp(qmin, qmax);
                        assert!(ok, "{shape:?} {mode:?}: x={x} q={q}");
                        assert!((qmin..=qmax).contains(&q));
                        changed += u64::from(q != r);
                    }
                    assert_eq!(changed, stats.changed, "{shape:?} {mode:?}");
                }
            }
        }
    }

    #[test]
    fn kernel_stage_bounds_kernel_error_sums() {
        for (s, &shape) in SHAPES.iter().enumerate() {
            for seed in 0..20 {
                let x = random_layer(shape, 127, 1000 * s as u64 + seed);
                let (q, _) = round_squant(x.view(), -127, 127, Rounding::SquantK);
                if shape.2 == 1 {
                    assert_eq!(q, round_nearest(x.view(), -127, 127)); // K stage skipped
                    continue;
                }
                for sum in kernel_sums(&q, &x) {
                    assert!(sum.abs() <= 0.5 + 1e-9, "{shape:?} seed {seed}: {sum}");
                }
            }
        }
    }

    #[test]
    fn full_squant_bounds_channel_and_kernel_error_sums() {
        for (s, &shape) in SHAPES.iter().enumerate() {
            for seed in 0..20 {
                let x = random_layer(shape, 127, 2000 * s as u64 + seed);
                let (q, _) = round_squant(x.view(), -127, 127, Rounding::Squant);
                for sum in channel_sums(&q, &x) {
                    assert!(sum.abs() <= 0.5 + 1e-9, "{shape:?} seed {seed}: {sum}");
                }
                if shape.2 > 1 {
                    for sum in kernel_sums(&q, &x) {
                        assert!(sum.abs() < 1.0, "{shape:?} seed {seed}: {sum}");
                    }
                }
                let (qc, _) = round_squant(x.view(), -127, 127, Rounding::SquantC);
                for sum in channel_sums(&qc, &x) {
                    assert!(
                        sum.abs() <= 0.5 + 1e-9,
                        "C only {shape:?} seed {seed}: {sum}"
                    );
                }
            }
        }
    }

    #[test]
    fn depthwise_channel_stage_is_a_no_op_after_kernel_stage() {
        for seed in 0..20 {
            let x = random_layer((16, 1, 9), 127, 300 + seed);
            let (k, _) = round_squant(x.view(), -127, 127, Rounding::SquantK);
            let (kc, stats) = round_squant(x.view(), -127, 127, Rounding::Squant);
            assert_eq!(k, kc);
            assert_eq!(stats.channel_flips, 0);
        }
    }

    #[test]
    fn one_by_one_kernels_run_only_the_channel_stage() {
        let x = random_layer((5, 64, 1), 127, 77);
        let (full, stats) = round_squant(x.view(), -127, 127, Rounding::Squant);
        assert_eq!(full, round_squant(x.view(), -127, 127, Rounding::SquantC).0);
        assert_eq!(stats.kernel_flips, 0);
    }

    #[test]
    fn integer_inputs_are_unchanged() {
        let mut rng = SplitMix64(5);
        for &shape in &SHAPES {
            let x = Array3::from_shape_simple_fn(shape, || {
                (rng.uniform() * 254.0 - 127.0).round() as f32
            });
            for mode in MODES {
                let (q, stats) = round_squant(x.view(), -127, 127, mode);
                assert_eq!(q, x.mapv(|v| v as i32), "{shape:?} {mode:?}");
                assert_eq!(stats.changed, 0);
            }
        }
        let zeros = Array3::<f32>::zeros((3, 4, 9));
        assert_eq!(symmetric_scale(zeros.view(), 127), 1.0);
        let (q, _) = round_squant(zeros.view(), -127, 127, Rounding::Squant);
        assert!(q.iter().all(|&v| v == 0));
    }

    /// Differential test against the literal pseudo-code, including exact halves,
    /// duplicated values and elements beyond the grid (asymmetric bounds, D2).
    #[test]
    fn matches_literal_pseudo_code() {
        let mut rng = SplitMix64(99);
        for case in 0..600u64 {
            let shape = SHAPES[(case % SHAPES.len() as u64) as usize];
            let (qmin, qmax) = [(-127, 127), (-128, 127), (-8, 7), (-2, 1)][(case % 4) as usize];
            let span = f64::from(qmax) + 0.7;
            let x = Array3::from_shape_simple_fn(shape, || {
                let v = (rng.uniform() * 2.0 - 1.0) * span;
                match rng.next_u64() % 5 {
                    0 => ((v * 2.0).round() / 2.0) as f32, // exact ties
                    1 => 0.25,                             // duplicates
                    _ => v as f32,
                }
            });
            for mode in MODES {
                let (q, _) = round_squant(x.view(), qmin, qmax, mode);
                assert_eq!(
                    q,
                    reference(&x, qmin, qmax, mode),
                    "case {case} {mode:?} {x:?}"
                );
            }
        }
    }

    #[test]
    fn identical_for_one_or_four_threads() {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let four = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for (s, &shape) in SHAPES.iter().chain(&[(64, 32, 9)]).enumerate() {
            let x = random_layer(shape, 127, 500 + s as u64);
            for mode in MODES {
                let a = one.install(|| round_squant(x.view(), -127, 127, mode));
                let b = four.install(|| round_squant(x.view(), -127, 127, mode));
                assert_eq!(a, b, "{shape:?} {mode:?}");
            }
        }
    }

    #[test]
    fn non_standard_layouts_give_the_same_codes() {
        let x = random_layer((6, 5, 9), 127, 11);
        let mut fortran = Array3::<f32>::zeros((6, 5, 9).f());
        fortran.assign(&x);
        let every_other = ndarray::Slice::new(0, None, 2);
        let strided = x.slice_axis(Axis(1), every_other).to_owned();
        for mode in MODES {
            assert_eq!(
                round_squant(x.view(), -127, 127, mode),
                round_squant(fortran.view(), -127, 127, mode)
            );
            let view = x.slice_axis(Axis(1), every_other);
            assert_eq!(
                round_squant(view, -127, 127, mode),
                round_squant(strided.view(), -127, 127, mode)
            );
        }
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let empty = Array3::<f32>::zeros((0, 3, 9));
        let none = Array3::<f32>::zeros((4, 0, 9));
        for mode in MODES {
            assert_eq!(
                round_squant(empty.view(), -127, 127, mode).0.dim(),
                (0, 3, 9)
            );
            assert_eq!(
                round_squant(none.view(), -127, 127, mode).0.dim(),
                (4, 0, 9)
            );
        }
        let x = layer(
            (1, 2, 4),
            &[
                f32::NAN,
                1.4,
                f32::INFINITY,
                -0.6,
                f32::NEG_INFINITY,
                3e9,
                -3e9,
                0.5,
            ],
        );
        for mode in MODES {
            let (q, _) = round_squant(x.view(), -127, 127, mode);
            assert!(q.iter().all(|v| (-127..=127).contains(v)));
            let (q, _) = round_squant(x.view(), 127, -127, mode); // swapped bounds
            assert!(q.iter().all(|v| (-127..=127).contains(v)));
        }
        assert_eq!(round_nearest(x.view(), -127, 127)[[0, 0, 0]], 0);
    }

    #[test]
    fn symmetric_scale_follows_spec() {
        assert_eq!(symmetric_qmax(8), 127);
        assert_eq!(symmetric_qmax(7), 63);
        assert_eq!(symmetric_qmax(4), 7);
        let w = layer((1, 1, 4), &[0.5, -2.54, 1.0, f32::NAN]);
        let s = symmetric_scale(w.view(), 127);
        assert_eq!(s, (2.54f32 as f64 / 127.0) as f32);
        let x = w.mapv(|v| v / s);
        assert!((x[[0, 0, 1]] + 127.0).abs() < 1e-4);
        let tiny = layer((1, 1, 1), &[1e-45]);
        assert!(symmetric_scale(tiny.view(), 127) > 0.0);
    }

    #[test]
    fn stats_add_up() {
        let x = random_layer((32, 16, 9), 127, 8);
        let (_, total) = round_squant(x.view(), -127, 127, Rounding::Squant);
        let mut sum = FlipStats::default();
        for o in 0..32 {
            let xo = x.slice_axis(Axis(0), ndarray::Slice::from(o..o + 1));
            sum += round_squant(xo, -127, 127, Rounding::Squant).1;
        }
        assert_eq!(sum, total);
        assert!(total.changed > 0 && total.changed < total.elements / 10);
        assert!(total.kernel_flips > 0 && total.channel_flips > 0);
    }
}
