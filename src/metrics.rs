//! Comparison metrics of a reference tensor and a candidate (pure, no models): SQNR, cosine
//! and maximum error ([`Sums`]), SQNR up to one gain per channel ([`ChannelFit`]), top-k.
//!
//! `SQNR = 10·log10(Σ ref² / Σ (ref − q)²)` in dB (infinite when identical); cosine
//! `Σ ref·q / (‖ref‖·‖q‖)`. Sums are f64 and merged in a fixed order, so results do not depend
//! on the thread count.

use ndarray::ArrayD;

/// Sums for SQNR / cosine / max error, merged in a fixed order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    signal: f64,
    noise: f64,
    dot: f64,
    norm_b: f64,
    max_abs: f64,
    count: u64,
}

impl Sums {
    /// Accumulates `reference` vs `candidate`.
    pub fn add(&mut self, reference: &ArrayD<f32>, candidate: &ArrayD<f32>) {
        for (&x, &y) in reference.iter().zip(candidate.iter()) {
            let (x, y) = (f64::from(x), f64::from(y));
            self.signal += x * x;
            self.noise += (x - y) * (x - y);
            self.dot += x * y;
            self.norm_b += y * y;
            self.max_abs = self.max_abs.max((x - y).abs());
            self.count += 1;
        }
    }

    /// Merges another partial sum.
    pub fn merge(&mut self, o: &Sums) {
        self.signal += o.signal;
        self.noise += o.noise;
        self.dot += o.dot;
        self.norm_b += o.norm_b;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.count += o.count;
    }

    /// `10·log10(Σref² / Σ(ref − q)²)`; infinite when identical.
    pub fn sqnr_db(&self) -> f64 {
        if self.noise == 0.0 {
            f64::INFINITY
        } else if self.signal == 0.0 {
            f64::NEG_INFINITY
        } else {
            10.0 * (self.signal / self.noise).log10()
        }
    }

    /// Cosine similarity.
    pub fn cosine(&self) -> f64 {
        if self.signal == 0.0 || self.norm_b == 0.0 {
            if self.noise == 0.0 {
                1.0
            } else {
                0.0
            }
        } else {
            self.dot / (self.signal.sqrt() * self.norm_b.sqrt())
        }
    }

    /// Largest absolute difference.
    pub fn max_abs(&self) -> f64 {
        self.max_abs
    }
}

/// Indices of the `k` largest values (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Per-channel sums (channel axis 1) for comparing a tensor up to one positive gain per
/// channel: cross-layer equalization divides channel `i` of the values between two equalized
/// layers by `s_i` (the int8 model lists them under `isquant.rescaled`), so the int8 model holds
/// `f_i / s_i + noise` where the float model holds `f_i`. With `g_i = Σ f·q / Σ q²` (the
/// least-squares gain; none when `Σ f·q ≤ 0`) the residual is `Σ f² − g_i·Σ f·q` per channel,
/// and the SQNR is `10·log10(Σ f² / Σ_i residual_i)`. One gain per channel absorbs next to
/// nothing of real quantization noise (thousands of values per channel).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelFit {
    ff: Vec<f64>,
    fq: Vec<f64>,
    qq: Vec<f64>,
}

impl ChannelFit {
    /// Accumulates `reference` vs `candidate` (same shape; a tensor of rank < 2 is one channel).
    pub fn add(&mut self, reference: &ArrayD<f32>, candidate: &ArrayD<f32>) {
        let shape = reference.shape();
        let c = if shape.len() >= 2 { shape[1].max(1) } else { 1 };
        let inner: usize = shape.iter().skip(2).product::<usize>().max(1);
        if self.ff.len() != c {
            *self = ChannelFit {
                ff: vec![0.0; c],
                fq: vec![0.0; c],
                qq: vec![0.0; c],
            };
        }
        for (k, (&x, &y)) in reference.iter().zip(candidate.iter()).enumerate() {
            let ch = if shape.len() >= 2 { (k / inner) % c } else { 0 };
            let (x, y) = (f64::from(x), f64::from(y));
            self.ff[ch] += x * x;
            self.fq[ch] += x * y;
            self.qq[ch] += y * y;
        }
    }

    /// Merges another partial sum (of the same tensor).
    pub fn merge(&mut self, o: &ChannelFit) {
        if self.ff.is_empty() {
            self.clone_from(o);
            return;
        }
        for (a, b) in [
            (&mut self.ff, &o.ff),
            (&mut self.fq, &o.fq),
            (&mut self.qq, &o.qq),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// SQNR in dB after the best non-negative gain per channel.
    #[must_use]
    pub fn sqnr_db(&self) -> f64 {
        let signal: f64 = self.ff.iter().sum();
        let residual: f64 = self
            .ff
            .iter()
            .zip(&self.fq)
            .zip(&self.qq)
            .map(|((&ff, &fq), &qq)| {
                if qq > 0.0 && fq > 0.0 {
                    (ff - fq * fq / qq).max(0.0)
                } else {
                    ff
                }
            })
            .sum();
        if residual <= 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / residual).log10()
        }
    }
}

/// Serializes a float as a number, or as `"inf"` / `"-inf"` (strict JSON has no
/// infinities).
pub fn finite_or_string<S: serde::Serializer>(
    v: &f64,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn channel_fit_ignores_a_gain_per_channel_and_keeps_noise() {
        // [N=2, C=3, 4] values; the candidate is channel c divided by (c + 1) · 0.5.
        let f = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            ((i[0] * 12 + i[1] * 4 + i[2]) as f32 * 0.37).sin() + 0.1
        });
        let gains = [0.5f32, 1.0, 1.5];
        let q = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| f[[i[0], i[1], i[2]]] / gains[i[1]]);
        let mut fit = ChannelFit::default();
        fit.add(&f, &q);
        assert!(fit.sqnr_db() > 100.0, "{}", fit.sqnr_db());
        let mut plain = Sums::default();
        plain.add(&f, &q);
        assert!(plain.sqnr_db() < 10.0, "{}", plain.sqnr_db());
        // Noise stays noise: a 1 % perturbation that is not a gain keeps ~40 dB.
        let noisy = ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            q[[i[0], i[1], i[2]]] + 0.01 * ((i[2] as f32 * 2.1).cos())
        });
        let mut fit = ChannelFit::default();
        fit.add(&f, &noisy);
        let db = fit.sqnr_db();
        assert!(db > 25.0 && db < 60.0, "{db}");
        // Merging two halves gives the same as one pass.
        let mut a = ChannelFit::default();
        a.add(&f, &noisy);
        let mut b = ChannelFit::default();
        b.merge(&a);
        b.merge(&a);
        assert!((b.sqnr_db() - db).abs() < 1e-9);
        // A sign flip is not a gain: its whole energy is residual.
        let neg = f.mapv(|v| -v);
        let mut fit = ChannelFit::default();
        fit.add(&f, &neg);
        assert!(fit.sqnr_db().abs() < 1e-9, "{}", fit.sqnr_db());
    }
}
