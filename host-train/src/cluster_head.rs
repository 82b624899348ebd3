//! A SCAN-style cluster head (Van Gansbeke et al. 2020) on a pretrained encoder.
//!
//! k-means on an embedding finds the directions of largest variance, which can still be
//! colour or background when the embedding also carries the object. SCAN instead trusts the
//! embedding's nearest neighbours: mine the `neighbours` nearest images of each image, then
//! train a head that maps an image and its neighbours to the same cluster,
//! loss = - mean log <p(a), p(n)> - w H(mean p), where the entropy H of the mean
//! prediction keeps every cluster in use.
//!
//! The encoder stays frozen here (the head trains in seconds on the CPU; `scan_finetune`
//! trains the encoder with the chosen head afterwards, if asked): the head sees the
//! embeddings of several strongly augmented views of each image, computed once, so it still
//! learns to give every view of an image one cluster. Several heads train at once from
//! different random starts, as in SCAN, and the one with the lowest loss is kept, without
//! labels. The board receives the head's clusters as centroids: the mean unit embedding of
//! each cluster.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarMap};
use models::linalg::{l2_normalize_rows, PcaParams};
use models::manifest::Centroids;
use models::metrics::nearest_neighbours;
use models::rng::Rng;
use models::MatRef;
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::eval::{assign_to_centroids, WHITEN_DIM};
use crate::features::{extract, extract_view};
use crate::run_dir::RunDir;
use crate::seeded_init::seeded_var_builder;
use crate::TrainError;

/// Where a run directory keeps its head.
pub const HEAD_FILE: &str = "cluster_head.json";

/// The head's hyper-parameters; defaults from SCAN's code where they apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterHeadConfig {
    pub clusters: usize,
    /// Nearest neighbours mined per image.
    pub neighbours: usize,
    /// Weight w of the entropy term.
    pub entropy_weight: f64,
    /// Heads trained together from different random starts; the lowest final loss is kept.
    pub heads: usize,
    /// Optimiser steps per head (a head is small: steps, not epochs, set its training).
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Where the neighbours are mined.
    #[serde(default)]
    pub mine_on: MiningSpace,
    /// The share of each image's neighbours mined on the pixels, with
    /// [`MiningSpace::RawAndPixels`].
    #[serde(default = "pixel_share")]
    pub pixel_share: f64,
    /// SCAN's self-labelling after the head: steps of cross-entropy on augmented views
    /// towards the head's own confident predictions (0: none).
    #[serde(default)]
    pub self_label_steps: usize,
    /// The probability above which a prediction counts as confident.
    #[serde(default = "self_label_threshold")]
    pub self_label_threshold: f64,
}

fn self_label_threshold() -> f64 {
    0.99
}

fn pixel_share() -> f64 {
    0.5
}

/// The space in which each image's nearest neighbours are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MiningSpace {
    /// Cosine similarity of the embeddings as they are (SCAN's way).
    #[default]
    Raw,
    /// Cosine similarity after PCA-whitening the embeddings (fitted on them, no labels), so
    /// that a few high-variance directions do not decide who is near whom. On Fashion-MNIST
    /// it raised neighbour purity a little and lowered the head's NMI (docs/RESULTS.md).
    Whitened,
    /// Part of each image's neighbours from the embedding as it is (half by default), the
    /// rest from its input pixels PCA-whitened to [`PIXEL_WHITEN_DIM`] directions: two measures of likeness that
    /// err on different images. Only for data whose pixels already find neighbours of the
    /// same kind (centred items on a plain ground); where background and colour dominate the
    /// pixels, their neighbours are noise.
    RawAndPixels,
}

/// Directions kept when pixels are whitened to mine neighbours.
pub const PIXEL_WHITEN_DIM: usize = 128;

impl Default for ClusterHeadConfig {
    fn default() -> Self {
        Self {
            clusters: 10,
            neighbours: 20,
            entropy_weight: 5.0,
            heads: 32,
            steps: 2000,
            batch_size: 256,
            lr: 5e-3,
            weight_decay: 1e-4,
            seed: 0,
            mine_on: MiningSpace::default(),
            pixel_share: pixel_share(),
            self_label_steps: 0,
            self_label_threshold: self_label_threshold(),
        }
    }
}

impl ClusterHeadConfig {
    pub fn check(&self, n: usize) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::Config(format!("cluster head: {what}")));
        if self.clusters < 2 || self.clusters > n / 2 {
            return bad(format!(
                "--k must be between 2 and half the images ({}), got {}",
                n / 2,
                self.clusters
            ));
        }
        if self.neighbours == 0 || self.neighbours >= n {
            return bad(format!(
                "--neighbours must be between 1 and {}, got {}",
                n - 1,
                self.neighbours
            ));
        }
        if self.heads == 0 || self.steps == 0 || self.batch_size < 2 {
            return bad("needs at least one head, one step and batches of two".into());
        }
        if !(self.entropy_weight >= 0.0 && self.lr > 0.0) {
            return bad("the entropy weight must be at least 0 and the rate positive".into());
        }
        if !(self.pixel_share > 0.0 && self.pixel_share < 1.0) {
            return bad(format!(
                "--pixel-share must be between 0 and 1 (both excluded), got {}",
                self.pixel_share
            ));
        }
        if !(self.self_label_threshold > 0.0 && self.self_label_threshold < 1.0) {
            return bad(format!(
                "--self-label-threshold must be between 0 and 1, got {}",
                self.self_label_threshold
            ));
        }
        Ok(())
    }
}

/// The SCAN loss of anchor and neighbour logits: (total, consistency, entropy). Logits of
/// (b, k) give three scalars; logits of (b, heads, k) give three vectors of one loss per head,
/// each head its own softmax over its k clusters.
pub fn scan_loss(
    anchor_logits: &Tensor,
    neighbour_logits: &Tensor,
    entropy_weight: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let pa = candle_nn::ops::softmax(anchor_logits, D::Minus1)?;
    let pn = candle_nn::ops::softmax(neighbour_logits, D::Minus1)?;
    let agreement = (&pa * &pn)?.sum(D::Minus1)?;
    let consistency = agreement.clamp(1e-7, 1.0)?.log()?.mean(0)?.neg()?;
    let mean = pa.mean(0)?;
    let entropy = (&mean * mean.clamp(1e-8, 1.0)?.log()?)?
        .sum(D::Minus1)?
        .neg()?;
    let total = (&consistency - (&entropy * entropy_weight)?)?;
    Ok((total, consistency, entropy))
}

/// A trained head: logits = x W^T + b on unit embeddings, and its clusters' centroids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterHead {
    pub config: ClusterHeadConfig,
    pub dim: usize,
    /// (clusters, dim), row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// The mean unit embedding of each cluster, normalised: what the board assigns by.
    pub centroids: Vec<f32>,
    /// The kept head's final loss, consistency and entropy.
    pub loss: f64,
    pub consistency: f64,
    pub entropy: f64,
}

impl ClusterHead {
    /// The cluster of each row of `embeddings` (normalised here).
    pub fn assign(&self, embeddings: &[f32]) -> Vec<u32> {
        let mut x = embeddings.to_vec();
        l2_normalize_rows(&mut x, self.dim);
        x.chunks_exact(self.dim)
            .map(|row| {
                self.logits(row)
                    .into_iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(c, _)| c as u32)
            })
            .collect()
    }

    /// The head's logits of one unit embedding.
    fn logits(&self, row: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(row).map(|(a, x)| a * x).sum::<f32>() + b)
            .collect()
    }

    /// The softmax of the head's logits for each row of `embeddings` (normalised here):
    /// rows of `clusters` probabilities.
    pub fn probabilities(&self, embeddings: &[f32]) -> Vec<f32> {
        let mut x = embeddings.to_vec();
        l2_normalize_rows(&mut x, self.dim);
        let k = self.config.clusters;
        let mut out = Vec::with_capacity(x.len() / self.dim.max(1) * k);
        for row in x.chunks_exact(self.dim) {
            let logits = self.logits(row);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            out.extend(exp.iter().map(|e| e / sum));
        }
        out
    }

    /// The nearest centroid (cosine) of each row: the board's assignment.
    pub fn nearest_centroid(&self, embeddings: &[f32]) -> Vec<u32> {
        assign_to_centroids(embeddings, self.dim, &self.centroids)
    }

    /// Sets the centroids to the mean unit embedding of each of the head's clusters in
    /// `clean` (rows of `dim`): after the encoder under the head has changed.
    pub fn recentre(&mut self, clean: &[f32]) {
        self.centroids = centroids(clean, &self.assign(clean), self.dim, self.config.clusters);
    }

    /// The centroids as the manifest stores them.
    pub fn board_centroids(&self) -> Centroids {
        Centroids {
            k: self.config.clusters as u32,
            dim: self.dim as u32,
            values: self.centroids.clone(),
        }
    }
}

/// Embeds `train` once clean and `views` times through `augment`, mines the neighbours
/// (with the training images' pixels when `cfg.mine_on` needs them), then trains the head.
/// Also hands back the clean embeddings and the neighbours (`cfg.neighbours` per image).
pub fn fit_cluster_head(
    encoder: &dyn Encoder,
    train: &TrainSet,
    augment: &AugmentConfig,
    views: usize,
    cfg: &ClusterHeadConfig,
    device: &Device,
) -> Result<(ClusterHead, Vec<f32>, Vec<u32>), TrainError> {
    cfg.check(train.len())?;
    let clean = extract(encoder, train, 512, device, "embeddings")?;
    let views = (0..views.max(1))
        .map(|v| {
            extract_view(
                encoder,
                train,
                augment,
                cfg.seed ^ (0x5CA7 + v as u64),
                device,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dim = encoder.embed_dim();
    let pixels = (cfg.mine_on == MiningSpace::RawAndPixels).then(|| train.images.to_f32());
    let (c, h, w) = train.image_dims();
    let pixels = pixels
        .as_deref()
        .map(|p| MatRef::new(p, c * h * w))
        .transpose()?;
    let neighbours = mine_neighbours(&clean, dim, pixels, cfg)?;
    let head = train_cluster_head(&clean, &views, dim, &neighbours, cfg)?;
    Ok((head, clean, neighbours))
}

impl ClusterHead {
    pub fn save(&self, run: &RunDir) -> Result<(), TrainError> {
        run.write_json(HEAD_FILE, self)
    }

    /// The run's head, if `host-train cluster-head` trained one.
    pub fn load(run: &RunDir) -> Result<Option<Self>, TrainError> {
        if !run.path(HEAD_FILE).exists() {
            return Ok(None);
        }
        run.read_json(HEAD_FILE).map(Some)
    }
}

/// Trains heads on `views`: `views.len()` augmented embeddings of each of n images (each
/// `n * dim`), pairing each image with the `neighbours` that [`mine_neighbours`] found for
/// `clean` (the un-augmented embeddings, `n * dim`).
pub fn train_cluster_head(
    clean: &[f32],
    views: &[Vec<f32>],
    dim: usize,
    neighbours: &[u32],
    cfg: &ClusterHeadConfig,
) -> Result<ClusterHead, TrainError> {
    let n = clean.len() / dim;
    cfg.check(n)?;
    if views.is_empty() || views.iter().any(|v| v.len() != clean.len()) {
        return Err(TrainError::Config(
            "cluster head: every view needs one embedding per image".into(),
        ));
    }
    if neighbours.is_empty() || !neighbours.len().is_multiple_of(n) {
        return Err(TrainError::Config(
            "cluster head: every image needs the same number of neighbours".into(),
        ));
    }
    let views: Vec<Vec<f32>> = views
        .iter()
        .map(|v| {
            let mut v = v.clone();
            l2_normalize_rows(&mut v, dim);
            v
        })
        .collect();
    let heads = train_heads(&views, neighbours, dim, cfg)?;
    let mut best: Option<ClusterHead> = None;
    for (h, head) in heads.into_iter().enumerate() {
        // One line per head is for `RUST_LOG=debug`; the kept head's figures are printed.
        tracing::debug!(
            head = h,
            loss = head.loss,
            consistency = head.consistency,
            entropy = head.entropy,
            "cluster head"
        );
        if best.as_ref().is_none_or(|b| head.loss < b.loss) {
            best = Some(head);
        }
    }
    let mut head = best.expect("at least one head");
    if cfg.self_label_steps > 0 {
        self_label(&mut head, clean, &views, cfg)?;
    }
    head.centroids = centroids(clean, &head.assign(clean), dim, cfg.clusters);
    Ok(head)
}

/// The `cfg.neighbours` nearest images of each row of `clean` (rows of `dim`), in the space
/// `cfg.mine_on` says, nearest first; `pixels` (one row per image) only for
/// [`MiningSpace::RawAndPixels`].
pub fn mine_neighbours(
    clean: &[f32],
    dim: usize,
    pixels: Option<MatRef<'_>>,
    cfg: &ClusterHeadConfig,
) -> Result<Vec<u32>, TrainError> {
    let n = clean.len() / dim.max(1);
    let raw = MatRef::new(clean, dim)?;
    match cfg.mine_on {
        MiningSpace::Raw => Ok(nearest_neighbours(raw, cfg.neighbours)?),
        MiningSpace::Whitened => whitened_neighbours(raw, WHITEN_DIM, cfg.neighbours),
        MiningSpace::RawAndPixels => {
            let pixels = pixels.filter(|p| p.rows() == n).ok_or_else(|| {
                TrainError::Config(
                    "cluster head: --mine-on raw-and-pixels needs one row of pixels per image"
                        .into(),
                )
            })?;
            let k = cfg.neighbours.min(n.saturating_sub(1));
            let from_pixels = ((k as f64 * cfg.pixel_share).floor() as usize).min(k);
            let from_raw = k - from_pixels;
            let a = nearest_neighbours(raw, from_raw)?;
            let b = whitened_neighbours(pixels, PIXEL_WHITEN_DIM, from_pixels)?;
            Ok(interleave_rows(n, &a, from_raw, &b, from_pixels))
        }
    }
}

/// The `k` nearest rows of `data` by cosine after PCA-whitening it to at most `width`
/// directions (fitted on `data`). An empty list for `k = 0`.
fn whitened_neighbours(data: MatRef<'_>, width: usize, k: usize) -> Result<Vec<u32>, TrainError> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let n = data.rows();
    if n < 3 {
        // Too few rows to fit a PCA.
        return Ok(nearest_neighbours(data, k)?);
    }
    let pca = PcaParams::new(width.min(data.cols()).min(n - 1)).fit(data)?;
    let white = pca.transform(data)?;
    Ok(nearest_neighbours(MatRef::new(&white, pca.d_out())?, k)?)
}

/// Row i of the result (of `n`): row i of `a` (`ka` wide), then row i of `b` (`kb` wide).
fn interleave_rows(n: usize, a: &[u32], ka: usize, b: &[u32], kb: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n * (ka + kb));
    for i in 0..n {
        out.extend_from_slice(&a[i * ka..(i + 1) * ka]);
        out.extend_from_slice(&b[i * kb..(i + 1) * kb]);
    }
    out
}

/// The widest tensor a group of heads may make: half of the 64k elements above which candle
/// hands an element-wise op to its thread pool. For ops this small the hand-off costs more
/// than it saves (on 2 cores, a step of 26 heads took three times as long as one of 25).
const SINGLE_THREAD_ELEMENTS: usize = 32 * 1024;

/// Trains `cfg.heads` heads, several at a time, as SCAN does: see [`train_head_group`]. Each
/// group starts from its own seed and draws its own batches.
fn train_heads(
    views: &[Vec<f32>],
    neighbours: &[u32],
    dim: usize,
    cfg: &ClusterHeadConfig,
) -> Result<Vec<ClusterHead>, TrainError> {
    let widest = cfg.batch_size.max(dim + 1) * cfg.clusters;
    let per_group = (SINGLE_THREAD_ELEMENTS / widest).max(1);
    let mut heads = Vec::with_capacity(cfg.heads);
    for (group, first) in (0..cfg.heads).step_by(per_group).enumerate() {
        let count = per_group.min(cfg.heads - first);
        let seed = cfg.seed ^ (group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        heads.extend(train_head_group(views, neighbours, dim, cfg, count, seed)?);
    }
    Ok(heads)
}

/// Trains `heads` heads at once: one linear layer with heads x clusters outputs sees each
/// batch, and each head has its own softmax and loss. Their sum trains them independently (no
/// parameter is shared), so the random start of each head's rows is what sets them apart.
fn train_head_group(
    views: &[Vec<f32>],
    neighbours: &[u32],
    dim: usize,
    cfg: &ClusterHeadConfig,
    heads: usize,
    seed: u64,
) -> Result<Vec<ClusterHead>, TrainError> {
    let dev = Device::Cpu;
    let (n, k) = (views[0].len() / dim, cfg.clusters);
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, seed, DType::F32, &dev);
    let linear = candle_nn::linear(dim, heads * k, vb.pp("head"))?;
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    // The batches' stream, apart from the one the weights were drawn from.
    let mut rng = Rng::new(seed ^ 0x5CA4);
    let k_nb = neighbours.len() / n;
    // The loss figures are the mean over the last tenth of the steps.
    let tail = (cfg.steps / 10).max(1);
    let mut sums = vec![[0.0f64; 3]; heads];
    let batch = cfg.batch_size.min(n);
    for step in 0..cfg.steps {
        let mut anchors = Vec::with_capacity(batch * dim);
        let mut others = Vec::with_capacity(batch * dim);
        for _ in 0..batch {
            let i = rng.below(n);
            let j = neighbours[i * k_nb + rng.below(k_nb)] as usize;
            let (va, vn) = (
                &views[rng.below(views.len())],
                &views[rng.below(views.len())],
            );
            anchors.extend_from_slice(&va[i * dim..(i + 1) * dim]);
            others.extend_from_slice(&vn[j * dim..(j + 1) * dim]);
        }
        let logits = |x: Vec<f32>| -> candle_core::Result<Tensor> {
            linear
                .forward(&Tensor::from_vec(x, (batch, dim), &dev)?)?
                .reshape((batch, heads, k))
        };
        let (total, cons, ent) =
            scan_loss(&logits(anchors)?, &logits(others)?, cfg.entropy_weight)?;
        opt.backward_step(&total.sum_all()?)?;
        if step >= cfg.steps - tail {
            for (part, t) in [total, cons, ent].iter().enumerate() {
                for (h, v) in t.to_vec1::<f32>()?.into_iter().enumerate() {
                    sums[h][part] += f64::from(v);
                }
            }
        }
    }
    let weight: Vec<f32> = linear.weight().flatten_all()?.to_vec1()?;
    let bias: Vec<f32> = linear
        .bias()
        .map(|b| b.to_vec1())
        .transpose()?
        .unwrap_or_else(|| vec![0.0; heads * k]);
    let t = tail as f64;
    Ok(sums
        .iter()
        .enumerate()
        .map(|(h, s)| ClusterHead {
            config: cfg.clone(),
            dim,
            weight: weight[h * k * dim..(h + 1) * k * dim].to_vec(),
            bias: bias[h * k..(h + 1) * k].to_vec(),
            centroids: Vec::new(),
            loss: s[0] / t,
            consistency: s[1] / t,
            entropy: s[2] / t,
        })
        .collect())
}

/// SCAN's self-labelling, on the head alone (the encoder stays frozen): the images whose
/// clean prediction is confident keep that cluster as a target, and the head trains with
/// cross-entropy on their augmented views, each cluster weighted by the inverse of its share
/// of the targets so that large clusters do not swallow small ones. Returns how many images
/// were confident.
pub fn self_label(
    head: &mut ClusterHead,
    clean: &[f32],
    views: &[Vec<f32>],
    cfg: &ClusterHeadConfig,
) -> Result<usize, TrainError> {
    let (dim, k) = (head.dim, cfg.clusters);
    let probs = head.probabilities(clean);
    let confident: Vec<(usize, u32)> = probs
        .chunks_exact(k)
        .enumerate()
        .filter_map(|(i, p)| {
            let (c, &best) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
            (f64::from(best) > cfg.self_label_threshold).then_some((i, c as u32))
        })
        .collect();
    tracing::info!(confident = confident.len(), "self-labelling");
    if confident.len() < 2 {
        return Ok(confident.len());
    }
    let mut counts = vec![0usize; k];
    confident.iter().for_each(|&(_, c)| counts[c as usize] += 1);
    let weight: Vec<f32> = counts
        .iter()
        .map(|&n| {
            if n > 0 {
                confident.len() as f32 / (k * n) as f32
            } else {
                0.0
            }
        })
        .collect();
    let dev = Device::Cpu;
    let w = candle_core::Var::from_vec(head.weight.clone(), (k, dim), &dev)?;
    let b = candle_core::Var::from_vec(head.bias.clone(), k, &dev)?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut rng = Rng::new(cfg.seed ^ 0x5E1F);
    let batch = cfg.batch_size.min(confident.len());
    for _ in 0..cfg.self_label_steps {
        let mut x = Vec::with_capacity(batch * dim);
        let (mut targets, mut weights) = (Vec::with_capacity(batch), Vec::with_capacity(batch));
        for _ in 0..batch {
            let (i, c) = confident[rng.below(confident.len())];
            let v = &views[rng.below(views.len())];
            x.extend_from_slice(&v[i * dim..(i + 1) * dim]);
            targets.push(c);
            weights.push(weight[c as usize]);
        }
        let x = Tensor::from_vec(x, (batch, dim), &dev)?;
        let logits = x
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp
            .gather(&Tensor::from_vec(targets, (batch, 1), &dev)?, 1)?
            .squeeze(1)?;
        let weights = Tensor::from_vec(weights, batch, &dev)?;
        let loss = ((&picked * &weights)?.sum_all()?
            / f64::from(weights.sum_all()?.to_scalar::<f32>()?))?
        .neg()?;
        opt.backward_step(&loss)?;
    }
    head.weight = w.as_tensor().flatten_all()?.to_vec1()?;
    head.bias = b.as_tensor().to_vec1()?;
    Ok(confident.len())
}

/// The normalised mean unit embedding of each cluster (a zero row for an empty one).
fn centroids(emb: &[f32], labels: &[u32], dim: usize, k: usize) -> Vec<f32> {
    let mut x = emb.to_vec();
    l2_normalize_rows(&mut x, dim);
    let mut sums = vec![0f32; k * dim];
    for (row, &l) in x.chunks_exact(dim).zip(labels) {
        sums[l as usize * dim..(l as usize + 1) * dim]
            .iter_mut()
            .zip(row)
            .for_each(|(s, v)| *s += v);
    }
    l2_normalize_rows(&mut sums, dim);
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::central_difference_rows;
    use candle_core::Var;

    fn by_hand(a: &[Vec<f64>], n: &[Vec<f64>], w: f64) -> f64 {
        let softmax = |r: &Vec<f64>| -> Vec<f64> {
            let m = r.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = r.iter().map(|x| (x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        let pa: Vec<Vec<f64>> = a.iter().map(softmax).collect();
        let pn: Vec<Vec<f64>> = n.iter().map(softmax).collect();
        let b = a.len() as f64;
        let cons = -pa
            .iter()
            .zip(&pn)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>().ln())
            .sum::<f64>()
            / b;
        let k = a[0].len();
        let mean: Vec<f64> = (0..k)
            .map(|c| pa.iter().map(|p| p[c]).sum::<f64>() / b)
            .collect();
        let ent = -mean.iter().map(|m| m * m.ln()).sum::<f64>();
        cons - w * ent
    }

    #[test]
    fn scan_loss_matches_the_formula_and_its_gradient_finite_differences() {
        let mut rng = Rng::new(4);
        let mut rows = |r: usize| -> Vec<Vec<f64>> {
            (0..r)
                .map(|_| (0..3).map(|_| 2.0 * rng.next_f64() - 1.0).collect())
                .collect()
        };
        let (a, n) = (rows(4), rows(4));
        let w = 2.0;
        let t = |m: &[Vec<f64>]| {
            let flat: Vec<f32> = m.iter().flatten().map(|&v| v as f32).collect();
            Var::from_tensor(&Tensor::from_vec(flat, (m.len(), 3), &Device::Cpu).unwrap()).unwrap()
        };
        let (va, vn) = (t(&a), t(&n));
        let (total, _, _) = scan_loss(va.as_tensor(), vn.as_tensor(), w).unwrap();
        let got = total.to_scalar::<f32>().unwrap() as f64;
        assert!((got - by_hand(&a, &n, w)).abs() < 1e-5, "{got}");
        let grads = total.backward().unwrap();
        let ga: Vec<Vec<f32>> = grads.get(va.as_tensor()).unwrap().to_vec2().unwrap();
        let gn: Vec<Vec<f32>> = grads.get(vn.as_tensor()).unwrap().to_vec2().unwrap();
        let h = 1e-5;
        for (i, j) in [(0, 0), (1, 2), (3, 1)] {
            let fd = central_difference_rows(|a| by_hand(a, &n, w), &a, (i, j), h);
            assert!(
                (ga[i][j] as f64 - fd).abs() < 1e-4,
                "da[{i}][{j}] {} vs {fd}",
                ga[i][j]
            );
            let fd = central_difference_rows(|n| by_hand(&a, n, w), &n, (i, j), h);
            assert!(
                (gn[i][j] as f64 - fd).abs() < 1e-4,
                "dn[{i}][{j}] {} vs {fd}",
                gn[i][j]
            );
        }
    }

    #[test]
    fn scan_loss_of_several_heads_is_each_heads_own_loss() {
        let mut rng = Rng::new(9);
        let (b, heads, k) = (5, 3, 4);
        let mut draw = || -> Vec<f32> {
            (0..b * heads * k)
                .map(|_| 4.0 * rng.next_f64() as f32 - 2.0)
                .collect()
        };
        let (a, n) = (draw(), draw());
        let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), (b, heads, k), &Device::Cpu).unwrap();
        let (total, cons, ent) = scan_loss(&t(&a), &t(&n), 1.5).unwrap();
        let per_head = |x: &Tensor| x.to_vec1::<f32>().unwrap();
        let (total, cons, ent) = (per_head(&total), per_head(&cons), per_head(&ent));
        for h in 0..heads {
            let slice = |x: &Tensor| x.narrow(1, h, 1).unwrap().squeeze(1).unwrap();
            let (t1, c1, e1) = scan_loss(&slice(&t(&a)), &slice(&t(&n)), 1.5).unwrap();
            for (got, want) in [(total[h], t1), (cons[h], c1), (ent[h], e1)] {
                let want = want.to_scalar::<f32>().unwrap();
                assert!((got - want).abs() < 1e-5, "head {h}: {got} vs {want}");
            }
        }
        assert!(
            total[0] != total[1],
            "the heads' logits differ, so must their losses"
        );
    }

    /// Three groups whose first coordinate is a loud nuisance shared across groups.
    fn groups(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(n * 4);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let g = i % 3;
            let mut row = [0f32; 4];
            row[0] = 3.0 * (rng.next_f64() as f32 - 0.5);
            row[g + 1] = 1.0;
            for v in row.iter_mut().skip(1) {
                *v += 0.15 * (rng.next_f64() as f32 - 0.5);
            }
            x.extend_from_slice(&row);
            labels.push(g as u32);
        }
        (x, labels)
    }

    #[test]
    fn raw_and_pixel_neighbours_take_their_share_from_each_space() {
        // The embedding groups images by parity, the pixels by halves: with two neighbours
        // each, the first must share the parity and the second the half.
        let n = 8;
        let clean: Vec<f32> = (0..n)
            .flat_map(|i| {
                let angle = if i % 2 == 0 { 0.0 } else { 1.5 } + 0.01 * i as f32;
                [angle.cos(), angle.sin()]
            })
            .collect();
        let pixels: Vec<f32> = (0..n)
            .map(|i| if i < n / 2 { 1.0 } else { -1.0 } + 0.01 * i as f32)
            .collect();
        let cfg = ClusterHeadConfig {
            clusters: 2,
            neighbours: 2,
            mine_on: MiningSpace::RawAndPixels,
            ..Default::default()
        };
        let pixel_rows = MatRef::new(&pixels, 1).unwrap();
        let nb = mine_neighbours(&clean, 2, Some(pixel_rows), &cfg).unwrap();
        assert_eq!(nb.len(), n * 2);
        for i in 0..n {
            let (a, b) = (nb[2 * i] as usize, nb[2 * i + 1] as usize);
            assert_eq!(a % 2, i % 2, "image {i}: embedding neighbour {a}");
            assert_eq!(b < n / 2, i < n / 2, "image {i}: pixel neighbour {b}");
            assert!(a != i && b != i);
        }
        let err = mine_neighbours(&clean, 2, None, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mine-on raw-and-pixels"), "{err}");

        // A quarter from the pixels: of four neighbours, three share the parity, the last the
        // half.
        let quarter = ClusterHeadConfig {
            neighbours: 4,
            pixel_share: 0.25,
            ..cfg.clone()
        };
        let nb = mine_neighbours(&clean, 2, Some(pixel_rows), &quarter).unwrap();
        for (i, row) in nb.chunks_exact(4).enumerate() {
            assert!(
                row[..3].iter().all(|&a| a as usize % 2 == i % 2),
                "{i}: {row:?}"
            );
            assert_eq!((row[3] as usize) < n / 2, i < n / 2, "{i}: {row:?}");
        }
        for bad in [0.0, 1.0, f64::NAN] {
            let cfg = ClusterHeadConfig {
                pixel_share: bad,
                ..quarter.clone()
            };
            let err = cfg.check(n).unwrap_err().to_string();
            assert!(err.contains("--pixel-share"), "{err}");
        }
    }

    #[test]
    fn heads_in_several_groups_all_come_back_and_differ() {
        let mut rng = Rng::new(3);
        let (clean, _) = groups(60, &mut rng);
        let nb = nearest_neighbours(MatRef::new(&clean, 4).unwrap(), 5).unwrap();
        // A batch of 5,000 (capped at the 60 images) makes the widest tensor 15,000 elements:
        // two heads per group, so five heads take three groups.
        let cfg = ClusterHeadConfig {
            clusters: 3,
            heads: 5,
            steps: 5,
            batch_size: 5000,
            ..Default::default()
        };
        let heads = train_heads(std::slice::from_ref(&clean), &nb, 4, &cfg).unwrap();
        assert_eq!(heads.len(), 5);
        for (i, a) in heads.iter().enumerate() {
            assert_eq!((a.weight.len(), a.bias.len()), (3 * 4, 3));
            assert!(a.loss.is_finite());
            for b in &heads[i + 1..] {
                assert_ne!(a.weight, b.weight, "two heads started alike");
            }
        }
    }

    #[test]
    fn the_head_finds_groups_and_its_centroids_reproduce_them() {
        let mut rng = Rng::new(9);
        let (clean, labels) = groups(300, &mut rng);
        // Views redraw the nuisance, as augmentations redraw colour: a head that splits
        // along it would disagree between an image's views.
        let views: Vec<Vec<f32>> = (0..4)
            .map(|_| {
                let mut v = clean.clone();
                v.chunks_exact_mut(4)
                    .for_each(|row| row[0] = 3.0 * (rng.next_f64() as f32 - 0.5));
                v
            })
            .collect();
        let cfg = ClusterHeadConfig {
            clusters: 3,
            neighbours: 5,
            heads: 2,
            steps: 600,
            batch_size: 64,
            ..Default::default()
        };
        let neighbours = mine_neighbours(&clean, 4, None, &cfg).unwrap();
        let head = train_cluster_head(&clean, &views, 4, &neighbours, &cfg).unwrap();
        let found = head.assign(&clean);

        let nmi = models::metrics::normalized_mutual_info(&labels, &found).unwrap();
        assert!(nmi > 0.8, "NMI {nmi}");
        let board = head.nearest_centroid(&clean);
        let agree = board.iter().zip(&found).filter(|(a, b)| a == b).count();
        assert!(agree as f64 > 0.9 * found.len() as f64, "{agree}");
        let bad = ClusterHeadConfig {
            clusters: 200,
            ..cfg.clone()
        };
        assert!(train_cluster_head(&clean, &views, 4, &neighbours, &bad).is_err());

        // Self-labelling trains on confident images only and keeps the groups.
        let mut labelled = head.clone();
        let strict = ClusterHeadConfig {
            self_label_steps: 200,
            self_label_threshold: 0.9,
            ..cfg.clone()
        };
        let confident = self_label(&mut labelled, &clean, &views, &strict).unwrap();
        assert!(confident > 30 && confident <= 300, "{confident} confident");
        assert_ne!(labelled.weight, head.weight, "the head did not train");
        let after = labelled.assign(&clean);
        let nmi_after = models::metrics::normalized_mutual_info(&labels, &after).unwrap();
        assert!(nmi_after > 0.8, "NMI after self-labelling {nmi_after}");
        let never = ClusterHeadConfig {
            self_label_threshold: 1.5,
            ..cfg
        };
        assert!(never.check(300).is_err());
    }
}
