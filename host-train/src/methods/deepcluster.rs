//! DeepCluster (Caron et al. 2018). Each epoch: embed the whole data set, PCA-whiten,
//! L2-normalise, k-means, then train encoder + a freshly initialised classifier on the
//! cluster ids as pseudo-labels, sampling uniformly over clusters.

use candle_core::{DType, Device, Tensor};
use candle_nn::{linear, Module, Optimizer, VarMap};
use models::cluster::KMeansParams;
use models::linalg::{l2_normalize_rows, PcaParams};
use models::rng::Rng;
use models::MatRef;
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::device_kmeans::CandleAssign;
use crate::encoders::{Arch, Encoder};
use crate::methods::isotropy::isotropy_loss;
use crate::optim::{SgdMomentum, SgdParams};
use crate::progress::Progress;
use crate::seeded_init::seeded_var_builder;
use crate::TrainError;

/// DeepCluster's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepClusterConfig {
    /// Clusters: 10x the expected number of classes (100 for Fashion-MNIST).
    pub k: usize,
    /// PCA-whitening output dimension (capped at the embedding dimension).
    pub pca_dim: usize,
    pub kmeans_iters: usize,
    /// Training samples drawn per epoch (default: the data set size).
    pub samples_per_epoch: Option<usize>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Weight of the isotropy penalty on each batch's embeddings (`methods::isotropy`);
    /// 0 trains DeepCluster as the paper does.
    #[serde(default)]
    pub isotropy: f64,
}

impl Default for DeepClusterConfig {
    fn default() -> Self {
        let sgd = SgdParams::default();
        Self {
            k: 100,
            pca_dim: 256,
            kmeans_iters: 20,
            samples_per_epoch: None,
            lr: sgd.lr,
            momentum: sgd.momentum,
            weight_decay: sgd.weight_decay,
            isotropy: 0.0,
        }
    }
}

impl DeepClusterConfig {
    /// The defaults for training `arch`: small-cnn-flat's 6,272-wide projection diverged at
    /// the paper's lr 0.05 on Fashion-MNIST, and trains at 0.01.
    pub fn for_arch(arch: Arch) -> Self {
        let d = Self::default();
        match arch {
            Arch::SmallCnnFlat => Self { lr: 0.01, ..d },
            _ => d,
        }
    }

    pub fn sgd(&self) -> SgdParams {
        SgdParams {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }
}

/// Pseudo-labels of one epoch.
#[derive(Debug, Clone)]
pub struct Clustering {
    pub labels: Vec<u32>,
    pub objective: f64,
    pub non_empty: usize,
}

/// PCA-whitening to `pca_dim`, L2 normalisation, k-means without sub-sampling. k-means'
/// assignment step runs on `device` (the GPU when training runs there).
pub fn cluster(
    features: &[f32],
    dim: usize,
    cfg: &DeepClusterConfig,
    seed: u64,
    device: &Device,
) -> Result<Clustering, TrainError> {
    let n = features.len() / dim;
    let d_out = cfg.pca_dim.min(dim).min(n.saturating_sub(1)).max(1);
    let pca = PcaParams::new(d_out).fit(MatRef::new(features, dim)?)?;
    let mut x = pca.transform(MatRef::new(features, dim)?)?;
    l2_normalize_rows(&mut x, d_out);
    let params = KMeansParams::new(cfg.k.min(n))
        .max_iter(cfg.kmeans_iters)
        .max_points_per_centroid(None)
        .seed(seed)
        .check()?;
    let x = MatRef::new(&x, d_out)?;
    let fit = if device.is_cpu() {
        params.fit(x)?
    } else {
        params.fit_with(&CandleAssign::new(device), x)?
    };
    let mut sizes = vec![0usize; cfg.k.min(n)];
    fit.labels.iter().for_each(|&l| sizes[l as usize] += 1);
    tracing::info!(
        pca_dim = d_out,
        k = sizes.len(),
        objective = fit.objective(),
        splits = fit.n_splits(),
        largest = sizes.iter().max().copied().unwrap_or(0),
        smallest = sizes.iter().min().copied().unwrap_or(0),
        "clustered {n} embeddings"
    );
    Ok(Clustering {
        objective: fit.objective(),
        non_empty: sizes.iter().filter(|&&s| s > 0).count(),
        labels: fit.labels,
    })
}

/// `n` indices drawn uniformly over the non-empty clusters: each gets n / clusters + 1
/// samples, with replacement when it is smaller than that; shuffled, then cut to `n`.
pub fn sample_uniform_over_clusters(
    labels: &[u32],
    k: usize,
    n: usize,
    rng: &mut Rng,
) -> Vec<usize> {
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    let non_empty: Vec<&Vec<usize>> = members.iter().filter(|m| !m.is_empty()).collect();
    if non_empty.is_empty() {
        return Vec::new();
    }
    let per = n / non_empty.len() + 1;
    let mut out = Vec::with_capacity(per * non_empty.len());
    for m in non_empty {
        if m.len() >= per {
            out.extend(rng.sample_indices(m.len(), per).into_iter().map(|j| m[j]));
        } else {
            out.extend((0..per).map(|_| m[rng.below(m.len())]));
        }
    }
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out.truncate(n);
    out
}

/// Statistics of one training pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochStats {
    /// Mean loss over the epoch's batches.
    pub loss: f64,
    /// Mean loss of the first and of the last quarter of the batches: learning shows as
    /// a fall within an epoch even when pseudo-labels change between epochs.
    pub loss_start: f64,
    pub loss_end: f64,
    pub images: usize,
    pub seconds: f64,
}

impl EpochStats {
    pub(crate) fn from_batch_losses(losses: &[f64], images: usize, seconds: f64) -> Self {
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let q = (losses.len() / 4).max(1).min(losses.len());
        Self {
            loss: mean(losses),
            loss_start: mean(&losses[..q]),
            loss_end: mean(&losses[losses.len() - q..]),
            images,
            seconds,
        }
    }
}

/// One pass over `order` with the pseudo-labels: a new classifier head, SGD on both.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    encoder: &dyn Encoder,
    encoder_opt: &mut SgdMomentum,
    set: &TrainSet,
    labels: &[u32],
    order: &[usize],
    cfg: &DeepClusterConfig,
    batch_size: usize,
    augment: &AugmentConfig,
    seed: u64,
    device: &Device,
) -> Result<EpochStats, TrainError> {
    let t0 = std::time::Instant::now();
    let k = labels.iter().max().map_or(1, |&m| m as usize + 1);
    // A fresh head each epoch: cluster ids mean nothing from one epoch to the next.
    let head_vm = VarMap::new();
    let head = linear(
        encoder.embed_dim(),
        k,
        seeded_var_builder(&head_vm, seed, DType::F32, device).pp("head"),
    )?;
    let mut head_opt = SgdMomentum::new(head_vm.all_vars(), cfg.sgd())?;
    let mut losses = Vec::new();
    let bar = Progress::new(order.len() as u64, "train");
    for (b, idx) in order.chunks(batch_size).enumerate() {
        if idx.len() < 2 {
            continue; // batch-norm needs two samples
        }
        let x = set.batch(idx, augment, seed ^ ((b as u64) << 20), device)?;
        let y = Tensor::from_iter(idx.iter().map(|&i| labels[i]), device)?;
        let emb = encoder.embed(&x, true)?;
        let mut l = crate::ops::cross_entropy(&head.forward(&emb)?, &y)?;
        if cfg.isotropy > 0.0 {
            l = (l + (isotropy_loss(&emb)? * cfg.isotropy)?)?;
        }
        let grads = l.backward()?;
        encoder_opt.step(&grads)?;
        head_opt.step(&grads)?;
        // Read back once per epoch: a read per batch would stall the GPU's queue.
        losses.push(l.detach());
        bar.inc(idx.len() as u64);
    }
    bar.finish();
    let losses: Vec<f64> = match losses.is_empty() {
        true => Vec::new(),
        false => Tensor::stack(&losses, 0)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect(),
    };
    Ok(EpochStats::from_batch_losses(
        &losses,
        order.len(),
        t0.elapsed().as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_sampling_balances_clusters_of_very_different_sizes() {
        // Cluster 0 has 900 members, cluster 1 has 10, cluster 2 is empty.
        let labels: Vec<u32> = (0..910).map(|i| u32::from(i >= 900)).collect();
        let order = sample_uniform_over_clusters(&labels, 3, 600, &mut Rng::new(1));
        assert_eq!(order.len(), 600);
        let small = order.iter().filter(|&&i| labels[i] == 1).count();
        assert!(
            (280..=301).contains(&small),
            "{small} draws from the small cluster"
        );
        // The big cluster is sampled without replacement.
        let mut big: Vec<usize> = order.iter().copied().filter(|&i| labels[i] == 0).collect();
        let n = big.len();
        big.sort_unstable();
        big.dedup();
        assert_eq!(big.len(), n);
    }

    #[test]
    fn clustering_finds_separated_groups() {
        // Three directions in 4-d, with noise.
        let mut r = Rng::new(2);
        let mut x = Vec::new();
        for i in 0..300 {
            let mut v = [0f32; 4];
            v[i % 3] = 5.0;
            for e in v.iter_mut() {
                *e += r.next_f64() as f32 * 0.5;
            }
            x.extend_from_slice(&v);
        }
        let cfg = DeepClusterConfig {
            k: 3,
            pca_dim: 4,
            ..Default::default()
        };
        let c = cluster(&x, 4, &cfg, 0, &Device::Cpu).unwrap();
        assert_eq!(c.non_empty, 3);
        let truth: Vec<u32> = (0..300).map(|i| (i % 3) as u32).collect();
        let nmi = models::metrics::normalized_mutual_info(&truth, &c.labels).unwrap();
        assert!(nmi > 0.99, "{nmi}");
    }
}
