//! What the encoder's input must look like, fixed once at training time and recorded in the
//! manifest, so the board prepares pixels exactly as training did.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Channels of the images produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorMode {
    #[default]
    Gray,
    Rgb,
}

impl ColorMode {
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Gray => 1,
            ColorMode::Rgb => 3,
        }
    }
}

/// How an image is brought to the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Resize the shorter side to the target, then crop the centre: no distortion.
    #[default]
    ShorterSideCenterCrop,
    /// Resize both sides to the target, changing the aspect ratio.
    Stretch,
}

/// Pixels in, network input out: resize, colour, then `(p / 255 - mean) / std` per channel,
/// laid out as planar NCHW f32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    pub width: u32,
    pub height: u32,
    pub color: ColorMode,
    pub resize: ResizeMode,
    /// Per-channel mean and std of pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// DeepCluster's fixed grayscale + Sobel filter; it is part of the exported graph, so the
    /// board feeds the normalised colour channels either way.
    pub sobel_in_graph: bool,
}

impl PreprocessSpec {
    pub fn channels(&self) -> usize {
        self.color.channels()
    }

    /// Values per image: channels x height x width.
    pub fn image_len(&self) -> usize {
        self.channels() * self.height as usize * self.width as usize
    }

    /// Planar u8 pixels of one image (already resized) to normalised f32, in `out`.
    /// Panics if the lengths differ from [`Self::image_len`]; callers check shapes first.
    pub fn normalize_into(&self, pixels: &[u8], out: &mut [f32]) {
        let hw = self.height as usize * self.width as usize;
        assert!(pixels.len() == self.image_len() && out.len() == pixels.len());
        for ch in 0..self.channels() {
            let scale = 1.0 / (255.0 * self.std[ch]);
            let shift = self.mean[ch] / self.std[ch];
            let range = ch * hw..(ch + 1) * hw;
            for (o, &p) in out[range.clone()].iter_mut().zip(&pixels[range]) {
                *o = p as f32 * scale - shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn normalisation_matches_the_training_formula() {
        let spec = PreprocessSpec {
            width: 2,
            height: 1,
            color: ColorMode::Rgb,
            resize: ResizeMode::Stretch,
            mean: vec![0.5, 0.25, 0.0],
            std: vec![0.5, 0.25, 1.0],
            sobel_in_graph: false,
        };
        let px = [0u8, 255, 64, 128, 255, 1];
        let mut out = [0f32; 6];
        spec.normalize_into(&px, &mut out);
        for (i, (&p, &o)) in px.iter().zip(&out).enumerate() {
            let ch = i / 2;
            let want = (p as f32 / 255.0 - spec.mean[ch]) / spec.std[ch];
            assert!((o - want).abs() < 1e-6, "{i}: {o} vs {want}");
        }
    }
}
