//! The per-pass walks over a layer's range summaries: each output row's maximum and each input
//! column's maximum (and energy), kept exact but cheap by candidate lists; DFQ's pair rule.

use rayon::prelude::*;

use super::layer::Layer;
use super::PARALLEL_ELEMENTS;

/// Entries `j` of each row with `|W|[o, j]·snap[j] ≥ CANDIDATE·top[o]` (`top[o]` the row
/// maximum then) when they were listed. With `hi = max_j in_s[j]/snap[j]` since, an unlisted
/// entry is now below `CANDIDATE·top[o]·hi`; when the listed entries reach that, the row
/// maximum is their maximum, exactly. Rows that fail the test are walked whole.
pub(super) struct RowCandidates {
    /// `in_s` (as f32) when the lists were made.
    snap: Vec<f32>,
    /// Each row's maximum then.
    top: Vec<f32>,
    /// Row `o`'s entries are `idx[start[o]..start[o + 1]]`.
    start: Vec<usize>,
    idx: Vec<u32>,
}

/// Entries `(flat index, o, c)` of `|W|` with `|W|[o, c]·snap[o] ≥ CANDIDATE·top[c]` when
/// listed: the column counterpart of [`RowCandidates`], with `snap` the factors `1/out_s[o]`.
pub(super) struct ColCandidates {
    snap: Vec<f32>,
    top: Vec<f32>,
    entries: Vec<[u32; 3]>,
}

/// `max now[i]/then[i]` with a margin for f32 rounding of the products it bounds (`None`
/// when the lengths differ or a ratio is not finite).
fn growth(now: &[f32], then: &[f32]) -> Option<f32> {
    if now.len() != then.len() {
        return None;
    }
    let hi = now
        .iter()
        .zip(then)
        .fold(0f32, |hi, (&n, &t)| if n / t > hi { n / t } else { hi });
    hi.is_finite().then_some(hi * (1.0 + 1e-5))
}

/// Threshold of [`RowCandidates`] (the lists hold until the scales drift 1/0.7 apart).
pub(super) const CANDIDATE: f32 = 0.7;
/// Rows shorter than this are always walked whole.
pub(super) const CANDIDATE_MIN_ROW: usize = 16;

impl Layer {
    /// Computes `row_max` if `in_s` changed since (f32 inner loop: vectorizes; ranges need no
    /// more precision).
    pub(super) fn refresh_row_max(&mut self) {
        if self.row_max.is_some() {
            return;
        }
        let (o_n, il, pgo) = self.dims();
        let ins: Vec<f32> = self.in_s.iter().map(|&v| v as f32).collect();
        // Cheap path: the listed entries decide every row that passes the test.
        if let Some(c) = &self.row_candidates {
            if let Some(hi) = growth(&ins, &c.snap) {
                let mut failed = 0usize;
                let max: Vec<f64> = (0..o_n)
                    .map(|o| {
                        let grp = o / pgo.max(1);
                        let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
                        let s = ins.get(grp * il..(grp + 1) * il).unwrap_or(&[]);
                        let list = c.idx.get(c.start[o]..c.start[o + 1]).unwrap_or(&[]);
                        let m = list.iter().fold(0f32, |m, &j| {
                            let j = j as usize;
                            match (row.get(j), s.get(j)) {
                                (Some(w), Some(f)) => m.max(w.abs() * f),
                                _ => m,
                            }
                        });
                        if m >= CANDIDATE * c.top[o] * hi {
                            f64::from(m)
                        } else {
                            failed += 1;
                            f64::from(max_scaled(row, s))
                        }
                    })
                    .collect();
                if failed * 4 > o_n {
                    // The lists went stale: list afresh at the next walk.
                    self.row_candidates = None;
                }
                self.row_max = Some(max);
                return;
            }
        }
        // Full walk, listing each row's candidates while it is in cache (not on the first walk:
        // the first pass moves every scale by up to ~2.5×, which no list survives).
        let listing = self.listing && self.row_walks > 0;
        self.row_walks += 1;
        let one = |o: usize| -> (f64, Vec<u32>) {
            let grp = o / pgo.max(1);
            let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
            let s = ins.get(grp * il..(grp + 1) * il).unwrap_or(&[]);
            let m = max_scaled(row, s);
            let mut list = Vec::new();
            if listing {
                list_at_least(row, s, m * CANDIDATE, &mut list);
            }
            (f64::from(m), list)
        };
        let rows: Vec<(f64, Vec<u32>)> = if o_n * il >= PARALLEL_ELEMENTS {
            (0..o_n)
                .into_par_iter()
                .with_min_len(o_n.div_ceil(rayon::current_num_threads().max(1)))
                .map(one)
                .collect()
        } else {
            (0..o_n).map(one).collect()
        };
        let mut start = Vec::with_capacity(o_n + 1);
        let mut idx = Vec::new();
        let mut max = Vec::with_capacity(o_n);
        start.push(0);
        for (m, list) in rows {
            max.push(m);
            idx.extend(list);
            start.push(idx.len());
        }
        self.listing &= !listing || idx.len() * 4 <= o_n * il;
        self.row_candidates = (listing && self.listing).then_some(RowCandidates {
            snap: ins,
            top: max.iter().map(|&m| m as f32).collect(),
            start,
            idx,
        });
        self.row_max = Some(max);
    }

    /// Computes `col_max` (`max_o absmax[o, c]/out_s[o]`) if `out_s` changed since, and with
    /// `energy` also `col_sq` (`Σ_o sumsq[o, c]/out_s[o]²`), in one walk over the rows.
    pub(super) fn refresh_columns(&mut self, energy: bool) {
        let want_sq = energy && self.col_sq.is_none();
        if self.col_max.is_some() && !want_sq {
            return;
        }
        let f: Vec<f32> = self.out_s.iter().map(|&s| (1.0 / s) as f32).collect();
        if !want_sq {
            // Cheap path, as for rows ([`ColCandidates`]).
            if let Some(c) = &self.col_candidates {
                if let Some(hi) = growth(&f, &c.snap) {
                    let mags = self.mags();
                    let mut m = vec![0f32; self.in_s.len()];
                    for &[flat, o, col] in &c.entries {
                        if let (Some(w), Some(fo), Some(d)) = (
                            mags.get(flat as usize),
                            f.get(o as usize),
                            m.get_mut(col as usize),
                        ) {
                            let v = w.abs() * fo;
                            *d = if v > *d { v } else { *d };
                        }
                    }
                    // Columns that fail the test are walked whole (strided).
                    let (_, il, pgo) = self.dims();
                    let mut failed = 0usize;
                    for (col, d) in m.iter_mut().enumerate() {
                        if *d >= CANDIDATE * c.top.get(col).copied().unwrap_or(0.0) * hi {
                            continue;
                        }
                        failed += 1;
                        let (grp, j) = (col / il.max(1), col % il.max(1));
                        for o in grp * pgo..(grp + 1) * pgo {
                            if let (Some(w), Some(fo)) = (mags.get(o * il + j), f.get(o)) {
                                let v = w.abs() * fo;
                                *d = if v > *d { v } else { *d };
                            }
                        }
                    }
                    if failed * 4 > m.len() {
                        self.col_candidates = None;
                    }
                    self.col_max = Some(m.into_iter().map(f64::from).collect());
                    return;
                }
            }
        }
        let (max, sq) = self.column_pass(&f, want_sq);
        let first = self.col_walks == 0;
        self.col_walks += 1;
        if !energy && self.col_listing && !first {
            // List each column's candidates (a second walk, paid back by the passes after).
            let (o_n, il, pgo) = self.dims();
            let mut entries = Vec::new();
            for (o, &fo) in f.iter().enumerate().take(o_n) {
                let base = (o / pgo.max(1)) * il;
                let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
                let tops = max.get(base..base + il).unwrap_or(&[]);
                for (j, (&w, &t)) in row.iter().zip(tops).enumerate() {
                    if w.abs() * fo >= t * CANDIDATE {
                        entries.push([(o * il + j) as u32, o as u32, (base + j) as u32]);
                    }
                }
            }
            self.col_listing = entries.len() * 4 <= o_n * il && o_n * il < u32::MAX as usize;
            self.col_candidates = self.col_listing.then(|| ColCandidates {
                snap: f,
                top: max.clone(),
                entries,
            });
        }
        self.col_max = Some(max.into_iter().map(f64::from).collect());
        if want_sq {
            self.col_sq = Some(sq.into_iter().map(f64::from).collect());
        }
    }

    /// Per input channel `c` (per group): `max_o absmax[o, c]/out_s[o]` and, with `energy`,
    /// `Σ_o sumsq[o, c]/out_s[o]²`, walking rows (row-major: cache-friendly). f32 inner loops:
    /// they vectorize, and ranges and energies need no more precision. Large layers split
    /// their rows over the rayon pool (the passes are bound by reading these arrays).
    fn column_pass(&self, f: &[f32], energy: bool) -> (Vec<f32>, Vec<f32>) {
        let (o_n, il, pgo) = self.dims();
        let n = self.in_s.len();
        let rows = |lo: usize, hi: usize| -> (Vec<f32>, Vec<f32>) {
            let mut mx = vec![0f32; n];
            let mut sq = vec![0f32; if energy { n } else { 0 }];
            for o in lo..hi {
                let grp = o / pgo.max(1);
                let f = f.get(o).copied().unwrap_or(1.0);
                let span = grp * il..(grp + 1) * il;
                let row = self.mags().get(o * il..(o + 1) * il).unwrap_or(&[]);
                if let Some(dst) = mx.get_mut(span.clone()) {
                    for (d, &w) in dst.iter_mut().zip(row) {
                        let v = w.abs() * f;
                        *d = if v > *d { v } else { *d };
                    }
                }
                if !energy {
                    continue;
                }
                let f2 = f * f;
                let Some(dst) = sq.get_mut(span) else {
                    continue;
                };
                if self.sumsq.is_empty() {
                    for (d, &w) in dst.iter_mut().zip(row) {
                        *d += w * w * f2;
                    }
                } else {
                    let row = self.sumsq.get(o * il..(o + 1) * il).unwrap_or(&[]);
                    for (d, &w) in dst.iter_mut().zip(row) {
                        *d += w * f2;
                    }
                }
            }
            (mx, sq)
        };
        let (mx, sq) = if o_n * il >= PARALLEL_ELEMENTS && o_n >= 2 {
            let parts = rayon::current_num_threads().clamp(1, o_n);
            let step = o_n.div_ceil(parts);
            (0..parts)
                .into_par_iter()
                .map(|p| rows(p * step, ((p + 1) * step).min(o_n)))
                .reduce(
                    || (vec![0f32; n], vec![0f32; if energy { n } else { 0 }]),
                    |(mut m1, mut q1), (m2, q2)| {
                        m1.iter_mut().zip(&m2).for_each(|(a, &b)| *a = a.max(b));
                        q1.iter_mut().zip(&q2).for_each(|(a, &b)| *a += b);
                        (m1, q1)
                    },
                )
        } else {
            rows(0, o_n)
        };
        (mx, sq)
    }
}

/// `s_i = sqrt(r1_i / r2_i)` per output channel of A (1 when a range is 0) with the ranges of
/// the weights as currently scaled: `r1_i = row_max_A[i] / out_s_A[i]`,
/// `r2_i = col_max_B[i] · in_s_B[i]`. Both caches must be fresh.
pub(super) fn pair_scales(a: &Layer, b: &Layer) -> Vec<f64> {
    let (Some(rows), Some(cols)) = (&a.row_max, &b.col_max) else {
        return vec![1.0; a.out_s.len()];
    };
    rows.iter()
        .zip(&a.out_s)
        .zip(cols.iter().zip(&b.in_s))
        .map(|((r, o), (c, i))| {
            let (x, y) = (r / o, c * i);
            if x > 0.0 && y > 0.0 {
                (x / y).sqrt().clamp(1e-8, 1e8)
            } else {
                1.0
            }
        })
        .collect()
}

/// Appends every `j` with `|row[j]|·s[j] ≥ t` to `out`, eight entries at a time (a
/// branch-free test per block, so that the common miss vectorizes).
fn list_at_least(row: &[f32], s: &[f32], t: f32, out: &mut Vec<u32>) {
    let n = row.len().min(s.len());
    let (row, s) = (&row[..n], &s[..n]);
    for (b, (r, f)) in row.chunks(8).zip(s.chunks(8)).enumerate() {
        let hit = r
            .iter()
            .zip(f)
            .fold(false, |h, (&w, &x)| h | (w.abs() * x >= t));
        if hit {
            for (j, (&w, &x)) in r.iter().zip(f).enumerate() {
                if w.abs() * x >= t {
                    out.push((b * 8 + j) as u32);
                }
            }
        }
    }
}

/// `max_j |row[j]|·s[j]` (`s` non-negative), with eight independent lanes so it vectorizes.
fn max_scaled(row: &[f32], s: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (rc, sc) = (row.chunks_exact(8), s.chunks_exact(8));
    let (rr, sr) = (rc.remainder(), sc.remainder());
    for (r, s) in rc.zip(sc) {
        for k in 0..8 {
            let v = r[k].abs() * s[k];
            lanes[k] = if v > lanes[k] { v } else { lanes[k] };
        }
    }
    let tail = rr
        .iter()
        .zip(sr)
        .fold(0f32, |m, (&r, &s)| m.max(r.abs() * s));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

#[cfg(test)]
mod candidate_tests {
    use super::super::layer::Layer;
    use bytes::Bytes;

    /// Seeded bell-shaped values (mean of four uniforms), as trained weights are.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.max(1);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..n).map(|_| next() + next() + next() + next()).collect()
    }

    /// Row and column maxima by brute force, in the same f32 arithmetic as the passes.
    fn brute(w: &[f32], shape: &[usize], group: usize, l: &Layer) -> (Vec<f64>, Vec<f64>) {
        let (o_n, il) = (shape[0], shape[1]);
        let k: usize = shape[2..].iter().product();
        let pgo = o_n / group;
        let mag =
            |o: usize, j: usize| (0..k).fold(0f32, |m, kk| m.max(w[(o * il + j) * k + kk].abs()));
        let rows = (0..o_n)
            .map(|o| {
                let grp = o / pgo;
                let m = (0..il).fold(0f32, |m, j| m.max(mag(o, j) * l.in_s[grp * il + j] as f32));
                f64::from(m)
            })
            .collect();
        let mut cols = vec![0f32; il * group];
        for o in 0..o_n {
            let f = (1.0 / l.out_s[o]) as f32;
            for j in 0..il {
                let c = (o / pgo) * il + j;
                cols[c] = cols[c].max(mag(o, j) * f);
            }
        }
        (rows, cols.into_iter().map(f64::from).collect())
    }

    #[test]
    fn candidate_lists_give_the_exact_maxima() {
        // 1×1 (read in place), 3×3 and grouped layers; scale moves from 0.1 % to 3×, the big
        // ones making most lists fail their test (rows and columns then walked whole).
        for (shape, group) in [
            (vec![96usize, 80, 1, 1], 1usize),
            (vec![48, 40, 3, 3], 1),
            (vec![64, 32, 1, 1], 2),
        ] {
            let n: usize = shape.iter().product();
            let w = weights(n, 7 + n as u64);
            let raw = Bytes::from(w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            let o_n = shape[0];
            let mut l = Layer::new(raw, shape.clone(), vec![0.0; o_n], group, false);
            let mut seed = 99u64;
            for (step, spread) in [0.5, 0.001, 0.01, 1.1, 0.003, 0.2, 0.0, 0.05]
                .into_iter()
                .enumerate()
            {
                for (i, s) in l.in_s.iter_mut().enumerate() {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let u = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                    *s *= (spread * u * (1 + i % 3) as f64).exp();
                }
                for (o, s) in l.out_s.iter_mut().enumerate() {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let u = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                    *s *= (spread * u * (1 + o % 2) as f64).exp();
                }
                l.row_max = None;
                l.col_max = None;
                l.refresh_row_max();
                l.refresh_columns(false);
                let (rows, cols) = brute(&w, &shape, group, &l);
                assert_eq!(
                    l.row_max.as_ref(),
                    Some(&rows),
                    "{shape:?} rows, step {step}"
                );
                assert_eq!(
                    l.col_max.as_ref(),
                    Some(&cols),
                    "{shape:?} columns, step {step}"
                );
            }
            assert!(
                l.row_candidates.is_some() && l.col_candidates.is_some(),
                "{shape:?}: the lists must be in use for this test to mean anything"
            );
        }
    }
}
