//! Evaluation of learned features against labels (which training never sees): weighted kNN
//! of the test set against the train set, and k-means with k = the number of classes.

use models::cluster::KMeansParams;
use models::linalg::l2_normalize_rows;
use models::metrics::{
    adjusted_rand_index, clustering_accuracy, normalized_mutual_info, WeightedKnnParams,
};
use models::MatRef;
use serde::Serialize;

use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalReport {
    pub knn_top1: f64,
    pub nmi: f64,
    pub ari: f64,
    pub accuracy: f64,
}

/// Scores embeddings (rows of `dim` values; normalised here) of a labeled train and test set.
pub fn evaluate(
    train: &[f32],
    train_labels: &[u32],
    test: &[f32],
    test_labels: &[u32],
    dim: usize,
    seed: u64,
) -> Result<EvalReport, TrainError> {
    let (mut tr, mut te) = (train.to_vec(), test.to_vec());
    l2_normalize_rows(&mut tr, dim);
    l2_normalize_rows(&mut te, dim);
    let knn = WeightedKnnParams::default().check()?;
    let knn_top1 = knn.top1(
        MatRef::new(&tr, dim)?,
        train_labels,
        MatRef::new(&te, dim)?,
        test_labels,
    )?;
    let classes = train_labels.iter().max().map_or(1, |&m| m as usize + 1);
    let fit = KMeansParams::new(classes)
        .seed(seed)
        .n_redo(3)
        .check()?
        .fit(MatRef::new(&tr, dim)?)?;
    Ok(EvalReport {
        knn_top1,
        nmi: normalized_mutual_info(train_labels, &fit.labels)?,
        ari: adjusted_rand_index(train_labels, &fit.labels)?,
        accuracy: clustering_accuracy(train_labels, &fit.labels)?,
    })
}
