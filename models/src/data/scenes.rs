//! Generated RGB scenes for testing whether an encoder learns objects rather than nuisances.
//!
//! The class of a scene is the shape of its one object. Everything else is drawn at random
//! and carries no class information: the object's colour, size, position and rotation, the
//! background (stripes, checks, smooth blotches or a gradient, in random colours, with a few
//! small distractor marks), and the lighting (a brightness ramp, a colour cast and sensor
//! noise). Pixel k-means on such scenes groups by colour and background, which is the failure
//! a camera-trained encoder must avoid.

use crate::rng::Rng;

/// The object shapes, in class order.
pub const SCENE_SHAPES: [&str; 8] = [
    "disc", "square", "triangle", "cross", "ring", "star", "ellipse", "ell",
];

/// What to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneParams {
    /// Side of the square images, in pixels.
    pub size: usize,
    /// Number of classes: the first this many of [`SCENE_SHAPES`].
    pub classes: usize,
    /// Smallest and largest object radius, as a fraction of the image side.
    pub radius: (f32, f32),
}

impl Default for SceneParams {
    fn default() -> Self {
        Self {
            size: 64,
            classes: 6,
            radius: (0.22, 0.40),
        }
    }
}

impl SceneParams {
    /// `None` when the parameters cannot draw a scene: fewer than 2 or more than 8 classes,
    /// images under 8 pixels, or a radius range outside (0, 0.5].
    pub fn validate(&self) -> Option<Self> {
        let (lo, hi) = self.radius;
        let ok = (2..=SCENE_SHAPES.len()).contains(&self.classes)
            && self.size >= 8
            && lo > 0.0
            && lo <= hi
            && hi <= 0.5;
        ok.then_some(*self)
    }
}

/// One scene of class `class` (`< params.classes`): planar RGB, `3 * size * size` bytes.
pub fn render_scene(params: &SceneParams, class: usize, rng: &mut Rng) -> Vec<u8> {
    let placement = Placement::draw(params, rng);
    let background = Background::draw(rng, Background::SCENE_KINDS);
    render(
        params.size,
        &|x, y| inside_shape(class, x, y),
        &placement,
        &background,
        rng,
    )
}

/// The figure whose outline is `outline` (a test in the figure's own frame, unit
/// circumradius), at `placement`, on `background`, under lighting and marks drawn from `rng`.
pub(super) fn render(
    size: usize,
    outline: &dyn Fn(f32, f32) -> bool,
    placement: &Placement,
    background: &Background,
    rng: &mut Rng,
) -> Vec<u8> {
    let s = size;
    let light = Lighting::draw(rng);
    let marks = Marks::draw(rng);
    let mut out = vec![0u8; 3 * s * s];
    // 2x2 samples per pixel, for smooth edges.
    const OFFSETS: [f32; 2] = [0.25, 0.75];
    for y in 0..s {
        for x in 0..s {
            let mut rgb = [0f32; 3];
            for oy in OFFSETS {
                for ox in OFFSETS {
                    let (u, v) = ((x as f32 + ox) / s as f32, (y as f32 + oy) / s as f32);
                    let (fx, fy) = placement.to_figure_frame(u, v);
                    let c = if outline(fx, fy) {
                        placement.colour
                    } else if let Some(c) = marks.colour_at(u, v) {
                        c
                    } else {
                        background.colour_at(u, v)
                    };
                    rgb.iter_mut().zip(c).for_each(|(a, c)| *a += 0.25 * c);
                }
            }
            let (u, v) = ((x as f32 + 0.5) / s as f32, (y as f32 + 0.5) / s as f32);
            for (ch, value) in rgb.iter().enumerate() {
                let lit = light.apply(*value, ch, u, v, rng);
                out[(ch * s + y) * s + x] = (lit.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
        }
    }
    out
}

pub(super) fn uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.next_f64() as f32
}

/// A random colour from hue, saturation and value.
pub(super) fn random_colour(rng: &mut Rng) -> [f32; 3] {
    hsv(
        uniform(rng, 0.0, 1.0),
        uniform(rng, 0.2, 1.0),
        uniform(rng, 0.15, 1.0),
    )
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.fract() * 6.0).min(5.999);
    let (i, f) = (h6 as usize, h6.fract());
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Where the one figure sits, how large, how turned, and in which colour.
pub(super) struct Placement {
    centre: (f32, f32),
    radius: f32,
    /// cos and sin of the rotation.
    rotation: (f32, f32),
    colour: [f32; 3],
}

impl Placement {
    pub(super) fn draw(params: &SceneParams, rng: &mut Rng) -> Self {
        let radius = uniform(rng, params.radius.0, params.radius.1);
        let margin = radius * 0.9;
        let angle = uniform(rng, 0.0, core::f32::consts::TAU);
        Self {
            centre: (
                uniform(rng, margin, 1.0 - margin),
                uniform(rng, margin, 1.0 - margin),
            ),
            radius,
            rotation: (libm::cosf(angle), libm::sinf(angle)),
            colour: random_colour(rng),
        }
    }

    /// Image point (u, v), both in [0, 1], in the figure's own frame.
    fn to_figure_frame(&self, u: f32, v: f32) -> (f32, f32) {
        let (dx, dy) = (
            (u - self.centre.0) / self.radius,
            (v - self.centre.1) / self.radius,
        );
        let (c, s) = self.rotation;
        (c * dx + s * dy, -s * dx + c * dy)
    }
}

/// Whether (x, y), in the shape's own frame (unit circumradius), lies inside shape `shape`.
fn inside_shape(shape: usize, x: f32, y: f32) -> bool {
    let r = libm::sqrtf(x * x + y * y);
    match shape {
        0 => r < 0.9,
        1 => x.abs().max(y.abs()) < 0.7,
        2 => (0..3).all(|k| {
            let a = core::f32::consts::FRAC_PI_2 + k as f32 * core::f32::consts::TAU / 3.0;
            x * libm::cosf(a) + y * libm::sinf(a) < 0.5
        }),
        3 => (x.abs() < 0.28 && y.abs() < 0.95) || (y.abs() < 0.28 && x.abs() < 0.95),
        4 => (0.55..0.95).contains(&r),
        5 => {
            // Five points: the radius runs from 1 at each point to 0.42 between them.
            let sector = core::f32::consts::TAU / 5.0;
            let t = (libm::atan2f(y, x) + core::f32::consts::TAU) % sector / sector;
            r < 0.42 + 0.58 * (2.0 * (t - 0.5).abs()).powi(2)
        }
        6 => (x / 0.95).powi(2) + (y / 0.45).powi(2) < 1.0,
        _ => {
            ((-0.75..-0.3).contains(&x) && y.abs() < 0.9)
                || ((0.45..0.9).contains(&y) && x.abs() < 0.75)
        }
    }
}

/// Background textures.
pub(super) enum Background {
    /// Two colours in bands of a period, at an angle.
    Stripes {
        a: [f32; 3],
        b: [f32; 3],
        period: f32,
        dir: (f32, f32),
    },
    /// Two colours in squares of a period, rotated.
    Checks {
        a: [f32; 3],
        b: [f32; 3],
        period: f32,
        dir: (f32, f32),
    },
    /// A smooth blend of two colours by a sum of sinusoids.
    Blotches {
        a: [f32; 3],
        b: [f32; 3],
        waves: [(f32, f32, f32); 3],
    },
    /// A linear ramp between two colours.
    Gradient {
        a: [f32; 3],
        b: [f32; 3],
        dir: (f32, f32),
    },
    /// Two colours blended by smooth value noise on a grid of `NOISE_GRID` cells a side.
    Noise {
        a: [f32; 3],
        b: [f32; 3],
        grid: [f32; NOISE_GRID * NOISE_GRID],
    },
}

const NOISE_GRID: usize = 6;

impl Background {
    /// The kinds scenes draw from: stripes, checks, blotches, gradient.
    pub(super) const SCENE_KINDS: usize = 4;
    /// Every kind: the scenes' and value noise.
    pub(super) const ALL_KINDS: usize = 5;

    /// One of the first `kinds` kinds, in random colours.
    pub(super) fn draw(rng: &mut Rng, kinds: usize) -> Self {
        let (a, b) = (random_colour(rng), random_colour(rng));
        let angle = uniform(rng, 0.0, core::f32::consts::PI);
        let dir = (libm::cosf(angle), libm::sinf(angle));
        match rng.below(kinds) {
            0 => Self::Stripes {
                a,
                b,
                period: uniform(rng, 0.06, 0.25),
                dir,
            },
            1 => Self::Checks {
                a,
                b,
                period: uniform(rng, 0.08, 0.3),
                dir,
            },
            2 => {
                let mut wave = || {
                    let t = uniform(rng, 0.0, core::f32::consts::TAU);
                    let f = uniform(rng, 2.0, 9.0);
                    (f * libm::cosf(t), f * libm::sinf(t), uniform(rng, 0.0, 6.3))
                };
                Self::Blotches {
                    a,
                    b,
                    waves: [wave(), wave(), wave()],
                }
            }
            3 => Self::Gradient { a, b, dir },
            _ => Self::Noise {
                a,
                b,
                grid: core::array::from_fn(|_| rng.next_f64() as f32),
            },
        }
    }

    fn colour_at(&self, u: f32, v: f32) -> [f32; 3] {
        let mix = |a: &[f32; 3], b: &[f32; 3], t: f32| -> [f32; 3] {
            core::array::from_fn(|i| a[i] + (b[i] - a[i]) * t)
        };
        match self {
            Self::Stripes { a, b, period, dir } => {
                let t = (u * dir.0 + v * dir.1) / period;
                if libm::floorf(t) as i64 % 2 == 0 {
                    *a
                } else {
                    *b
                }
            }
            Self::Checks { a, b, period, dir } => {
                let (p, q) = (u * dir.0 + v * dir.1, -u * dir.1 + v * dir.0);
                let parity = libm::floorf(p / period) as i64 + libm::floorf(q / period) as i64;
                if parity.rem_euclid(2) == 0 {
                    *a
                } else {
                    *b
                }
            }
            Self::Blotches { a, b, waves } => {
                let s: f32 = waves
                    .iter()
                    .map(|(fx, fy, ph)| libm::sinf(fx * u + fy * v + ph))
                    .sum();
                mix(a, b, 0.5 + s / 6.0)
            }
            Self::Gradient { a, b, dir } => {
                let t = ((u - 0.5) * dir.0 + (v - 0.5) * dir.1) * core::f32::consts::SQRT_2;
                mix(a, b, 0.5 + 0.5 * t)
            }
            Self::Noise { a, b, grid } => mix(a, b, bilinear(grid, u, v)),
        }
    }
}

/// `grid` (row-major, `NOISE_GRID` a side, spanning the unit square) at (u, v), with a
/// smoothstep between cells so the blend has no creases.
fn bilinear(grid: &[f32; NOISE_GRID * NOISE_GRID], u: f32, v: f32) -> f32 {
    let last = (NOISE_GRID - 1) as f32;
    let (gx, gy) = (u.clamp(0.0, 1.0) * last, v.clamp(0.0, 1.0) * last);
    let (x0, y0) = (
        (gx as usize).min(NOISE_GRID - 2),
        (gy as usize).min(NOISE_GRID - 2),
    );
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let (tx, ty) = (smooth(gx - x0 as f32), smooth(gy - y0 as f32));
    let at = |x: usize, y: usize| grid[y * NOISE_GRID + x];
    let top = at(x0, y0) + (at(x0 + 1, y0) - at(x0, y0)) * tx;
    let bottom = at(x0, y0 + 1) + (at(x0 + 1, y0 + 1) - at(x0, y0 + 1)) * tx;
    top + (bottom - top) * ty
}

/// A short bar: its centre, its direction (cos, sin) and its colour.
type Mark = ((f32, f32), (f32, f32), [f32; 3]);

/// A few small distractor marks (short bars) on the background.
struct Marks {
    marks: Vec<Mark>,
}

impl Marks {
    fn draw(rng: &mut Rng) -> Self {
        let n = rng.below(5);
        let marks = (0..n)
            .map(|_| {
                let angle = uniform(rng, 0.0, core::f32::consts::PI);
                (
                    (uniform(rng, 0.0, 1.0), uniform(rng, 0.0, 1.0)),
                    (libm::cosf(angle), libm::sinf(angle)),
                    random_colour(rng),
                )
            })
            .collect();
        Self { marks }
    }

    fn colour_at(&self, u: f32, v: f32) -> Option<[f32; 3]> {
        self.marks.iter().find_map(|&((cx, cy), (c, s), colour)| {
            let (dx, dy) = (u - cx, v - cy);
            let (along, across) = (c * dx + s * dy, -s * dx + c * dy);
            (along.abs() < 0.07 && across.abs() < 0.015).then_some(colour)
        })
    }
}

/// Scene-wide lighting: a brightness ramp, a colour cast, and sensor noise.
struct Lighting {
    gain: [f32; 3],
    ramp: (f32, f32),
    ramp_strength: f32,
    noise: f32,
}

impl Lighting {
    fn draw(rng: &mut Rng) -> Self {
        let base = uniform(rng, 0.55, 1.25);
        let angle = uniform(rng, 0.0, core::f32::consts::TAU);
        Self {
            gain: core::array::from_fn(|_| base * uniform(rng, 0.8, 1.2)),
            ramp: (libm::cosf(angle), libm::sinf(angle)),
            ramp_strength: uniform(rng, 0.0, 0.6),
            noise: uniform(rng, 0.0, 0.05),
        }
    }

    fn apply(&self, value: f32, channel: usize, u: f32, v: f32, rng: &mut Rng) -> f32 {
        let ramp = 1.0 + self.ramp_strength * ((u - 0.5) * self.ramp.0 + (v - 0.5) * self.ramp.1);
        let noise = self.noise * (2.0 * rng.next_f64() as f32 - 1.0);
        value * self.gain[channel] * ramp + noise
    }
}

/// `per_class` scenes of each class, interleaved (class 0, 1, ..., 0, 1, ...), with their
/// labels; image `i` depends only on `seed` and `i`.
pub fn render_scenes(params: &SceneParams, per_class: usize, seed: u64) -> (Vec<u8>, Vec<u32>) {
    let n = per_class * params.classes;
    let mut pixels = Vec::with_capacity(n * 3 * params.size * params.size);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % params.classes;
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        pixels.extend(render_scene(params, class, &mut rng));
        labels.push(class as u32);
    }
    (pixels, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_vary_in_colour() {
        let p = SceneParams {
            size: 24,
            ..Default::default()
        };
        let (a, la) = render_scenes(&p, 3, 5);
        let (b, lb) = render_scenes(&p, 3, 5);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        assert_eq!(
            la,
            vec![0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
        );
        assert_eq!(a.len(), 18 * 3 * 24 * 24);
        let (c, _) = render_scenes(&p, 3, 6);
        assert_ne!(a, c, "another seed draws other scenes");
        // Two scenes of one class differ in mean colour: colour is a nuisance.
        let mean =
            |img: &[u8]| -> f32 { img.iter().map(|&v| v as f32).sum::<f32>() / img.len() as f32 };
        let len = 3 * 24 * 24;
        assert!((mean(&a[..len]) - mean(&a[6 * len..7 * len])).abs() > 1.0);
    }

    #[test]
    fn each_shape_covers_a_distinct_part_of_the_unit_disc() {
        // Sample the shape frame on a grid; no two shapes cover the same points.
        let grid: Vec<(f32, f32)> = (0..40)
            .flat_map(|i| (0..40).map(move |j| (i as f32 / 20.0 - 1.0, j as f32 / 20.0 - 1.0)))
            .collect();
        let masks: Vec<Vec<bool>> = (0..SCENE_SHAPES.len())
            .map(|s| grid.iter().map(|&(x, y)| inside_shape(s, x, y)).collect())
            .collect();
        for (s, m) in masks.iter().enumerate() {
            let area = m.iter().filter(|&&b| b).count();
            assert!(area > 100, "{} covers {area} points", SCENE_SHAPES[s]);
            for (t, other) in masks.iter().enumerate().skip(s + 1) {
                let differ = m.iter().zip(other).filter(|(a, b)| a != b).count();
                assert!(
                    differ > 100,
                    "{} vs {}: {differ}",
                    SCENE_SHAPES[s],
                    SCENE_SHAPES[t]
                );
            }
        }
    }

    #[test]
    fn bad_params_are_refused() {
        let d = SceneParams::default();
        assert!(d.validate().is_some());
        assert!(SceneParams { classes: 1, ..d }.validate().is_none());
        assert!(SceneParams { classes: 9, ..d }.validate().is_none());
        assert!(SceneParams { size: 4, ..d }.validate().is_none());
        assert!(SceneParams {
            radius: (0.3, 0.6),
            ..d
        }
        .validate()
        .is_none());
    }
}
