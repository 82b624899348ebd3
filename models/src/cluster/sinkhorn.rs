//! Sinkhorn-Knopp equal-partition codes (Cuturi 2013, as SwAV uses them): soft assignments
//! of a batch to k prototypes in which every prototype receives the same share of the batch.
//! Shared by host-train's SwAV and the board's adapter, so both balance codes the same way.

use alloc::vec;
use alloc::vec::Vec;

/// Soft codes for `scores` (b rows of k): each row sums to 1 and each column to about b / k.
/// Computed in f64, shifted by the maximum score so that exp(score / epsilon) cannot
/// overflow.
pub fn sinkhorn(scores: &[f32], k: usize, epsilon: f64, iters: usize) -> Vec<f32> {
    if k == 0 || scores.is_empty() {
        return Vec::new();
    }
    let b = scores.len() / k;
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut q: Vec<f64> = scores
        .iter()
        .map(|&s| libm::exp((s as f64 - max) / epsilon))
        .collect();
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|v| *v /= total);
    let mut col = vec![0f64; k];
    for _ in 0..iters {
        // Each prototype receives 1/k of the mass...
        col.fill(0.0);
        for row in q.chunks_exact(k) {
            col.iter_mut().zip(row).for_each(|(c, &v)| *c += v);
        }
        for row in q.chunks_exact_mut(k) {
            for (v, &c) in row.iter_mut().zip(&col) {
                if c > 0.0 {
                    *v /= c * k as f64;
                }
            }
        }
        // ...and each sample 1/b.
        for row in q.chunks_exact_mut(k) {
            let s: f64 = row.iter().sum();
            if s > 0.0 {
                row.iter_mut().for_each(|v| *v /= s * b as f64);
            }
        }
    }
    q.iter().map(|&v| (v * b as f64) as f32).collect()
}
