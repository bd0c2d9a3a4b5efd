//! Pure numeric helpers for data-free activation ranges and bias correction.
//!
//! Spec: `algorithm.md` §5.3 (clipped-normal moments for bias correction), §6 (data-free
//! activation range setting) and §2.4 (SQuant's σ rule). Written from the spec; no
//! reference code was used. Everything is `f64`, allocation-light and panic-free.
//!
//! # Notation
//!
//! `φ(z) = exp(−z²/2)/√(2π)` and `Φ(z) = ∫_{−∞}^z φ` are the standard normal pdf and cdf,
//! `Q(z) = 1 − Φ(z) = Φ(−z)`. A per-channel activation is modelled as `X ~ N(μ, σ²)`
//! ([`Moments`] holds `μ` and `σ²`).
//!
//! # Formulas
//!
//! * [`normal_cdf`]: `Φ(z) = ½·erfc(−z/√2)`, with `erfc` from W. J. Cody's rational
//!   Chebyshev approximations (Math. Comp. 23, 1969), relative error ≈ 1e−15 including
//!   the far lower tail (`Φ(−37)` ≈ 5.7e−300). `exp(−z²/2)` is evaluated with an exact
//!   split of `z²` so the tails keep full relative accuracy.
//! * [`relu_moments`] (`Y = max(X, 0)`):
//!   `E[Y] = μΦ(μ/σ) + σφ(μ/σ)`, `E[Y²] = (μ²+σ²)Φ(μ/σ) + μσφ(μ/σ)`.
//! * [`clip_moments`] (`Y = min(max(X, lo), hi)`), with `α = (lo−μ)/σ`, `β = (hi−μ)/σ`:
//!   `E[Y] = μ(Φβ−Φα) + σ(φα−φβ) + lo·Φα + hi·Q(β)`,
//!   `E[Y²] = μ²(Φβ−Φα) + 2μσ(φα−φβ) + σ²[(Φβ−Φα) + αφα − βφβ] + lo²Φα + hi²Q(β)`.
//!   ReLU is the case `lo = 0, hi = +∞`.
//!
//!   *Implementation note:* the code evaluates these same integrals for the standardised
//!   clip `W = clip(Z, α, β)` (so `Y = μ + σW`) around a shift `s` (the point of
//!   `[α, β]` closest to 0): `Var[Y] = σ²·(E[(W−s)²] − E[W−s]²)`. This is algebraically
//!   identical to `E[Y²] − E[Y]²` but does not lose the variance to cancellation when
//!   `|μ| ≫ σ` or when nearly all the mass sits on one clip bound.
//! * [`map_moments`]: `E[f(X)]` and `Var[f(X)]` for any `f`, by globally adaptive
//!   Gauss–Kronrod (7/15) quadrature of `f(μ+σz)·φ(z)` over `z ∈ [−12, 12]` (the
//!   truncated mass is 3.6e−33). Adaptive refinement handles the kinks of piecewise-linear
//!   activations (ReLU, Clip, HardSwish, LeakyRelu, …) that make Gauss–Hermite converge
//!   slowly. The target is 1e−10 relative to the integrals' scale. Measured against the
//!   closed forms (Clip/ReLU, kinks within 5σ of μ): mean error ≤ 3e−10·(|mean| + std),
//!   variance ≤ 6e−10 relative; ≤ 6e−8 relative with kinks 5–10σ out. Smooth activations
//!   (Sigmoid, Tanh) agree with high-precision quadrature to ~1e−15.
//! * [`range_of_fn`]: min/max of `f` on `[lo, hi]` sampled at 2049 equispaced points
//!   (both endpoints included); e.g. HardSwish on `[−3, 3]` gives `(−0.375, 3)`.
//! * [`sigma_rule_alpha`]: SQuant's noise-batch rule (§2.4), see its docs.
//! * [`percentile_abs`]: nearest-rank percentile of `|x|`.
//! * [`gaussian_range`]: `(min_c μ_c − Nσ_c, max_c μ_c + Nσ_c)` (§6 option 1).
//!
//! # Preconditions
//!
//! * Variances are clamped at 0 (a negative variance from rounding is treated as 0);
//!   `σ = 0` is a point mass, which every function handles exactly.
//! * NaN inputs propagate to NaN outputs in the moment functions; the slice functions
//!   ([`sigma_rule_alpha`], [`percentile_abs`], [`gaussian_range`]) skip NaN entries
//!   ([`sigma_rule_alpha`] skips ±∞ too).
//! * Summations run in index order, so every result is deterministic.

use std::f64::consts::FRAC_1_SQRT_2;

/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
/// `1/√π`.
const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_3;

// ---------------------------------------------------------------------------------------
// Normal pdf / cdf
// ---------------------------------------------------------------------------------------

/// `exp(−z²/2)` with `z²` split exactly (`z = h + t`, `h` a multiple of 1/16), so the
/// result keeps full relative accuracy in the tails. Finite `z` only.
fn exp_neg_half_sq(z: f64) -> f64 {
    if z.abs() > 40.0 {
        return 0.0; // exp(−800) underflows; also keeps z·16 and h² finite
    }
    let h = (z * 16.0).trunc() / 16.0;
    let del = (z - h) * (z + h);
    (-0.5 * h * h).exp() * (-0.5 * del).exp()
}

/// Standard normal density `φ(z) = exp(−z²/2)/√(2π)`.
///
/// Full relative accuracy wherever the result is a normal `f64` (|z| ≲ 37.5); 0 for
/// `z = ±∞`; NaN for NaN.
#[must_use]
pub fn normal_pdf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    if z.is_infinite() {
        return 0.0;
    }
    FRAC_1_SQRT_2PI * exp_neg_half_sq(z)
}

/// Cody's `erf` coefficients for `|x| ≤ 0.46875`: `erf(x) = x·P(x²)/Q(x²)`.
const ERF_A: [f64; 5] = [
    3.161_123_743_870_565_5e0,
    1.138_641_541_510_501_6e2,
    3.774_852_376_853_02e2,
    3.209_377_589_138_469_4e3,
    1.857_777_061_846_031_5e-1,
];
const ERF_B: [f64; 4] = [
    2.360_129_095_234_412_2e1,
    2.440_246_379_344_441_7e2,
    1.282_616_526_077_372_3e3,
    2.844_236_833_439_171e3,
];
/// Cody's `erfc` coefficients for `0.46875 < x ≤ 4`: `erfc(x) = exp(−x²)·P(x)/Q(x)`.
const ERFC_C: [f64; 9] = [
    5.641_884_969_886_701e-1,
    8.883_149_794_388_377e0,
    6.611_919_063_714_163e1,
    2.986_351_381_974_001e2,
    8.819_522_212_417_69e2,
    1.712_047_612_634_070_7e3,
    2.051_078_377_826_071_6e3,
    1.230_339_354_797_997_2e3,
    2.153_115_354_744_038_3e-8,
];
const ERFC_D: [f64; 8] = [
    1.574_492_611_070_983_5e1,
    1.176_939_508_913_125e2,
    5.371_811_018_620_099e2,
    1.621_389_574_566_690_3e3,
    3.290_799_235_733_459_7e3,
    4.362_619_090_143_247e3,
    3.439_367_674_143_721_6e3,
    1.230_339_354_803_749_3e3,
];
/// Cody's asymptotic coefficients for `x > 4`:
/// `erfc(x) = exp(−x²)/x·(1/√π + x⁻²·P(x⁻²)/Q(x⁻²))`.
const ERFC_P: [f64; 6] = [
    3.053_266_349_612_323_6e-1,
    3.603_448_999_498_044_5e-1,
    1.257_817_261_112_292_6e-1,
    1.608_378_514_874_228e-2,
    6.587_491_615_298_378e-4,
    1.631_538_713_730_209_7e-2,
];
const ERFC_Q: [f64; 5] = [
    2.568_520_192_289_822e0,
    1.872_952_849_923_467_3e0,
    5.279_051_029_514_285e-1,
    6.051_834_131_244_132e-2,
    2.335_204_976_268_691_8e-3,
];

/// `erf(x)` for `|x| ≤ 0.46875` (Cody's first range).
fn erf_small(x: f64) -> f64 {
    let y = x * x;
    let mut num = ERF_A[4] * y;
    let mut den = y;
    for i in 0..3 {
        num = (num + ERF_A[i]) * y;
        den = (den + ERF_B[i]) * y;
    }
    x * (num + ERF_A[3]) / (den + ERF_B[3])
}

/// `exp(x²)·erfc(x)` for finite `x > 0.46875` (Cody's second and third ranges).
fn erfc_scaled(x: f64) -> f64 {
    if x <= 4.0 {
        let mut num = ERFC_C[8] * x;
        let mut den = x;
        for i in 0..7 {
            num = (num + ERFC_C[i]) * x;
            den = (den + ERFC_D[i]) * x;
        }
        (num + ERFC_C[7]) / (den + ERFC_D[7])
    } else {
        let y = 1.0 / (x * x);
        let mut num = ERFC_P[5] * y;
        let mut den = y;
        for i in 0..4 {
            num = (num + ERFC_P[i]) * y;
            den = (den + ERFC_Q[i]) * y;
        }
        let r = y * (num + ERFC_P[4]) / (den + ERFC_Q[4]);
        (FRAC_1_SQRT_PI - r) / x
    }
}

/// Standard normal cdf `Φ(z) = ½·erfc(−z/√2)`.
///
/// Relative error ≈ 1e−15 for `z ≤ 0` (down to the underflow of `Φ` near `z ≈ −37.5`),
/// absolute error ≈ 1e−16 for `z > 0`. `Φ(−∞) = 0`, `Φ(+∞) = 1`, NaN for NaN.
#[must_use]
pub fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    if z.is_infinite() {
        return if z > 0.0 { 1.0 } else { 0.0 };
    }
    let x = z.abs() * FRAC_1_SQRT_2;
    if x <= 0.468_75 {
        return 0.5 + 0.5 * erf_small(z * FRAC_1_SQRT_2);
    }
    if x > 27.3 {
        // Q(|z|) < 1e−324: underflows.
        return if z > 0.0 { 1.0 } else { 0.0 };
    }
    // ½·erfc(|z|/√2) = ½·exp(−z²/2)·erfcx(|z|/√2): the upper tail Q(|z|).
    let tail = 0.5 * exp_neg_half_sq(z) * erfc_scaled(x);
    if z < 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// Probability mass of `(a, b)` under `N(0, 1)`, accurate in either tail (`a ≤ b`).
fn normal_mass(a: f64, b: f64) -> f64 {
    let m = if a >= 0.0 {
        normal_cdf(-a) - normal_cdf(-b)
    } else if b <= 0.0 {
        normal_cdf(b) - normal_cdf(a)
    } else {
        1.0 - normal_cdf(a) - normal_cdf(-b)
    };
    m.max(0.0)
}

// ---------------------------------------------------------------------------------------
// Moments of clipped normals
// ---------------------------------------------------------------------------------------

/// Per-channel mean and variance of an activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// `E[x]`.
    pub mean: f64,
    /// `Var[x]` (≥ 0; negative values are treated as 0).
    pub var: f64,
}

impl Moments {
    /// Builds moments from a mean and a variance.
    #[must_use]
    pub fn new(mean: f64, var: f64) -> Self {
        Self { mean, var }
    }

    /// A point mass at `x` (variance 0).
    #[must_use]
    pub fn point(x: f64) -> Self {
        Self { mean: x, var: 0.0 }
    }

    /// Standard deviation `√max(var, 0)` (NaN if `var` is NaN).
    #[must_use]
    pub fn std(&self) -> f64 {
        if self.var.is_nan() {
            f64::NAN
        } else {
            self.var.max(0.0).sqrt()
        }
    }

    /// Second raw moment `E[x²] = var + mean²`.
    #[must_use]
    pub fn second_moment(&self) -> f64 {
        self.var.max(0.0) + self.mean * self.mean
    }
}

/// Moments of `ReLU(X) = max(X, 0)` for `X ~ N(m.mean, m.var)`.
///
/// Closed form (`σ = √var`): `E[Y] = μΦ(μ/σ) + σφ(μ/σ)`,
/// `E[Y²] = (μ²+σ²)Φ(μ/σ) + μσφ(μ/σ)`; `σ = 0` gives the point mass `max(μ, 0)`.
/// Evaluated as [`clip_moments`]`(m, 0, +∞)`, which computes the same quantities in a
/// cancellation-free form. NaN in, NaN out.
#[must_use]
pub fn relu_moments(m: Moments) -> Moments {
    clip_moments(m, 0.0, f64::INFINITY)
}

/// Moments of `clip(X, lo, hi) = min(max(X, lo), hi)` for `X ~ N(m.mean, m.var)`.
///
/// `lo` may be `−∞` and `hi` may be `+∞` (a NaN bound counts as absent). Closed form with
/// `α = (lo−μ)/σ`, `β = (hi−μ)/σ` (module docs): the two point masses `lo` (weight `Φα`)
/// and `hi` (weight `Q(β)`) plus the truncated-normal part. `σ = 0` gives the point mass
/// `clip(μ, lo, hi)`; `lo > hi` gives the point mass `hi` (as `min(max(x, lo), hi)` does).
/// NaN mean or variance gives NaN moments.
///
/// Accuracy (checked against 500-digit evaluation of the closed form on a grid of `μ`
/// from −30 to 1e4, `σ` from 1e−6 to 5, five clip windows): mean ≲ 3e−13 relative, also
/// for tiny means such as ReLU at `μ = −30σ`; variance ≲ 5e−11 relative while the window
/// is within 10σ of `μ`, ≲ 3e−10 beyond (narrow windows far in a tail are the worst
/// case). Results below ~1e−300 underflow to 0.
#[must_use]
pub fn clip_moments(m: Moments, lo: f64, hi: f64) -> Moments {
    let lo = if lo.is_nan() { f64::NEG_INFINITY } else { lo };
    let hi = if hi.is_nan() { f64::INFINITY } else { hi };
    let (mu, var) = (m.mean, m.var);
    if mu.is_nan() || var.is_nan() {
        return Moments::new(f64::NAN, f64::NAN);
    }
    if lo >= hi {
        return Moments::point(hi);
    }
    let sigma = var.max(0.0).sqrt();
    if sigma.is_infinite() {
        // Infinite spread: half the mass on each bound (the limit of the closed form).
        return if lo.is_finite() && hi.is_finite() {
            Moments::new(0.5 * (lo + hi), 0.25 * (hi - lo) * (hi - lo))
        } else if lo.is_finite() {
            Moments::new(f64::INFINITY, f64::INFINITY)
        } else if hi.is_finite() {
            Moments::new(f64::NEG_INFINITY, f64::INFINITY)
        } else {
            Moments::new(f64::NAN, f64::INFINITY)
        };
    }
    if sigma == 0.0 || mu.is_infinite() {
        return Moments::point(mu.max(lo).min(hi));
    }
    let alpha = (lo - mu) / sigma;
    let beta = (hi - mu) / sigma;
    let (s, m1, w2) = std_clip_moments(alpha, beta);
    // μ + σ·s is exactly lo, hi or μ; adding σ·E[W−s] last keeps a tiny clipped mean
    // (e.g. ReLU at μ = −10σ) to full relative accuracy.
    let base = if s == alpha {
        lo
    } else if s == beta {
        hi
    } else {
        mu
    };
    Moments::new(base + sigma * m1, sigma * sigma * w2)
}

/// `(s, E[W − s], Var[W])` of `W = clip(Z, α, β)`, `Z ~ N(0, 1)`, `α < β` (either may
/// be infinite), where `s` is the point of `[α, β]` closest to 0.
fn std_clip_moments(alpha: f64, beta: f64) -> (f64, f64, f64) {
    // Shift: the point of [α, β] closest to 0, where the bulk of the clipped mass sits.
    let s = 0.0_f64.max(alpha).min(beta);
    let (pa, phia, da, aphia) = bound_terms(alpha, s, false);
    let (pb, phib, db, bphib) = bound_terms(beta, s, true);
    let mid = normal_mass(alpha, beta);
    let dphi = phia - phib;
    // E[W − s] and E[(W − s)²]; bound point masses contribute (bound − s)^k·mass.
    let m1 = da * pa + db * pb + dphi - s * mid;
    let m2 = da * da * pa + db * db * pb + (mid + aphia - bphib) - 2.0 * s * dphi + s * s * mid;
    let var = (m2 - m1 * m1).max(0.0);
    (s, m1, var)
}

/// For a clip bound `t` (lower if `!upper`): `(tail mass beyond t, φ(t), t − s, t·φ(t))`,
/// with the infinite-bound limits (all zero) taken explicitly.
fn bound_terms(t: f64, s: f64, upper: bool) -> (f64, f64, f64, f64) {
    if t.is_infinite() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let p = if upper { normal_cdf(-t) } else { normal_cdf(t) };
    let phi = normal_pdf(t);
    (p, phi, t - s, t * phi)
}

// ---------------------------------------------------------------------------------------
// Moments of f(X) by adaptive Gauss–Kronrod quadrature
// ---------------------------------------------------------------------------------------

/// Kronrod 15-point abscissae on `[−1, 1]` (non-negative half, descending to 0); the odd
/// indices are the Gauss 7-point abscissae.
const GK_X: [f64; 8] = [
    0.991_455_371_120_812_6,
    0.949_107_912_342_758_5,
    0.864_864_423_359_769_1,
    0.741_531_185_599_394_4,
    0.586_087_235_467_691_1,
    0.405_845_151_377_397_2,
    0.207_784_955_007_898_5,
    0.0,
];
/// Kronrod 15-point weights matching [`GK_X`].
const GK_WK: [f64; 8] = [
    0.022_935_322_010_529_22,
    0.063_092_092_629_978_55,
    0.104_790_010_322_250_18,
    0.140_653_259_715_525_92,
    0.169_004_726_639_267_9,
    0.190_350_578_064_785_4,
    0.204_432_940_075_298_9,
    0.209_482_141_084_727_83,
];
/// Gauss 7-point weights for `GK_X[1], GK_X[3], GK_X[5], GK_X[7]`.
const GK_WG: [f64; 4] = [
    0.129_484_966_168_869_7,
    0.279_705_391_489_276_7,
    0.381_830_050_505_118_9,
    0.417_959_183_673_469_4,
];

/// Integration limit in standard deviations (`2·Q(12)` ≈ 3.6e−33 of mass is dropped).
const Z_MAX: f64 = 12.0;
/// Initial number of equal panels over `[−Z_MAX, Z_MAX]`.
const INIT_PANELS: usize = 12;
/// Target of the summed normalised error estimate.
const REL_TOL: f64 = 1e-10;
/// Hard cap on the number of panels (bounds the cost for discontinuous `f`).
const MAX_PANELS: usize = 600;

/// One quadrature panel `[a, b]` (in `z` units) with its Kronrod estimates of
/// `∫ g φ`, `∫ |g| φ`, `∫ g² φ` and the Kronrod–Gauss differences of the first and last.
#[derive(Debug, Clone, Copy)]
struct Panel {
    a: f64,
    b: f64,
    i1: f64,
    i1_abs: f64,
    i2: f64,
    e1: f64,
    e2: f64,
}

/// Gauss–Kronrod 7/15 on `[a, b]` of `g(z)·φ(z)` and `g(z)²·φ(z)`.
fn gk_panel(a: f64, b: f64, g: &mut impl FnMut(f64) -> f64) -> Panel {
    let c = 0.5 * (a + b);
    let h = 0.5 * (b - a);
    let mut k1 = 0.0;
    let mut k1a = 0.0;
    let mut k2 = 0.0;
    let mut g1 = 0.0;
    let mut g2 = 0.0;
    let mut eval = |z: f64| {
        let w = normal_pdf(z);
        let v = g(z);
        (w * v, w * v * v)
    };
    for (j, (&x, &wk)) in GK_X.iter().zip(GK_WK.iter()).enumerate() {
        let (v1, v2, v1a) = if x == 0.0 {
            let (p1, p2) = eval(c);
            (p1, p2, p1.abs())
        } else {
            let (p1, p2) = eval(c - h * x);
            let (q1, q2) = eval(c + h * x);
            (p1 + q1, p2 + q2, p1.abs() + q1.abs())
        };
        k1 += wk * v1;
        k1a += wk * v1a;
        k2 += wk * v2;
        if j % 2 == 1 {
            let wg = GK_WG[j / 2];
            g1 += wg * v1;
            g2 += wg * v2;
        }
    }
    Panel {
        a,
        b,
        i1: h * k1,
        i1_abs: h * k1a,
        i2: h * k2,
        e1: (h * (k1 - g1)).abs(),
        e2: (h * (k2 - g2)).abs(),
    }
}

/// Normalised error of a panel given the current global scales.
fn panel_err(p: &Panel, s1: f64, s2: f64) -> f64 {
    p.e1 / s1 + p.e2 / s2
}

/// Adaptive integration of `g φ` and `g² φ` over `[−Z_MAX, Z_MAX]`; returns the final
/// panels.
fn integrate(g: &mut impl FnMut(f64) -> f64) -> Vec<Panel> {
    let width = 2.0 * Z_MAX / INIT_PANELS as f64;
    let mut panels: Vec<Panel> = (0..INIT_PANELS)
        .map(|i| {
            let a = -Z_MAX + width * i as f64;
            let b = if i + 1 == INIT_PANELS {
                Z_MAX
            } else {
                a + width
            };
            gk_panel(a, b, g)
        })
        .collect();
    while panels.len() < MAX_PANELS {
        let s1: f64 = panels.iter().map(|p| p.i1_abs).sum();
        let s2: f64 = panels.iter().map(|p| p.i2).sum();
        if !(s1 > 0.0 && s2 > 0.0) {
            break; // g ≡ 0 on the nodes (f constant), or NaN.
        }
        let mut worst = 0;
        let mut worst_err = -1.0;
        let mut total = 0.0;
        for (i, p) in panels.iter().enumerate() {
            let e = panel_err(p, s1, s2);
            total += e;
            if e > worst_err {
                worst_err = e;
                worst = i;
            }
        }
        if total.is_nan() || total <= REL_TOL {
            break; // converged (or NaN)
        }
        let p = panels.swap_remove(worst);
        let mid = 0.5 * (p.a + p.b);
        if !(mid > p.a && mid < p.b) {
            break; // cannot split further in f64
        }
        panels.push(gk_panel(p.a, mid, g));
        panels.push(gk_panel(mid, p.b, g));
    }
    // Deterministic summation order regardless of the refinement history.
    panels.sort_by(|x, y| x.a.total_cmp(&y.a));
    panels
}

/// Moments of `f(X)` for `X ~ N(m.mean, m.var)`.
///
/// For activations without a closed form (HardSwish, HardSigmoid, Sigmoid, LeakyRelu,
/// Tanh, Elu, …). Globally adaptive Gauss–Kronrod 7/15 quadrature of `f(μ+σz)·φ(z)` over
/// `z ∈ [−12, 12]`, centred on `c = f(μ)`: `E[f] = c + E[f−c]`,
/// `Var[f] = E[(f−c)²] − E[f−c]²` (re-centred on the computed mean and re-summed on the
/// same panels when that difference would cancel). `σ = 0` returns the point mass `f(μ)`.
///
/// Accuracy: piecewise-linear `f` (kinks within 5σ of μ) ≲ 1e−9 relative (mean measured
/// relative to `|mean| + std`), ≲ 1e−7 with kinks 5–10σ out; smooth `f` ≈ 1e−14. Mass
/// beyond ±12σ is ignored (e.g. ReLU at μ = −30σ gives 0 instead of 1.6e−199).
///
/// Cost: ≈ 200–500 evaluations of `f` for smooth `f`, ≈ 600–1800 with kinks (≈ 7–25 µs
/// per call in release builds); capped at 600 panels (9000 evaluations) for discontinuous
/// `f`, whose accuracy is then ~1e−7.
/// `f` should be finite on `[μ−12σ, μ+12σ]`; a NaN or infinite value makes the result NaN
/// or infinite.
#[must_use]
pub fn map_moments(m: Moments, f: impl Fn(f64) -> f64) -> Moments {
    let (mu, var) = (m.mean, m.var);
    if mu.is_nan() || var.is_nan() {
        return Moments::new(f64::NAN, f64::NAN);
    }
    let sigma = var.max(0.0).sqrt();
    if sigma == 0.0 {
        return Moments::point(f(mu));
    }
    let c0 = f(mu);
    let c = if c0.is_finite() { c0 } else { 0.0 };
    let mut g = |z: f64| f(mu + sigma * z) - c;
    let panels = integrate(&mut g);
    let d1: f64 = panels.iter().map(|p| p.i1).sum();
    let e2: f64 = panels.iter().map(|p| p.i2).sum();
    let mean = c + d1;
    if d1 * d1 <= 0.01 * e2 {
        return Moments::new(mean, (e2 - d1 * d1).max(0.0));
    }
    // The shift c was far from the mean: re-centre on the mean to avoid cancellation.
    let mut g2 = |z: f64| f(mu + sigma * z) - mean;
    let mut r1 = 0.0;
    let mut r2 = 0.0;
    for p in &panels {
        let q = gk_panel(p.a, p.b, &mut g2);
        r1 += q.i1;
        r2 += q.i2;
    }
    Moments::new(mean + r1, (r2 - r1 * r1).max(0.0))
}

// ---------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------

/// Number of samples used by [`range_of_fn`] (both endpoints included).
pub const RANGE_SAMPLES: usize = 2049;

/// Min and max of `f` over `[lo, hi]` by dense sampling at [`RANGE_SAMPLES`] equispaced
/// points, endpoints included (`lo > hi` is accepted and sampled the same way).
///
/// For range propagation through non-monotone activations (HardSwish: minimum −0.375 at
/// −1.5, which is a grid point of `[−3, 3]`). An interior extremum between grid points is
/// underestimated by `O(h²·|f''|)`, `h = (hi−lo)/2048`. NaN values of `f` are skipped;
/// if every value is NaN (or `lo`/`hi` is NaN) the result is `(NaN, NaN)`. If a bound is
/// infinite only the two endpoints are evaluated (exact for monotone `f`).
#[must_use]
pub fn range_of_fn(lo: f64, hi: f64, f: impl Fn(f64) -> f64) -> (f64, f64) {
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    let mut any = false;
    let mut visit = |x: f64| {
        let y = f(x);
        if !y.is_nan() {
            any = true;
            min = min.min(y);
            max = max.max(y);
        }
    };
    if lo.is_nan() || hi.is_nan() {
        return (f64::NAN, f64::NAN);
    }
    if lo.is_infinite() || hi.is_infinite() {
        visit(lo);
        visit(hi);
    } else {
        let n = RANGE_SAMPLES - 1;
        let span = hi - lo;
        for i in 0..=n {
            let x = if i == n {
                hi
            } else {
                lo + span * (i as f64 / n as f64)
            };
            visit(x);
        }
    }
    if any {
        (min, max)
    } else {
        (f64::NAN, f64::NAN)
    }
}

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

// ---------------------------------------------------------------------------------------
// SQuant σ rule
// ---------------------------------------------------------------------------------------

/// Result of [`sigma_rule_alpha`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmaRule {
    /// Clipping bound: range `[0, α]` if unsigned, `[−α, α]` if signed. ≥ 0; 0 only when
    /// every finite entry is 0 (or there is none), in which case the caller must pick a
    /// scale itself.
    pub alpha: f64,
    /// Whether the tensor is treated as signed (`min < 0`, or the hint).
    pub signed: bool,
    /// The σ used: unbiased std of the positive entries (unsigned) or of all entries
    /// (signed); 0 when fewer than two entries qualify.
    pub sigma: f64,
    /// The multiplier `k` used for these bits.
    pub k: f64,
    /// Minimum finite entry (0 if none).
    pub min: f64,
    /// Maximum finite entry (0 if none).
    pub max: f64,
    /// Whether `α` was capped at `max` (the `bits < 6` rule).
    pub capped: bool,
    /// Whether `k·σ` was not positive (σ = 0) and `α` fell back to `max|x|`.
    pub fallback: bool,
    /// Number of entries σ was computed over.
    pub n: usize,
    /// Number of non-finite entries (NaN, ±∞) that were ignored.
    pub ignored: usize,
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

/// Unbiased standard deviation (two-pass, index order); 0 for fewer than two values.
fn unbiased_std(values: impl Iterator<Item = f64> + Clone) -> (f64, usize) {
    let mut n = 0usize;
    let mut sum = 0.0;
    for v in values.clone() {
        n += 1;
        sum += v;
    }
    if n < 2 {
        return (0.0, n);
    }
    let mean = sum / n as f64;
    let ss: f64 = values.map(|v| (v - mean) * (v - mean)).sum();
    ((ss / (n - 1) as f64).sqrt(), n)
}

/// SQuant's activation clipping rule on a noise-batch activation tensor (§2.4), exactly:
///
/// 1. `signed := min(a) < 0`, unless `signed_hint` is given;
/// 2. `σ` = unbiased std of the entries `> 0` (unsigned) or of all entries (signed);
/// 3. `α = k·σ`, or `k·σ/1.25` if signed, with `k` = [`sigma_rule_k`]`(bits)`
///    (12 at ≤ 4 bits, 14 at 6, 25 at 8; 13 and 19.5 at 5 and 7 bits are our
///    interpolation, not SQuant's);
/// 4. if `bits < 6`: `α = min(α, max(a))` — the signed maximum `max(a)`, not `max|a|`,
///    as in the reference (a signed tensor with a small positive side is clipped hard).
///
/// Robustness (not in the reference, which would produce NaN/zero scales): non-finite
/// entries are ignored; the cap of step 4 only applies when `max(a) > 0`; if `k·σ` is not
/// positive (σ = 0: empty input, a single qualifying entry, a constant tensor, or an
/// unsigned tensor without positive entries) `α` falls back to `max|a|` (flag
/// `fallback`). All sums are in `f64`, in index order.
#[must_use]
pub fn sigma_rule_alpha(values: &[f32], bits: u32, signed_hint: Option<bool>) -> SigmaRule {
    let finite = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v));
    let ignored = values.len() - finite.clone().count();
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    for v in finite.clone() {
        min = min.min(v);
        max = max.max(v);
    }
    if min > max {
        min = 0.0;
        max = 0.0;
    }
    let signed = signed_hint.unwrap_or(min < 0.0);
    let (sigma, n) = if signed {
        unbiased_std(finite)
    } else {
        unbiased_std(finite.filter(|&v| v > 0.0))
    };
    let k = sigma_rule_k(bits);
    let mut alpha = k * sigma;
    if signed {
        alpha /= 1.25;
    }
    let mut capped = false;
    let mut fallback = false;
    if alpha > 0.0 && alpha.is_finite() {
        if bits < 6 && max > 0.0 && max < alpha {
            alpha = max;
            capped = true;
        }
    } else {
        alpha = min.abs().max(max.abs());
        fallback = true;
    }
    SigmaRule {
        alpha,
        signed,
        sigma,
        k,
        min,
        max,
        capped,
        fallback,
        n,
        ignored,
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// SplitMix64 + Box–Muller, seeded: deterministic standard normals.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal_pair(&mut self) -> (f64, f64) {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let t = 2.0 * PI * self.uniform();
            (r * t.cos(), r * t.sin())
        }
    }

    fn rel_close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()) + abs
    }

    /// Monte Carlo moments of f(X), X ~ N(mu, sigma²), with standard errors.
    fn mc(mu: f64, sigma: f64, f: impl Fn(f64) -> f64, seed: u64) -> (Moments, f64, f64) {
        const N: usize = 400_000;
        let mut rng = Rng(seed);
        let mut ys = Vec::with_capacity(N);
        while ys.len() < N {
            let (a, b) = rng.normal_pair();
            ys.push(f(mu + sigma * a));
            ys.push(f(mu + sigma * b));
        }
        let n = ys.len() as f64;
        let mean = ys.iter().sum::<f64>() / n;
        let m2 = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let m4 = ys.iter().map(|y| (y - mean).powi(4)).sum::<f64>() / n;
        let se_mean = (m2 / n).sqrt();
        let se_var = ((m4 - m2 * m2).max(0.0) / n).sqrt();
        (Moments::new(mean, m2), se_mean, se_var)
    }

    #[test]
    fn cdf_pdf_spot_values() {
        assert_eq!(normal_cdf(0.0), 0.5);
        assert!(rel_close(
            normal_cdf(1.96),
            0.975_002_104_851_779_5,
            1e-14,
            0.0
        ));
        assert!(rel_close(
            normal_cdf(-1.96),
            0.024_997_895_148_220_435,
            1e-13,
            0.0
        ));
        // High-precision reference values (mpmath, 50 digits).
        let table = [
            (-0.3, 0.382_088_577_811_047_4),
            (-1.0, 0.158_655_253_931_457_05),
            (-3.0, 0.001_349_898_031_630_094_5),
            (-5.5, 1.898_956_246_588_772e-8),
            (-8.0, 6.220_960_574_271_784e-16),
            (-20.0, 2.753_624_118_606_233_7e-89),
            (-37.0, 5.725_571_222_524_577e-300),
        ];
        for (z, want) in table {
            let got = normal_cdf(z);
            assert!(
                rel_close(got, want, 1e-13, 0.0),
                "Φ({z}) = {got}, want {want}"
            );
            assert!(rel_close(1.0 - normal_cdf(-z), want, 1e-9, 1e-16));
        }
        assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
        assert_eq!(normal_cdf(f64::INFINITY), 1.0);
        assert_eq!(normal_cdf(-40.0), 0.0);
        assert_eq!(normal_cdf(40.0), 1.0);
        assert!(normal_cdf(f64::NAN).is_nan());
        assert!(rel_close(normal_pdf(0.0), FRAC_1_SQRT_2PI, 1e-16, 0.0));
        assert!(rel_close(
            normal_pdf(1.0),
            0.241_970_724_519_143_35,
            1e-15,
            0.0
        ));
        assert!(rel_close(
            normal_pdf(-10.0),
            7.694_598_626_706_419e-23,
            1e-14,
            0.0
        ));
        assert_eq!(normal_pdf(f64::INFINITY), 0.0);
        // Symmetry and monotonicity across Cody's range boundaries.
        let mut prev = 0.0;
        for i in -4000..=4000 {
            let z = f64::from(i) * 0.002;
            let p = normal_cdf(z);
            assert!(p >= prev, "Φ not monotone at {z}");
            assert!((p + normal_cdf(-z) - 1.0).abs() < 2e-16);
            prev = p;
        }
    }

    #[test]
    fn gauss_kronrod_tables_are_exact_on_polynomials() {
        // K15 is exact to degree 22, G7 to degree 13 on [−1, 1].
        for deg in (0..=22).step_by(2) {
            let want = 2.0 / f64::from(deg + 1);
            let mut k = GK_WK[7] * if deg == 0 { 1.0 } else { 0.0 };
            for j in 0..7 {
                k += 2.0 * GK_WK[j] * GK_X[j].powi(deg);
            }
            assert!(rel_close(k, want, 1e-15, 0.0), "K15 deg {deg}: {k}");
            if deg <= 13 {
                let mut g = GK_WG[3] * if deg == 0 { 1.0 } else { 0.0 };
                for j in 0..3 {
                    g += 2.0 * GK_WG[j] * GK_X[2 * j + 1].powi(deg);
                }
                assert!(rel_close(g, want, 1e-15, 0.0), "G7 deg {deg}: {g}");
            }
        }
    }

    const CASES: [(f64, f64); 7] = [
        (0.0, 1.0),
        (0.7, 2.0),
        (-1.3, 0.8),
        (-3.0, 1.0),
        (2.5, 0.5),
        (1.0, 0.0),
        (-1.0, 0.0),
    ];

    #[test]
    fn relu_moments_match_monte_carlo() {
        for (i, &(mu, sigma)) in CASES.iter().enumerate() {
            let got = relu_moments(Moments::new(mu, sigma * sigma));
            let (want, se_m, se_v) = mc(mu, sigma, |x| x.max(0.0), 1 + i as u64);
            assert!(
                (got.mean - want.mean).abs() <= 5.0 * se_m + 1e-9,
                "relu mean μ={mu} σ={sigma}: {got:?} vs {want:?}"
            );
            assert!(
                (got.var - want.var).abs() <= 5.0 * se_v + 1e-9,
                "relu var μ={mu} σ={sigma}: {got:?} vs {want:?}"
            );
            assert!(rel_close(got.mean, want.mean, 2e-3, 2e-3));
        }
    }

    #[test]
    fn relu_moments_closed_form_and_reference() {
        // The spec's formulas, evaluated directly, in a well-conditioned case.
        let (mu, sigma) = (0.3_f64, 1.7_f64);
        let t = mu / sigma;
        let e1 = mu * normal_cdf(t) + sigma * normal_pdf(t);
        let e2 = (mu * mu + sigma * sigma) * normal_cdf(t) + mu * sigma * normal_pdf(t);
        let got = relu_moments(Moments::new(mu, sigma * sigma));
        assert!(rel_close(got.mean, e1, 1e-14, 0.0));
        assert!(rel_close(got.var, e2 - e1 * e1, 1e-13, 0.0));
        // mpmath reference (50 digits).
        assert!(rel_close(got.mean, 0.838_734_793_166_666_5, 1e-14, 0.0));
        assert!(rel_close(got.var, 1.195_553_838_752_450_5, 1e-13, 0.0));
        // Far tails stay accurate (no cancellation): μ = −10σ and μ = 1e6σ.
        let far = relu_moments(Moments::new(-10.0, 1.0));
        assert!(rel_close(far.mean, 7.474_560_254_589_328e-25, 1e-9, 0.0));
        let big = relu_moments(Moments::new(1e6, 1.0));
        assert_eq!(big.mean, 1e6);
        assert!(rel_close(big.var, 1.0, 1e-12, 0.0));
        // σ = 0 and NaN.
        assert_eq!(relu_moments(Moments::new(-2.0, 0.0)), Moments::point(0.0));
        assert_eq!(relu_moments(Moments::new(3.0, -1e-20)), Moments::point(3.0));
        assert!(relu_moments(Moments::new(f64::NAN, 1.0)).mean.is_nan());
        assert_eq!(
            clip_moments(Moments::new(0.0, f64::INFINITY), 0.0, 6.0),
            Moments::new(3.0, 9.0)
        );
        assert_eq!(
            relu_moments(Moments::new(1.0, f64::INFINITY)).mean,
            f64::INFINITY
        );
        assert_eq!(normal_pdf(1e300), 0.0);
        assert_eq!(normal_pdf(-f64::MAX), 0.0);
        assert_eq!(normal_cdf(-f64::MAX), 0.0);
    }

    #[test]
    fn clip_moments_match_monte_carlo() {
        let bounds = [
            (0.0, 6.0),
            (-1.0, 1.0),
            (f64::NEG_INFINITY, 0.5),
            (-2.0, f64::INFINITY),
            (0.0, 0.3),
        ];
        let mut seed = 100;
        for &(lo, hi) in &bounds {
            for &(mu, sigma) in &CASES {
                seed += 1;
                let got = clip_moments(Moments::new(mu, sigma * sigma), lo, hi);
                let (want, se_m, se_v) = mc(mu, sigma, |x| x.max(lo).min(hi), seed);
                assert!(
                    (got.mean - want.mean).abs() <= 5.0 * se_m + 1e-9,
                    "clip[{lo},{hi}] mean μ={mu} σ={sigma}: {got:?} vs {want:?}"
                );
                assert!(
                    (got.var - want.var).abs() <= 5.0 * se_v + 1e-9,
                    "clip[{lo},{hi}] var μ={mu} σ={sigma}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn clip_moments_closed_form_and_edges() {
        // Spec formula (§5.3 / task statement), evaluated directly.
        let (mu, sigma, lo, hi) = (1.1_f64, 2.3_f64, 0.0_f64, 6.0_f64);
        let (a, b) = ((lo - mu) / sigma, (hi - mu) / sigma);
        let (pa, pb, fa, fb) = (normal_cdf(a), normal_cdf(b), normal_pdf(a), normal_pdf(b));
        let e1 = sigma * (fa - fb) + mu * (pb - pa) + lo * pa + hi * (1.0 - pb);
        let e2 = mu * mu * (pb - pa)
            + 2.0 * mu * sigma * (fa - fb)
            + sigma * sigma * ((pb - pa) + a * fa - b * fb)
            + lo * lo * pa
            + hi * hi * (1.0 - pb);
        let got = clip_moments(Moments::new(mu, sigma * sigma), lo, hi);
        assert!(rel_close(got.mean, e1, 1e-14, 0.0));
        assert!(rel_close(got.var, e2 - e1 * e1, 1e-13, 0.0));
        // No bounds: identity.
        let id = clip_moments(Moments::new(0.4, 2.0), f64::NEG_INFINITY, f64::INFINITY);
        assert!(rel_close(id.mean, 0.4, 1e-15, 0.0) && rel_close(id.var, 2.0, 1e-15, 0.0));
        // Point masses and degenerate bounds.
        assert_eq!(
            clip_moments(Moments::new(9.0, 0.0), 0.0, 6.0),
            Moments::point(6.0)
        );
        assert_eq!(
            clip_moments(Moments::new(0.0, 1.0), 2.0, 1.0),
            Moments::point(1.0)
        );
        assert_eq!(
            clip_moments(Moments::new(0.0, 1.0), 1.0, 1.0),
            Moments::point(1.0)
        );
        // Mass almost entirely on a bound: tiny but positive, finite variance.
        let tail = clip_moments(Moments::new(-50.0, 1.0), 0.0, 6.0);
        assert_eq!(tail.mean, 0.0);
        assert!(tail.var >= 0.0 && tail.var < 1e-300);
        let narrow = clip_moments(Moments::new(3.0, 1e-12), 0.0, 6.0);
        assert!(rel_close(narrow.mean, 3.0, 1e-15, 0.0));
        assert!(rel_close(narrow.var, 1e-12, 1e-12, 0.0));
    }

    fn hardswish(x: f64) -> f64 {
        x * (x + 3.0).clamp(0.0, 6.0) / 6.0
    }

    #[test]
    fn map_moments_matches_closed_forms() {
        let relu = |x: f64| x.max(0.0);
        for &(mu, sigma) in &CASES {
            let m = Moments::new(mu, sigma * sigma);
            let want = relu_moments(m);
            let got = map_moments(m, relu);
            assert!(
                rel_close(got.mean, want.mean, 1e-6, 1e-9 * want.std()),
                "relu {m:?}: {got:?} vs {want:?}"
            );
            assert!(
                rel_close(got.var, want.var, 1e-6, 1e-300),
                "relu {m:?}: {got:?} vs {want:?}"
            );
            for &(lo, hi) in &[(0.0, 6.0), (-1.0, 0.5), (-0.2, 0.2)] {
                let want = clip_moments(m, lo, hi);
                let got = map_moments(m, |x| x.clamp(lo, hi));
                assert!(
                    rel_close(got.mean, want.mean, 1e-6, 1e-9 * want.std()),
                    "clip {m:?}: {got:?} vs {want:?}"
                );
                assert!(
                    rel_close(got.var, want.var, 1e-6, 1e-300),
                    "clip {m:?}: {got:?} vs {want:?}"
                );
            }
        }
        // Affine f: exact moments.
        let aff = map_moments(Moments::new(0.3, 4.0), |x| 2.0 * x - 1.0);
        assert!(rel_close(aff.mean, -0.4, 1e-13, 0.0));
        assert!(rel_close(aff.var, 16.0, 1e-13, 0.0));
        // Shift far from the mean (re-centring path): f = x² with μ = 0.
        // E = σ², Var = 2σ⁴ (here f(μ) = 0 while the mean is 9).
        let sq = map_moments(Moments::new(0.0, 9.0), |x| x * x);
        assert!(rel_close(sq.mean, 9.0, 1e-12, 0.0));
        assert!(rel_close(sq.var, 162.0, 1e-12, 0.0));
    }

    #[test]
    fn map_moments_smooth_activations_match_monte_carlo() {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let fns: [(&str, &dyn Fn(f64) -> f64); 5] = [
            ("hardswish", &hardswish),
            ("sigmoid", &sigmoid),
            ("tanh", &f64::tanh),
            ("leaky", &|x: f64| if x < 0.0 { 0.01 * x } else { x }),
            ("elu", &|x: f64| if x < 0.0 { x.exp_m1() } else { x }),
        ];
        let mut seed = 1000;
        for (name, f) in fns {
            for &(mu, sigma) in &CASES[..5] {
                seed += 1;
                let got = map_moments(Moments::new(mu, sigma * sigma), f);
                let (want, se_m, se_v) = mc(mu, sigma, f, seed);
                assert!(
                    (got.mean - want.mean).abs() <= 5.0 * se_m + 1e-9,
                    "{name} μ={mu} σ={sigma}: {got:?} vs {want:?}"
                );
                assert!(
                    (got.var - want.var).abs() <= 5.0 * se_v + 1e-9,
                    "{name} μ={mu} σ={sigma}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn map_moments_edges() {
        assert_eq!(
            map_moments(Moments::new(2.0, 0.0), hardswish),
            Moments::point(hardswish(2.0))
        );
        assert_eq!(
            map_moments(Moments::new(2.0, 1.0), |_| 4.0),
            Moments::point(4.0)
        );
        assert!(map_moments(Moments::new(f64::NAN, 1.0), hardswish)
            .mean
            .is_nan());
        // Discontinuous f terminates (panel cap) and is still close: P(X > 0.3).
        let step = map_moments(Moments::new(0.0, 1.0), |x| if x > 0.3 { 1.0 } else { 0.0 });
        let p = normal_cdf(-0.3);
        assert!(rel_close(step.mean, p, 1e-6, 0.0), "{step:?}");
        assert!(rel_close(step.var, p * (1.0 - p), 1e-6, 0.0), "{step:?}");
    }

    #[test]
    fn range_of_fn_hardswish_and_edges() {
        assert_eq!(range_of_fn(-3.0, 3.0, hardswish), (-0.375, 3.0));
        assert_eq!(range_of_fn(-1.0, 2.0, |x| x), (-1.0, 2.0));
        assert_eq!(range_of_fn(2.0, -1.0, |x| x), (-1.0, 2.0));
        assert_eq!(range_of_fn(1.5, 1.5, |x| 2.0 * x), (3.0, 3.0));
        let (lo, hi) = range_of_fn(-10.0, 10.0, |x| if x > 0.0 { f64::NAN } else { x });
        assert_eq!((lo, hi), (-10.0, 0.0));
        let (lo, hi) = range_of_fn(-1.0, 1.0, |_| f64::NAN);
        assert!(lo.is_nan() && hi.is_nan());
        assert_eq!(
            range_of_fn(f64::NEG_INFINITY, 0.0, |x: f64| x.exp()),
            (0.0, 1.0)
        );
    }

    #[test]
    fn gaussian_range_basics() {
        let (lo, hi) = gaussian_range(&[0.0, 1.0, -2.0], &[1.0, 4.0, 0.25], 6.0);
        assert_eq!((lo, hi), (-11.0, 13.0));
        assert_eq!(gaussian_range(&[], &[], 6.0), (0.0, 0.0));
        assert_eq!(
            gaussian_range(&[1.0, f64::NAN], &[-1.0, 1.0, 7.0], 3.0),
            (1.0, 1.0)
        );
    }

    #[test]
    fn percentile_abs_nearest_rank() {
        let v = [-5.0, 1.0, 2.0, f32::NAN, 3.0, 4.0];
        assert_eq!(percentile_abs(&v, 100.0), 5.0);
        assert_eq!(percentile_abs(&v, 50.0), 3.0);
        assert_eq!(percentile_abs(&v, 20.0), 1.0);
        assert_eq!(percentile_abs(&v, 21.0), 2.0);
        assert_eq!(percentile_abs(&v, 80.0), 4.0);
        assert_eq!(percentile_abs(&v, 0.0), 1.0);
        assert_eq!(percentile_abs(&v, 250.0), 5.0);
        assert_eq!(percentile_abs(&v, f64::NAN), 5.0);
        assert_eq!(percentile_abs(&[], 99.0), 0.0);
        assert_eq!(percentile_abs(&[f32::NAN], 99.0), 0.0);
        let big: Vec<f32> = (1..=1000).rev().map(|i| i as f32 * -0.5).collect();
        assert_eq!(percentile_abs(&big, 99.9), 499.5);
        assert_eq!(percentile_abs(&big, 99.99), 500.0);
    }

    #[test]
    fn sigma_rule_unsigned_by_hand() {
        // Positives {1, 2, 3}: mean 2, unbiased var (1 + 0 + 1)/2 = 1, σ = 1. max = 3.
        let v = [0.0, 1.0, 2.0, 3.0, 0.0, f32::NAN];
        let r = sigma_rule_alpha(&v, 8, None);
        assert!(!r.signed);
        assert_eq!(
            (r.sigma, r.k, r.alpha, r.n, r.ignored),
            (1.0, 25.0, 25.0, 3, 1)
        );
        assert_eq!(
            (r.min, r.max, r.capped, r.fallback),
            (0.0, 3.0, false, false)
        );
        assert_eq!(sigma_rule_alpha(&v, 7, None).alpha, 19.5);
        assert_eq!(sigma_rule_alpha(&v, 6, None).alpha, 14.0);
        for bits in [2, 4, 5] {
            let r = sigma_rule_alpha(&v, bits, None);
            assert_eq!((r.alpha, r.capped), (3.0, true), "bits {bits}");
        }
        assert_eq!(sigma_rule_alpha(&v, 16, None).k, 25.0);
        // Wide positives, 4 bits, no cap: {0.1, 0.2}: σ = √0.005, α = 12σ ≈ 0.8485 < max?
        // No: max = 0.2 < α → capped at 0.2.
        let r = sigma_rule_alpha(&[0.1, 0.2], 4, None);
        assert_eq!((r.alpha, r.capped), (f64::from(0.2_f32), true));
    }

    #[test]
    fn sigma_rule_signed_by_hand() {
        // {−2, −1, 0, 1, 2}: mean 0, Σx² = 10, unbiased var 10/4 = 2.5.
        let v = [-2.0, -1.0, 0.0, 1.0, 2.0];
        let s = 2.5_f64.sqrt();
        let r = sigma_rule_alpha(&v, 8, None);
        assert!(r.signed);
        assert!(rel_close(r.sigma, s, 1e-15, 0.0));
        assert!(rel_close(r.alpha, 25.0 * s / 1.25, 1e-15, 0.0));
        assert_eq!((r.min, r.max, r.n, r.capped), (-2.0, 2.0, 5, false));
        // 4 bits: 12σ/1.25 ≈ 15.18 → capped at max(a) = 2 (signed max, not max|a|).
        let r = sigma_rule_alpha(&[-9.0, -1.0, 0.0, 1.0, 2.0], 4, None);
        assert_eq!((r.alpha, r.capped), (2.0, true));
        // Hint: treat as unsigned → σ of positives {1, 2}: var 0.5.
        let r = sigma_rule_alpha(&v, 8, Some(false));
        assert!(!r.signed);
        assert!(rel_close(r.sigma, 0.5_f64.sqrt(), 1e-15, 0.0));
        assert!(rel_close(r.alpha, 25.0 * 0.5_f64.sqrt(), 1e-15, 0.0));
        // Hint signed on non-negative data: std of all {0, 1, 2, 3}: var 5/3.
        let r = sigma_rule_alpha(&[0.0, 1.0, 2.0, 3.0], 8, Some(true));
        assert!(r.signed);
        assert!(rel_close(
            r.alpha,
            25.0 * (5.0_f64 / 3.0).sqrt() / 1.25,
            1e-15,
            0.0
        ));
    }

    #[test]
    fn sigma_rule_edges_never_panic() {
        let empty = sigma_rule_alpha(&[], 8, None);
        assert_eq!(
            (empty.alpha, empty.sigma, empty.min, empty.max),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert!(empty.fallback && !empty.signed);
        let zeros = sigma_rule_alpha(&[0.0; 16], 4, None);
        assert_eq!((zeros.alpha, zeros.n), (0.0, 0));
        // No positive entries, unsigned by hint: σ = 0 → fallback max|a| = 3.
        let neg = sigma_rule_alpha(&[-1.0, -3.0], 8, Some(false));
        assert_eq!((neg.alpha, neg.fallback, neg.capped), (3.0, true, false));
        // All-negative signed at 4 bits: cap at max(a) < 0 is skipped.
        let neg = sigma_rule_alpha(&[-1.0, -3.0], 4, None);
        assert!(neg.signed && !neg.capped && !neg.fallback);
        assert!(rel_close(
            neg.alpha,
            12.0 * 2.0_f64.sqrt() / 1.25,
            1e-15,
            0.0
        ));
        // Constant positive tensor: σ = 0 → fallback to the value.
        let c = sigma_rule_alpha(&[2.5; 8], 8, None);
        assert_eq!((c.alpha, c.fallback), (2.5, true));
        // Single positive entry.
        assert_eq!(sigma_rule_alpha(&[0.0, 4.0], 8, None).alpha, 4.0);
        // Non-finite entries ignored.
        let r = sigma_rule_alpha(&[f32::NAN, f32::INFINITY, 1.0, 3.0], 8, None);
        assert_eq!((r.ignored, r.max, r.n), (2, 3.0, 2));
        assert!(rel_close(r.alpha, 25.0 * 2.0_f64.sqrt(), 1e-15, 0.0));
        assert!(sigma_rule_alpha(&[f32::NAN; 3], 8, None).alpha == 0.0);
    }
}
