//! Object pairs: the user's own objects, cut out of their images without labels, rendered
//! twice like the random figures.
//!
//! Figure pairs teach that an outline identifies a figure and colour, background and light
//! do not, but only for the outlines the generator draws. Objects of other shapes (shoes,
//! bags, tools) are what a camera sees. When an image shows one object on a background, the
//! object is usually what differs in colour from the image's border, so a cut-out can be found
//! without labels: the pixels far in colour from every border pixel (Otsu's threshold on that
//! distance), their largest connected part. Images where that finds no clear object (too small,
//! too large, scattered) give none. Each render keeps the cut-out's outline and its pattern of
//! light and dark, and draws its colour, size, place, rotation, background and light anew.

use alloc::vec;
use alloc::vec::Vec;

use super::scenes::{render, Background, Placement, SceneParams};
use crate::rng::Rng;

/// Width of the border ring whose pixels stand for the background.
const BORDER: usize = 2;
/// At most this many border pixels are compared with each pixel.
const MAX_BORDER_SAMPLES: usize = 64;
/// Bins of the Otsu histogram of colour distances.
const OTSU_BINS: usize = 64;
/// A cut-out covers at least this share of the image ...
const MIN_AREA: f32 = 0.03;
/// ... and at most this share.
const MAX_AREA: f32 = 0.6;
/// Its largest connected part holds at least this share of the far pixels.
const MIN_CONNECTED: f32 = 0.6;
/// The far pixels' mean distance exceeds the near ones' by at least this much (colour
/// values in 0-1): otherwise nothing stands out from the border.
const MIN_CONTRAST: f32 = 0.08;

/// One object cut out of an image: its mask and shading inside its bounding box.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectCutout {
    width: usize,
    height: usize,
    /// Per pixel of the box: `None` outside the object, else its brightness factor (0.6-1).
    shade: Vec<Option<f32>>,
    /// Half the box's diagonal, as a share of the image's side.
    radius: f32,
}

impl ObjectCutout {
    /// The object of one square image (planar, `channels` planes of `size * size` bytes), or
    /// `None` when no single object stands out from the image's border.
    pub fn find(planar: &[u8], channels: usize, size: usize) -> Option<Self> {
        if channels == 0 || size <= 4 * BORDER || planar.len() != channels * size * size {
            return None;
        }
        let plane = size * size;
        let colour = |p: usize| -> [f32; 3] {
            core::array::from_fn(|ch| planar[ch.min(channels - 1) * plane + p] as f32 / 255.0)
        };
        let distance = border_distance(&colour, size);
        let far = otsu_split(&distance)?;
        let part = largest_part(&far, size);
        let count = part.iter().filter(|&&f| f).count();
        let total = far.iter().filter(|&&f| f).count();
        let area = count as f32 / plane as f32;
        if !(MIN_AREA..=MAX_AREA).contains(&area) || (count as f32) < MIN_CONNECTED * total as f32 {
            return None;
        }
        let luminance = |p: usize| colour(p).iter().sum::<f32>() / 3.0;
        Some(Self::from_mask(&part, size, &luminance))
    }

    /// The cut-out of `mask` (`size * size`, at least one pixel set), shaded by `luminance`.
    fn from_mask(mask: &[bool], size: usize, luminance: &dyn Fn(usize) -> f32) -> Self {
        let (mut x0, mut y0, mut x1, mut y1) = (size, size, 0, 0);
        for (p, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
            let (x, y) = (p % size, p / size);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        let (width, height) = (x1 + 1 - x0, y1 + 1 - y0);
        let inside = |x: usize, y: usize| mask[(y0 + y) * size + x0 + x];
        let lum: Vec<f32> = (0..height * width)
            .filter(|&i| inside(i % width, i / width))
            .map(|i| luminance((y0 + i / width) * size + x0 + i % width))
            .collect();
        let lo = lum.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = lum.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // A flat object keeps its one tone; otherwise its darkest pixel gets 0.6, its lightest 1.
        let tone = |l: f32| {
            if hi - lo > 0.05 {
                0.6 + 0.4 * (l - lo) / (hi - lo)
            } else {
                1.0
            }
        };
        let shade = (0..height * width)
            .map(|i| {
                let (x, y) = (i % width, i / width);
                inside(x, y).then(|| tone(luminance((y0 + y) * size + x0 + x)))
            })
            .collect();
        let diagonal = libm::sqrtf((width * width + height * height) as f32);
        Self {
            width,
            height,
            shade,
            radius: 0.5 * diagonal / size as f32,
        }
    }

    /// The brightness factor at (x, y) of the object's own frame (unit circumradius: the
    /// box's half diagonal), `None` outside it.
    fn shade_at(&self, x: f32, y: f32) -> Option<f32> {
        let half_diagonal =
            0.5 * libm::sqrtf((self.width * self.width + self.height * self.height) as f32);
        let px = 0.5 * self.width as f32 + x * half_diagonal;
        let py = 0.5 * self.height as f32 + y * half_diagonal;
        if px < 0.0 || py < 0.0 {
            return None;
        }
        let (px, py) = (px as usize, py as usize);
        if px >= self.width || py >= self.height {
            return None;
        }
        self.shade[py * self.width + px]
    }

    /// One render of this object, planar RGB (`3 * size * size` bytes): colour, a size
    /// within a fifth of its own, place, rotation, mirroring, background and light drawn
    /// from `rng`.
    pub fn render(&self, params: &SceneParams, rng: &mut Rng) -> Vec<u8> {
        let radius = (self.radius * 0.8).min(0.5);
        let sized = SceneParams {
            radius: (radius, (self.radius * 1.2).clamp(radius, 0.5)),
            ..*params
        };
        let placement = Placement::draw(&sized, rng);
        let background = Background::draw(rng, Background::ALL_KINDS);
        let mirror = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        render(
            params.size,
            &|x, y| self.shade_at(x, mirror * y),
            &placement,
            &background,
            rng,
        )
    }
}

/// A pretraining pair: two renders of one cut-out, planar RGB, `3 * size * size` bytes each.
pub fn render_object_pair(
    object: &ObjectCutout,
    params: &SceneParams,
    rng: &mut Rng,
) -> [Vec<u8>; 2] {
    [object.render(params, rng), object.render(params, rng)]
}

/// Each pixel's colour distance to the nearest of (up to [`MAX_BORDER_SAMPLES`]) pixels of
/// the image's border ring.
fn border_distance(colour: &dyn Fn(usize) -> [f32; 3], size: usize) -> Vec<f32> {
    let ring: Vec<usize> = (0..size * size)
        .filter(|&p| {
            let (x, y) = (p % size, p / size);
            x.min(y) < BORDER || x.max(y) >= size - BORDER
        })
        .collect();
    let step = ring.len().div_ceil(MAX_BORDER_SAMPLES);
    let samples: Vec<[f32; 3]> = ring.iter().step_by(step).map(|&p| colour(p)).collect();
    (0..size * size)
        .map(|p| {
            let c = colour(p);
            let nearest = samples
                .iter()
                .map(|s| (0..3).map(|k| (c[k] - s[k]) * (c[k] - s[k])).sum::<f32>())
                .fold(f32::INFINITY, f32::min);
            libm::sqrtf(nearest)
        })
        .collect()
}

/// Otsu's split of `values` into near and far (`true`), or `None` when the far side is not
/// [`MIN_CONTRAST`] further than the near one.
fn otsu_split(values: &[f32]) -> Option<Vec<bool>> {
    let max = values.iter().copied().fold(0.0f32, f32::max);
    if max <= 0.0 {
        return None;
    }
    let bin = |v: f32| (((v / max) * OTSU_BINS as f32) as usize).min(OTSU_BINS - 1);
    let mut hist = [0usize; OTSU_BINS];
    let mut sums = [0f32; OTSU_BINS];
    for &v in values {
        hist[bin(v)] += 1;
        sums[bin(v)] += v;
    }
    let (n, total) = (values.len() as f32, sums.iter().sum::<f32>());
    let (mut best, mut best_score, mut below, mut below_sum) = (0, 0.0f32, 0usize, 0.0f32);
    for t in 0..OTSU_BINS - 1 {
        below += hist[t];
        below_sum += sums[t];
        let above = values.len() - below;
        if below == 0 || above == 0 {
            continue;
        }
        let (m0, m1) = (below_sum / below as f32, (total - below_sum) / above as f32);
        let score = below as f32 / n * (above as f32 / n) * (m1 - m0) * (m1 - m0);
        if score > best_score {
            (best, best_score) = (t, score);
        }
    }
    let far: Vec<bool> = values.iter().map(|&v| bin(v) > best).collect();
    let (near_n, far_n) = far.iter().fold((0.0f32, 0.0f32), |(a, b), &f| {
        if f {
            (a, b + 1.0)
        } else {
            (a + 1.0, b)
        }
    });
    let far_mean = values
        .iter()
        .zip(&far)
        .filter(|(_, &f)| f)
        .map(|(v, _)| v)
        .sum::<f32>()
        / far_n.max(1.0);
    let near_mean = values
        .iter()
        .zip(&far)
        .filter(|(_, &f)| !f)
        .map(|(v, _)| v)
        .sum::<f32>()
        / near_n.max(1.0);
    (far_n > 0.0 && far_mean - near_mean >= MIN_CONTRAST).then_some(far)
}

/// The largest 4-connected part of `mask` (`size * size`).
fn largest_part(mask: &[bool], size: usize) -> Vec<bool> {
    let mut part = vec![0u32; mask.len()];
    let (mut best, mut best_count, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || part[start] != 0 {
            continue;
        }
        next += 1;
        part[start] = next;
        stack.push(start);
        let mut count = 0;
        while let Some(p) = stack.pop() {
            count += 1;
            let (x, y) = (p % size, p / size);
            let around = [
                (x > 0).then(|| p - 1),
                (x + 1 < size).then(|| p + 1),
                (y > 0).then(|| p - size),
                (y + 1 < size).then(|| p + size),
            ];
            for q in around.into_iter().flatten() {
                if mask[q] && part[q] == 0 {
                    part[q] = next;
                    stack.push(q);
                }
            }
        }
        if count > best_count {
            (best, best_count) = (next, count);
        }
    }
    part.iter().map(|&l| l != 0 && l == best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::render_scene;

    /// A `size` square gray image: value `ground`, with a `w x h` block of `object` at (x, y).
    fn block(
        size: usize,
        ground: u8,
        object: u8,
        (x, y, w, h): (usize, usize, usize, usize),
    ) -> Vec<u8> {
        let mut img = vec![ground; size * size];
        for yy in y..y + h {
            for xx in x..x + w {
                img[yy * size + xx] = object;
            }
        }
        img
    }

    #[test]
    fn a_block_on_a_plain_ground_is_cut_out_whole() {
        let img = block(32, 40, 200, (8, 10, 12, 6));
        let cut = ObjectCutout::find(&img, 1, 32).expect("an object");
        assert_eq!((cut.width, cut.height), (12, 6));
        assert!(cut.shade.iter().all(|s| *s == Some(1.0)), "one flat tone");
        // Its frame's centre is inside, a point past its half diagonal is not.
        assert_eq!(cut.shade_at(0.0, 0.0), Some(1.0));
        assert_eq!(cut.shade_at(1.1, 0.0), None);
    }

    #[test]
    fn images_without_one_clear_object_give_none() {
        assert_eq!(ObjectCutout::find(&[90u8; 32 * 32], 1, 32), None, "plain");
        let big = block(32, 40, 200, (1, 1, 30, 30));
        assert_eq!(ObjectCutout::find(&big, 1, 32), None, "covers the image");
        let speck = block(32, 40, 200, (10, 10, 2, 2));
        assert_eq!(ObjectCutout::find(&speck, 1, 32), None, "too small");
        assert_eq!(ObjectCutout::find(&[0u8; 10], 1, 32), None, "wrong length");
    }

    #[test]
    fn generated_scenes_mostly_give_their_shape() {
        let params = SceneParams {
            size: 32,
            ..Default::default()
        };
        let mut rng = Rng::new(4);
        let (mut found, mut sensible) = (0, 0);
        for i in 0..60 {
            let class = i % params.classes;
            let img = render_scene(&params, class, &mut rng);
            if let Some(cut) = ObjectCutout::find(&img, 3, 32) {
                found += 1;
                // The radius drawn for scenes is 0.22-0.40 of the side.
                sensible += usize::from((0.12..0.5).contains(&cut.radius));
            }
        }
        assert!(found >= 30, "{found} of 60 scenes gave a cut-out");
        assert!(
            sensible * 10 >= found * 8,
            "{sensible} of {found} of a plausible size"
        );
    }

    #[test]
    fn a_pair_keeps_the_object_and_a_seed_fixes_it() {
        let img = block(24, 30, 220, (5, 6, 10, 8));
        let cut = ObjectCutout::find(&img, 1, 24).unwrap();
        let params = SceneParams {
            size: 24,
            ..Default::default()
        };
        let [a, b] = render_object_pair(&cut, &params, &mut Rng::new(2));
        assert_eq!(a.len(), 3 * 24 * 24);
        assert_ne!(a, b);
        assert_eq!([a, b], render_object_pair(&cut, &params, &mut Rng::new(2)));
    }
}
