//! Deblocking and deringing: a camera or link that JPEG-codes its frames at the model's input
//! size leaves two artefacts that statistics adaptation cannot take out of the frame and
//! that a Gaussian low-pass blurs along with the detail: steps along the codec's 8 x 8 block
//! grid, and ringing, the ripples that coarsely quantised coefficients spread over each block
//! beside an edge (a grey haze on a black background).
//!
//! The device measures the frames' blockiness once, from a sample and without labels: the
//! mean step across block boundaries against the mean step just beside them ([`blockiness`];
//! about 1 for frames that were never block-coded, whatever they show). Only when it is
//! clearly above 1 does it filter every frame ([`deblock_planes`]): first the block
//! boundaries (where the step across a boundary is larger than the steps on either side of
//! it, it is spread over the two pixels on each side, as the H.264 in-loop filter does with a
//! block edge), then the ringing inside each block ([`dering_planes`], after MPEG-4's
//! deringing filter: each pixel smoothed with its neighbours on the same side of the block's
//! mid-level, so that the ripples flatten and the edges they lie beside stay sharp).

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

/// Deblocks every `h` x `w` plane of `image` along a `block`-pixel grid, in place: the
/// boundaries first ([`filter_boundaries`]), then the ringing inside each block
/// ([`dering_planes`]). `block` 0 leaves it alone.
pub fn deblock_planes(image: &mut [f32], h: usize, w: usize, block: usize) {
    if block < 2 || h * w == 0 {
        return;
    }
    filter_boundaries(image, h, w, block);
    dering_planes(image, h, w, block);
}

/// Where the step across a grid boundary exceeds both steps beside it, its pixels move
/// toward each other by `(4 (q0 - p0) + (p1 - q1)) / 8` (at most half the step), and the next
/// pixels out by half of that, which turns a flat-to-flat step into an even ramp over four
/// pixels.
pub fn filter_boundaries(image: &mut [f32], h: usize, w: usize, block: usize) {
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

/// Deringing, in place: within each `block` x `block` block of every `h` x `w` plane, each
/// pixel becomes the (1 2 1) x (1 2 1)-weighted mean of its 3 x 3 neighbours that lie on its
/// side of the block's mid-level (half-way between its darkest and brightest pixel). Ripples
/// on one side of an edge flatten; the edge, whose two sides are never mixed, stays.
pub fn dering_planes(image: &mut [f32], h: usize, w: usize, block: usize) {
    if block < 2 || h * w == 0 {
        return;
    }
    let mut source = alloc::vec![0.0f32; h * w];
    for plane in image.chunks_exact_mut(h * w) {
        source.copy_from_slice(plane);
        for y0 in (0..h).step_by(block) {
            for x0 in (0..w).step_by(block) {
                let rows = y0..(y0 + block).min(h);
                let cols = x0..(x0 + block).min(w);
                dering_block(&source, plane, w, rows, cols);
            }
        }
    }
}

/// [`dering_planes`] on one block (`rows` x `cols`) of a plane `w` wide: reads `source`,
/// writes `plane`.
fn dering_block(
    source: &[f32],
    plane: &mut [f32],
    w: usize,
    rows: core::ops::Range<usize>,
    cols: core::ops::Range<usize>,
) {
    let h = source.len() / w;
    let (mut low, mut high) = (f32::INFINITY, f32::NEG_INFINITY);
    for y in rows.clone() {
        for &v in &source[y * w + cols.start..y * w + cols.end] {
            low = low.min(v);
            high = high.max(v);
        }
    }
    if high <= low {
        return; // a flat block has no ripples
    }
    let mid = 0.5 * (low + high);
    const WEIGHT: [f32; 3] = [1.0, 2.0, 1.0];
    for y in rows {
        for x in cols.clone() {
            let bright = source[y * w + x] >= mid;
            let (mut sum, mut weights) = (0.0f32, 0.0f32);
            for (dy, wy) in WEIGHT.iter().enumerate() {
                for (dx, wx) in WEIGHT.iter().enumerate() {
                    let (Some(yy), Some(xx)) = ((y + dy).checked_sub(1), (x + dx).checked_sub(1))
                    else {
                        continue;
                    };
                    if yy >= h || xx >= w {
                        continue;
                    }
                    let v = source[yy * w + xx];
                    if (v >= mid) == bright {
                        sum += wy * wx * v;
                        weights += wy * wx;
                    }
                }
            }
            // The pixel itself is always on its own side: weights >= 4.
            plane[y * w + x] = sum / weights;
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
        filter_boundaries(&mut step, 1, 16, 8);
        // delta = (4 * 40 + (10 - 50)) / 8 = 15 on the boundary pixels, 7.5 on the next out.
        assert_eq!(&step[5..11], &[10.0, 17.5, 25.0, 35.0, 42.5, 50.0]);
        let mut ramp: Vec<f32> = (0..16).map(|x| 3.0 * x as f32).collect();
        let before = ramp.clone();
        filter_boundaries(&mut ramp, 1, 16, 8);
        assert_eq!(ramp, before);
    }

    #[test]
    fn deringing_flattens_ripples_beside_an_edge_and_keeps_the_edge() {
        // One 8 x 8 block: black on the left with ripples of +-6, 200 on the right with +-6.
        let ripple = |y: usize, x: usize| if (x + y).is_multiple_of(2) { 6.0 } else { -6.0 };
        let mut block: Vec<f32> = (0..64)
            .map(|i| {
                let (y, x) = (i / 8, i % 8);
                (if x < 4 { 20.0 } else { 200.0 }) + ripple(y, x)
            })
            .collect();
        dering_planes(&mut block, 8, 8, 8);
        let inner = |x: usize| (1..7).map(move |y| y * 8 + x);
        for x in [1, 2, 5, 6] {
            let level = if x < 4 { 20.0 } else { 200.0 };
            for i in inner(x) {
                assert!((block[i] - level).abs() < 2.0, "pixel {i}: {}", block[i]);
            }
        }
        // The edge between columns 3 and 4 keeps its full height.
        for y in 0..8 {
            assert!(block[y * 8 + 4] - block[y * 8 + 3] > 170.0, "row {y}");
        }
        // A flat block is left as it is.
        let mut flat = vec![7.0f32; 64];
        dering_planes(&mut flat, 8, 8, 8);
        assert!(flat.iter().all(|&v| v == 7.0));
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

    #[test]
    fn deringing_brings_jpeg_frames_closer_to_their_originals() {
        use crate::data::{shifted, ImageSet, Shift};
        // Bright rectangles on black, as Fashion-MNIST's items are: sharp edges ring.
        let (h, w) = (28, 28);
        let mut rng = Rng::new(5);
        let mut pixels = Vec::new();
        for _ in 0..40 {
            let mut r = || (rng.next_f64() * 14.0) as usize;
            let (y0, x0, y1, x1) = (r() + 2, r() + 2, r() + 12, r() + 12);
            let level = 80.0 + rng.next_f64() * 175.0;
            pixels.extend((0..h * w).map(|i| {
                let (y, x) = (i / w, i % w);
                if (y0..y1).contains(&y) && (x0..x1).contains(&x) {
                    level as u8
                } else {
                    0
                }
            }));
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
        let coded = shifted(&set, Shift::Jpeg, 2, 1);
        let error = |filter: &dyn Fn(&mut [f32])| -> f64 {
            let mut sum = 0.0;
            for i in 0..set.len() {
                let mut frame: Vec<f32> = coded.image(i).iter().map(|&v| v as f32).collect();
                filter(&mut frame);
                sum += frame
                    .iter()
                    .zip(set.image(i))
                    .map(|(a, &b)| (*a as f64 - b as f64).powi(2))
                    .sum::<f64>();
            }
            sum / (set.len() * h * w) as f64
        };
        let coded_error = error(&|_| {});
        let boundaries = error(&|f| filter_boundaries(f, h, w, 8));
        let both = error(&|f| deblock_planes(f, h, w, 8));
        let dering = error(&|f| dering_planes(f, h, w, 8));
        // The boundary filter also softens true edges that lie on the grid, and costs squared
        // error on such sharp shapes; deringing takes back more than that.
        assert!(
            dering < 0.8 * coded_error && both < 0.9 * boundaries,
            "mean squared error: coded {coded_error:.1}, boundaries filtered \
             {boundaries:.1}, deringed {dering:.1}, both {both:.1}"
        );
    }
}
