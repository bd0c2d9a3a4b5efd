//! Preprocessing presets (`--preset`): one table giving each preset's preprocessing; its input
//! range (what `quantize` uses to make the first layer integer) is computed from it.

use serde::Serialize;

use super::Preprocess;

/// A preprocessing preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Shorter side 256, centre crop 224, ImageNet mean/std, RGB (torchvision's evaluation
    /// transform).
    Imagenet,
    /// Gray, (x/255 − 0.1307)/0.3081.
    Mnist,
    /// Gray, (x/255 − 0.2860)/0.3530.
    FashionMnist,
    /// x/255.
    Unit,
    /// (x/255 − 0.5)/0.5.
    Symmetric,
    /// Raw 0..255 values.
    Pixels,
}

impl Preset {
    /// The preprocessing this preset stands for.
    #[must_use]
    pub fn preprocess(self) -> Preprocess {
        let base = Preprocess::default();
        match self {
            Preset::Imagenet => Preprocess {
                resize_shorter: Some(256),
                crop: Some((224, 224)),
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
                ..base
            },
            Preset::Mnist => Preprocess {
                mean: vec![0.1307],
                std: vec![0.3081],
                gray: true,
                ..base
            },
            Preset::FashionMnist => Preprocess {
                mean: vec![0.2860],
                std: vec![0.3530],
                gray: true,
                ..base
            },
            Preset::Unit => base,
            Preset::Symmetric => Preprocess {
                mean: vec![0.5],
                std: vec![0.5],
                ..base
            },
            Preset::Pixels => Preprocess { scale: 1.0, ..base },
        }
    }

    /// The range of the tensors this preset produces from 8-bit pixels: over channels `c`,
    /// `[min_c (0·scale − mean_c)/std_c, max_c (255·scale − mean_c)/std_c]`.
    #[must_use]
    pub fn input_range(self) -> (f32, f32) {
        self.preprocess().pixel_range()
    }
}

impl Preprocess {
    /// The range of the values this preprocessing produces from 8-bit pixels (see
    /// [`Preset::input_range`]), computed in f32 as the image pipeline computes each value;
    /// channels with a non-positive std are ignored.
    #[must_use]
    pub fn pixel_range(&self) -> (f32, f32) {
        let channels = self.mean.len().max(self.std.len()).max(1);
        let pick = |v: &[f32], c: usize| v.get(c).or_else(|| v.first()).copied().unwrap_or(0.0);
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for c in 0..channels {
            let (m, s) = (pick(&self.mean, c), pick(&self.std, c));
            if s <= 0.0 {
                continue;
            }
            for px in [0.0f32, 255.0] {
                let v = (px * self.scale - m) / s;
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        if lo > hi {
            (0.0, 0.0)
        } else {
            (lo, hi)
        }
    }
}

/// Tensor layout of image inputs (`--layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Channels first.
    #[default]
    Nchw,
    /// Channels last.
    Nhwc,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_ranges_follow_their_preprocessing() {
        let close =
            |a: (f32, f32), b: (f32, f32)| (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4;
        assert!(close(Preset::Imagenet.input_range(), (-2.1179, 2.6400)));
        assert!(close(Preset::Mnist.input_range(), (-0.4242, 2.8215)));
        assert!(close(Preset::FashionMnist.input_range(), (-0.8102, 2.0227)));
        assert_eq!(Preset::Unit.input_range(), (0.0, 1.0));
        assert_eq!(Preset::Symmetric.input_range(), (-1.0, 1.0));
        assert_eq!(Preset::Pixels.input_range(), (0.0, 255.0));
    }
}
