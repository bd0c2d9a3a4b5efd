//! Unit tests of the numeric helpers (closed forms against Monte Carlo and quadrature,
//! edge cases of every rule).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::quadrature::{GK_WG, GK_WK, GK_X};
use super::*;
use std::f64::consts::PI;

/// Box–Muller on the crate's seeded generator: deterministic standard normals.
struct Rng(crate::rng::SplitMix64);

impl Rng {
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
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
    let mut rng = Rng(crate::rng::SplitMix64::new(seed));
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

fn rule(v: &[f32], bits: u32) -> SigmaRule {
    sigma_rule(&Summary::of(v), bits)
}

#[test]
fn sigma_rule_unsigned_by_hand() {
    // Positives {1, 2, 3}: mean 2, unbiased var (1 + 0 + 1)/2 = 1, σ = 1. max = 3.
    let v = [0.0, 1.0, 2.0, 3.0, 0.0, f32::NAN];
    let s = Summary::of(&v);
    assert_eq!((s.count, s.count_pos, s.min, s.max), (5, 3, 0.0, 3.0));
    let r = rule(&v, 8);
    assert!(!r.signed);
    assert_eq!((r.sigma, r.k, r.alpha), (1.0, 25.0, 25.0));
    assert!(!r.capped && !r.fallback);
    assert_eq!(rule(&v, 7).alpha, 19.5);
    assert_eq!(rule(&v, 6).alpha, 14.0);
    for bits in [2, 4, 5] {
        let r = rule(&v, bits);
        assert_eq!((r.alpha, r.capped), (3.0, true), "bits {bits}");
    }
    assert_eq!(rule(&v, 16).k, 25.0);
    // {0.1, 0.2} at 4 bits: α = 12σ ≈ 0.85 > max|x| = 0.2, so capped there.
    let r = rule(&[0.1, 0.2], 4);
    assert_eq!((r.alpha, r.capped), (f64::from(0.2_f32), true));
}

#[test]
fn sigma_rule_signed_by_hand() {
    // {−2, −1, 0, 1, 2}: mean 0, Σx² = 10, unbiased var 10/4 = 2.5.
    let v = [-2.0, -1.0, 0.0, 1.0, 2.0];
    let s = 2.5_f64.sqrt();
    let r = rule(&v, 8);
    assert!(r.signed);
    assert!(rel_close(r.sigma, s, 1e-15, 0.0));
    assert!(rel_close(r.alpha, 25.0 * s / 1.25, 1e-15, 0.0));
    assert!(!r.capped);
    // 4 bits: 12σ/1.25 ≈ 42.2 → capped at max|x| = 9 (the reference would cap at the
    // signed maximum 2).
    let r = rule(&[-9.0, -1.0, 0.0, 1.0, 2.0], 4);
    assert_eq!((r.alpha, r.capped), (9.0, true));
}

#[test]
fn sigma_rule_edges_never_panic() {
    let empty = rule(&[], 8);
    assert_eq!((empty.alpha, empty.sigma), (0.0, 0.0));
    assert!(empty.fallback && !empty.signed);
    assert_eq!(Summary::default().max_abs(), 0.0);
    let zeros = rule(&[0.0; 16], 4);
    assert_eq!((zeros.alpha, zeros.fallback), (0.0, true));
    // All-negative at 4 bits: σ of {−1, −3} = √2, 12√2/1.25 ≈ 13.6 → capped at 3.
    let neg = rule(&[-1.0, -3.0], 4);
    assert!(neg.signed && neg.capped && !neg.fallback);
    assert_eq!(neg.alpha, 3.0);
    let neg = rule(&[-1.0, -3.0], 8);
    assert!(rel_close(
        neg.alpha,
        25.0 * 2.0_f64.sqrt() / 1.25,
        1e-15,
        0.0
    ));
    // Constant positive tensor: σ = 0 → fallback to the value.
    let c = rule(&[2.5; 8], 8);
    assert_eq!((c.alpha, c.fallback), (2.5, true));
    // Single positive entry.
    assert_eq!(rule(&[0.0, 4.0], 8).alpha, 4.0);
    // Non-finite entries ignored.
    let s = Summary::of(&[f32::NAN, f32::INFINITY, 1.0, 3.0]);
    assert_eq!((s.count, s.max), (2, 3.0));
    assert!(rel_close(
        sigma_rule(&s, 8).alpha,
        25.0 * 2.0_f64.sqrt(),
        1e-15,
        0.0
    ));
    assert!(rule(&[f32::NAN; 3], 8).alpha == 0.0);
}

#[test]
fn gaussian_bound_is_the_largest_magnitude_of_the_range() {
    let (m, v) = ([0.5, -2.0], [1.0, 0.25]);
    let (lo, hi) = gaussian_range(&m, &v, 4.0);
    assert_eq!((lo, hi), (-4.0, 4.5));
    assert_eq!(gaussian_bound(&m, &v, 4.0), 4.5);
    assert_eq!(gaussian_bound(&[], &[], 4.0), 0.0);
}

/// The all-finite loop of `add_slice` gives the bits of the per-value-select loop: a slice
/// with a chunk of NaNs after it takes the select loop, and the NaNs add nothing.
#[test]
fn add_slice_all_finite_path_is_bit_identical() {
    use super::Summary;
    let mut values: Vec<f32> = (0..10_000u32)
        .map(|i| {
            let t = (i as f32 * 0.7311).sin() * 3.0 + (i % 7) as f32 * 0.01 - 0.2;
            if i % 13 == 0 {
                0.0
            } else if i % 17 == 0 {
                -0.0
            } else {
                t
            }
        })
        .collect();
    values.truncate(9_992);
    let mut fast = Summary::default();
    let a = fast.add_slice(&values);
    let mut with_nan = values.clone();
    with_nan.extend([f32::NAN; 8]);
    let mut slow = Summary::default();
    let b = slow.add_slice(&with_nan);
    assert_eq!(a.0.to_bits(), b.0.to_bits());
    assert_eq!(a.1.to_bits(), b.1.to_bits());
    assert_eq!(fast.count, slow.count);
    assert_eq!(fast.count_pos, slow.count_pos);
    for (x, y) in [
        (fast.sum, slow.sum),
        (fast.sum_sq, slow.sum_sq),
        (fast.min, slow.min),
        (fast.max, slow.max),
    ] {
        assert_eq!(x.to_bits(), y.to_bits());
    }
}
