//! The silhouette (Rousseeuw 1987): a label-free measure of how well points sit in their
//! clusters, used by the board to judge an adapter update without labels. O(n^2 d), for the
//! few hundred held-out frames it is meant for.

use alloc::vec;

use super::MetricsError;

/// Mean silhouette of `points` (rows of `dim`) under `labels`: for each point,
/// `(b - a) / max(a, b)` with `a` its mean Euclidean distance to the rest of its cluster and
/// `b` the smallest mean distance to another cluster; points alone in their cluster count 0.
/// In [-1, 1]; higher is better. A single cluster scores 0.
pub fn silhouette(points: &[f32], dim: usize, labels: &[u32]) -> Result<f64, MetricsError> {
    let n = labels.len();
    if n == 0 || dim == 0 {
        return Err(MetricsError::Empty);
    }
    if points.len() != n * dim {
        return Err(MetricsError::LengthMismatch {
            left: points.len() / dim,
            right: n,
        });
    }
    let k = labels.iter().copied().max().unwrap_or(0) as usize + 1;
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l as usize] += 1);
    let mut total = 0.0f64;
    let mut sums = vec![0.0f64; k];
    for i in 0..n {
        sums.fill(0.0);
        let pi = &points[i * dim..(i + 1) * dim];
        for j in 0..n {
            if i != j {
                let pj = &points[j * dim..(j + 1) * dim];
                let d2: f32 = pi.iter().zip(pj).map(|(a, b)| (a - b) * (a - b)).sum();
                sums[labels[j] as usize] += libm::sqrt(d2 as f64);
            }
        }
        let own = labels[i] as usize;
        if sizes[own] < 2 {
            continue;
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() && a.max(b) > 0.0 {
            total += (b - a) / a.max(b);
        }
    }
    Ok(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computed_case() {
        // 1-d points 0, 1 (cluster 0) and 4 (cluster 1).
        // Point 0: a = 1, b = 4 -> 0.75. Point 1: a = 1, b = 3 -> 2/3. Point 4: alone -> 0.
        let s = silhouette(&[0.0, 1.0, 4.0], 1, &[0, 0, 1]).unwrap();
        assert!((s - (0.75 + 2.0 / 3.0) / 3.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn separated_clusters_score_higher_than_mixed_labels() {
        let pts: Vec<f32> = (0..20)
            .map(|i| (i / 10) as f32 * 10.0 + (i % 10) as f32 * 0.1)
            .collect();
        let good: Vec<u32> = (0..20).map(|i| (i / 10) as u32).collect();
        let bad: Vec<u32> = (0..20).map(|i| (i % 2) as u32).collect();
        let (g, b) = (
            silhouette(&pts, 1, &good).unwrap(),
            silhouette(&pts, 1, &bad).unwrap(),
        );
        assert!(g > 0.9 && b < 0.1, "{g} {b}");
        assert!(silhouette(&pts, 1, &[0; 3]).is_err());
    }
}
