//! Camera roll: a tilted mount turns every frame by the same angle. Statistics adaptation
//! cannot undo that (a turned frame keeps its pixel statistics, and the embedding moves in
//! ways one scale per dimension does not describe), and the trained layer only partly.
//!
//! The device estimates the angle once, from a sample of frames: the angle whose turned-back
//! frames give embeddings whose statistics come closest to the training embeddings'
//! ([`EmbeddingStats`]), searched on a coarse grid and refined around the best. A turn is
//! kept only when it beats both not turning and the opposite turn by a margin: turning back
//! interpolates, which smooths, and smoothing alone can bring noisy frames' statistics
//! closer for either sign, while a real roll favours one sign only.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::EmbeddingStats;
use crate::geometry::{rotate_planes, Border};

/// How the roll is searched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RollParams {
    /// Largest roll considered, either way (degrees).
    pub max_degrees: f32,
    /// The coarse grid's step; the search then tries half a step either side of the best.
    pub step_degrees: f32,
    /// How much lower (as a fraction) the best turn's distance must be than both not turning
    /// and the opposite turn to be kept.
    pub min_gain: f64,
}

impl Default for RollParams {
    fn default() -> Self {
        Self {
            max_degrees: 30.0,
            step_degrees: 5.0,
            min_gain: 0.1,
        }
    }
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollEstimate {
    /// The roll to undo (degrees; 0 when none was kept).
    pub degrees: f32,
    /// The statistics distance at the best angle, unturned, and at the opposite angle.
    pub distance_best: f64,
    pub distance_unturned: f64,
    pub distance_opposite: f64,
    /// Every angle tried, with its distance, in the order tried.
    pub tried: Vec<(f32, f64)>,
}

/// How far the statistics of `rows` (raw embeddings, rows of `dim`) are from `stats`: per
/// dimension, the squared standardised difference of the means plus the squared log ratio
/// of the standard deviations, averaged over the dimensions.
pub fn stats_distance(rows: &[f32], dim: usize, stats: &EmbeddingStats) -> f64 {
    let n = rows.len() / dim.max(1);
    if n == 0 || dim != stats.dim as usize {
        return f64::INFINITY;
    }
    let train_std = stats.std_f64();
    let mut total = 0.0;
    for (j, &sd) in train_std.iter().enumerate() {
        let (sum, sq) = rows.chunks_exact(dim).fold((0.0f64, 0.0f64), |(s, q), r| {
            let v = r[j] as f64;
            (s + v, q + v * v)
        });
        let mean = sum / n as f64;
        let std = libm::sqrt((sq / n as f64 - mean * mean).max(0.0)).max(1e-9);
        let sd = sd.max(1e-9);
        let z = (mean - stats.mean[j] as f64) / sd;
        let l = libm::log(std / sd);
        total += z * z + l * l;
    }
    total / dim as f64
}

/// Turns a planar frame (`h x w` planes) back by a roll of `degrees`, in place, repeating
/// the edge where the turned frame has no pixels.
pub fn undo_roll(frame: &mut [f32], h: usize, w: usize, degrees: f32) {
    if degrees != 0.0 {
        rotate_planes(frame, h, w, -degrees.to_radians(), Border::Edge);
    }
}

/// Searches the roll. `embed_undone(degrees)` returns the raw embeddings of the sample with
/// a roll of `degrees` undone ([`undo_roll`] on each frame, then whatever else the device
/// does before the encoder).
pub fn search_roll<E>(
    params: &RollParams,
    stats: &EmbeddingStats,
    mut embed_undone: impl FnMut(f32) -> Result<Vec<f32>, E>,
) -> Result<RollEstimate, E> {
    let dim = stats.dim as usize;
    let mut tried: Vec<(f32, f64)> = Vec::new();
    let mut distance_at = |deg: f32, tried: &mut Vec<(f32, f64)>| -> Result<f64, E> {
        if let Some(&(_, d)) = tried.iter().find(|(a, _)| (a - deg).abs() < 1e-4) {
            return Ok(d);
        }
        let d = stats_distance(&embed_undone(deg)?, dim, stats);
        tried.push((deg, d));
        Ok(d)
    };
    let step = params.step_degrees.max(0.1);
    let steps = libm::floorf(params.max_degrees.max(0.0) / step) as i32;
    for i in -steps..=steps {
        distance_at(i as f32 * step, &mut tried)?;
    }
    let (coarse, _) = best_of(&tried);
    for deg in [coarse - step / 2.0, coarse + step / 2.0] {
        distance_at(deg, &mut tried)?;
    }
    let (best, distance_best) = best_of(&tried);
    let distance_unturned = distance_at(0.0, &mut tried)?;
    let distance_opposite = distance_at(-best, &mut tried)?;
    let keep = 1.0 - params.min_gain;
    let kept = best != 0.0
        && distance_best < keep * distance_unturned
        && distance_best < keep * distance_opposite;
    Ok(RollEstimate {
        degrees: if kept { best } else { 0.0 },
        distance_best,
        distance_unturned,
        distance_opposite,
        tried,
    })
}

/// The angle (or width) with the lowest distance, and that distance (the first one on a
/// tie; `(0, inf)` when nothing was tried).
pub(super) fn best_of(tried: &[(f32, f64)]) -> (f32, f64) {
    tried
        .iter()
        .fold((0.0f32, f64::INFINITY), |(ba, bd), &(a, d)| {
            if d < bd {
                (a, d)
            } else {
                (ba, bd)
            }
        })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use alloc::vec;

    /// 2-d training statistics: mean 0, unit variance.
    pub(in crate::adapt) fn unit_stats() -> EmbeddingStats {
        EmbeddingStats {
            images: 100,
            dim: 2,
            mean: vec![0.0, 0.0],
            covariance: vec![1.0, 0.0, 0.0, 1.0],
        }
    }

    /// Rows with mean `m` and standard deviation `s` in both dimensions.
    pub(in crate::adapt) fn rows(m: f32, s: f32) -> Vec<f32> {
        [-1.0f32, 1.0, -1.0, 1.0]
            .iter()
            .flat_map(|&z| [m + s * z, m - s * z])
            .collect()
    }

    #[test]
    fn the_distance_is_zero_on_the_training_statistics_and_grows_with_a_shift() {
        let s = unit_stats();
        assert!(stats_distance(&rows(0.0, 1.0), 2, &s) < 1e-12);
        let shifted = stats_distance(&rows(0.5, 1.0), 2, &s);
        assert!((shifted - 0.25).abs() < 1e-9, "{shifted}");
        let wider = stats_distance(&rows(0.0, 2.0), 2, &s);
        assert!((wider - 2f64.ln().powi(2)).abs() < 1e-6, "{wider}");
    }

    /// A device whose embeddings drift from the training statistics in proportion to how far
    /// the undone roll is from `true_roll`, asymmetrically.
    fn simulated(true_roll: f32) -> impl FnMut(f32) -> Result<Vec<f32>, ()> {
        move |undone: f32| Ok(rows((true_roll - undone) / 20.0, 1.0))
    }

    #[test]
    fn the_search_finds_a_roll_off_the_coarse_grid() {
        let est = search_roll(&RollParams::default(), &unit_stats(), simulated(17.5)).unwrap();
        assert_eq!(est.degrees, 17.5, "{est:?}");
        let est = search_roll(&RollParams::default(), &unit_stats(), simulated(-20.0)).unwrap();
        assert_eq!(est.degrees, -20.0, "{est:?}");
        // 13 coarse angles and two refinements, each embedded once.
        assert_eq!(est.tried.len(), 15);
    }

    #[test]
    fn no_roll_is_kept_on_an_unturned_stream_or_a_symmetric_gain() {
        let est = search_roll(&RollParams::default(), &unit_stats(), simulated(0.0)).unwrap();
        assert_eq!(est.degrees, 0.0);
        // Turning either way helps equally (smoothing, not a roll): nothing is kept.
        let symmetric =
            |undone: f32| -> Result<Vec<f32>, ()> { Ok(rows(0.5 - undone.abs() / 100.0, 1.0)) };
        let est = search_roll(&RollParams::default(), &unit_stats(), symmetric).unwrap();
        assert_eq!(est.degrees, 0.0, "{est:?}");
        assert!(est.distance_best < est.distance_unturned);
    }

    #[test]
    fn a_failing_embedding_stops_the_search() {
        let mut calls = 0;
        let r = search_roll(&RollParams::default(), &unit_stats(), |_| {
            calls += 1;
            if calls == 3 {
                Err("encoder failed")
            } else {
                Ok(rows(0.0, 1.0))
            }
        });
        assert_eq!(r, Err("encoder failed"));
    }
}
