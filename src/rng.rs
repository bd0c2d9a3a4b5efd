//! The one seeded random generator (SplitMix64), identical on every machine and thread count.
//!
//! Everything random in isquant is seeded: the noise forward pass, synthetic validation inputs,
//! the float-change measurement of `--relu6 relu`, test models and fuzzing. All of it draws
//! from [`SplitMix64`] (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014): the state advances by the golden-ratio constant
//! `0x9E3779B97F4A7C15` and each output is the state put through a fixed 64-bit mix.
//!
//! Mappings to floats:
//! - [`SplitMix64::unit_f32`]: the top 24 bits, `u = (z >> 40) / 2²⁴ ∈ [0, 1)` (exact in f32);
//! - [`SplitMix64::unit_f64`]: the top 53 bits, `u = (z >> 11) / 2⁵³ ∈ [0, 1)`;
//! - [`seeded_normal`]: Box–Muller on two uniform streams, `√(−2 ln(1 − u))·cos(2πv)`.

use ndarray::{ArrayD, IxDyn};

/// SplitMix64: 64 bits of state, one add and one mix per output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output is the mix of `seed + 0x9E3779B97F4A7C15`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` from the top 24 bits (every value exact in f32).
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[0, 1)` from the top 53 bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n = 0` is treated as 1). Slightly biased for huge `n`; fine for
    /// picking mutations and test cases.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Seeded values in `[lo, hi)`, `lo + (hi − lo)·u` with [`SplitMix64::unit_f32`].
#[must_use]
pub fn seeded_uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> ArrayD<f32> {
    let mut rng = SplitMix64::new(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || lo + (hi - lo) * rng.unit_f32())
}

/// Seeded standard-normal values: Box–Muller on two [`seeded_uniform`] streams (seeds `seed`
/// and `seed ^ 0x5DEECE66D1CE4E5B`), using `1 − u ∈ (0, 1]` so the logarithm is finite.
#[must_use]
pub fn seeded_normal(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let u = seeded_uniform(shape, seed, 0.0, 1.0);
    let v = seeded_uniform(shape, seed ^ 0x5DEE_CE66_D1CE_4E5B, 0.0, 1.0);
    let mut out = u.clone();
    out.iter_mut()
        .zip(u.iter().zip(v.iter()))
        .for_each(|(o, (&a, &b))| {
            let r = (-2.0 * (1.0 - f64::from(a)).ln()).sqrt();
            *o = (r * (std::f64::consts::TAU * f64::from(b)).cos()) as f32;
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outputs_match_the_published_sequence() {
        // SplitMix64 seeded with 0 (the reference implementation's first three outputs).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn uniform_is_in_range_and_deterministic() {
        let a = seeded_uniform(&[1000], 3, -2.0, 5.0);
        assert_eq!(a, seeded_uniform(&[1000], 3, -2.0, 5.0));
        assert!(a.iter().all(|&v| (-2.0..5.0).contains(&v)));
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
        assert!((mean - 1.5).abs() < 0.2, "{mean}");
    }

    #[test]
    fn seeded_normal_is_standard_normal_and_deterministic() {
        let a = seeded_normal(&[200_000], 5);
        assert_eq!(a, seeded_normal(&[200_000], 5));
        assert_ne!(a, seeded_normal(&[200_000], 6));
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        // Tails as a Gaussian's: P(|x| > 3) ≈ 0.27 %.
        let tail = a.iter().filter(|v| v.abs() > 3.0).count() as f64 / n;
        assert!((0.0017..0.0037).contains(&tail), "tail {tail}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}
