//! Random figures: procedurally drawn outlines that belong to no class (smooth blobs, convex
//! polygons, stars, unions of bars, some with a hole), rendered on random backgrounds under
//! random lighting like the scenes. Two renders of one figure share nothing but its
//! outline: colour, size, position, rotation, mirroring, background, marks and lighting are
//! all drawn again. A network trained to match such pairs learns that a figure's outline
//! is what identifies it and the rest is nuisance, without ever seeing a user's classes.

use super::scenes::{render, uniform, Background, Placement, SceneParams};
use crate::rng::Rng;

/// Harmonics of a blob's radius function.
const HARMONICS: usize = 6;
/// Most bars in a union of bars.
const MAX_BARS: usize = 3;

/// One bar of a union: centre, direction (cos, sin), half length and half width.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bar {
    centre: (f32, f32),
    dir: (f32, f32),
    half_length: f32,
    half_width: f32,
}

#[derive(Debug, Clone, PartialEq)]
enum Outline {
    /// Radius 0.85 (1 + sum_k amplitude_k cos(k theta + phase_k)).
    Blob {
        amplitude: [f32; HARMONICS],
        phase: [f32; HARMONICS],
    },
    /// A regular polygon of `sides` (convex when `inner` is 1), or a star whose radius dips
    /// to `inner` between its points.
    Polygon {
        sides: u32,
        inner: f32,
    },
    Bars {
        bars: [Bar; MAX_BARS],
        count: usize,
    },
}

/// A random figure: an outline, perhaps with a round hole of radius `hole`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    outline: Outline,
    hole: Option<f32>,
}

impl Figure {
    /// A figure of a random kind (blob, polygon or star, bars), with a hole one time in five.
    pub fn draw(rng: &mut Rng) -> Self {
        let outline = match rng.below(3) {
            0 => {
                let decay = uniform(rng, 0.5, 1.5);
                Outline::Blob {
                    amplitude: core::array::from_fn(|k| {
                        uniform(rng, 0.0, 0.35) / libm::powf((k + 1) as f32, decay)
                    }),
                    phase: core::array::from_fn(|_| uniform(rng, 0.0, core::f32::consts::TAU)),
                }
            }
            1 => Outline::Polygon {
                sides: 3 + rng.below(6) as u32,
                inner: if rng.below(2) == 0 {
                    uniform(rng, 0.35, 1.0)
                } else {
                    1.0
                },
            },
            _ => {
                let count = 2 + rng.below(MAX_BARS - 1);
                let bars = core::array::from_fn(|_| {
                    let angle = uniform(rng, 0.0, core::f32::consts::PI);
                    Bar {
                        centre: (uniform(rng, -0.5, 0.5), uniform(rng, -0.5, 0.5)),
                        dir: (libm::cosf(angle), libm::sinf(angle)),
                        half_length: uniform(rng, 0.4, 1.0),
                        half_width: uniform(rng, 0.12, 0.3),
                    }
                });
                Outline::Bars { bars, count }
            }
        };
        let hole = (rng.below(5) == 0).then(|| uniform(rng, 0.27, 0.54));
        Self { outline, hole }
    }

    /// Whether (x, y), in the figure's own frame (about unit circumradius), lies inside.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let r = libm::sqrtf(x * x + y * y);
        if self.hole.is_some_and(|h| r < h) {
            return false;
        }
        let theta = libm::atan2f(y, x);
        match &self.outline {
            Outline::Blob { amplitude, phase } => {
                let wobble: f32 = (0..HARMONICS)
                    .map(|k| amplitude[k] * libm::cosf((k + 1) as f32 * theta + phase[k]))
                    .sum();
                r < 0.85 * (1.0 + wobble)
            }
            Outline::Polygon { sides, inner } if *inner < 1.0 => {
                let sector = core::f32::consts::TAU / *sides as f32;
                let t = (theta + core::f32::consts::TAU) % sector / sector;
                r < 0.95 * (inner + (1.0 - inner) * (2.0 * (t - 0.5)).powi(2))
            }
            Outline::Polygon { sides, .. } => {
                let n = *sides as f32;
                let apothem = 0.9 * libm::cosf(core::f32::consts::PI / n);
                (0..*sides).all(|k| {
                    let a = core::f32::consts::FRAC_PI_2 + k as f32 * core::f32::consts::TAU / n;
                    x * libm::cosf(a) + y * libm::sinf(a) < apothem
                })
            }
            Outline::Bars { bars, count } => bars[..*count].iter().any(|b| {
                let (dx, dy) = (x - b.centre.0, y - b.centre.1);
                let along = dx * b.dir.0 + dy * b.dir.1;
                let across = -dx * b.dir.1 + dy * b.dir.0;
                along.abs() < b.half_length && across.abs() < b.half_width
            }),
        }
    }

    /// One render of this figure, planar RGB (`3 * size * size` bytes): everything but the
    /// outline drawn from `rng`, mirrored half the time.
    pub fn render(&self, params: &SceneParams, rng: &mut Rng) -> alloc::vec::Vec<u8> {
        let placement = Placement::draw(params, rng);
        let background = Background::draw(rng, Background::ALL_KINDS);
        let mirror = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        render(
            params.size,
            &|x, y| self.contains(x, mirror * y),
            &placement,
            &background,
            rng,
        )
    }
}

/// A pretraining pair: two renders of one random figure, planar RGB, `3 * size * size`
/// bytes each.
pub fn render_figure_pair(params: &SceneParams, rng: &mut Rng) -> [alloc::vec::Vec<u8>; 2] {
    let figure = Figure::draw(rng);
    [figure.render(params, rng), figure.render(params, rng)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(f: &Figure) -> usize {
        (0..40)
            .flat_map(|i| (0..40).map(move |j| (i as f32 / 20.0 - 1.0, j as f32 / 20.0 - 1.0)))
            .filter(|&(x, y)| f.contains(x, y))
            .count()
    }

    #[test]
    fn figures_are_visible_and_differ_from_each_other() {
        let mut rng = Rng::new(3);
        let figures: alloc::vec::Vec<Figure> = (0..50).map(|_| Figure::draw(&mut rng)).collect();
        for f in &figures {
            let a = area(f);
            // Every figure covers a real part of its frame and leaves some of it empty.
            assert!((40..1500).contains(&a), "{f:?} covers {a} of 1600 points");
        }
        let distinct = figures
            .windows(2)
            .filter(|w| area(&w[0]) != area(&w[1]))
            .count();
        assert!(distinct > 40, "{distinct}");
    }

    #[test]
    fn a_pair_shares_the_outline_but_not_the_rendering() {
        let p = SceneParams {
            size: 24,
            ..Default::default()
        };
        let [a, b] = render_figure_pair(&p, &mut Rng::new(9));
        assert_eq!(a.len(), 3 * 24 * 24);
        assert_ne!(a, b, "the two renders redraw colour, place and background");
        let again = render_figure_pair(&p, &mut Rng::new(9));
        assert_eq!([a, b], again, "a seed fixes the pair");
    }
}
