//! Activation ranges without data (`docs/algorithm.md` §6 and §2.4).
//!
//! Three sources, chosen per tensor by `--act-ranges`:
//!
//! - **bn** (BN-analytic, DFQ style): a value produced by a BatchNormalization (folded or
//!   not) is modelled per channel as `N(beta_c, |gamma_c|²)`; its range is
//!   `[min_c(μ_c − N·σ_c), max_c(μ_c + N·σ_c)]` with `N = --bn-sigmas` (6). The
//!   distribution is pushed forward in topological order: activations map the range through
//!   the function and the moments through the clipped-normal formulas (ReLU, Clip) or
//!   quadrature (HardSwish, HardSigmoid, Sigmoid, …); `Add` sums per-channel means and
//!   variances (independent branches) and takes `μ ± N·σ` of the sum; `Concat` concatenates
//!   channels; pooling, `Flatten`, `Identity` pass through; multiplication by a constant
//!   scales; a Conv/Gemm/MatMul with no BN after it propagates moments through its weights
//!   (`mean_o = b_o + Σ W·m`, `var_o = Σ W²·v`, independence assumed). Real inputs of a
//!   layer are correlated, so that variance comes out low: under `auto` such a tensor (and
//!   anything computed from it before the next BN, [`through_layers`]) takes the noise pass's
//!   range where that is wider.
//! - **noise** (SQuant's own rule): a seeded batch of `U[0, 1)` inputs goes through the float
//!   model (in tract); per tensor `signed = min < 0`, `σ` = std of the positive entries
//!   (unsigned) or of all entries (signed), `α = k·σ` with `k` = 12 / 14 / 25 at 4 / 6 / 8
//!   bits, divided by 1.25 when signed; below 6 bits `α ≤ max`.
//! - **noise-channels** (part of `auto`, the default): where no BN statistics reach a feature
//!   map, per-channel means and standard deviations from a seeded noise pass (N(0, 1) images by
//!   default, `--noise-input uniform` for U[0, 1)) fed to the BN-analytic rule,
//!   `max_c |μ_c ± N·σ_c|` with `N = --noise-sigmas` (4); measured against SQuant's rule in
//!   `docs/experiments.md`, "Data-free ranges: per-channel noise statistics instead of SQuant's
//!   rule". Tensors that are not feature maps keep SQuant's rule on the same pass.
//! - **calibrate**: the user's own inputs through the float model; `max|x|` or a percentile.
//!
//! Tensors that are structurally non-negative (after Relu, Clip(0, ·), Sigmoid, …) use uint8;
//! everything else int8; zero-point 0 either way.

//!
//! Submodules: `bn` (the BN rule and its propagation), `input` (the model input's range
//! through Transpose, Slice, Concat, Pad, Cast, affine ops), `nonneg` (non-negative values),
//! [`observe()`] (forward-pass statistics). Which rule a layer's input takes is decided in
//! [`crate::pipeline::activations`].

mod bn;
mod elementwise;
mod input;
mod nonneg;
mod observe;

pub use bn::{bn_ranges, through_layers};
pub use input::{input_derived, InputDerived};
pub use nonneg::nonnegative_values;
pub use observe::{observe, Observed, Pass, Settle};

use serde::Serialize;

use crate::stats::{self, Moments};

/// Which rule set a tensor's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RangeRule {
    /// BN statistics of the BatchNormalization that produced (or consumed) the tensor.
    Bn,
    /// BN statistics pushed through later ops.
    BnPropagated,
    /// SQuant's noise rule.
    Noise,
    /// The BN-analytic rule (`max_c |μ_c ± N·σ_c|`) on per-channel statistics of the noise
    /// pass: the default where the exporter already folded BN.
    NoiseChannels,
    /// Calibration with user data.
    Calibrate,
    /// `--input-range` / `--preset` for the model input.
    InputRange,
}

/// A value's distribution as far as the BN rule knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    /// Per-channel moments, when the channel structure is known.
    pub moments: Option<Vec<Moments>>,
    /// Lower end of the range.
    pub lo: f64,
    /// Upper end of the range.
    pub hi: f64,
    /// Whether it comes straight from BN statistics or was propagated.
    pub rule: RangeRule,
}

impl Dist {
    /// The BN rule on per-channel moments: [`stats::gaussian_range`]; `None` without a usable
    /// channel or for an infinite range.
    pub(super) fn from_moments(m: Vec<Moments>, n: f64, rule: RangeRule) -> Option<Dist> {
        // A NaN variance counts as 0 (`f64::max` drops NaN); a NaN mean drops the channel.
        if m.iter().all(|c| c.mean.is_nan()) {
            return None;
        }
        let means: Vec<f64> = m.iter().map(|c| c.mean).collect();
        let vars: Vec<f64> = m.iter().map(|c| c.var.max(0.0)).collect();
        let (lo, hi) = stats::gaussian_range(&means, &vars, n);
        (lo.is_finite() && hi.is_finite()).then_some(Dist {
            moments: Some(m),
            lo,
            hi,
            rule,
        })
    }

    pub(super) fn interval(lo: f64, hi: f64) -> Option<Dist> {
        (lo.is_finite() && hi.is_finite() && lo <= hi).then_some(Dist {
            moments: None,
            lo,
            hi,
            rule: RangeRule::BnPropagated,
        })
    }

    pub(super) fn propagated(mut self) -> Dist {
        self.rule = RangeRule::BnPropagated;
        self
    }

    /// Applies an elementwise function: range by dense sampling, moments by the given map.
    pub(super) fn map(
        &self,
        f: impl Fn(f64) -> f64 + Copy,
        m: impl Fn(Moments) -> Moments,
    ) -> Option<Dist> {
        let (lo, hi) = stats::range_of_fn(self.lo, self.hi, f);
        let mut d = Dist::interval(lo, hi)?;
        d.moments = self
            .moments
            .as_ref()
            .map(|ms| ms.iter().map(|&c| m(c)).collect());
        Some(d)
    }
}
