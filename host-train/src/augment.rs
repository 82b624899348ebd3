//! CPU augmentations, seeded per sample so a run is reproducible whatever the thread count.
//! Images are planar f32 (c, h, w) pixels in [0, 1], before normalisation, so padding is
//! black and colour operations see real colours, as in torchvision.

use models::rng::Rng;
use serde::{Deserialize, Serialize};

/// Which augmentations the training pass applies. The feature pass for clustering applies
/// none (the images are already at the network's size, so resize + centre crop is identity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Random crop after zero padding by this many pixels (0: off).
    pub crop_padding: usize,
    /// Random resized crop: scale range of the crop's area (None: off).
    pub resized_crop_scale: Option<(f32, f32)>,
    pub horizontal_flip: bool,
    /// Brightness/contrast jitter strength, 0 for none (applied per image).
    pub jitter: f32,
    /// RGB only: saturation jitter strength (blend with the grayscale image), 0 for none.
    #[serde(default)]
    pub saturation: f32,
    /// RGB only: probability of turning the image grayscale.
    #[serde(default)]
    pub grayscale_p: f32,
    /// RGB only: hue jitter strength, as a fraction of a full turn of the hue circle.
    #[serde(default)]
    pub hue: f32,
    /// Probability that the colour jitter (brightness, contrast, saturation, hue) is applied.
    #[serde(default = "always")]
    pub jitter_p: f32,
    /// Probability of a Gaussian blur.
    #[serde(default)]
    pub blur_p: f32,
    /// Range of the blur's sigma, as a fraction of the image side.
    #[serde(default = "blur_sigma")]
    pub blur_sigma: (f32, f32),
}

fn always() -> f32 {
    1.0
}

fn blur_sigma() -> (f32, f32) {
    (0.005, 0.04)
}

impl Default for AugmentConfig {
    /// Small-image defaults: pad-4 random crop, flips, mild resized crops and jitter.
    fn default() -> Self {
        Self {
            crop_padding: 2,
            resized_crop_scale: Some((0.6, 1.0)),
            horizontal_flip: true,
            jitter: 0.2,
            saturation: 0.4,
            grayscale_p: 0.2,
            hue: 0.0,
            jitter_p: 1.0,
            blur_p: 0.0,
            blur_sigma: blur_sigma(),
        }
    }
}

impl AugmentConfig {
    pub fn none() -> Self {
        Self {
            crop_padding: 0,
            resized_crop_scale: None,
            horizontal_flip: false,
            jitter: 0.0,
            saturation: 0.0,
            grayscale_p: 0.0,
            hue: 0.0,
            // Jitter strengths are 0, so this draws nothing visible; a config built from
            // `none()` with one strength set applies it every time.
            jitter_p: 1.0,
            blur_p: 0.0,
            blur_sigma: blur_sigma(),
        }
    }

    /// SimCLR/SwAV-strength views: random resized crop of 20-100% of the area, flip, colour
    /// jitter with p = 0.8 (brightness, contrast and saturation 0.4, and hue over the whole
    /// circle), grayscale with p = 0.2, Gaussian blur with p = 0.5 (sigma 0.5-4% of the
    /// side). SimCLR turns hue by at most 0.1-0.2 of the circle; a whole turn keeps an
    /// object's colour from telling two images apart (on generated scenes where colour is a
    /// nuisance, NPID's kNN after 60 epochs: 0.22 with hue 0.5, 0.20 with 0.1). Where colour
    /// is the class, lower it (`--hue`).
    pub fn strong() -> Self {
        Self {
            crop_padding: 0,
            resized_crop_scale: Some((0.2, 1.0)),
            horizontal_flip: true,
            jitter: 0.4,
            saturation: 0.4,
            grayscale_p: 0.2,
            hue: 0.5,
            jitter_p: 0.8,
            blur_p: 0.5,
            blur_sigma: blur_sigma(),
        }
    }

    /// SwAV's small multi-crop views: strong views of 5-30% of the area (at the network's
    /// input size, which the fixed-size encoders here need).
    pub fn small_crop() -> Self {
        Self {
            resized_crop_scale: Some((0.05, 0.3)),
            ..Self::strong()
        }
    }

    /// Writes an augmented copy of `src` (c, h, w) into `dst`.
    pub fn apply(&self, src: &[f32], c: usize, h: usize, w: usize, rng: &mut Rng, dst: &mut [f32]) {
        dst.copy_from_slice(src);
        let mut tmp = vec![0f32; src.len()];
        if let Some((lo, hi)) = self.resized_crop_scale {
            tmp.copy_from_slice(dst);
            resized_crop(&tmp, c, h, w, lo, hi, rng, dst);
        }
        if self.crop_padding > 0 {
            tmp.copy_from_slice(dst);
            let p = self.crop_padding as isize;
            let dy = rng.below(2 * self.crop_padding + 1) as isize - p;
            let dx = rng.below(2 * self.crop_padding + 1) as isize - p;
            shift(&tmp, c, h, w, dy, dx, dst);
        }
        if self.horizontal_flip && rng.below(2) == 1 {
            for row in dst.chunks_exact_mut(w) {
                row.reverse();
            }
        }
        if self.jitter_p > 0.0 && (rng.next_f64() as f32) < self.jitter_p {
            self.colour_jitter(dst, c, h * w, rng);
        }
        if c == 3 && self.grayscale_p > 0.0 && (rng.next_f64() as f32) < self.grayscale_p {
            blend_with_gray(dst, h * w, 0.0);
        }
        if self.blur_p > 0.0 && (rng.next_f64() as f32) < self.blur_p {
            let (lo, hi) = self.blur_sigma;
            let sigma = (lo + (hi - lo) * rng.next_f64() as f32) * h.max(w) as f32;
            gaussian_blur(dst, c, h, w, sigma, &mut tmp);
        }
    }

    /// Saturation, hue, contrast and brightness, in that order.
    fn colour_jitter(&self, dst: &mut [f32], c: usize, plane: usize, rng: &mut Rng) {
        if c == 3 && self.saturation > 0.0 {
            let s = 1.0 + self.saturation * (2.0 * rng.next_f64() as f32 - 1.0);
            blend_with_gray(dst, plane, s);
        }
        if c == 3 && self.hue > 0.0 {
            let turn = self.hue * (2.0 * rng.next_f64() as f32 - 1.0);
            rotate_hue(dst, plane, turn * std::f32::consts::TAU);
        }
        if self.jitter > 0.0 {
            let contrast = 1.0 + self.jitter * (2.0 * rng.next_f64() as f32 - 1.0);
            let brightness = self.jitter * (2.0 * rng.next_f64() as f32 - 1.0);
            for plane in dst.chunks_exact_mut(plane) {
                let mean = plane.iter().sum::<f32>() / plane.len() as f32;
                for v in plane.iter_mut() {
                    *v = (*v - mean) * contrast + mean + brightness;
                }
            }
        }
    }
}

/// Planar RGB: rotates each pixel's chroma by `angle` radians in YIQ space, which keeps its
/// luminance Y and turns its hue (one 3x3 matrix per image instead of an HSV round trip).
fn rotate_hue(rgb: &mut [f32], plane: usize, angle: f32) {
    const TO_YIQ: [[f32; 3]; 3] = [
        [0.299, 0.587, 0.114],
        [0.596, -0.274, -0.322],
        [0.211, -0.523, 0.312],
    ];
    const TO_RGB: [[f32; 3]; 3] = [
        [1.0, 0.956, 0.621],
        [1.0, -0.272, -0.647],
        [1.0, -1.106, 1.703],
    ];
    let (cos, sin) = (angle.cos(), angle.sin());
    let rot = [[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]];
    let mul = |a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]| -> [[f32; 3]; 3] {
        std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
    };
    let m = mul(&TO_RGB, &mul(&rot, &TO_YIQ));
    let (r, rest) = rgb.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let p = [r[i], g[i], b[i]];
        let dot = |row: &[f32; 3]| row[0] * p[0] + row[1] * p[1] + row[2] * p[2];
        (r[i], g[i], b[i]) = (dot(&m[0]), dot(&m[1]), dot(&m[2]));
    }
}

/// Separable Gaussian blur of each (h, w) plane in place, edges clamped; `tmp` holds the
/// horizontal pass.
fn gaussian_blur(x: &mut [f32], c: usize, h: usize, w: usize, sigma: f32, tmp: &mut [f32]) {
    let radius = (2.0 * sigma).ceil().max(1.0) as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|t| (-(t * t) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let at = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    for ch in 0..c {
        let base = ch * h * w;
        for y in 0..h {
            for xx in 0..w {
                tmp[base + y * w + xx] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, &kv)| kv * x[base + y * w + at(xx as isize + k as isize - radius, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for xx in 0..w {
                x[base + y * w + xx] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, &kv)| {
                        kv * tmp[base + at(y as isize + k as isize - radius, h) * w + xx]
                    })
                    .sum();
            }
        }
    }
}

/// Planar RGB: each pixel becomes gray + s * (pixel - gray), with ITU-R 601 luminance as
/// gray; s = 0 gives the grayscale image, s = 1 leaves it unchanged.
fn blend_with_gray(rgb: &mut [f32], plane: usize, s: f32) {
    let (r, rest) = rgb.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in 0..plane {
        let y = 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i];
        r[i] = y + s * (r[i] - y);
        g[i] = y + s * (g[i] - y);
        b[i] = y + s * (b[i] - y);
    }
}

/// Translates by (dy, dx) with zero fill: a random crop of the zero-padded image.
fn shift(src: &[f32], c: usize, h: usize, w: usize, dy: isize, dx: isize, dst: &mut [f32]) {
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            let row = &mut dst[(ch * h + y) * w..(ch * h + y + 1) * w];
            if sy < 0 || sy >= h as isize {
                row.fill(0.0);
                continue;
            }
            for (x, o) in row.iter_mut().enumerate() {
                let sx = x as isize + dx;
                *o = if sx >= 0 && sx < w as isize {
                    src[(ch * h + sy as usize) * w + sx as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

/// A crop covering a random fraction in [lo, hi] of the area (aspect 3/4..4/3), resized back
/// to h x w bilinearly.
#[allow(clippy::too_many_arguments)]
fn resized_crop(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    lo: f32,
    hi: f32,
    rng: &mut Rng,
    dst: &mut [f32],
) {
    let area = (lo + (hi - lo) * rng.next_f64() as f32) * (h * w) as f32;
    let log_ratio = (0.75f32.ln(), (4.0f32 / 3.0).ln());
    let ratio = (log_ratio.0 + (log_ratio.1 - log_ratio.0) * rng.next_f64() as f32).exp();
    let cw = ((area * ratio).sqrt()).clamp(1.0, w as f32);
    let chh = ((area / ratio).sqrt()).clamp(1.0, h as f32);
    let x0 = rng.next_f64() as f32 * (w as f32 - cw);
    let y0 = rng.next_f64() as f32 * (h as f32 - chh);
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = (y0 + (y as f32 + 0.5) * chh / h as f32 - 0.5).clamp(0.0, (h - 1) as f32);
            let (y1, fy) = (sy.floor() as usize, sy.fract());
            let y2 = (y1 + 1).min(h - 1);
            for x in 0..w {
                let sx = (x0 + (x as f32 + 0.5) * cw / w as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                let (x1, fx) = (sx.floor() as usize, sx.fract());
                let x2 = (x1 + 1).min(w - 1);
                let top = plane[y1 * w + x1] * (1.0 - fx) + plane[y1 * w + x2] * fx;
                let bottom = plane[y2 * w + x1] * (1.0 - fx) + plane[y2 * w + x2] * fx;
                dst[(ch * h + y) * w + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_identity_and_seeds_reproduce() {
        let src: Vec<f32> = (0..2 * 4 * 4).map(|i| i as f32).collect();
        let mut dst = vec![0.0; src.len()];
        AugmentConfig::none().apply(&src, 2, 4, 4, &mut Rng::new(1), &mut dst);
        assert_eq!(dst, src);
        let (mut a, mut b) = (vec![0.0; src.len()], vec![0.0; src.len()]);
        AugmentConfig::default().apply(&src, 2, 4, 4, &mut Rng::new(9), &mut a);
        AugmentConfig::default().apply(&src, 2, 4, 4, &mut Rng::new(9), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn flip_and_shift_move_pixels_as_expected() {
        let src: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 9];
        shift(&src, 1, 3, 3, 1, 0, &mut dst);
        assert_eq!(dst, vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0, 0.0]);
        let flip = AugmentConfig {
            horizontal_flip: true,
            ..AugmentConfig::none()
        };
        // Over many seeds, about half the outputs are mirrored.
        let mirrored = (0..200)
            .filter(|&s| {
                flip.apply(&src, 1, 3, 3, &mut Rng::new(s), &mut dst);
                dst[0] == 2.0
            })
            .count();
        assert!((60..140).contains(&mirrored), "{mirrored}");
    }

    #[test]
    fn grayscale_and_saturation_act_on_rgb_only() {
        // One pure-red pixel.
        let src = [1.0f32, 0.0, 0.0];
        let mut dst = [0.0f32; 3];
        let gray = AugmentConfig {
            grayscale_p: 1.0,
            ..AugmentConfig::none()
        };
        gray.apply(&src, 3, 1, 1, &mut Rng::new(0), &mut dst);
        assert!(dst.iter().all(|&v| (v - 0.299).abs() < 1e-6), "{dst:?}");
        // A grayscale image is left alone by colour operations.
        let one = [0.5f32];
        let mut out = [0.0f32];
        gray.apply(&one, 1, 1, 1, &mut Rng::new(0), &mut out);
        assert_eq!(out, one);
        // Saturation keeps luminance.
        let sat = AugmentConfig {
            saturation: 0.4,
            ..AugmentConfig::none()
        };
        sat.apply(&src, 3, 1, 1, &mut Rng::new(5), &mut dst);
        let y = 0.299 * dst[0] + 0.587 * dst[1] + 0.114 * dst[2];
        assert!((y - 0.299).abs() < 1e-6);
    }

    #[test]
    fn hue_rotation_keeps_luminance_and_a_full_turn_is_identity() {
        let src = [0.8f32, 0.3, 0.1];
        let mut px = src;
        rotate_hue(&mut px, 1, 1.0);
        let y = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        assert!((y(&px) - y(&src)).abs() < 2e-3, "{px:?}");
        assert!(
            px.iter().zip(&src).any(|(a, b)| (a - b).abs() > 0.05),
            "hue moved"
        );
        let mut full = src;
        rotate_hue(&mut full, 1, std::f32::consts::TAU);
        assert!(
            full.iter().zip(&src).all(|(a, b)| (a - b).abs() < 2e-3),
            "{full:?}"
        );
    }

    #[test]
    fn blur_keeps_the_mean_of_a_flat_image_and_smooths_an_edge() {
        let (h, w) = (6, 6);
        let mut flat = vec![0.4f32; h * w];
        let mut tmp = vec![0.0; h * w];
        gaussian_blur(&mut flat, 1, h, w, 1.0, &mut tmp);
        assert!(flat.iter().all(|&v| (v - 0.4).abs() < 1e-6));
        let mut edge: Vec<f32> = (0..h * w)
            .map(|i| if i % w < 3 { 0.0 } else { 1.0 })
            .collect();
        gaussian_blur(&mut edge, 1, h, w, 1.0, &mut tmp);
        assert!(edge[2] > 0.1 && edge[3] < 0.9, "{:?}", &edge[..w]);
    }

    #[test]
    fn strong_views_of_one_image_differ_and_keep_the_range_plausible() {
        let src: Vec<f32> = (0..3 * 16 * 16)
            .map(|i| ((i * 7) % 13) as f32 / 13.0)
            .collect();
        let strong = AugmentConfig::strong();
        let (mut a, mut b) = (vec![0.0; src.len()], vec![0.0; src.len()]);
        strong.apply(&src, 3, 16, 16, &mut Rng::new(1), &mut a);
        strong.apply(&src, 3, 16, 16, &mut Rng::new(2), &mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|v| v.is_finite() && (-2.0..3.0).contains(v)));
    }

    #[test]
    fn full_area_resized_crop_of_a_constant_image_is_constant() {
        let src = vec![0.5f32; 3 * 8 * 8];
        let mut dst = vec![0.0; src.len()];
        resized_crop(&src, 3, 8, 8, 0.3, 1.0, &mut Rng::new(3), &mut dst);
        assert!(dst.iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }
}
