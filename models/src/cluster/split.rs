//! Empty clusters are never returned: an empty centroid takes over half of a big cluster.
//!
//! As faiss does: the cluster to split is drawn with probability proportional to its size
//! minus one, its centroid is copied, and the two copies are pushed apart by a relative
//! 1/1024 in alternating directions per dimension so the next assignment separates them.

use crate::rng::Rng;

const EPS: f32 = 1.0 / 1024.0;

/// Splits clusters until no count is zero; returns how many splits were made.
///
/// Requires that the counts sum to at least the number of clusters, which holds whenever
/// there are at least k points.
pub(crate) fn split_empty_clusters(
    centroids: &mut [f32],
    dim: usize,
    counts: &mut [usize],
    rng: &mut Rng,
) -> usize {
    let k = counts.len();
    let mut splits = 0;
    for ci in 0..k {
        if counts[ci] != 0 {
            continue;
        }
        let spare: usize = counts.iter().map(|&c| c.saturating_sub(1)).sum();
        if spare == 0 {
            break; // fewer points than clusters: nothing left to split
        }
        let mut target = rng.below(spare);
        let mut cj = 0;
        for (j, &c) in counts.iter().enumerate() {
            let w = c.saturating_sub(1);
            if target < w {
                cj = j;
                break;
            }
            target -= w;
        }
        for t in 0..dim {
            let src = centroids[cj * dim + t];
            let (up, down) = (src * (1.0 + EPS), src * (1.0 - EPS));
            let (a, b) = if t % 2 == 0 { (up, down) } else { (down, up) };
            centroids[ci * dim + t] = a;
            centroids[cj * dim + t] = b;
        }
        counts[ci] = counts[cj] / 2;
        counts[cj] -= counts[ci];
        splits += 1;
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_clusters_take_half_of_a_populated_one() {
        let mut c = vec![1.0, 2.0, 0.0, 0.0, 5.0, 5.0];
        let mut counts = vec![10, 0, 1];
        let splits = split_empty_clusters(&mut c, 2, &mut counts, &mut Rng::new(0));
        assert_eq!(splits, 1);
        // Only cluster 0 had spare points.
        assert_eq!(counts, vec![5, 5, 1]);
        assert_eq!(&c[2..4], &[1.0 + EPS, 2.0 * (1.0 - EPS)]);
        assert_eq!(&c[0..2], &[1.0 - EPS, 2.0 * (1.0 + EPS)]);
        assert_eq!(&c[4..6], &[5.0, 5.0]);
    }

    #[test]
    fn no_split_when_nothing_is_empty() {
        let mut c = vec![0.0; 4];
        let mut counts = vec![3, 4];
        assert_eq!(
            split_empty_clusters(&mut c, 2, &mut counts, &mut Rng::new(0)),
            0
        );
    }
}
