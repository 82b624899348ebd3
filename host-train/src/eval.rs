//! Evaluation of learned features against labels (which training never sees): weighted kNN
//! of the test set against the train set, and k-means with k = the number of classes.
//!
//! kNN is scored twice: on the features as they are, and PCA-whitened (fitted on the train
//! features, no labels) to at most 256 dimensions, the protocol of the pixel baseline
//! (`host-train baseline`), so learned features and pixels compare like for like.

use models::cluster::{KMeansFit, KMeansParams};
use models::linalg::{l2_normalize_rows, PcaParams};
use models::metrics::{
    adjusted_rand_index, clustering_accuracy, normalized_mutual_info, silhouette, WeightedKnnParams,
};
use models::rng::Rng;
use models::MatRef;
use serde::Serialize;

use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalReport {
    pub knn_top1: f64,
    /// kNN top-1 of the PCA-whitened features; `None` for features wider than
    /// [`WHITEN_MAX_DIM`], where fitting the PCA would cost more than the rest of the evaluation.
    pub knn_top1_whitened: Option<f64>,
    pub nmi: f64,
    pub ari: f64,
    pub accuracy: f64,
}

/// Output width of the whitening PCA, as in the pixel baseline and DeepCluster.
pub const WHITEN_DIM: usize = 256;
/// The widest features that are also scored whitened.
pub const WHITEN_MAX_DIM: usize = 1024;

/// Scores embeddings (rows of `dim` values; normalised here) of a labeled train and test set.
pub fn evaluate(
    train: &[f32],
    train_labels: &[u32],
    test: &[f32],
    test_labels: &[u32],
    dim: usize,
    seed: u64,
) -> Result<EvalReport, TrainError> {
    let labels = (train_labels, test_labels);
    let n = train.len() / dim.max(1);
    // Whitening keeps fewer components than samples (a small validation run has few).
    let knn_top1_whitened = if dim <= WHITEN_MAX_DIM && n > 2 {
        let pca = PcaParams::new(dim.min(WHITEN_DIM).min(n - 1)).fit(MatRef::new(train, dim)?)?;
        let tr = pca.transform(MatRef::new(train, dim)?)?;
        let te = pca.transform(MatRef::new(test, dim)?)?;
        Some(normalized_knn(tr, te, pca.d_out(), labels)?.0)
    } else {
        None
    };
    // The L2-normalised train rows are also what k-means clusters.
    let (knn_top1, tr) = normalized_knn(train.to_vec(), test.to_vec(), dim, labels)?;
    let classes = train_labels.iter().max().map_or(1, |&m| m as usize + 1);
    let fit = cosine_kmeans(tr, dim, classes, seed, 3)?;
    Ok(EvalReport {
        knn_top1,
        knn_top1_whitened,
        nmi: normalized_mutual_info(train_labels, &fit.labels)?,
        ari: adjusted_rand_index(train_labels, &fit.labels)?,
        accuracy: clustering_accuracy(train_labels, &fit.labels)?,
    })
}

/// k-means with `restarts` runs (the lowest objective kept) of the L2-normalised rows of
/// `emb` (rows of `dim`): how evaluation, the head's report and the export cluster.
pub fn cosine_kmeans(
    mut emb: Vec<f32>,
    dim: usize,
    k: usize,
    seed: u64,
    restarts: usize,
) -> Result<KMeansFit, TrainError> {
    l2_normalize_rows(&mut emb, dim);
    Ok(KMeansParams::new(k)
        .seed(seed)
        .n_redo(restarts)
        .check()?
        .fit(MatRef::new(&emb, dim)?)?)
}

/// Rows the silhouette of a set of centroids is measured on (it costs n^2).
pub const SILHOUETTE_SAMPLE: usize = 2_000;

/// The mean silhouette of the clusters that give each row of `emb` (rows of `dim`) its
/// nearest (cosine) row of `centroids`, on at most [`SILHOUETTE_SAMPLE`] rows drawn with
/// `seed`, in the geometry of unit vectors. No labels: it says how well `centroids` separate
/// the embeddings, and so which of two sets of centroids to ship.
pub fn centroid_silhouette(
    emb: &[f32],
    dim: usize,
    centroids: &[f32],
    seed: u64,
) -> Result<f64, TrainError> {
    let n = emb.len() / dim.max(1);
    let mut rows: Vec<f32> = Rng::new(seed)
        .sample_indices(n, n.min(SILHOUETTE_SAMPLE))
        .iter()
        .flat_map(|&i| emb[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    l2_normalize_rows(&mut rows, dim);
    let labels = nearest_centroids(&rows, dim, centroids);
    Ok(silhouette(&rows, dim, &labels)?)
}

/// The nearest (cosine) row of `centroids` for each row of `emb` (rows of `dim`, normalised
/// here): the board's assignment.
pub fn assign_to_centroids(emb: &[f32], dim: usize, centroids: &[f32]) -> Vec<u32> {
    let mut unit = emb.to_vec();
    l2_normalize_rows(&mut unit, dim);
    nearest_centroids(&unit, dim, centroids)
}

/// The nearest (largest dot product) row of `centroids` for each row of `unit` (unit rows of
/// `dim`).
pub fn nearest_centroids(unit: &[f32], dim: usize, centroids: &[f32]) -> Vec<u32> {
    unit.chunks_exact(dim)
        .map(|row| {
            centroids
                .chunks_exact(dim)
                .map(|c| c.iter().zip(row).map(|(a, b)| a * b).sum::<f32>())
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(c, _)| c as u32)
        })
        .collect()
}

/// What an unlabeled set's embeddings can say about themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelFreeReport {
    pub k: usize,
    pub objective: f64,
    /// Entropy of the cluster sizes divided by log(k).
    pub size_entropy: f64,
    /// NMI against the `previous` clustering, when one was given.
    pub nmi_vs_previous: Option<f64>,
    pub labels: Vec<u32>,
}

/// k-means with `k` clusters (at most n / 2) on the L2-normalised `features` (rows of `dim`).
pub fn label_free(
    features: &[f32],
    dim: usize,
    k: usize,
    previous: Option<&[u32]>,
    seed: u64,
) -> Result<LabelFreeReport, TrainError> {
    let mut x = features.to_vec();
    l2_normalize_rows(&mut x, dim);
    let n = x.len() / dim.max(1);
    let k = k.min(n / 2).max(1);
    let fit = KMeansParams::new(k)
        .seed(seed)
        .n_redo(3)
        .check()?
        .fit(MatRef::new(&x, dim)?)?;
    let mut sizes = vec![0usize; k];
    fit.labels.iter().for_each(|&l| sizes[l as usize] += 1);
    let entropy: f64 = sizes
        .iter()
        .filter(|&&s| s > 0)
        .map(|&s| {
            let p = s as f64 / n as f64;
            -p * p.ln()
        })
        .sum();
    let nmi_vs_previous = previous
        .filter(|p| p.len() == fit.labels.len())
        .map(|p| normalized_mutual_info(p, &fit.labels))
        .transpose()?;
    Ok(LabelFreeReport {
        k,
        objective: fit.objective(),
        size_entropy: if k > 1 {
            entropy / (k as f64).ln()
        } else {
            0.0
        },
        nmi_vs_previous,
        labels: fit.labels,
    })
}

/// Weighted kNN top-1 of `test` against `train` (rows of `dim`) after L2-normalising both;
/// also hands back the normalised train rows.
fn normalized_knn(
    mut train: Vec<f32>,
    mut test: Vec<f32>,
    dim: usize,
    (train_labels, test_labels): (&[u32], &[u32]),
) -> Result<(f64, Vec<f32>), TrainError> {
    l2_normalize_rows(&mut train, dim);
    l2_normalize_rows(&mut test, dim);
    let top1 = WeightedKnnParams::default().check()?.top1(
        MatRef::new(&train, dim)?,
        train_labels,
        MatRef::new(&test, dim)?,
        test_labels,
    )?;
    Ok((top1, train))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes told apart by one low-variance coordinate, next to three loud nuisance
    /// coordinates that swamp cosine similarity until whitening puts all four on one scale.
    fn nuisance_set(n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<u32>) {
        let mut x = Vec::with_capacity(n * 4);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 2) as u32;
            for _ in 0..3 {
                x.push((20.0 * (rng.next_f64() - 0.5)) as f32);
            }
            let sign = if class == 0 { -1.0 } else { 1.0 };
            x.push((sign * 0.5 + 0.05 * (rng.next_f64() - 0.5)) as f32);
            labels.push(class);
        }
        (x, labels)
    }

    #[test]
    fn whitening_recovers_a_quiet_signal_that_raw_cosine_misses() {
        let mut rng = Rng::new(7);
        let (train, train_labels) = nuisance_set(1200, &mut rng);
        let (test, test_labels) = nuisance_set(400, &mut rng);
        let r = evaluate(&train, &train_labels, &test, &test_labels, 4, 1).unwrap();
        let whitened = r.knn_top1_whitened.unwrap();
        assert!(r.knn_top1 < 0.8, "raw kNN {}", r.knn_top1);
        assert!(whitened > 0.95, "whitened kNN {whitened}");
    }

    #[test]
    fn label_free_figures_see_balanced_clusters_and_repeat_themselves() {
        // Four tight, equal groups on the axes.
        let x: Vec<f32> = (0..400)
            .flat_map(|i| {
                let mut row = [0.01f32 * (i % 7) as f32; 4];
                row[i % 4] = 1.0;
                row
            })
            .collect();
        let r = label_free(&x, 4, 4, None, 1).unwrap();
        assert_eq!(r.k, 4);
        assert!((r.size_entropy - 1.0).abs() < 1e-9, "{}", r.size_entropy);
        assert!(r.nmi_vs_previous.is_none());
        let again = label_free(&x, 4, 4, Some(&r.labels), 2).unwrap();
        assert!((again.nmi_vs_previous.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn features_wider_than_the_cap_are_not_whitened() {
        let dim = WHITEN_MAX_DIM + 1;
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..20 * dim).map(|_| rng.next_f64() as f32).collect();
        let labels: Vec<u32> = (0..20).map(|i| i % 2).collect();
        let r = evaluate(&x, &labels, &x, &labels, dim, 1).unwrap();
        assert_eq!(r.knn_top1_whitened, None);
    }
}
