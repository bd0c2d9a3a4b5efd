//! The noise objective: channel scales that minimise the modelled quantization noise at B's
//! output (module docs of [`super`]); [`NoiseTerms`] and [`noise_scales`] are pure.

use super::layer::Layer;
use super::walks::pair_scales;
use super::{Options, PairStats};

/// The scales [`noise_scales`] picks for a pair, with every quantity in the current scaling:
/// A's rows and B's columns as rescaled so far, the activation's statistics divided by the
/// accumulated scale `total` of A's output channels. `start` carries the grid centre from
/// one pass to the next.
pub(super) fn noise_pair_scales(
    a: &Layer,
    b: &Layer,
    ps: &PairStats,
    total: &[f64],
    opts: &Options,
    start: &mut Option<(f64, f64)>,
) -> Vec<f64> {
    let (Some(rows), Some(cols)) = (&a.row_max, &b.col_max) else {
        return vec![1.0; a.out_s.len()];
    };
    let c_n = a.out_s.len();
    if ps.range.len() != c_n || total.len() != c_n || b.in_s.len() != c_n {
        return pair_scales(a, b);
    }
    let r1: Vec<f64> = rows.iter().zip(&a.out_s).map(|(r, o)| r / o).collect();
    let r2: Vec<f64> = cols.iter().zip(&b.in_s).map(|(c, i)| c * i).collect();
    let range: Vec<f64> = ps.range.iter().zip(total).map(|(r, t)| r / t).collect();
    let energy: Vec<f64> = ps
        .energy
        .iter()
        .zip(total)
        .map(|(e, t)| e / (t * t))
        .collect();
    // A's input energy per output channel: K_A · Σ_{j in its group} E[x_j²] / in_s_A[j]².
    let (_, il_a, pgo_a) = a.dims();
    let k_a = a.kernel().max(1) as f64;
    let in_e: Vec<f64> = a
        .in_s
        .iter()
        .enumerate()
        .map(|(j, s)| ps.in_energy.get(j).copied().unwrap_or(1.0) / (s * s))
        .collect();
    let group_sums: Vec<f64> = in_e
        .chunks(il_a.max(1))
        .map(|c| k_a * c.iter().sum::<f64>())
        .collect();
    let ea: Vec<f64> = (0..c_n)
        .map(|i| group_sums.get(i / pgo_a.max(1)).copied().unwrap_or(0.0))
        .collect();
    // B's column energy Σ_{o,k} W_B[o,i,k]² and fan-out (outputs reading i) · K_B.
    let (_, _, pgo_b) = b.dims();
    let k_b = b.kernel().max(1);
    let Some(col_sq) = &b.col_sq else {
        return pair_scales(a, b);
    };
    let gain: Vec<f64> = col_sq.iter().zip(&b.in_s).map(|(q, i)| q * i * i).collect();
    let fan_out = vec![(pgo_b * k_b) as f64; c_n];
    let qw = f64::from((1u32 << (opts.weight_bits.clamp(2, 16) - 1)) - 1);
    let qa = if ps.unsigned {
        f64::from((1u32 << opts.act_bits.clamp(2, 16)) - 1)
    } else {
        f64::from((1u32 << (opts.act_bits.clamp(2, 16) - 1)) - 1)
    };
    let (s, centre) = noise_scales_from(
        &NoiseTerms {
            r1: &r1,
            r2: &r2,
            act_range: &range,
            in_energy: &ea,
            act_energy: &energy,
            gain: &gain,
            fan_out: &fan_out,
            qw,
            qa,
        },
        *start,
    );
    if centre.is_some() {
        *start = centre;
    }
    s
}

/// The per-channel quantities of the noise model of one pair `A → f → B` (module docs),
/// channel `i` being a channel of the activation `v = f(A(x))` between the two layers.
#[derive(Debug, Clone, Copy)]
pub struct NoiseTerms<'a> {
    /// `max |W_A[i, …]|`.
    pub r1: &'a [f64],
    /// `max |W_B[:, i, …]|`.
    pub r2: &'a [f64],
    /// Range of `v_i` (what the activation scale must cover).
    pub act_range: &'a [f64],
    /// `Σ_{j,k} E[x_j²]` over A's inputs to channel `i`.
    pub in_energy: &'a [f64],
    /// `E[v_i²]`.
    pub act_energy: &'a [f64],
    /// `Σ_{o,k} W_B[o, i, k]²`.
    pub gain: &'a [f64],
    /// Outputs of B that read `v_i`, times B's kernel size.
    pub fan_out: &'a [f64],
    /// Largest weight code (127 at 8 bits).
    pub qw: f64,
    /// Largest activation code (255 unsigned, 127 signed at 8 bits).
    pub qa: f64,
}

impl NoiseTerms<'_> {
    /// Modelled noise power at B's output after scaling channel `i` by `s_i` (`W_A[i] /= s_i`,
    /// `W_B[:, i] *= s_i`), each quantizer adding uniform noise of variance `Δ²/12`:
    /// `Σ_i s_i²·gain_i·(Δ_A²·in_energy_i + Δ_v²) + Δ_B²·Σ_i fan_out_i·act_energy_i/s_i²`
    /// (times 1/12) with `Δ_A = max_i(r1_i/s_i)/qw`, `Δ_v = max_i(act_range_i/s_i)/qa`,
    /// `Δ_B = max_i(r2_i·s_i)/qw`.
    #[must_use]
    pub fn noise(&self, s: &[f64]) -> f64 {
        // One pass: the three ranges and the three sums they multiply (selects, not
        // `f64::max`, so that it vectorizes).
        // Channels all the vectors have (a shorter one would otherwise panic).
        let n = [
            s.len(),
            self.r1.len(),
            self.act_range.len(),
            self.r2.len(),
            self.gain.len(),
            self.in_energy.len(),
            self.fan_out.len(),
            self.act_energy.len(),
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        let s = &s[..n];
        let mut acc = NoiseSum::default();
        for (i, &si) in s.iter().enumerate() {
            acc.add(self, i, si);
        }
        acc.total(self)
    }
}

/// The running maxima and sums of [`NoiseTerms::noise`] (one implementation for the noise
/// itself and for the grid search, which fuses it into the loop that picks the scales).
#[derive(Default)]
struct NoiseSum {
    m1: f64,
    ma: f64,
    m2: f64,
    sw: f64,
    sa: f64,
    sb: f64,
}

impl NoiseSum {
    /// Adds channel `i` at scale `si` (the caller guarantees `i` is in range of every vector).
    #[inline]
    fn add(&mut self, t: &NoiseTerms, i: usize, si: f64) {
        let inv = 1.0 / si;
        let (x1, xa, x2) = (t.r1[i] * inv, t.act_range[i] * inv, t.r2[i] * si);
        self.m1 = if x1 > self.m1 { x1 } else { self.m1 };
        self.ma = if xa > self.ma { xa } else { self.ma };
        self.m2 = if x2 > self.m2 { x2 } else { self.m2 };
        let gs = si * si * t.gain[i];
        self.sw += gs * t.in_energy[i];
        self.sa += gs;
        self.sb += t.fan_out[i] * t.act_energy[i] * inv * inv;
    }

    fn total(&self, t: &NoiseTerms) -> f64 {
        let (m1, ma, m2) = (self.m1 / t.qw, self.ma / t.qa, self.m2 / t.qw);
        (m1 * m1 * self.sw + ma * ma * self.sa + m2 * m2 * self.sb) / 12.0
    }
}

/// Channel scales minimising [`NoiseTerms::noise`], normalised to geometric mean 1.
///
/// The noise is invariant to a common factor on all `s_i`, so `Δ_B`'s range `R2` is held at
/// its DFQ value and the two other ranges `R1 = max r1/s`, `Rv = max range/s` are searched
/// on log grids refined around the best point (`e^{±3}` around DFQ in steps of 1.5, down to
/// steps of 0.17). For fixed ranges the noise separates per channel, with its minimum at
/// `s_i⁴ = Δ_B²·fan_out_i·act_energy_i / (gain_i·(Δ_A²·in_i + Δ_v²))` clamped to the box
/// the ranges allow (`r1_i/R1 ≤ s_i`, `range_i/Rv ≤ s_i`, `s_i ≤ R2/r2_i`). The best of
/// these, DFQ's scales and no scaling is returned, so the result never models more noise
/// than DFQ.
#[must_use]
pub fn noise_scales(t: &NoiseTerms) -> Vec<f64> {
    noise_scales_from(t, None).0
}

/// [`noise_scales`], searching only `±0.5` around `start` (the grid centre of an earlier
/// pass, `(ln f1, ln fv)`) when given; also returns the centre found.
fn noise_scales_from(t: &NoiseTerms, start: Option<(f64, f64)>) -> (Vec<f64>, Option<(f64, f64)>) {
    let n = t.r1.len();
    let ok = [
        t.r2,
        t.act_range,
        t.in_energy,
        t.act_energy,
        t.gain,
        t.fan_out,
    ]
    .iter()
    .all(|v| v.len() == n);
    if n == 0 || !ok {
        return (vec![1.0; n], None);
    }
    let dfq: Vec<f64> =
        t.r1.iter()
            .zip(t.r2)
            .map(|(&x, &y)| {
                if x > 0.0 && y > 0.0 {
                    (x / y).sqrt().clamp(1e-8, 1e8)
                } else {
                    1.0
                }
            })
            .collect();
    let ones = vec![1.0; n];
    let (mut best, mut best_v) = (ones.clone(), t.noise(&ones));
    let v = t.noise(&dfq);
    if v < best_v || !best_v.is_finite() {
        (best, best_v) = (dfq.clone(), v);
    }
    let mut found = None;
    let max_of = |f: &dyn Fn(usize) -> f64| (0..n).map(f).fold(0f64, f64::max);
    let r1d = max_of(&|i| t.r1[i] / dfq[i]);
    let rad = max_of(&|i| t.act_range[i] / dfq[i]);
    let r2 = max_of(&|i| t.r2[i] * dfq[i]);
    if r1d > 0.0 && r2 > 0.0 && rad > 0.0 {
        let hi: Vec<f64> =
            t.r2.iter()
                .map(|&r| if r > 0.0 { r2 / r } else { f64::INFINITY })
                .collect();
        let d: Vec<f64> = (0..n)
            .map(|i| (r2 / t.qw).powi(2) * t.fan_out[i] * t.act_energy[i])
            .collect();
        let gain_in: Vec<f64> = t.gain.iter().zip(t.in_energy).map(|(g, e)| g * e).collect();
        // The best scales on a `steps × steps` grid of `(ln f1, ln fv)` centred at `c`.
        let search = |c: (f64, f64), half: f64, steps: usize| {
            let at = |k: usize| -half + 2.0 * half * k as f64 / (steps - 1) as f64;
            // Sequential: rayon over the grid rows measured slower even at 2048 channels.
            let row = |k1: usize| {
                let l1 = c.0 + at(k1);
                let big_r1 = r1d * l1.exp();
                let mut local: Option<(f64, Vec<f64>, (f64, f64))> = None;
                let mut s = vec![1.0; n];
                'grid: for ka in 0..steps {
                    let la = c.1 + at(ka);
                    let big_ra = rad * la.exp();
                    let (inv_r1, inv_ra) = (1.0 / big_r1, 1.0 / big_ra);
                    let (cw, ca) = ((big_r1 / t.qw).powi(2), (big_ra / t.qa).powi(2));
                    // Feasibility first, then a branch-free pass (both vectorize).
                    let (r1, ar, hi) = (&t.r1[..n], &t.act_range[..n], &hi[..n]);
                    let lo_at = |i: usize| {
                        let (a, b) = (r1[i] * inv_r1, ar[i] * inv_ra);
                        if a > b {
                            a
                        } else {
                            b
                        }
                    };
                    if (0..n).any(|i| lo_at(i) > hi[i] * (1.0 + 1e-9)) {
                        continue 'grid;
                    }
                    let (gi, g, dd, df) = (&gain_in[..n], &t.gain[..n], &d[..n], &dfq[..n]);
                    let mut acc = NoiseSum::default();
                    for (i, si) in s[..n].iter_mut().enumerate() {
                        let lo = lo_at(i);
                        let c = cw * gi[i] + ca * g[i];
                        let opt = (dd[i] / c).sqrt().sqrt();
                        let opt = if c > 0.0 && dd[i] > 0.0 { opt } else { df[i] };
                        let v = if opt > hi[i] { hi[i] } else { opt };
                        let v = if v < lo { lo } else { v };
                        *si = if v > 0.0 && v < f64::INFINITY { v } else { 1.0 };
                        acc.add(t, i, *si);
                    }
                    let v = acc.total(t);
                    if v.is_finite() && local.as_ref().is_none_or(|(b, _, _)| v < *b) {
                        local = Some((v, s.clone(), (l1, la)));
                    }
                }
                local
            };
            let pick = |x: (f64, Vec<f64>, (f64, f64)), y: (f64, Vec<f64>, (f64, f64))| {
                if y.0 < x.0 {
                    y
                } else {
                    x
                }
            };
            (0..steps).filter_map(row).reduce(pick)
        };
        // Coarse to fine: steps of 1.5, 0.75, 0.25 and 0.17 in ln R (`e^{±3}` in all); later
        // passes refine around the previous centre only.
        let mut centre = start.unwrap_or((0.0, 0.0));
        let levels: &[(f64, usize)] = if start.is_some() {
            &[(0.5, 3), (0.17, 3)]
        } else {
            &[(3.0, 5), (1.5, 5), (0.5, 5), (0.17, 3)]
        };
        for &(half, steps) in levels {
            if let Some((v, s, c)) = search(centre, half, steps) {
                centre = c;
                found = Some(c);
                if v < best_v {
                    (best, best_v) = (s, v);
                }
            }
        }
    }
    let mean_ln = best.iter().map(|s| s.ln()).sum::<f64>() / n as f64;
    let c = (-mean_ln).exp();
    (
        best.iter().map(|s| (s * c).clamp(1e-8, 1e8)).collect(),
        found,
    )
}

#[cfg(test)]
mod tests {
    use super::{noise_scales, NoiseTerms};

    fn terms<'a>(
        r1: &'a [f64],
        r2: &'a [f64],
        act_range: &'a [f64],
        ones: &'a [f64],
    ) -> NoiseTerms<'a> {
        NoiseTerms {
            r1,
            r2,
            act_range,
            in_energy: ones,
            act_energy: act_range,
            gain: ones,
            fan_out: ones,
            qw: 127.0,
            qa: 255.0,
        }
    }

    #[test]
    fn noise_scales_never_model_more_noise_than_dfq_or_none() {
        // Channel ranges spread over four decades, as after folding BN into a depthwise conv.
        let r1 = [15.0, 0.007, 2.3, 0.4, 8.8];
        let r2 = [0.5, 1.0, 0.75, 0.9, 1.03];
        let act = [6.0, 0.02, 3.0, 1.0, 6.0];
        let ones = [1.0; 5];
        let t = terms(&r1, &r2, &act, &ones);
        let s = noise_scales(&t);
        let dfq: Vec<f64> = r1.iter().zip(&r2).map(|(a, b)| (a / b).sqrt()).collect();
        assert!(t.noise(&s) <= t.noise(&dfq) * (1.0 + 1e-12));
        assert!(t.noise(&s) <= t.noise(&ones) * (1.0 + 1e-12));
        // Normalised to geometric mean 1.
        let mean_ln: f64 = s.iter().map(|v| v.ln()).sum::<f64>() / 5.0;
        assert!(mean_ln.abs() < 1e-9, "{mean_ln}");
    }

    #[test]
    fn mismatched_lengths_neither_panic_nor_scale() {
        let (r1, r2, act, ones) = ([1.0, 2.0, 3.0], [1.0, 1.0], [1.0, 1.0, 1.0], [1.0; 3]);
        let t = terms(&r1, &r2, &act, &ones);
        assert!(t.noise(&[1.0, 1.0, 1.0]).is_finite());
        assert_eq!(noise_scales(&t), vec![1.0; 3]);
    }

    #[test]
    fn activation_noise_pulls_scales_away_from_dfq() {
        // Weight ranges call for very different scales, but the activation between has the
        // same range in every channel: shrinking a channel (s > 1) also shrinks its
        // activation and wastes the activation grid, so the noise optimum scales less than
        // DFQ does.
        let r1 = [100.0, 1.0];
        let r2 = [1.0, 1.0];
        let act = [1.0, 1.0];
        let ones = [1.0; 2];
        let t = terms(&r1, &r2, &act, &ones);
        let s = noise_scales(&t);
        let spread = (s[0] / s[1]).ln();
        let dfq_spread = (10.0f64 / 1.0).ln();
        assert!(spread > 0.0 && spread < dfq_spread, "{s:?}");
    }
}
