//! A histogram of |x| over a fixed range, filled batch by batch during calibration.

use alloc::vec;
use alloc::vec::Vec;

/// Counts of |x| in `bins` equal bins over `[0, range]`; larger values land in the last bin.
#[derive(Debug, Clone, PartialEq)]
pub struct AbsHistogram {
    pub counts: Vec<u64>,
    pub range: f32,
}

impl AbsHistogram {
    /// TensorRT's entropy calibrator uses 2048 bins.
    pub const DEFAULT_BINS: usize = 2048;

    pub fn new(bins: usize, range: f32) -> Self {
        assert!(bins > 0);
        Self {
            counts: vec![0; bins],
            range: if range > 0.0 && range.is_finite() {
                range
            } else {
                1.0
            },
        }
    }

    pub fn bin_width(&self) -> f32 {
        self.range / self.counts.len() as f32
    }

    pub fn add(&mut self, values: &[f32]) {
        let last = self.counts.len() - 1;
        let per_unit = self.counts.len() as f32 / self.range;
        for &v in values {
            let b = (v.abs() * per_unit) as usize;
            self.counts[b.min(last)] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}
