//! On-device adaptation of a frozen encoder's embeddings to a camera that drifts from the
//! training data, without labels. no_std + alloc, so an MCU could run it.
//!
//! [`InputStats`] re-normalises each preprocessed frame from the running statistics of what the
//! device sees (AdaBN at the input), before the encoder. Then two stages, applied in this
//! order to each raw embedding before clustering:
//! - [`Recentring`]: forward-only statistics adaptation (AdaBN-style; the encoder's
//!   BatchNorm is folded, so the device re-centres the embeddings instead): per dimension
//!   ([`StatsAdapter`]) or with the full covariance ([`WhiteningAdapter`]), onto the training
//!   embeddings' [`EmbeddingStats`].
//! - [`LinearAdapter`]: a trained d x d layer, initialised to the identity, trained from
//!   stored frames by SwAV's swapped prediction against the online centroids ([`swapped`]),
//!   with views from [`views`].
//!
//! Before all of these, [`roll`] can undo a tilted mount: it estimates the camera's roll once,
//! from the training embeddings' statistics, and turns each frame back. [`smoothing`] picks,
//! the same way, a Gaussian low-pass against fine-grained artefacts (noise, JPEG blocks).
//! First of all, [`deblock`] measures whether the frames carry a codec's block grid and, if
//! they do, filters its boundaries.

pub mod deblock;
mod export;
mod input;
mod linear;
pub mod roll;
pub mod smoothing;
mod stats;
pub mod swapped;
pub mod views;
mod whiten;

use alloc::vec::Vec;

pub use export::AdapterExport;
pub use input::InputStats;
pub use linear::{LinearAdapter, LinearGrad};
pub use stats::{RunningStats, StatsAdapter};
pub use whiten::{matrix_power, symmetric_eigen, RunningCovariance, WhiteningAdapter};

use serde::{Deserialize, Serialize};

/// The file beside an exported model's manifest that holds its training embeddings'
/// statistics.
pub const EMBEDDING_STATS_FILE: &str = "embedding-stats.json";

/// Mean and covariance of an encoder's raw (not normalised) embeddings of its training images:
/// where statistics adaptation maps the device's embeddings back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingStats {
    pub images: u64,
    pub dim: u32,
    pub mean: Vec<f32>,
    /// Row-major dim x dim.
    pub covariance: Vec<f32>,
}

impl EmbeddingStats {
    /// Statistics of `rows` (rows of `dim`).
    pub fn of_rows(rows: &[f32], dim: usize) -> Self {
        let mut s = RunningCovariance::new(dim, 0);
        rows.chunks_exact(dim).for_each(|r| s.observe(r));
        Self::from_running(&s)
    }

    pub fn from_running(s: &RunningCovariance) -> Self {
        Self {
            images: s.count,
            dim: s.dim() as u32,
            mean: s.mean.iter().map(|&v| v as f32).collect(),
            covariance: s.cov.iter().map(|&v| v as f32).collect(),
        }
    }

    /// Whether the lengths agree with `dim`.
    pub fn is_consistent(&self) -> bool {
        let d = self.dim as usize;
        self.mean.len() == d && self.covariance.len() == d * d
    }

    fn mean_f64(&self) -> Vec<f64> {
        self.mean.iter().map(|&v| v as f64).collect()
    }

    pub(crate) fn std_f64(&self) -> Vec<f64> {
        let d = self.dim as usize;
        (0..d)
            .map(|i| libm::sqrt(self.covariance[i * d + i].max(0.0) as f64))
            .collect()
    }
}

/// How the running statistics map the embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecentringKind {
    /// Per dimension: mean and standard deviation.
    Diagonal,
    /// Mean and full covariance (re-whitening).
    Full,
}

/// Statistics adaptation of either kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Recentring {
    Diagonal(StatsAdapter),
    Full(WhiteningAdapter),
}

/// Rows between recomputations of the full map.
const WHITENING_REFRESH: u64 = 250;

impl Recentring {
    /// Adapts towards `train`, over a window of `window` rows, after `warmup` rows.
    pub fn new(kind: RecentringKind, train: &EmbeddingStats, window: u64, warmup: u64) -> Self {
        match kind {
            RecentringKind::Diagonal => Recentring::Diagonal(StatsAdapter::new(
                train.mean_f64(),
                train.std_f64(),
                window,
                warmup,
            )),
            RecentringKind::Full => {
                let cov: Vec<f64> = train.covariance.iter().map(|&v| v as f64).collect();
                Recentring::Full(WhiteningAdapter::new(
                    train.mean_f64(),
                    &cov,
                    window,
                    warmup,
                    WHITENING_REFRESH,
                ))
            }
        }
    }

    pub fn kind(&self) -> RecentringKind {
        match self {
            Recentring::Diagonal(_) => RecentringKind::Diagonal,
            Recentring::Full(_) => RecentringKind::Full,
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Recentring::Diagonal(a) => a.dim(),
            Recentring::Full(a) => a.dim(),
        }
    }

    /// Observes each row, then maps it in place.
    pub fn observe_and_adapt(&mut self, rows: &mut [f32]) {
        match self {
            Recentring::Diagonal(a) => a.observe_and_adapt(rows),
            Recentring::Full(a) => a.observe_and_adapt(rows),
        }
    }

    /// Maps each row in place with what has been seen, without observing it.
    pub fn adapt_rows(&self, rows: &mut [f32]) {
        let d = self.dim();
        for row in rows.chunks_exact_mut(d) {
            match self {
                Recentring::Diagonal(a) => {
                    if a.seen.count > a.warmup {
                        a.adapt(row)
                    }
                }
                Recentring::Full(a) => a.adapt(row),
            }
        }
    }

    /// Rows observed.
    pub fn seen(&self) -> u64 {
        match self {
            Recentring::Diagonal(a) => a.seen.count,
            Recentring::Full(a) => a.seen.count,
        }
    }

    /// The current map as `(matrix, offset)`, row-major, `x' = matrix x + offset`; the
    /// identity before the warm-up ends. For export to the host.
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let d = self.dim();
        let mut m = alloc::vec![0.0f32; d * d];
        let mut o = alloc::vec![0.0f32; d];
        match self {
            Recentring::Diagonal(a) => {
                // x' = s x + c per dimension: read s and c off the map of 0 and 1.
                let mut zero = alloc::vec![0.0f32; d];
                let mut one = alloc::vec![1.0f32; d];
                if a.seen.count > a.warmup {
                    a.adapt(&mut zero);
                    a.adapt(&mut one);
                }
                for i in 0..d {
                    m[i * d + i] = one[i] - zero[i];
                    o[i] = zero[i];
                }
            }
            Recentring::Full(a) => match a.affine() {
                Some((map, offset)) => {
                    m.copy_from_slice(map);
                    o.copy_from_slice(offset);
                }
                None => (0..d).for_each(|i| m[i * d + i] = 1.0),
            },
        }
        (m, o)
    }
}
