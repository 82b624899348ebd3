//! Augmented views of a stored frame for the adapter's objective: mild, label-preserving
//! changes (a horizontal flip, a shift of a few pixels, brightness and contrast), so that
//! two views of one frame differ in what the camera varies but not in what the frame shows.
//! Planar u8 images, as the bank's thumbnails are.

use alloc::vec::Vec;

use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    /// Flip left-right with probability 1/2.
    pub flip: bool,
    /// Largest shift, as a share of the side.
    pub shift: f32,
    /// Largest brightness change, as a share of full scale.
    pub brightness: f32,
    /// Largest relative contrast change around the image's mean.
    pub contrast: f32,
}

impl Default for ViewParams {
    fn default() -> Self {
        Self {
            flip: true,
            shift: 0.1,
            brightness: 0.2,
            contrast: 0.3,
        }
    }
}

/// One random view of `pixels` (`channels` planes of `height` x `width`).
pub fn view(
    pixels: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    params: &ViewParams,
    rng: &mut Rng,
) -> Vec<u8> {
    let flip = params.flip && rng.next_f64() < 0.5;
    let max_dx = (params.shift * width as f32) as i64;
    let max_dy = (params.shift * height as f32) as i64;
    let mut offset = |m: i64| {
        if m == 0 {
            0
        } else {
            rng.below(2 * m as usize + 1) as i64 - m
        }
    };
    let (dx, dy) = (offset(max_dx), offset(max_dy));
    let uniform = |rng: &mut Rng, a: f32| (2.0 * rng.next_f64() as f32 - 1.0) * a;
    let gain = 1.0 + uniform(rng, params.contrast);
    let bias = uniform(rng, params.brightness) * 255.0;
    let mut out = Vec::with_capacity(pixels.len());
    for plane in pixels.chunks_exact(height * width).take(channels) {
        let mean = plane.iter().map(|&p| p as f32).sum::<f32>() / plane.len().max(1) as f32;
        for y in 0..height as i64 {
            // Edge pixels repeat where the shift uncovers the border.
            let sy = (y - dy).clamp(0, height as i64 - 1) as usize;
            for x in 0..width as i64 {
                let x = if flip { width as i64 - 1 - x } else { x };
                let sx = (x - dx).clamp(0, width as i64 - 1) as usize;
                let v = plane[sy * width + sx] as f32;
                out.push(((v - mean) * gain + mean + bias).clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_the_shape_and_vary_with_the_seed() {
        let (c, h, w) = (3, 8, 10);
        let img: Vec<u8> = (0..c * h * w).map(|i| (i * 7 % 256) as u8).collect();
        let p = ViewParams::default();
        let a = view(&img, c, h, w, &p, &mut Rng::new(1));
        let b = view(&img, c, h, w, &p, &mut Rng::new(2));
        assert_eq!(a.len(), img.len());
        assert_ne!(a, b);
        assert_eq!(a, view(&img, c, h, w, &p, &mut Rng::new(1)));
        // With nothing to vary, the view is the image.
        let none = ViewParams {
            flip: false,
            shift: 0.0,
            brightness: 0.0,
            contrast: 0.0,
        };
        assert_eq!(view(&img, c, h, w, &none, &mut Rng::new(3)), img);
    }
}
