//! The guard's own inputs: seeded, data-free, in three families.
//!
//! | family | what | why |
//! |---|---|---|
//! | `noise` | i.i.d. per element: N(0, 1), or U[lo, hi) when the input range is known | what the noise pass sees |
//! | `smooth` | grey value noise: 6 octaves of bilinear-upsampled random grids, amplitude halving per octave, mapped to [lo, hi] | natural images are spatially correlated and their channels move together |
//! | `strokes` | a light background with dark horizontal and vertical bars, same in every channel | documents, text lines, digits: flat regions and sharp edges |
//!
//! A family's inputs are shaped like one model input without its batch dimension. Spatial
//! axes: the last two of a rank-3 sample whose first axis has at most 4 entries (`C×H×W`), the
//! first two when the last has at most 4 (`H×W×C`, NHWC exports), else the last two. Rank-1
//! and rank-2 samples get noise-like values in every family (there is no image to draw).
//!
//! `[lo, hi]` is `--input-range` (or the preset's) when given, else `[−1, 1]`: the range of
//! normalised images, which is what the noise pass assumes too.

use ndarray::{ArrayD, IxDyn};

use crate::inputs::Sample;
use crate::rng::SplitMix64;

/// The input families, in the order they are reported.
pub const FAMILIES: [&str; 3] = ["noise", "smooth", "strokes"];

/// `count` seeded samples of `family` (one of [`FAMILIES`]) of shape `shape` (no batch
/// dimension), in `range` (`None`: `[−1, 1]`, and N(0, 1) for `noise`).
#[must_use]
pub fn family(
    family: &str,
    shape: &[usize],
    count: usize,
    range: Option<(f32, f32)>,
    seed: u64,
) -> Vec<Sample> {
    let (lo, hi) = range.unwrap_or((-1.0, 1.0));
    (0..count)
        .map(|k| {
            let mut rng = SplitMix64::new(seed ^ (0x9E37_79B9 * (k as u64 + 1)) ^ tag(family));
            let tensor = match (family, layout(shape)) {
                ("smooth", Some(l)) => draw(shape, l, |h, w| smooth(h, w, &mut rng), lo, hi),
                ("strokes", Some(l)) => draw(shape, l, |h, w| strokes(h, w, &mut rng), lo, hi),
                _ if range.is_some() => {
                    ArrayD::from_shape_simple_fn(IxDyn(shape), || lo + (hi - lo) * rng.unit_f32())
                }
                _ => crate::rng::seeded_normal(shape, rng.next_u64()),
            };
            Sample {
                name: format!("guard-{family}#{k}"),
                tensor,
                label: None,
            }
        })
        .collect()
}

/// A per-family seed offset, so the families do not share random streams.
fn tag(family: &str) -> u64 {
    family.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Where the image axes are: `(channel axis, height axis, width axis)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    channel: usize,
    height: usize,
    width: usize,
}

fn layout(shape: &[usize]) -> Option<Layout> {
    match shape {
        [c, _, _] if *c <= 4 => Some(Layout {
            channel: 0,
            height: 1,
            width: 2,
        }),
        [_, _, c] if *c <= 4 => Some(Layout {
            channel: 2,
            height: 0,
            width: 1,
        }),
        [_, _, _] => Some(Layout {
            channel: 0,
            height: 1,
            width: 2,
        }),
        _ => None,
    }
}

/// One grey `h×w` plane in `[0, 1]` from `plane`, copied to every channel and mapped to
/// `[lo, hi]`.
fn draw(
    shape: &[usize],
    l: Layout,
    mut plane: impl FnMut(usize, usize) -> Vec<f32>,
    lo: f32,
    hi: f32,
) -> ArrayD<f32> {
    let (h, w) = (shape[l.height], shape[l.width]);
    let p = plane(h, w);
    ArrayD::from_shape_fn(IxDyn(shape), |ix| {
        let v = p[ix[l.height] * w + ix[l.width]];
        lo + (hi - lo) * v
    })
}

/// Value noise: octaves `k = 0..6` of a `(2^k + 1)²` random grid, bilinearly upsampled,
/// weighted `2^−k`, then normalised to `[0, 1]`.
fn smooth(h: usize, w: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for k in 0..6u32 {
        let g = (1usize << k) + 1;
        let grid: Vec<f32> = (0..g * g).map(|_| rng.unit_f32()).collect();
        let amp = 0.5f32.powi(k as i32);
        for y in 0..h {
            let fy = y as f32 / h.max(2).saturating_sub(1) as f32 * (g - 1) as f32;
            let (y0, ty) = (fy.floor() as usize, fy.fract());
            let y1 = (y0 + 1).min(g - 1);
            for x in 0..w {
                let fx = x as f32 / w.max(2).saturating_sub(1) as f32 * (g - 1) as f32;
                let (x0, tx) = (fx.floor() as usize, fx.fract());
                let x1 = (x0 + 1).min(g - 1);
                let top = grid[y0 * g + x0] * (1.0 - tx) + grid[y0 * g + x1] * tx;
                let bottom = grid[y1 * g + x0] * (1.0 - tx) + grid[y1 * g + x1] * tx;
                out[y * w + x] += amp * (top * (1.0 - ty) + bottom * ty);
            }
        }
    }
    let (mn, mx) = out
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (mx - mn).max(1e-6);
    out.iter_mut().for_each(|v| *v = (*v - mn) / span);
    out
}

/// A background in `[0.8, 1]` with 10–60 dark bars (`[0, 0.4]`), horizontal or vertical, of
/// length up to half the height and thickness up to `h/16 + 1`.
fn strokes(h: usize, w: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let background = 0.8 + 0.2 * rng.unit_f32();
    let mut out = vec![background; h * w];
    let bars = 10 + rng.below(51);
    for _ in 0..bars {
        let (y, x) = (rng.below(h.max(1)), rng.below(w.max(1)));
        let len = 2 + rng.below((h / 2).max(1));
        let thick = 1 + rng.below(h / 16 + 1);
        let v = 0.4 * rng.unit_f32();
        let (dy, dx) = if rng.below(2) == 0 {
            (thick, len)
        } else {
            (len, thick)
        };
        for yy in y..(y + dy).min(h) {
            for xx in x..(x + dx).min(w) {
                out[yy * w + xx] = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_seeded_shaped_and_in_range() {
        for fam in FAMILIES {
            let a = family(fam, &[3, 16, 24], 2, Some((0.0, 255.0)), 7);
            let b = family(fam, &[3, 16, 24], 2, Some((0.0, 255.0)), 7);
            assert_eq!(a.len(), 2);
            assert_eq!(a[0].tensor, b[0].tensor, "{fam} is not deterministic");
            assert_ne!(a[0].tensor, a[1].tensor, "{fam} repeats itself");
            assert_eq!(a[0].tensor.shape(), &[3, 16, 24]);
            assert!(a[0]
                .tensor
                .iter()
                .all(|v| (0.0..=255.0).contains(v) && v.is_finite()));
        }
    }

    #[test]
    fn images_are_grey_and_nhwc_is_recognised() {
        let s = family("smooth", &[8, 8, 3], 1, None, 1);
        let t = &s[0].tensor;
        for y in 0..8 {
            for x in 0..8 {
                assert_eq!(t[[y, x, 0]], t[[y, x, 2]]);
            }
        }
        // Neighbouring pixels of the smooth family are close (spatial correlation).
        let s = family("smooth", &[1, 64, 64], 1, None, 1);
        let t = &s[0].tensor;
        let mut d = 0f32;
        for x in 0..63 {
            d += (t[[0, 10, x]] - t[[0, 10, x + 1]]).abs();
        }
        assert!(d / 63.0 < 0.1, "mean neighbour step {}", d / 63.0);
    }
}
