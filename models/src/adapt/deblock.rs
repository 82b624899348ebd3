//! Deblocking: a camera or link that JPEG-codes its frames at the model's input size leaves
//! steps along the codec's 8 x 8 block grid, fine-grained artefacts that statistics
//! adaptation cannot take out of the frame and that a Gaussian low-pass blurs along with
//! the detail.
//!
//! The device measures the frames' blockiness once, from a sample and without labels: the
//! mean step across block boundaries against the mean step just beside them ([`blockiness`];
//! about 1 for frames that were never block-coded, whatever they show). Only when it is
//! clearly above 1 does it filter every frame's block boundaries ([`deblock_planes`]): where
//! the step across a boundary is larger than the steps on either side of it, it is spread
//! over the two pixels on each side, as the H.264 in-loop filter does with a block edge.

use serde::{Deserialize, Serialize};

use crate::geometry::map_as_f32;

/// How the blockiness is judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeblockParams {
    /// The codec's block size (pixels): 8 for JPEG.
    pub block: u32,
    /// Blockiness at or above which every frame is deblocked.
    pub min_ratio: f64,
}

impl Default for DeblockParams {
    fn default() -> Self {
        Self {
            block: 8,
            // Frames that were never block-coded measure 0.97-1.03 (Fashion-MNIST under every
            // shift of the shift benchmark but JPEG); JPEG at quality 20 measures 1.3.
            min_ratio: 1.2,
        }
    }
}

/// What the measurement found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeblockEstimate {
    /// The sample's blockiness ([`blockiness`]).
    pub ratio: f64,
    /// The block size filtered: 0 when the frames are left alone.
    pub block: u32,
}

impl DeblockEstimate {
    /// Measures `frames` (planes of `h` x `w`, `u8`) and decides.
    pub fn of_frames<'a>(
        params: &DeblockParams,
        frames: impl IntoIterator<Item = &'a [u8]>,
        h: usize,
        w: usize,
    ) -> Self {
        let block = params.block as usize;
        let ratio = blockiness(frames, h, w, block);
        let on = block >= 4 && ratio >= params.min_ratio;
        Self {
            ratio,
            block: if on { params.block } else { 0 },
        }
    }
}

/// The block boundaries of a line of `n` pixels with two pixels on the left of each and one
/// on the right: the first pixel of each block after the first.
fn boundaries(n: usize, block: usize) -> impl Iterator<Item = usize> {
    (1..)
        .map(move |k| k * block.max(1))
        .take_while(move |&x| x + 1 < n)
        .filter(|&x| x >= 2)
}

/// The indices in an `h` x `w` plane of the four pixels `[p1, p0, q0, q1]` around each grid
/// boundary (it runs between `p0` and `q0`): the vertical boundaries along every row first,
/// then the horizontal ones along every column, the order H.264 filters in.
fn boundary_pixels(h: usize, w: usize, block: usize) -> impl Iterator<Item = [usize; 4]> {
    let across_rows = (0..h).flat_map(move |y| {
        boundaries(w, block).map(move |x| {
            let i = y * w + x;
            [i - 2, i - 1, i, i + 1]
        })
    });
    let across_columns = (0..w).flat_map(move |x| {
        boundaries(h, block).map(move |y| {
            let i = y * w + x;
            [i - 2 * w, i - w, i, i + w]
        })
    });
    across_rows.chain(across_columns)
}

/// Blockiness of `frames` (each a stack of `h` x `w` planes): the mean absolute step across
/// the `block`-pixel grid's boundaries over the mean step between the boundary pixels and
/// their inner neighbours. 1 when the frames have no grid (or no steps at all).
pub fn blockiness<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    h: usize,
    w: usize,
    block: usize,
) -> f64 {
    if h * w == 0 || block < 2 {
        return 1.0;
    }
    let (mut across, mut beside) = (0.0f64, 0.0f64);
    for frame in frames {
        for plane in frame.chunks_exact(h * w) {
            for quad in boundary_pixels(h, w, block) {
                let [p1, p0, q0, q1] = quad.map(|i| plane[i] as f64);
                across += (q0 - p0).abs();
                beside += 0.5 * ((p0 - p1).abs() + (q1 - q0).abs());
            }
        }
    }
    if across == 0.0 {
        return 1.0;
    }
    // Steps between u8 pixels are at least 0.5 where there are any: the floor only keeps
    // frames with steps on the grid alone finite.
    across / beside.max(1e-3)
}

/// Deblocks every `h` x `w` plane of `image` along a `block`-pixel grid, in place: where the
/// step across a boundary exceeds both steps beside it, its pixels move toward each other
/// by `(4 (q0 - p0) + (p1 - q1)) / 8` (at most half the step), and the next pixels out by
/// half of that, which turns a flat-to-flat step into an even ramp over four pixels.
/// `block` 0 leaves it alone.
pub fn deblock_planes(image: &mut [f32], h: usize, w: usize, block: usize) {
    if block < 2 || h * w == 0 {
        return;
    }
    for plane in image.chunks_exact_mut(h * w) {
        for [i1, i0, j0, j1] in boundary_pixels(h, w, block) {
            let (p1, p0, q0, q1) = (plane[i1], plane[i0], plane[j0], plane[j1]);
            let step = q0 - p0;
            if step.abs() <= (p0 - p1).abs() || step.abs() <= (q1 - q0).abs() {
                continue;
            }
            let half = 0.5 * step.abs();
            let delta = ((4.0 * step + (p1 - q1)) / 8.0).clamp(-half, half);
            plane[i0] = p0 + delta;
            plane[j0] = q0 - delta;
            plane[i1] = p1 + 0.5 * delta;
            plane[j1] = q1 - 0.5 * delta;
        }
    }
}

/// [`deblock_planes`] on `u8` planes (stored thumbnails), rounded back.
pub fn deblock_planes_u8(image: &mut [u8], h: usize, w: usize, block: usize) {
    if block < 2 {
        return;
    }
    map_as_f32(image, |planes| deblock_planes(planes, h, w, block));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use alloc::vec;
    use alloc::vec::Vec;

    /// `n` planes of `h` x `w` whose every 8 x 8 block is flat, at a random level.
    fn block_coded(n: usize, h: usize, w: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let levels: Vec<u8> = (0..h.div_ceil(8) * w.div_ceil(8))
                    .map(|_| ((rng.next_f64() as f32) * 255.0) as u8)
                    .collect();
                (0..h * w)
                    .map(|i| levels[(i / w / 8) * w.div_ceil(8) + (i % w) / 8])
                    .collect()
            })
            .collect()
    }

    fn noise(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                (0..len)
                    .map(|_| ((rng.next_f64() as f32) * 255.0) as u8)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn frames_without_a_grid_measure_about_one_and_block_coded_ones_far_above() {
        let p = DeblockParams::default();
        let plain = noise(20, 28 * 28, 1);
        let est = DeblockEstimate::of_frames(&p, plain.iter().map(Vec::as_slice), 28, 28);
        assert!((est.ratio - 1.0).abs() < 0.1, "{}", est.ratio);
        assert_eq!(est.block, 0);
        let coded = block_coded(20, 28, 28, 2);
        let est = DeblockEstimate::of_frames(&p, coded.iter().map(Vec::as_slice), 28, 28);
        assert!(est.ratio > 100.0, "{}", est.ratio);
        assert_eq!(est.block, 8);
        // All-black frames have no steps at all: nothing to say, no grid.
        let black = [vec![0u8; 28 * 28]];
        assert_eq!(blockiness(black.iter().map(Vec::as_slice), 28, 28, 8), 1.0);
    }

    #[test]
    fn a_flat_step_on_a_boundary_becomes_an_even_ramp_and_a_linear_ramp_is_kept() {
        // One row of 16: 10 on the first block, 50 on the second.
        let mut step: Vec<f32> = (0..16).map(|x| if x < 8 { 10.0 } else { 50.0 }).collect();
        deblock_planes(&mut step, 1, 16, 8);
        // delta = (4 * 40 + (10 - 50)) / 8 = 15 on the boundary pixels, 7.5 on the next out.
        assert_eq!(&step[5..11], &[10.0, 17.5, 25.0, 35.0, 42.5, 50.0]);
        let mut ramp: Vec<f32> = (0..16).map(|x| 3.0 * x as f32).collect();
        let before = ramp.clone();
        deblock_planes(&mut ramp, 1, 16, 8);
        assert_eq!(ramp, before);
    }

    #[test]
    fn deblocking_takes_most_of_the_grid_out_of_block_coded_frames() {
        let mut coded = block_coded(10, 28, 28, 3);
        let before = blockiness(coded.iter().map(Vec::as_slice), 28, 28, 8);
        coded
            .iter_mut()
            .for_each(|f| deblock_planes_u8(f, 28, 28, 8));
        let after = blockiness(coded.iter().map(Vec::as_slice), 28, 28, 8);
        assert!(after < 2.0 && after < before / 50.0, "{before} -> {after}");
    }

    #[test]
    fn jpeg_at_low_quality_is_found_and_the_clean_and_blurred_images_are_not() {
        use crate::data::{shifted, ImageSet, Shift};
        // Smooth random blobs, as a camera sees them: no grid of their own.
        let (h, w) = (28, 28);
        let mut rng = Rng::new(4);
        let mut pixels = Vec::new();
        for _ in 0..40 {
            let (cy, cx) = (
                (rng.next_f64() as f32) * h as f32,
                (rng.next_f64() as f32) * w as f32,
            );
            let r = 4.0 + (rng.next_f64() as f32) * 8.0;
            for y in 0..h {
                for x in 0..w {
                    let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    pixels.push((255.0 * libm::expf(-d2 / (2.0 * r * r))) as u8);
                }
            }
        }
        let set = ImageSet {
            pixels,
            channels: 1,
            height: h,
            width: w,
            labels: None,
            class_names: Vec::new(),
            paths: Vec::new(),
            skipped: Vec::new(),
        };
        let measure = |s: &ImageSet| blockiness((0..s.len()).map(|i| s.image(i)), h, w, 8);
        let clean = measure(&set);
        let blurred = measure(&shifted(&set, Shift::Blur, 2, 1));
        let jpeg = measure(&shifted(&set, Shift::Jpeg, 2, 1));
        let min = DeblockParams::default().min_ratio;
        assert!(clean < min && blurred < min, "{clean} {blurred}");
        assert!(jpeg >= min, "{jpeg}");
    }
}
