//! Statistics adaptation of the encoder's input: AdaBN at the first layer.
//!
//! The manifest's preprocessing maps the training images' pixels to mean 0 and standard
//! deviation 1 per channel. A camera whose light level or contrast drifts breaks that before
//! the first convolution, and the network's folded BatchNorm cannot follow. This stage keeps
//! running per-channel statistics of the preprocessed frames the device sees and maps each
//! frame back onto mean 0, standard deviation 1: `x' = (x - mean_seen) / std_seen`.

use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::stats::row_weight;

/// A standard deviation below this is treated as this (a blank scene).
const MIN_STD: f64 = 1e-3;

/// Running per-channel mean and mean square of preprocessed frames (channel-major planes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputStats {
    /// Frames seen.
    pub count: u64,
    pub mean: Vec<f64>,
    pub mean_square: Vec<f64>,
    /// Frames in the exponential window (0: every frame weighs the same).
    pub window: u64,
    /// Frames to see before adapting (until then frames pass unchanged).
    pub warmup: u64,
}

impl InputStats {
    pub fn new(channels: usize, window: u64, warmup: u64) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; channels],
            mean_square: vec![0.0; channels],
            window,
            warmup,
        }
    }

    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Adds one frame: `channels` planes of equal size.
    pub fn observe(&mut self, frame: &[f32]) {
        let c = self.channels();
        if c == 0 || frame.is_empty() {
            return;
        }
        self.count += 1;
        let a = row_weight(self.count, self.window);
        let plane = frame.len() / c;
        for (ch, pixels) in frame.chunks_exact(plane).take(c).enumerate() {
            let (sum, sq) = pixels.iter().fold((0.0f64, 0.0f64), |(s, q), &x| {
                let x = x as f64;
                (s + x, q + x * x)
            });
            let n = plane as f64;
            self.mean[ch] += a * (sum / n - self.mean[ch]);
            self.mean_square[ch] += a * (sq / n - self.mean_square[ch]);
        }
    }

    /// The standard deviation of channel `ch` (at least `MIN_STD`).
    fn std(&self, ch: usize) -> f64 {
        let m = self.mean[ch];
        libm::sqrt((self.mean_square[ch] - m * m).max(0.0)).max(MIN_STD)
    }

    /// Maps one frame onto mean 0 and standard deviation 1 per channel (unchanged during the
    /// warm-up).
    pub fn adapt(&self, frame: &mut [f32]) {
        let c = self.channels();
        if self.count < self.warmup.max(1) || c == 0 || frame.is_empty() {
            return;
        }
        let plane = frame.len() / c;
        for (ch, pixels) in frame.chunks_exact_mut(plane).take(c).enumerate() {
            let scale = (1.0 / self.std(ch)) as f32;
            let shift = self.mean[ch] as f32;
            pixels.iter_mut().for_each(|x| *x = (*x - shift) * scale);
        }
    }

    /// Per channel: the mean and standard deviation of the preprocessed frames seen.
    pub fn moments(&self) -> (Vec<f32>, Vec<f32>) {
        (0..self.channels())
            .map(|ch| (self.mean[ch] as f32, self.std(ch) as f32))
            .unzip()
    }

    pub fn observe_and_adapt(&mut self, frame: &mut [f32]) {
        self.observe(frame);
        self.adapt(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A two-channel frame of mean 0 and standard deviation 1 per channel (about).
    fn frame(rng: &mut Rng) -> Vec<f32> {
        (0..2 * 256).map(|_| rng.next_gaussian() as f32).collect()
    }

    fn moments(x: &[f32]) -> (f64, f64) {
        let n = x.len() as f64;
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
        (m, libm::sqrt(v))
    }

    #[test]
    fn a_stream_brightened_and_flattened_per_channel_is_mapped_back() {
        let mut rng = Rng::new(3);
        let mut stats = InputStats::new(2, 500, 50);
        let shift = |f: &mut [f32]| {
            f[..256].iter_mut().for_each(|x| *x = 0.3 * *x + 1.5);
            f[256..].iter_mut().for_each(|x| *x = 2.0 * *x - 0.7);
        };
        for _ in 0..400 {
            let mut f = frame(&mut rng);
            shift(&mut f);
            stats.observe(&f);
        }
        let mut f = frame(&mut rng);
        let clean = f.clone();
        shift(&mut f);
        stats.adapt(&mut f);
        for ch in 0..2 {
            let (m, s) = moments(&f[ch * 256..(ch + 1) * 256]);
            assert!(
                m.abs() < 0.15 && (s - 1.0).abs() < 0.15,
                "channel {ch}: {m} {s}"
            );
        }
        // The frame itself comes back, not just its moments.
        let worst = f
            .iter()
            .zip(&clean)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.2, "{worst}");
    }

    #[test]
    fn frames_pass_unchanged_during_the_warm_up_and_a_blank_scene_stays_finite() {
        let mut stats = InputStats::new(1, 100, 10);
        let mut f = vec![0.5f32; 64];
        for _ in 0..9 {
            stats.observe_and_adapt(&mut f);
            assert!(f.iter().all(|&x| x == 0.5));
        }
        stats.observe_and_adapt(&mut f);
        assert!(
            f.iter().all(|x| x.is_finite() && x.abs() < 1e-3),
            "{:?}",
            &f[..4]
        );
    }
}
