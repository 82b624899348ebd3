//! Instance discrimination, NPID (Wu et al. 2018): every image is its own class. Embeddings
//! are L2-normalised 128-d vectors; a memory bank keeps one per image; the non-parametric
//! softmax P(i | v) = exp(m_i . v / tau) / Z scores each batch against the whole bank, and
//! the bank rows of the batch move towards the new embeddings with momentum 0.5.
//!
//! This is the full softmax (the paper's "LinearAverage"). Its cost grows with N; NCE with
//! m noise samples for large N is not implemented yet, so data sets above
//! `full_softmax_max_n` are refused rather than silently slow.

use candle_core::{Device, Tensor, D};
use candle_nn::Optimizer;
use models::linalg::l2_normalize_rows;
use models::rng::Rng;
use serde::{Deserialize, Serialize};

use super::deepcluster::EpochStats;
use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::optim::{SgdMomentum, SgdParams};
use crate::progress::Progress;
use crate::TrainError;

/// NPID's hyper-parameters; defaults from the paper and its reference code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NpidConfig {
    /// Softmax temperature; `None` picks 0.07, or 0.1 for sets of at most 10k images.
    pub temperature: Option<f64>,
    /// Weight of the old bank row in its update.
    pub bank_momentum: f64,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Largest data set trained with the full softmax.
    pub full_softmax_max_n: usize,
}

impl Default for NpidConfig {
    fn default() -> Self {
        Self {
            temperature: None,
            bank_momentum: 0.5,
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4,
            full_softmax_max_n: 200_000,
        }
    }
}

impl NpidConfig {
    pub fn sgd(&self) -> SgdParams {
        SgdParams {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }

    pub fn temperature_for(&self, n: usize) -> f64 {
        self.temperature
            .unwrap_or(if n <= 10_000 { 0.1 } else { 0.07 })
    }
}

/// One L2-normalised vector per training image.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBank {
    pub rows: Vec<f32>,
    pub dim: usize,
}

impl MemoryBank {
    /// Uniform in [-s, s] with s = 1 / sqrt(dim / 3), as the reference code initialises it.
    pub fn new(n: usize, dim: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let s = 1.0 / (dim as f64 / 3.0).sqrt();
        let rows = (0..n * dim)
            .map(|_| ((2.0 * rng.next_f64() - 1.0) * s) as f32)
            .collect();
        Self { rows, dim }
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

/// L2 normalisation of each row, differentiable.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// One epoch over a random permutation of the data set.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    encoder: &dyn Encoder,
    opt: &mut SgdMomentum,
    set: &TrainSet,
    bank: &mut MemoryBank,
    cfg: &NpidConfig,
    batch_size: usize,
    augment: &AugmentConfig,
    seed: u64,
    device: &Device,
) -> Result<EpochStats, TrainError> {
    let n = set.len();
    if bank.len() != n || bank.dim != encoder.embed_dim() {
        return Err(TrainError::Config(format!(
            "memory bank is {}x{}, data and encoder need {}x{}",
            bank.len(),
            bank.dim,
            n,
            encoder.embed_dim()
        )));
    }
    if n > cfg.full_softmax_max_n {
        return Err(TrainError::Config(format!(
            "{n} images exceed full_softmax_max_n = {}: NCE for large sets is not implemented yet",
            cfg.full_softmax_max_n
        )));
    }
    let t0 = std::time::Instant::now();
    let inv_t = 1.0 / cfg.temperature_for(n);
    let mut rng = Rng::new(seed);
    let order = rng.sample_indices(n, n);
    let mut losses = Vec::new();
    let bar = Progress::new(n as u64, "train");
    for (b, idx) in order.chunks(batch_size).enumerate() {
        if idx.len() < 2 {
            continue; // batch-norm needs two samples
        }
        let x = set.batch(idx, augment, seed ^ ((b as u64) << 20), device)?;
        let v = l2_normalize(&encoder.embed(&x, true)?)?;
        // The bank is a constant here: gradients reach the encoder through v only.
        let m = Tensor::from_slice(&bank.rows, (n, bank.dim), device)?;
        let logits = (v.matmul(&m.t()?)? * inv_t)?;
        let target = Tensor::from_iter(idx.iter().map(|&i| i as u32), device)?;
        let l = crate::ops::cross_entropy(&logits, &target)?;
        opt.backward_step(&l)?;
        let vs: Vec<f32> = v.flatten_all()?.to_vec1()?;
        bank.update(idx, &vs, cfg.bank_momentum as f32);
        losses.push(l.to_scalar::<f32>()? as f64);
        bar.inc(idx.len() as u64);
    }
    bar.finish();
    Ok(EpochStats::from_batch_losses(
        &losses,
        n,
        t0.elapsed().as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_rows_move_halfway_and_stay_unit_length() {
        let mut bank = MemoryBank {
            rows: vec![1.0, 0.0, 0.0, 1.0],
            dim: 2,
        };
        bank.update(&[0], &[0.0, 1.0], 0.5);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((bank.rows[0] - s).abs() < 1e-6 && (bank.rows[1] - s).abs() < 1e-6);
        assert_eq!(&bank.rows[2..], &[0.0, 1.0], "other rows untouched");
    }

    #[test]
    fn initial_bank_follows_the_reference_range_and_temperature_defaults() {
        let bank = MemoryBank::new(100, 12, 3);
        let s = 1.0 / 2.0f32; // 1 / sqrt(12 / 3)
        assert!(bank.rows.iter().all(|&v| v.abs() <= s));
        assert_eq!(bank.len(), 100);
        let cfg = NpidConfig::default();
        assert_eq!(cfg.temperature_for(5_000), 0.1);
        assert_eq!(cfg.temperature_for(60_000), 0.07);
    }

    #[test]
    fn l2_normalize_gives_unit_rows() {
        let x = Tensor::new(&[[3.0f32, 4.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = l2_normalize(&x).unwrap().to_vec2().unwrap();
        assert!((y[0][0] - 0.6).abs() < 1e-6 && (y[0][1] - 0.8).abs() < 1e-6);
    }
}
