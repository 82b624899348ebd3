//! The adapter as the board hands it to the host (`edge-runtime adapt export`, JSON): the
//! statistics map, the trained layer, and both composed into the one affine map
//! `x -> matrix x + offset` that `host-train export --fold-adapter` folds into the encoder's
//! last linear layer.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::{LinearAdapter, Recentring, RecentringKind};

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
}

impl AdapterExport {
    pub fn compose(
        format: u32,
        model_sha256: &str,
        updates: u64,
        frames: u64,
        linear: &LinearAdapter,
        recentring: Option<&Recentring>,
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
        }
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
        let e = AdapterExport::compose(1, "sha", 1, 400, &linear, Some(&r));
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
}
