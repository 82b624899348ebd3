//! The contingency table of two labelings and the metrics read from it.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::MetricsError;

/// Counts `n[i][j]` of samples with true class `i` and predicted cluster `j`, after
/// relabelling both to `0..`; labels may be any `u32`, not necessarily contiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contingency {
    counts: Vec<u64>,
    classes: usize,
    clusters: usize,
    n: u64,
}

fn dense_ids(labels: &[u32]) -> (Vec<usize>, usize) {
    let mut ids = BTreeMap::new();
    for &l in labels {
        let next = ids.len();
        ids.entry(l).or_insert(next);
    }
    (labels.iter().map(|l| ids[l]).collect(), ids.len())
}

impl Contingency {
    pub fn new(labels_true: &[u32], labels_pred: &[u32]) -> Result<Self, MetricsError> {
        if labels_true.len() != labels_pred.len() {
            return Err(MetricsError::LengthMismatch {
                left: labels_true.len(),
                right: labels_pred.len(),
            });
        }
        if labels_true.is_empty() {
            return Err(MetricsError::Empty);
        }
        let (t, classes) = dense_ids(labels_true);
        let (p, clusters) = dense_ids(labels_pred);
        let mut counts = vec![0u64; classes * clusters];
        for (&i, &j) in t.iter().zip(&p) {
            counts[i * clusters + j] += 1;
        }
        Ok(Self {
            counts,
            classes,
            clusters,
            n: labels_true.len() as u64,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }
    pub fn clusters(&self) -> usize {
        self.clusters
    }
    pub fn n(&self) -> u64 {
        self.n
    }
    pub fn get(&self, class: usize, cluster: usize) -> u64 {
        self.counts[class * self.clusters + cluster]
    }

    fn class_sums(&self) -> Vec<u64> {
        self.counts
            .chunks(self.clusters)
            .map(|r| r.iter().sum())
            .collect()
    }

    fn cluster_sums(&self) -> Vec<u64> {
        let mut s = vec![0u64; self.clusters];
        for row in self.counts.chunks(self.clusters) {
            for (a, &c) in s.iter_mut().zip(row) {
                *a += c;
            }
        }
        s
    }
}

fn entropy(sums: &[u64], n: u64) -> f64 {
    let n = n as f64;
    -sums
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            p * libm::log(p)
        })
        .sum::<f64>()
}

/// Normalised mutual information with the arithmetic mean of the entropies as normaliser,
/// scikit-learn's default, including its special cases.
pub fn normalized_mutual_info(
    labels_true: &[u32],
    labels_pred: &[u32],
) -> Result<f64, MetricsError> {
    let c = Contingency::new(labels_true, labels_pred)?;
    // Neither labeling splits the data: a perfect match.
    if c.classes == 1 && c.clusters == 1 {
        return Ok(1.0);
    }
    let (a, b) = (c.class_sums(), c.cluster_sums());
    let n = c.n as f64;
    let log_n = libm::log(n);
    let mut mi = 0.0;
    for i in 0..c.classes {
        for j in 0..c.clusters {
            let nij = c.get(i, j);
            if nij > 0 {
                let nij = nij as f64;
                mi += nij / n
                    * (libm::log(nij) - libm::log(a[i] as f64) - libm::log(b[j] as f64) + log_n);
            }
        }
    }
    let mi = mi.max(0.0);
    if mi == 0.0 {
        return Ok(0.0);
    }
    let norm = 0.5 * (entropy(&a, c.n) + entropy(&b, c.n));
    Ok(mi / norm)
}

/// Adjusted Rand index (Hubert and Arabie), computed from pair counts as scikit-learn does.
pub fn adjusted_rand_index(labels_true: &[u32], labels_pred: &[u32]) -> Result<f64, MetricsError> {
    let c = Contingency::new(labels_true, labels_pred)?;
    let n = c.n as f64;
    let sum_sq: f64 = c.counts.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let (a, b) = (c.class_sums(), c.cluster_sums());
    let sq = |s: &[u64]| s.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    // Ordered pairs: same class and same cluster (tp), and the two kinds of disagreement.
    let tp = sum_sq - n;
    let fp = sq(&b) - sum_sq;
    let fneg = sq(&a) - sum_sq;
    let tn = n * n - fp - fneg - sum_sq;
    if fneg == 0.0 && fp == 0.0 {
        return Ok(1.0);
    }
    Ok(2.0 * (tp * tn - fneg * fp) / ((tp + fneg) * (fneg + tn) + (tp + fp) * (fp + tn)))
}

/// Fraction of samples whose cluster's majority class is their own class.
pub fn purity(labels_true: &[u32], labels_pred: &[u32]) -> Result<f64, MetricsError> {
    let c = Contingency::new(labels_true, labels_pred)?;
    let hits: u64 = (0..c.clusters)
        .map(|j| (0..c.classes).map(|i| c.get(i, j)).max().unwrap_or(0))
        .sum();
    Ok(hits as f64 / c.n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_partitions_score_one_whatever_the_label_names() {
        let t = [0, 0, 1, 1, 2, 2];
        let p = [7, 7, 3, 3, 9, 9];
        assert!((normalized_mutual_info(&t, &p).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(adjusted_rand_index(&t, &p).unwrap(), 1.0);
        assert_eq!(purity(&t, &p).unwrap(), 1.0);
    }

    #[test]
    fn independent_labelings_score_zero() {
        let t = [0, 0, 1, 1];
        let p = [0, 1, 0, 1];
        assert_eq!(normalized_mutual_info(&t, &p).unwrap(), 0.0);
        assert!(adjusted_rand_index(&t, &p).unwrap() < 0.0);
        assert_eq!(purity(&t, &p).unwrap(), 0.5);
    }

    #[test]
    fn special_cases_follow_scikit_learn() {
        // One class and one cluster: a perfect match.
        assert_eq!(normalized_mutual_info(&[1, 1, 1], &[4, 4, 4]).unwrap(), 1.0);
        // One cluster against several classes: no information.
        assert_eq!(normalized_mutual_info(&[0, 1, 2], &[4, 4, 4]).unwrap(), 0.0);
        assert_eq!(
            normalized_mutual_info(&[0, 1], &[0]),
            Err(MetricsError::LengthMismatch { left: 2, right: 1 })
        );
        assert_eq!(adjusted_rand_index(&[], &[]), Err(MetricsError::Empty));
    }

    #[test]
    fn contingency_counts_pairs() {
        let c = Contingency::new(&[5, 5, 6], &[1, 2, 2]).unwrap();
        assert_eq!((c.classes(), c.clusters(), c.n()), (2, 2, 3));
        assert_eq!(
            (c.get(0, 0), c.get(0, 1), c.get(1, 0), c.get(1, 1)),
            (1, 1, 0, 1)
        );
    }
}
