//! Initial centroids: uniform choice of points (faiss) or k-means++.

use rayon::prelude::*;

use crate::rng::Rng;
use crate::MatRef;

/// k distinct rows of `train`, chosen uniformly. Requires `train.rows() >= k`.
pub(crate) fn random_rows(train: MatRef<'_>, k: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(k * train.cols());
    for i in rng.sample_indices(train.rows(), k) {
        out.extend_from_slice(train.row(i));
    }
    out
}

/// k-means++: each next centroid is a point drawn with probability proportional to its
/// squared distance to the nearest centroid chosen so far.
pub(crate) fn kmeans_plus_plus(train: MatRef<'_>, k: usize, rng: &mut Rng) -> Vec<f32> {
    let (n, d) = (train.rows(), train.cols());
    let mut out = Vec::with_capacity(k * d);
    out.extend_from_slice(train.row(rng.below(n)));
    let mut nearest = vec![f64::INFINITY; n];
    for c in 1..k {
        let last = &out[(c - 1) * d..c * d];
        nearest.par_iter_mut().enumerate().for_each(|(i, best)| {
            let dist: f64 = train
                .row(i)
                .iter()
                .zip(last)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum();
            *best = best.min(dist);
        });
        let total: f64 = nearest.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.next_f64() * total;
            let mut chosen = n - 1;
            for (i, &w) in nearest.iter().enumerate() {
                if target < w {
                    chosen = i;
                    break;
                }
                target -= w;
            }
            chosen
        } else {
            // Every point already coincides with a centroid: any choice is as good.
            rng.below(n)
        };
        out.extend_from_slice(train.row(pick));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_plus_plus_spreads_over_separated_blobs() {
        // Three tight blobs far apart: k-means++ almost surely takes one point from each.
        let mut x = Vec::new();
        for blob in 0..3 {
            for i in 0..50 {
                x.extend_from_slice(&[blob as f32 * 100.0 + (i % 5) as f32 * 0.01, 0.0]);
            }
        }
        let m = MatRef::new(&x, 2).unwrap();
        let c = kmeans_plus_plus(m, 3, &mut Rng::new(5));
        let mut blobs: Vec<i32> = c.chunks(2).map(|p| (p[0] / 100.0).round() as i32).collect();
        blobs.sort_unstable();
        assert_eq!(blobs, vec![0, 1, 2]);
    }

    #[test]
    fn random_rows_picks_distinct_training_points() {
        let x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let m = MatRef::new(&x, 1).unwrap();
        let mut c = random_rows(m, 20, &mut Rng::new(1));
        c.sort_by(f32::total_cmp);
        assert_eq!(c, x);
    }
}
