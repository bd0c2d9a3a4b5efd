//! Limits on every allocation whose size comes from an untrusted number: a model input's
//! declared dimensions, `--input-shape`, `--noise-batch`, `--synthetic`, `--resize`, an image's
//! header, a gzip stream. Each is checked with overflow-checked arithmetic *before* the
//! allocation, and a size over the limit is an [`Error::Limit`] naming what and how big.
//!
//! | limit | default | raise with |
//! |---|---|---|
//! | elements of one batch of inputs the tool makes or loads (noise pass, guard, synthetic inputs, one image) | 2^28 (1 GiB of f32) | `ISQUANT_MAX_ELEMENTS` |
//! | values one tract run computes (every node's output elements, summed) | 4 × the element limit (2^30) | `ISQUANT_MAX_ELEMENTS` |
//! | `--noise-batch` | 4,096 | fixed |
//! | `--synthetic` | 100,000 | fixed |
//! | image width or height (decoded or resized) | 32,768 pixels | fixed |
//! | bytes a gzip IDX file inflates to (each becomes one f32 element) | 2^28 | `ISQUANT_MAX_ELEMENTS` |
//!
//! The element limit is about memory, not about what models may be: a 640×640 detector's
//! 32-image noise batch is 39 M elements, a 4K RGB image 25 M.
//!
//! The forward-pass limit bounds the work and activation memory of one run, which the input
//! size alone does not: a text-line classifier fed one 30,000×255 image computes 1.59 G values
//! per run, and quantizing it took 49 s and 2.9 GB (found by the quantize fuzzer). For scale,
//! measured on tract's optimized graphs: the PP-OCRv4 detector at 640×640 computes 0.16 G
//! values per run (the noise pass's copy, which keeps every layer input), so at 960×960 about
//! 0.37 G and at 1280×1280 0.66 G, all within the limit; its recogniser at 48×320 0.04 G.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Default of [`max_elements`]: one f32 tensor of 1 GiB.
pub const DEFAULT_MAX_ELEMENTS: u128 = 1 << 28;
/// Most noise-pass inputs (`--noise-batch`).
pub const MAX_NOISE_BATCH: usize = 4096;
/// Most synthetic inputs (`validate --synthetic`).
pub const MAX_SYNTHETIC: usize = 100_000;
/// Largest image side, decoded or after resizing.
pub const MAX_IMAGE_SIDE: u64 = 32_768;

const RAISE: &str = "set ISQUANT_MAX_ELEMENTS to allow more";

/// The element budget: `ISQUANT_MAX_ELEMENTS` when set to a positive number, else
/// [`DEFAULT_MAX_ELEMENTS`]. Read once per process.
#[must_use]
pub fn max_elements() -> u128 {
    static LIMIT: OnceLock<u128> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("ISQUANT_MAX_ELEMENTS")
            .ok()
            .and_then(|v| v.trim().parse::<u128>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_MAX_ELEMENTS)
    })
}

/// The product of `count` and `dims`, computed without overflow, if it is within
/// [`max_elements`].
///
/// # Errors
/// [`Error::Limit`] naming `what` when the product is over the budget (or does not fit u128).
pub fn elements(what: &str, count: usize, dims: &[usize]) -> Result<usize> {
    let limit = max_elements();
    let total = dims
        .iter()
        .try_fold(count as u128, |acc, &d| acc.checked_mul(d as u128));
    match total {
        Some(t) if t <= limit => usize::try_from(t).map_err(|_| over(what, t, limit)),
        Some(t) => Err(over(what, t, limit)),
        None => Err(over(what, u128::MAX, limit)),
    }
}

fn over(what: &str, value: u128, limit: u128) -> Error {
    Error::Limit {
        what: what.to_string(),
        unit: "elements",
        value,
        limit,
        raise: RAISE,
    }
}

/// Checks that one tract run at `shapes` (the input shapes, as text) computes at most
/// 4 × [`max_elements`] values (`values`: every node's output elements, summed).
///
/// # Errors
/// [`Error::Limit`] naming the input shapes, with a hint to run a smaller shape.
pub fn forward_values(shapes: &str, values: u128) -> Result<()> {
    let limit = max_elements().saturating_mul(4);
    if values > limit {
        return Err(Error::Limit {
            what: format!(
                "one run of the model at input shape {shapes} (a smaller shape with --input-shape, where the model allows it; the limit is 4 × ISQUANT_MAX_ELEMENTS) computes"
            ),
            unit: "values",
            value: values,
            limit,
            raise: RAISE,
        });
    }
    Ok(())
}

/// `value` of the option `flag` if it is at most `limit`.
///
/// # Errors
/// [`Error::Limit`] when it is larger.
pub fn count(flag: &str, value: usize, limit: usize) -> Result<usize> {
    if value > limit {
        return Err(Error::Limit {
            what: flag.to_string(),
            unit: "asked",
            value: value as u128,
            limit: limit as u128,
            raise: "a fixed limit",
        });
    }
    Ok(value)
}

/// An image of `width`×`height` (from a file header or a resize) if both sides are within
/// [`MAX_IMAGE_SIDE`] and its RGB pixels within [`max_elements`].
///
/// # Errors
/// [`Error::Limit`] naming `what`.
pub fn image(what: &str, width: u64, height: u64) -> Result<()> {
    let side = width.max(height);
    if side > MAX_IMAGE_SIDE {
        return Err(Error::Limit {
            what: format!("{what} ({width}×{height})"),
            unit: "pixels on a side",
            value: u128::from(side),
            limit: u128::from(MAX_IMAGE_SIDE),
            raise: "a fixed limit",
        });
    }
    elements(
        what,
        3,
        &[
            usize::try_from(width).unwrap_or(usize::MAX),
            usize::try_from(height).unwrap_or(usize::MAX),
        ],
    )
    .map(|_| ())
}

/// Bytes a decompressed IDX stream may grow to: one per element of the budget (each byte
/// becomes an f32 input element).
#[must_use]
pub fn max_inflated_bytes() -> u64 {
    u64::try_from(max_elements()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_are_checked_before_they_overflow() {
        assert_eq!(
            elements("x", 32, &[3, 224, 224]).ok(),
            Some(32 * 3 * 224 * 224)
        );
        let e = elements("noise batch", 8, &[3, 30_000, 30_000]).unwrap_err();
        assert!(e.to_string().contains("noise batch"), "{e}");
        assert!(e.to_string().contains("ISQUANT_MAX_ELEMENTS"), "{e}");
        // 2^31 × 2^31 × 2^31 × 2^31 overflows u128 in no step of a naive product; a few more do
        assert!(elements("x", usize::MAX, &[usize::MAX, usize::MAX, usize::MAX]).is_err());
        assert!(elements("x", 1, &[0, 5]).is_ok());
    }

    #[test]
    fn a_forward_pass_is_limited_to_four_times_the_element_budget() {
        let limit = 4 * max_elements();
        assert!(forward_values("[1, 3, 640, 640]", limit).is_ok());
        let e = forward_values("[1, 3, 30000, 255]", limit + 1).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("[1, 3, 30000, 255]"), "{text}");
        assert!(text.contains("values"), "{text}");
        assert!(text.contains("ISQUANT_MAX_ELEMENTS"), "{text}");
    }

    #[test]
    fn counts_and_images() {
        assert!(count("--noise-batch", 32, MAX_NOISE_BATCH).is_ok());
        assert!(count("--noise-batch", 1 << 40, MAX_NOISE_BATCH).is_err());
        assert!(image("img", 640, 480).is_ok());
        assert!(image("img", 40_000, 1).is_err());
        assert!(image("img", 30_000, 30_000).is_err());
    }
}
