//! Per-dimension statistics adaptation (AdaBN-style feature re-centring, Li et al. 2016).
//!
//! A running mean and variance of each dimension (exponentially weighted, so the statistics
//! follow the scene), and a map of each embedding onto the statistics of the training
//! embeddings, dimension by dimension:
//! `x' = (x - mean_seen) / std_seen * std_train + mean_train`.

use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Per-dimension mean and variance, updated one row at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    /// Rows seen (saturates the weighting: see [`RunningStats::observe`]).
    pub count: u64,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Rows in the exponential window; 0 weighs every row equally (plain Welford).
    pub window: u64,
}

impl RunningStats {
    pub fn new(dim: usize, window: u64) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; dim],
            var: vec![0.0; dim],
            window,
        }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Adds one row. The first `window` rows are weighted equally (1 / count); after that each
    /// new row has weight 1 / window, so older scenes fade.
    pub fn observe(&mut self, row: &[f32]) {
        self.count += 1;
        let a = row_weight(self.count, self.window);
        for ((m, v), &x) in self.mean.iter_mut().zip(&mut self.var).zip(row) {
            let d = x as f64 - *m;
            *m += a * d;
            // West's weighted update: exact for a = 1/count, exponential afterwards.
            *v = (1.0 - a) * (*v + a * d * d);
        }
    }

    /// Standard deviations, floored at `eps` so that a dead dimension does not explode.
    pub fn std(&self, eps: f64) -> Vec<f64> {
        self.var.iter().map(|v| libm::sqrt(*v).max(eps)).collect()
    }
}

/// The weight of the `count`-th row in a running statistic over `window` rows: 1 / count
/// until the window is full (equal weights), then 1 / window (exponential forgetting); 0
/// means no window.
pub(super) fn row_weight(count: u64, window: u64) -> f64 {
    let n = if window == 0 {
        count
    } else {
        count.min(window)
    };
    1.0 / n.max(1) as f64
}

/// Maps embeddings onto the training statistics (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsAdapter {
    train_mean: Vec<f64>,
    train_std: Vec<f64>,
    /// What the device has seen.
    pub seen: RunningStats,
    /// Rows to see before adapting (until then embeddings pass unchanged).
    pub warmup: u64,
}

/// The floor of a standard deviation.
const EPS: f64 = 1e-6;

impl StatsAdapter {
    /// `train_mean` and `train_std` are the training embeddings' (same length); `window`
    /// rows make up the running statistics, `warmup` rows pass before adapting.
    pub fn new(train_mean: Vec<f64>, train_std: Vec<f64>, window: u64, warmup: u64) -> Self {
        let dim = train_mean.len();
        Self {
            train_std: train_std.iter().map(|s| s.max(EPS)).collect(),
            train_mean,
            seen: RunningStats::new(dim, window),
            warmup,
        }
    }

    /// From statistics gathered on training embeddings.
    pub fn from_training(train: &RunningStats, window: u64, warmup: u64) -> Self {
        Self::new(train.mean.clone(), train.std(EPS), window, warmup)
    }

    pub fn dim(&self) -> usize {
        self.train_mean.len()
    }

    /// Observes each row of `rows` (rows of `dim`), then maps them in place.
    pub fn observe_and_adapt(&mut self, rows: &mut [f32]) {
        let dim = self.dim();
        for row in rows.chunks_exact_mut(dim) {
            self.seen.observe(row);
            if self.seen.count > self.warmup {
                self.adapt(row);
            }
        }
    }

    /// Maps one row onto the training statistics with what has been seen so far.
    pub fn adapt(&self, row: &mut [f32]) {
        for (i, x) in row.iter_mut().enumerate() {
            let seen_std = libm::sqrt(self.seen.var[i]).max(EPS);
            let z = (*x as f64 - self.seen.mean[i]) / seen_std;
            *x = (z * self.train_std[i] + self.train_mean[i]) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn gaussian(rng: &mut Rng) -> f32 {
        rng.next_gaussian() as f32
    }

    #[test]
    fn running_stats_match_the_batch_mean_and_variance() {
        let mut rng = Rng::new(3);
        let rows: Vec<[f32; 2]> = (0..500)
            .map(|_| [2.0 + gaussian(&mut rng), -1.0 + 3.0 * gaussian(&mut rng)])
            .collect();
        let mut s = RunningStats::new(2, 0);
        rows.iter().for_each(|r| s.observe(r));
        for d in 0..2 {
            let mean = rows.iter().map(|r| r[d] as f64).sum::<f64>() / 500.0;
            let var = rows
                .iter()
                .map(|r| (r[d] as f64 - mean).powi(2))
                .sum::<f64>()
                / 500.0;
            assert!((s.mean[d] - mean).abs() < 1e-9, "{} vs {mean}", s.mean[d]);
            assert!((s.var[d] - var).abs() < 1e-9, "{} vs {var}", s.var[d]);
        }
    }

    #[test]
    fn the_adapter_undoes_an_affine_shift_of_the_embeddings() {
        let mut rng = Rng::new(5);
        let dim = 4;
        let clean: Vec<f32> = (0..4000)
            .map(|i| (i % dim) as f32 + gaussian(&mut rng))
            .collect();
        let mut train = RunningStats::new(dim, 0);
        clean.chunks_exact(dim).for_each(|r| train.observe(r));
        // The camera scales and offsets every dimension differently.
        let (scale, offset) = ([0.5f32, 2.0, 1.5, 0.2], [3.0f32, -1.0, 0.5, 4.0]);
        let mut shifted: Vec<f32> = clean
            .chunks_exact(dim)
            .flat_map(|r| (0..dim).map(move |d| r[d] * scale[d] + offset[d]))
            .collect();
        let before = distance(&clean, &shifted);
        let mut adapter = StatsAdapter::from_training(&train, 0, 100);
        adapter.observe_and_adapt(&mut shifted);
        // After the warm-up the rows come back to where they were.
        let tail = 200 * dim;
        let after = distance(&clean[tail..], &shifted[tail..]);
        assert!(before > 1.0 && after < 0.1, "{before} -> {after}");
    }

    #[test]
    fn an_exponential_window_follows_a_new_scene() {
        let mut s = RunningStats::new(1, 50);
        (0..500).for_each(|_| s.observe(&[0.0]));
        (0..500).for_each(|_| s.observe(&[10.0]));
        assert!((s.mean[0] - 10.0).abs() < 1e-3, "{}", s.mean[0]);
        let mut all = RunningStats::new(1, 0);
        (0..500).for_each(|_| all.observe(&[0.0]));
        (0..500).for_each(|_| all.observe(&[10.0]));
        assert!((all.mean[0] - 5.0).abs() < 1e-9);
    }

    /// Mean absolute difference.
    fn distance(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    }
}
