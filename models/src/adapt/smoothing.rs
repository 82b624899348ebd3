//! Input smoothing: a Gaussian low-pass in front of the encoder, for a camera whose frames
//! carry fine-grained artefacts the training images did not have (sensor noise, JPEG
//! blocks). Statistics adaptation rescales what the encoder makes of those artefacts but
//! cannot take them out of the frame; a low-pass can, at the price of some detail.
//!
//! As with the roll ([`super::roll`]), the device picks the smoothing once, from a sample
//! of frames and without labels: the Gaussian width whose smoothed frames give embeddings
//! whose statistics come closest to the training embeddings' ([`stats_distance`]). It is kept
//! only when it beats not smoothing by a margin, so a camera as sharp and clean as the
//! training images is left alone: smoothing its frames moves their statistics away.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::roll::{best_of, stats_distance};
use super::EmbeddingStats;

/// How the smoothing is searched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SmoothingParams {
    /// Widest Gaussian tried (pixels); the widths tried are `step`, `2 step`, ... up to it.
    pub max_sigma: f32,
    pub step: f32,
    /// How much lower (as a fraction) the best width's distance must be than not smoothing's
    /// to be kept.
    pub min_gain: f64,
}

impl Default for SmoothingParams {
    fn default() -> Self {
        Self {
            max_sigma: 1.2,
            step: 0.3,
            min_gain: 0.1,
        }
    }
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothingEstimate {
    /// The Gaussian width every frame is smoothed by (pixels; 0 when none was kept).
    pub sigma: f32,
    /// The statistics distance at the best width, and without smoothing.
    pub distance_best: f64,
    pub distance_unsmoothed: f64,
    /// Every width tried, with its distance, in the order tried.
    pub tried: Vec<(f32, f64)>,
}

/// Searches the smoothing. `embed_smoothed(sigma)` returns the raw embeddings of the sample
/// with every frame smoothed by a Gaussian of `sigma` pixels (none at 0; then whatever else
/// the device does before the encoder).
pub fn search_smoothing<E>(
    params: &SmoothingParams,
    stats: &EmbeddingStats,
    mut embed_smoothed: impl FnMut(f32) -> Result<Vec<f32>, E>,
) -> Result<SmoothingEstimate, E> {
    let dim = stats.dim as usize;
    let step = params.step.max(0.05);
    let widths = libm::floorf(params.max_sigma.max(0.0) / step + 1e-4) as usize;
    let mut tried = Vec::with_capacity(widths + 1);
    for i in 0..=widths {
        let sigma = i as f32 * step;
        tried.push((sigma, stats_distance(&embed_smoothed(sigma)?, dim, stats)));
    }
    let (best, distance_best) = best_of(&tried);
    let distance_unsmoothed = tried[0].1;
    let kept = best > 0.0 && distance_best < (1.0 - params.min_gain) * distance_unsmoothed;
    Ok(SmoothingEstimate {
        sigma: if kept { best } else { 0.0 },
        distance_best,
        distance_unsmoothed,
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::super::roll::tests::{rows, unit_stats};
    use super::*;

    /// A device whose embeddings drift from the training statistics by how far the
    /// smoothing is from what undoes its artefacts (`needed`; 0 for a clean camera).
    fn simulated(needed: f32) -> impl FnMut(f32) -> Result<Vec<f32>, ()> {
        move |sigma: f32| Ok(rows((needed - sigma).abs(), 1.0))
    }

    #[test]
    fn the_search_finds_the_width_that_undoes_the_artefacts() {
        let p = SmoothingParams::default();
        let est = search_smoothing(&p, &unit_stats(), simulated(0.6)).unwrap();
        assert!((est.sigma - 0.6).abs() < 1e-6, "{est:?}");
        // 0, 0.3, 0.6, 0.9 and 1.2, each embedded once.
        assert_eq!(est.tried.len(), 5);
        assert!(est.distance_best < est.distance_unsmoothed);
    }

    #[test]
    fn a_clean_camera_or_a_small_gain_is_left_unsmoothed() {
        let p = SmoothingParams::default();
        let est = search_smoothing(&p, &unit_stats(), simulated(0.0)).unwrap();
        assert_eq!(est.sigma, 0.0, "{est:?}");
        // Smoothing helps by 5%, under the 10% margin: not kept.
        let slight = |sigma: f32| -> Result<Vec<f32>, ()> {
            Ok(rows(if sigma > 0.0 { 0.975 } else { 1.0 }, 1.0))
        };
        let est = search_smoothing(&p, &unit_stats(), slight).unwrap();
        assert_eq!(est.sigma, 0.0, "{est:?}");
        assert!(est.distance_best < est.distance_unsmoothed);
    }

    #[test]
    fn an_embedding_error_stops_the_search() {
        let mut calls = 0;
        let failing = |sigma: f32| -> Result<Vec<f32>, &str> {
            calls += 1;
            if sigma > 0.5 {
                Err("encoder failed")
            } else {
                Ok(rows(0.0, 1.0))
            }
        };
        let err = search_smoothing(&SmoothingParams::default(), &unit_stats(), failing);
        assert_eq!(err.unwrap_err(), "encoder failed");
        assert_eq!(calls, 3);
    }
}
