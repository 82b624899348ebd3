//! Full-covariance statistics adaptation: the embedding is re-centred and re-whitened with the
//! running mean and covariance of what the device sees, then coloured with the training
//! embeddings' covariance:
//! `x' = C_train^(1/2) C_seen^(-1/2) (x - mean_seen) + mean_train`.
//!
//! Where the per-dimension map only rescales axes, this one also undoes a rotation or mixing
//! of the embedding dimensions, which a change of lighting or polarity causes. The square
//! roots come from a Jacobi eigendecomposition (no_std, no LAPACK); the map is refreshed every
//! `refresh` rows rather than per frame, because the decomposition costs O(d^3).

use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Mean and covariance, updated one row at a time (exponentially weighted after `window`
/// rows, as [`super::RunningStats`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningCovariance {
    pub count: u64,
    pub mean: Vec<f64>,
    /// Row-major, dim x dim.
    pub cov: Vec<f64>,
    pub window: u64,
}

impl RunningCovariance {
    pub fn new(dim: usize, window: u64) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; dim],
            cov: vec![0.0; dim * dim],
            window,
        }
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Adds one row (West's weighted update, exact for equal weights).
    pub fn observe(&mut self, row: &[f32]) {
        self.count += 1;
        let a = super::stats::row_weight(self.count, self.window);
        let d = self.dim();
        let delta: Vec<f64> = row
            .iter()
            .zip(&self.mean)
            .map(|(&x, m)| x as f64 - m)
            .collect();
        self.mean
            .iter_mut()
            .zip(&delta)
            .for_each(|(m, dx)| *m += a * dx);
        for (i, di) in delta.iter().enumerate() {
            let row = &mut self.cov[i * d..(i + 1) * d];
            for (c, dj) in row.iter_mut().zip(&delta) {
                *c = (1.0 - a) * (*c + a * di * dj);
            }
        }
    }
}

/// Maps embeddings onto the training mean and covariance (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhiteningAdapter {
    train_mean: Vec<f64>,
    /// C_train^(1/2), row-major.
    train_sqrt: Vec<f64>,
    pub seen: RunningCovariance,
    /// Rows to see before adapting.
    pub warmup: u64,
    /// Rows between recomputations of the map.
    pub refresh: u64,
    /// The current map `x' = map x + offset`; `None` until the warm-up is over.
    map: Option<(Vec<f32>, Vec<f32>)>,
    since_refresh: u64,
}

/// Eigenvalues below this share of the mean eigenvalue are raised to it, so that a direction
/// the device has barely seen is not blown up by the whitening.
const EIGEN_FLOOR: f64 = 5e-2;

impl WhiteningAdapter {
    /// `train_cov` is row-major dim x dim.
    pub fn new(
        train_mean: Vec<f64>,
        train_cov: &[f64],
        window: u64,
        warmup: u64,
        refresh: u64,
    ) -> Self {
        let dim = train_mean.len();
        Self {
            train_sqrt: matrix_power(train_cov, dim, 0.5),
            train_mean,
            seen: RunningCovariance::new(dim, window),
            warmup,
            refresh: refresh.max(1),
            map: None,
            since_refresh: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.train_mean.len()
    }

    /// Observes each row of `rows`, then maps them in place.
    pub fn observe_and_adapt(&mut self, rows: &mut [f32]) {
        let dim = self.dim();
        for row in rows.chunks_exact_mut(dim) {
            self.seen.observe(row);
            if self.seen.count > self.warmup {
                self.since_refresh += 1;
                if self.map.is_none() || self.since_refresh >= self.refresh {
                    self.refresh_map();
                }
                self.adapt(row);
            }
        }
    }

    /// Maps one row with the current map (unchanged before the warm-up ends).
    pub fn adapt(&self, row: &mut [f32]) {
        let Some((map, offset)) = &self.map else {
            return;
        };
        let d = self.dim();
        let x: Vec<f32> = row.to_vec();
        for (i, out) in row.iter_mut().enumerate() {
            let m = &map[i * d..(i + 1) * d];
            *out = offset[i] + m.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
        }
    }

    /// The map as (matrix, offset): `x' = matrix x + offset`, when there is one.
    pub fn affine(&self) -> Option<(&[f32], &[f32])> {
        self.map.as_ref().map(|(m, o)| (m.as_slice(), o.as_slice()))
    }

    /// Recomputes the map from what has been seen.
    pub fn refresh_map(&mut self) {
        self.since_refresh = 0;
        let d = self.dim();
        let seen_inv_sqrt = matrix_power(&self.seen.cov, d, -0.5);
        let m = matmul(&self.train_sqrt, &seen_inv_sqrt, d);
        let offset: Vec<f32> = (0..d)
            .map(|i| {
                let mu: f64 = (0..d).map(|j| m[i * d + j] * self.seen.mean[j]).sum();
                (self.train_mean[i] - mu) as f32
            })
            .collect();
        self.map = Some((m.iter().map(|&v| v as f32).collect(), offset));
    }
}

/// `a^p` for a symmetric positive semi-definite `a` (dim x dim), through its eigenvalues,
/// floored at [`EIGEN_FLOOR`] of their mean.
pub fn matrix_power(a: &[f64], dim: usize, p: f64) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(a, dim);
    let mean = values.iter().map(|v| v.max(0.0)).sum::<f64>() / dim.max(1) as f64;
    let floor = (mean * EIGEN_FLOOR).max(1e-12);
    let powered: Vec<f64> = values.iter().map(|&v| libm::pow(v.max(floor), p)).collect();
    let mut out = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in i..dim {
            let s: f64 = (0..dim)
                .map(|k| vectors[i * dim + k] * powered[k] * vectors[j * dim + k])
                .sum();
            out[i * dim + j] = s;
            out[j * dim + i] = s;
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            let brow = &b[k * d..(k + 1) * d];
            out[i * d..(i + 1) * d]
                .iter_mut()
                .zip(brow)
                .for_each(|(o, &bkj)| *o += aik * bkj);
        }
    }
    out
}

/// Eigenvalues and eigenvectors (column k of the row-major matrix is the vector of value k)
/// of the symmetric `a`, by cyclic Jacobi rotations until the off-diagonal mass is negligible.
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(1e-300);
    for _sweep in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|p| (p + 1..n).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum();
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                rotate(&mut a, &mut v, n, p, q);
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// One Jacobi rotation that zeroes `a[p][q]`: a <- J^T a J, v <- v J.
fn rotate(a: &mut [f64], v: &mut [f64], n: usize, p: usize, q: usize) {
    let apq = a[p * n + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + libm::sqrt(theta * theta + 1.0));
    let c = 1.0 / libm::sqrt(t * t + 1.0);
    let s = t * c;
    for k in 0..n {
        let (akp, akq) = (a[k * n + p], a[k * n + q]);
        a[k * n + p] = c * akp - s * akq;
        a[k * n + q] = s * akp + c * akq;
    }
    for k in 0..n {
        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
        a[p * n + k] = c * apk - s * aqk;
        a[q * n + k] = s * apk + c * aqk;
    }
    for k in 0..n {
        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
        v[k * n + p] = c * vkp - s * vkq;
        v[k * n + q] = s * vkp + c * vkq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn jacobi_reconstructs_a_symmetric_matrix() {
        let n = 6;
        let mut rng = Rng::new(9);
        let b: Vec<f64> = (0..n * n).map(|_| rng.next_gaussian()).collect();
        // a = b b^T + n I: symmetric positive definite, no eigenvalue under the floor.
        let bt: Vec<f64> = (0..n * n).map(|i| b[(i % n) * n + i / n]).collect();
        let mut a = matmul(&b, &bt, n);
        (0..n).for_each(|i| a[i * n + i] += n as f64);
        let (values, vectors) = symmetric_eigen(&a, n);
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| vectors[i * n + k] * values[k] * vectors[j * n + k])
                    .sum();
                assert!(
                    (r - a[i * n + j]).abs() < 1e-9,
                    "({i},{j}): {r} vs {}",
                    a[i * n + j]
                );
            }
        }
        // The square root squares back.
        let root = matrix_power(&a, n, 0.5);
        let sq = matmul(&root, &root, n);
        for (x, y) in sq.iter().zip(&a) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn whitening_undoes_a_rotation_and_rescaling_of_the_embeddings() {
        let mut rng = Rng::new(4);
        let d = 3;
        // Training embeddings: correlated, with distinct means.
        let clean: Vec<f32> = (0..6000)
            .flat_map(|_| {
                let (a, b, c) = (
                    rng.next_gaussian(),
                    rng.next_gaussian(),
                    rng.next_gaussian(),
                );
                [
                    (1.0 + a) as f32,
                    (a + 0.5 * b) as f32,
                    (-2.0 + 0.3 * c) as f32,
                ]
            })
            .collect();
        let mut train = RunningCovariance::new(d, 0);
        clean.chunks_exact(d).for_each(|r| train.observe(r));
        // The camera mixes the dimensions (a rotation about z, then a scale) and offsets them.
        let (ct, st) = (0.6f32, 0.8f32);
        let mix = [ct * 2.0, -st * 2.0, 0.0, st, ct, 0.0, 0.0, 0.0, 0.5];
        let offset = [3.0f32, -1.0, 0.5];
        let mut shifted: Vec<f32> = clean
            .chunks_exact(d)
            .flat_map(|r| {
                (0..d).map(move |i| offset[i] + (0..d).map(|j| mix[i * d + j] * r[j]).sum::<f32>())
            })
            .collect();
        let before = mean_abs(&clean, &shifted);
        let mut adapter = WhiteningAdapter::new(train.mean.clone(), &train.cov, 0, 100, 100);
        adapter.observe_and_adapt(&mut shifted);
        // The whitening map is unique only up to a rotation inside the whitened space, so
        // compare statistics: the adapted rows have the training mean and covariance.
        let tail = &shifted[2000 * d..];
        let mut got = RunningCovariance::new(d, 0);
        tail.chunks_exact(d).for_each(|r| got.observe(r));
        let mean_err = mean_abs_f64(&got.mean, &train.mean);
        let cov_err = mean_abs_f64(&got.cov, &train.cov);
        assert!(before > 1.0, "{before}");
        assert!(mean_err < 0.05 && cov_err < 0.05, "{mean_err} {cov_err}");
    }

    fn mean_abs(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    }

    fn mean_abs_f64(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
    }
}
