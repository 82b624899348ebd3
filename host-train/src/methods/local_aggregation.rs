//! Local Aggregation (Zhuang et al. 2019) on NPID's memory bank. After an instance
//! discrimination warm start (`warmup_epochs` of NPID), each epoch:
//! - clusters the bank `kmeans_runs` times (k-means with different seeds): the close
//!   neighbours C_i of image i are the images that share a cluster with it in any run;
//! - per batch, the background neighbours B_i are the `background_k` bank rows most similar
//!   to the embedding v_i;
//! - the loss is -log(P(C_i and B_i | v_i) / P(B_i | v_i)) with NPID's non-parametric
//!   softmax, P(A | v) = sum over j in A of exp(v . m_j / tau).
//!
//! Image i itself always counts in both sets, so the ratio is never empty.

use candle_core::{Result, Tensor};
use models::cluster::KMeansParams;
use models::MatRef;
use serde::{Deserialize, Serialize};

use super::feature_bank::FeatureBank;
use crate::TrainError;

/// Local Aggregation's hyper-parameters (the bank, temperature and optimiser are NPID's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaConfig {
    /// Epochs of plain NPID before the LA loss: the paper's instance-recognition warm start.
    pub warmup_epochs: usize,
    /// Background neighbours per image; `None` takes the paper's 4096, or a tenth of the
    /// set when that is smaller (4096 of 1.28M ImageNet images is a thin shell around each;
    /// 4096 of 1,000 would be nearly everything).
    pub background_k: Option<usize>,
    /// Clusters per k-means run over the bank.
    pub kmeans_k: usize,
    /// k-means runs with different seeds (the paper's H); their clusters are united into the
    /// close set.
    pub kmeans_runs: usize,
}

impl Default for LaConfig {
    /// H = 10 k-means runs, as the LA code's ResNet-18 setting; k comes from the data
    /// (`host-train` passes 10x the number of classes).
    fn default() -> Self {
        Self {
            warmup_epochs: 1,
            background_k: None,
            kmeans_k: 100,
            kmeans_runs: 10,
        }
    }
}

impl LaConfig {
    /// Background neighbours per image for a bank of `n` rows.
    pub fn background_for(&self, n: usize) -> usize {
        self.background_k
            .unwrap_or_else(|| 4096.min(n / 10))
            .clamp(1, n.max(1))
    }
}

/// The close-neighbour structure of one epoch: one label per bank row and k-means run.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseNeighbours {
    pub labels: Vec<Vec<u32>>,
    pub background_k: usize,
}

/// Clusters the bank `kmeans_runs` times.
pub fn close_neighbours(
    bank: &FeatureBank,
    cfg: &LaConfig,
    seed: u64,
) -> std::result::Result<CloseNeighbours, TrainError> {
    let rows = MatRef::new(&bank.rows, bank.dim)?;
    let labels = (0..cfg.kmeans_runs.max(1))
        .map(|h| -> std::result::Result<Vec<u32>, TrainError> {
            let fit = KMeansParams::new(cfg.kmeans_k.min(bank.len()))
                .seed(seed.wrapping_add(1_000_003 * h as u64))
                .max_points_per_centroid(None)
                .check()?
                .fit(rows)?;
            Ok(fit.labels)
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(CloseNeighbours {
        labels,
        background_k: cfg.background_for(bank.len()),
    })
}

/// The LA loss of a batch: `logits` (b, n) = v . bank^T / tau, `idx` the batch's images.
/// Built from candle's ops, so it runs on any device; on the CPU training uses the fused
/// `bank_loss`, which is tested against this.
pub fn la_loss(logits: &Tensor, idx: &[usize], close: &CloseNeighbours) -> Result<Tensor> {
    let (b, n) = logits.dims2()?;
    if idx.len() != b || close.labels.iter().any(|l| l.len() != n) {
        candle_core::bail!("la_loss: {b} rows, {} indices, bank of {n}", idx.len());
    }
    let k = close.background_k.clamp(1, n);
    let s: Vec<Vec<f32>> = logits.detach().to_vec2()?;
    // Additive masks: 0 inside the set, a large negative number outside it.
    const OUT: f32 = -1e9;
    let (mut background, mut both) = (vec![OUT; b * n], vec![OUT; b * n]);
    let mut scratch = vec![0f32; n];
    for (r, row) in s.iter().enumerate() {
        scratch.copy_from_slice(row);
        let kth = *scratch
            .select_nth_unstable_by(n - k, |a, b| a.total_cmp(b))
            .1;
        let i = idx[r];
        for j in 0..n {
            if row[j] >= kth || j == i {
                background[r * n + j] = 0.0;
                if j == i || close.labels.iter().any(|l| l[j] == l[i]) {
                    both[r * n + j] = 0.0;
                }
            }
        }
    }
    let dev = logits.device();
    let background = Tensor::from_vec(background, (b, n), dev)?;
    let both = Tensor::from_vec(both, (b, n), dev)?;
    let log_b = (logits + background)?.log_sum_exp(1)?;
    let log_cb = (logits + both)?.log_sum_exp(1)?;
    (log_b - log_cb)?.mean_all()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn background_defaults_to_4096_or_a_tenth_of_a_small_set() {
        let cfg = LaConfig::default();
        assert_eq!(cfg.kmeans_runs, 10);
        assert_eq!(cfg.background_for(60_000), 4096);
        assert_eq!(cfg.background_for(1_000), 100);
        assert_eq!(cfg.background_for(5), 1);
        let set = LaConfig {
            background_k: Some(200),
            ..cfg
        };
        assert_eq!(set.background_for(1_000), 200);
        assert_eq!(set.background_for(50), 50);
    }

    #[test]
    fn loss_is_the_log_ratio_of_background_to_close_background_mass() {
        // One image (index 0) against a bank of 5; background_k = 3 keeps the 3 highest
        // logits (rows 0, 1, 3); row 2 shares a cluster with row 0 in the second run only,
        // row 1 in neither, row 3 in the first.
        let logits = Tensor::new(&[[2.0f32, 1.5, -1.0, 1.0, 0.0]], &Device::Cpu).unwrap();
        let close = CloseNeighbours {
            labels: vec![vec![0, 1, 2, 0, 2], vec![5, 6, 5, 7, 7]],
            background_k: 3,
        };
        let got: f32 = la_loss(&logits, &[0], &close).unwrap().to_scalar().unwrap();
        // B = {0, 1, 3}; C = {0, 2, 3}; C and B = {0, 3}.
        let e = |x: f64| x.exp();
        let want = ((e(2.0) + e(1.5) + e(1.0)) / (e(2.0) + e(1.0))).ln();
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        // Close set = background set: no loss.
        let all_close = CloseNeighbours {
            labels: vec![vec![0; 5]],
            background_k: 3,
        };
        let zero: f32 = la_loss(&logits, &[0], &all_close)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(zero.abs() < 1e-6);
        assert!(la_loss(&logits, &[0, 1], &close).is_err());
    }
}
