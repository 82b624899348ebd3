//! Learning-rate schedules evaluated at a fractional epoch, so the rate moves every step.

use serde::{Deserialize, Serialize};

/// Linear warm-up from `lr * warmup_start` to `lr` over `warmup_epochs`, then a cosine decay
/// to `lr * final_fraction` at the end of the run (Goyal et al. 2017; SwAV's schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub lr: f64,
    pub warmup_epochs: f64,
    pub warmup_start: f64,
    pub final_fraction: f64,
}

impl WarmupCosine {
    pub fn new(lr: f64, warmup_epochs: f64) -> Self {
        Self {
            lr,
            warmup_epochs,
            warmup_start: 0.1,
            final_fraction: 0.01,
        }
    }

    /// The rate at `progress` epochs (fractional) into a run of `epochs`.
    pub fn lr_at(&self, progress: f64, epochs: usize) -> f64 {
        let warm = self.warmup_epochs.min(epochs as f64);
        if progress < warm {
            let t = progress / warm;
            return self.lr * (self.warmup_start + (1.0 - self.warmup_start) * t);
        }
        let span = (epochs as f64 - warm).max(1e-9);
        let t = ((progress - warm) / span).clamp(0.0, 1.0);
        let low = self.lr * self.final_fraction;
        low + 0.5 * (self.lr - low) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_along_a_cosine() {
        let s = WarmupCosine::new(0.1, 2.0);
        assert!((s.lr_at(0.0, 10) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(1.0, 10) - 0.055).abs() < 1e-12);
        assert!((s.lr_at(2.0, 10) - 0.1).abs() < 1e-12);
        // Halfway through the decay: the mean of the peak and the floor.
        assert!((s.lr_at(6.0, 10) - 0.0505).abs() < 1e-12);
        assert!((s.lr_at(10.0, 10) - 0.001).abs() < 1e-12);
        let rates: Vec<f64> = (20..=100).map(|i| s.lr_at(i as f64 / 10.0, 10)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]));
    }
}
