//! The adapter as the board hands it to the host (`edge-runtime adapt export`, JSON): the
//! statistics map, the trained layer, and both composed into the one affine map
//! `x -> matrix x + offset` that `host-train export --fold-adapter` folds into the encoder's
//! last linear layer; and the input's statistics, which it folds into the manifest's
//! preprocessing.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::{InputStats, LinearAdapter, Recentring, RecentringKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterExport {
    pub format: u32,
    /// SHA-256 of the model file whose embeddings it adapts.
    pub model_sha256: String,
    pub dim: usize,
    pub updates: u64,
    pub frames: u64,
    pub recentring: Option<RecentringKind>,
    pub recentring_matrix: Vec<f32>,
    pub recentring_offset: Vec<f32>,
    pub linear_weight: Vec<f32>,
    pub linear_bias: Vec<f32>,
    /// `linear(recentring(x))` as one map, row-major dim x dim.
    pub matrix: Vec<f32>,
    pub offset: Vec<f32>,
    /// Per channel, the mean and standard deviation of the preprocessed frames the device saw
    /// (empty without input statistics).
    #[serde(default)]
    pub input_mean: Vec<f32>,
    #[serde(default)]
    pub input_std: Vec<f32>,
    /// The camera roll the device undoes before the encoder (degrees; 0 when none). The host
    /// cannot fold it into the encoder: it says the mount is tilted.
    #[serde(default)]
    pub roll_degrees: f32,
    /// The Gaussian width (pixels) the device smooths its frames by before the encoder (0
    /// when none). Like the roll, it describes the camera, not the embedding.
    #[serde(default)]
    pub smoothing_sigma: f32,
    /// The block size (pixels) whose grid the device deblocks its frames along (0 when
    /// none): the frames arrive block-coded, as JPEG codes them.
    #[serde(default)]
    pub deblock_block: u32,
}

impl AdapterExport {
    pub fn compose(
        format: u32,
        model_sha256: &str,
        updates: u64,
        frames: u64,
        linear: &LinearAdapter,
        recentring: Option<&Recentring>,
        input: Option<&InputStats>,
    ) -> Self {
        let d = linear.dim();
        let (rm, ro) = match recentring {
            Some(r) => r.affine(),
            None => {
                let mut m = vec![0f32; d * d];
                (0..d).for_each(|i| m[i * d + i] = 1.0);
                (m, vec![0f32; d])
            }
        };
        let (w, b) = (&linear.weight, &linear.bias);
        let mut matrix = vec![0f32; d * d];
        let mut offset = b.clone();
        for i in 0..d {
            for k in 0..d {
                let wik = w[i * d + k];
                offset[i] += wik * ro[k];
                let (out, row) = (&mut matrix[i * d..(i + 1) * d], &rm[k * d..(k + 1) * d]);
                out.iter_mut().zip(row).for_each(|(o, r)| *o += wik * r);
            }
        }
        Self {
            format,
            model_sha256: model_sha256.to_string(),
            dim: d,
            updates,
            frames,
            recentring: recentring.map(Recentring::kind),
            recentring_matrix: rm,
            recentring_offset: ro,
            linear_weight: w.clone(),
            linear_bias: b.clone(),
            matrix,
            offset,
            input_mean: input.map_or(Vec::new(), |s| s.moments().0),
            input_std: input.map_or(Vec::new(), |s| s.moments().1),
            roll_degrees: 0.0,
            smoothing_sigma: 0.0,
            deblock_block: 0,
        }
    }

    /// A manifest's per-channel normalisation `(pixel - mean) / std` with the input
    /// statistics folded in: normalising by the result equals normalising by `mean`, `std`
    /// and then re-normalising as the device did. Unchanged without input statistics, or
    /// for another number of channels.
    pub fn fold_normalization(&self, mean: &[f32], std: &[f32]) -> (Vec<f32>, Vec<f32>) {
        if self.input_mean.len() != mean.len() || self.input_std.len() != std.len() {
            return (mean.to_vec(), std.to_vec());
        }
        mean.iter()
            .zip(std)
            .zip(self.input_mean.iter().zip(&self.input_std))
            .map(|((&mu, &sigma), (&m, &s))| (mu + sigma * m, sigma * s))
            .unzip()
    }

    /// Whether the composed map's lengths agree with `dim`.
    pub fn is_consistent(&self) -> bool {
        self.matrix.len() == self.dim * self.dim && self.offset.len() == self.dim
    }

    /// Maps each row of `rows` (rows of dim) through the composed map, in place.
    pub fn apply_rows(&self, rows: &mut [f32]) {
        let d = self.dim;
        let mut x = vec![0f32; d];
        for row in rows.chunks_exact_mut(d) {
            x.copy_from_slice(row);
            for (i, out) in row.iter_mut().enumerate() {
                let m = &self.matrix[i * d..(i + 1) * d];
                *out = self.offset[i] + m.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapt::EmbeddingStats;
    use crate::rng::Rng;

    #[test]
    fn the_composed_map_equals_statistics_then_layer() {
        let d = 4;
        let mut rng = Rng::new(3);
        let rows: Vec<f32> = (0..400 * d).map(|_| rng.next_gaussian() as f32).collect();
        let train = EmbeddingStats::of_rows(&rows, d);
        let mut r = Recentring::new(RecentringKind::Diagonal, &train, 0, 10);
        let mut seen: Vec<f32> = rows.iter().map(|v| 2.0 * v + 1.0).collect();
        r.observe_and_adapt(&mut seen);
        let mut linear = LinearAdapter::identity(d);
        linear
            .weight
            .iter_mut()
            .for_each(|w| *w += 0.1 * rng.next_gaussian() as f32);
        linear
            .bias
            .iter_mut()
            .for_each(|b| *b = rng.next_gaussian() as f32);
        let e = AdapterExport::compose(1, "sha", 1, 400, &linear, Some(&r), None);
        let x: Vec<f32> = (0..d).map(|i| i as f32 - 1.5).collect();
        let mut stepwise = x.clone();
        r.adapt_rows(&mut stepwise);
        linear.apply_rows(&mut stepwise);
        let mut composed = x.clone();
        e.apply_rows(&mut composed);
        for (a, b) in stepwise.iter().zip(&composed) {
            assert!((a - b).abs() < 1e-4, "{stepwise:?} vs {composed:?}");
        }
    }

    #[test]
    fn the_folded_normalisation_equals_normalising_then_re_normalising() {
        let mut input = InputStats::new(2, 0, 1);
        let mut rng = Rng::new(9);
        let frames: Vec<Vec<f32>> = (0..50)
            .map(|_| {
                (0..32)
                    .map(|i| {
                        let g = rng.next_gaussian() as f32;
                        if i < 16 {
                            0.5 * g + 1.0
                        } else {
                            3.0 * g - 2.0
                        }
                    })
                    .collect()
            })
            .collect();
        frames.iter().for_each(|f| input.observe(f));
        let e = AdapterExport::compose(
            2,
            "sha",
            0,
            50,
            &LinearAdapter::identity(3),
            None,
            Some(&input),
        );
        let (mean, std) = ([0.3f32, 0.6], [0.2f32, 0.25]);
        let (m2, s2) = e.fold_normalization(&mean, &std);
        for pixel in [0.0f32, 0.4, 0.9] {
            for ch in 0..2 {
                let mut twice = vec![(pixel - mean[ch]) / std[ch]; 32];
                input.adapt(&mut twice);
                let folded = (pixel - m2[ch]) / s2[ch];
                let got = twice[ch * 16];
                assert!(
                    (got - folded).abs() < 1e-4,
                    "channel {ch}: {got} vs {folded}"
                );
            }
        }
        let none = AdapterExport::compose(2, "sha", 0, 0, &LinearAdapter::identity(3), None, None);
        assert_eq!(
            none.fold_normalization(&mean, &std),
            (mean.to_vec(), std.to_vec())
        );
    }
}
