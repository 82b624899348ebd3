//! NPID's and Local Aggregation's memory bank: one L2-normalised embedding per training image,
//! moved towards each new embedding of that image with momentum.

use candle_core::{Device, Tensor};
use models::linalg::l2_normalize_rows;
use models::rng::Rng;

/// One L2-normalised vector per training image.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBank {
    pub rows: Vec<f32>,
    pub dim: usize,
    /// NCE's log Z, estimated on the first batch that needs it (not saved: a resumed run
    /// estimates it again).
    pub nce_log_z: Option<f64>,
}

impl FeatureBank {
    /// Uniform in [-s, s] with s = 1 / sqrt(dim / 3), as the reference code initialises it.
    pub fn new(n: usize, dim: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let s = 1.0 / (dim as f64 / 3.0).sqrt();
        let rows = (0..n * dim)
            .map(|_| ((2.0 * rng.next_f64() - 1.0) * s) as f32)
            .collect();
        Self {
            rows,
            dim,
            nce_log_z: None,
        }
    }

    /// The rows `indices`, as an (indices.len(), dim) tensor.
    pub(crate) fn gather(&self, indices: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let d = self.dim;
        let mut out = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            out.extend_from_slice(&self.rows[i * d..(i + 1) * d]);
        }
        Tensor::from_vec(out, (indices.len(), d), device)
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// m_i <- normalise(momentum * m_i + (1 - momentum) * v) for each (i, v).
    pub fn update(&mut self, indices: &[usize], v: &[f32], momentum: f32) {
        let d = self.dim;
        for (j, &i) in indices.iter().enumerate() {
            let row = &mut self.rows[i * d..(i + 1) * d];
            for (m, &x) in row.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *m = momentum * *m + (1.0 - momentum) * x;
            }
            l2_normalize_rows(row, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_rows_move_halfway_and_stay_unit_length() {
        let mut bank = FeatureBank {
            nce_log_z: None,
            rows: vec![1.0, 0.0, 0.0, 1.0],
            dim: 2,
        };
        bank.update(&[0], &[0.0, 1.0], 0.5);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((bank.rows[0] - s).abs() < 1e-6 && (bank.rows[1] - s).abs() < 1e-6);
        assert_eq!(&bank.rows[2..], &[0.0, 1.0], "other rows untouched");
    }

    #[test]
    fn initial_bank_follows_the_reference_range() {
        let bank = FeatureBank::new(100, 12, 3);
        let s = 1.0 / 2.0f32; // 1 / sqrt(12 / 3)
        assert!(bank.rows.iter().all(|&v| v.abs() <= s));
        assert_eq!(bank.len(), 100);
    }
}
