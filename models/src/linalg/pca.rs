//! PCA with optional whitening, as faiss `PCAMatrix` computes it: the covariance of the
//! centred data (divided by n), its eigenvectors in decreasing order of eigenvalue, each
//! scaled by eigenvalue^eigen_power. With eigen_power = -0.5 the output is whitened.
//!
//! With fewer samples than dimensions (n < d, say 1,800 RGB images of 64x64, d = 12,288) the
//! d x d covariance is replaced, as faiss does, by the n x n Gram matrix G = X X^T / n of the
//! centred rows: it has the same non-zero eigenvalues, and each eigenvector v of G gives the
//! covariance's u = X^T v / |X^T v|.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, Par, Side};
use rayon::prelude::*;
use thiserror::Error;

use super::{matmul, Operand, Parallelism};
use crate::{MatRef, ShapeError};

/// PCA could not be fitted or applied.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PcaError {
    #[error("data: {0}")]
    Shape(#[from] ShapeError),
    #[error("n_components must be at least 1")]
    ZeroComponents,
    #[error("cannot keep {n_components} components of {dim}-dimensional data")]
    TooManyComponents { n_components: usize, dim: usize },
    #[error(
        "{n} samples cannot give {n_components} components (need more samples than components)"
    )]
    TooFewSamples { n: usize, n_components: usize },
    #[error("row {row} holds a NaN or infinite value")]
    NonFinite { row: usize },
    #[error("eigendecomposition did not converge")]
    Eigen,
}

/// PCA parameters; checked when fitting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PcaParams {
    pub n_components: usize,
    /// Exponent applied to the eigenvalues: -0.5 whitens (DeepCluster), 0 is plain PCA.
    pub eigen_power: f64,
    /// Added to each eigenvalue before the power, to tame near-zero variances.
    pub epsilon: f64,
}

impl PcaParams {
    /// Whitening PCA to `n_components` dimensions, as DeepCluster uses it.
    pub fn new(n_components: usize) -> Self {
        Self {
            n_components,
            eigen_power: -0.5,
            epsilon: 0.0,
        }
    }

    pub fn eigen_power(mut self, p: f64) -> Self {
        self.eigen_power = p;
        self
    }

    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }

    pub fn fit(&self, data: MatRef<'_>) -> Result<Pca, PcaError> {
        let (n, d, d_out) = (data.rows(), data.cols(), self.n_components);
        if d_out == 0 {
            return Err(PcaError::ZeroComponents);
        }
        if d_out > d {
            return Err(PcaError::TooManyComponents {
                n_components: d_out,
                dim: d,
            });
        }
        if n <= d_out {
            return Err(PcaError::TooFewSamples {
                n,
                n_components: d_out,
            });
        }
        if let Some(row) = (0..n)
            .into_par_iter()
            .find_first(|&i| data.row(i).iter().any(|v| !v.is_finite()))
        {
            return Err(PcaError::NonFinite { row });
        }

        let mean = column_means(data);
        let eigen = if n < d {
            gram_eigen(data, &mean, d_out)?
        } else {
            covariance_eigen(data, &mean, d_out)?
        };
        Ok(self.assemble(eigen, mean, d))
    }

    /// Scales each eigenvector by its eigenvalue^eigen_power and fixes its sign.
    fn assemble(&self, eigen: TopEigen, mean: Vec<f64>, d: usize) -> Pca {
        let d_out = eigen.values.len();
        let top = eigen.values.first().copied().unwrap_or(0.0).max(0.0);
        let mut eigenvalues = Vec::with_capacity(d_out);
        let mut components = Vec::with_capacity(d_out * d);
        let mut matrix = Vec::with_capacity(d_out * d);
        for (c, &value) in eigen.values.iter().enumerate() {
            let lambda = value.max(0.0);
            // Rounding leaves the null space with tiny or negative eigenvalues; a negative
            // power of those would be infinite.
            let floor = top * f64::EPSILON * d as f64;
            let scale = if self.eigen_power == 0.0 {
                1.0
            } else {
                (lambda.max(floor) + self.epsilon).powf(self.eigen_power)
            };
            let v = &eigen.vectors[c * d..(c + 1) * d];
            // Deterministic sign: the largest coordinate is positive (scikit-learn's rule).
            let pivot = v
                .iter()
                .fold(0.0f64, |m, &x| if x.abs() > m.abs() { x } else { m });
            let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
            components.extend(v.iter().map(|&x| x * sign));
            matrix.extend(v.iter().map(|&x| (x * sign * scale) as f32));
            eigenvalues.push(lambda);
        }
        let bias = (0..d_out)
            .map(|c| {
                let row = &matrix[c * d..(c + 1) * d];
                row.iter()
                    .zip(&mean)
                    .map(|(&a, &m)| a as f64 * m)
                    .sum::<f64>() as f32
            })
            .collect();
        Pca {
            mean: mean.iter().map(|&m| m as f32).collect(),
            components,
            matrix,
            bias,
            eigenvalues,
            d_in: d,
            d_out,
        }
    }
}

/// The `values.len()` largest eigenvalues of the covariance, in decreasing order, and their
/// unit eigenvectors as rows of `vectors` (values.len() x d).
struct TopEigen {
    values: Vec<f64>,
    vectors: Vec<f64>,
}

/// The covariance route: eigendecomposition of the d x d covariance.
fn covariance_eigen(data: MatRef<'_>, mean: &[f64], d_out: usize) -> Result<TopEigen, PcaError> {
    let d = data.cols();
    let eig = covariance_lower(data, mean)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| PcaError::Eigen)?;
    let (u, s) = (eig.U(), eig.S().column_vector());
    let order = decreasing(d, |i| s[i]);
    Ok(TopEigen {
        values: order[..d_out].iter().map(|&c| s[c]).collect(),
        vectors: order[..d_out]
            .iter()
            .flat_map(|&c| (0..d).map(move |i| u[(i, c)]))
            .collect(),
    })
}

/// The Gram route for n < d: eigendecomposition of the n x n matrix X X^T / n of the centred
/// rows, each eigenvector v mapped to X^T v and normalised.
fn gram_eigen(data: MatRef<'_>, mean: &[f64], d_out: usize) -> Result<TopEigen, PcaError> {
    let (n, d) = (data.rows(), data.cols());
    let centred: Vec<f64> = data
        .as_slice()
        .par_chunks(d)
        .flat_map_iter(|row| row.iter().zip(mean).map(|(&x, &m)| x as f64 - m))
        .collect();
    let x = faer::MatRef::from_row_major_slice(centred.as_slice(), n, d);
    let mut gram = Mat::<f64>::zeros(n, n);
    triangular::matmul(
        gram.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        x,
        BlockStructure::Rectangular,
        x.transpose(),
        BlockStructure::Rectangular,
        1.0 / n as f64,
        Par::rayon(0),
    );
    let eig = gram
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| PcaError::Eigen)?;
    let (v, s) = (eig.U(), eig.S().column_vector());
    let order = decreasing(n, |i| s[i]);
    let mut top_v = Mat::<f64>::zeros(n, d_out);
    for (j, &c) in order[..d_out].iter().enumerate() {
        for i in 0..n {
            top_v[(i, j)] = v[(i, c)];
        }
    }
    // (d x n) (n x d_out): every column of u at once.
    let u = x.transpose() * top_v.as_ref();
    let mut vectors = Vec::with_capacity(d_out * d);
    for j in 0..d_out {
        let norm = (0..d).map(|i| u[(i, j)] * u[(i, j)]).sum::<f64>().sqrt();
        // A zero norm means a zero eigenvalue: its direction is arbitrary, and never whitened
        // past the floor in `assemble`.
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        vectors.extend((0..d).map(|i| u[(i, j)] * inv));
    }
    Ok(TopEigen {
        values: order[..d_out].iter().map(|&c| s[c]).collect(),
        vectors,
    })
}

/// Indices 0..len in decreasing order of `key`.
fn decreasing(len: usize, key: impl Fn(usize) -> f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order
}

fn column_means(data: MatRef<'_>) -> Vec<f64> {
    let d = data.cols();
    let sums = data
        .as_slice()
        .par_chunks(4096 * d)
        .map(|chunk| {
            let mut s = vec![0f64; d];
            for row in chunk.chunks_exact(d) {
                for (a, &x) in s.iter_mut().zip(row) {
                    *a += x as f64;
                }
            }
            s
        })
        .reduce(
            || vec![0f64; d],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    sums.iter().map(|s| s / data.rows() as f64).collect()
}

/// The lower triangle of (X - mean)^T (X - mean) / n, in f64, chunk by chunk so no centred
/// copy of X is kept. Only the lower half is computed (half the work of a full product):
/// the symmetric eigensolver reads no more.
fn covariance_lower(data: MatRef<'_>, mean: &[f64]) -> Mat<f64> {
    const CHUNK: usize = 2048;
    let (n, d) = (data.rows(), data.cols());
    let sum = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .fold(
            || (Mat::<f64>::zeros(d, d), Vec::new()),
            |(mut acc, mut centred), ci| {
                let rows = data.slice_rows(ci * CHUNK, ((ci + 1) * CHUNK).min(n));
                centred.clear();
                for r in 0..rows.rows() {
                    centred.extend(rows.row(r).iter().zip(mean).map(|(&x, &m)| x as f64 - m));
                }
                let x = faer::MatRef::from_row_major_slice(centred.as_slice(), rows.rows(), d);
                triangular::matmul(
                    acc.as_mut(),
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    x.transpose(),
                    BlockStructure::Rectangular,
                    x,
                    BlockStructure::Rectangular,
                    1.0,
                    Par::Seq,
                );
                (acc, centred)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(|| Mat::<f64>::zeros(d, d), |a, b| a + b);
    sum * faer::Scale(1.0 / n as f64)
}

/// A fitted PCA: y = A (x - mean), A holding the scaled components as rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    mean: Vec<f32>,
    components: Vec<f64>,
    matrix: Vec<f32>,
    /// A * mean, subtracted after the product so the input need not be centred first.
    bias: Vec<f32>,
    eigenvalues: Vec<f64>,
    d_in: usize,
    d_out: usize,
}

impl Pca {
    pub fn d_in(&self) -> usize {
        self.d_in
    }
    pub fn d_out(&self) -> usize {
        self.d_out
    }
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// Unit principal directions, `d_out x d_in`, in decreasing order of variance.
    pub fn components(&self) -> &[f64] {
        &self.components
    }
    /// Variance along each kept direction (covariance divided by n, as faiss).
    pub fn eigenvalues(&self) -> &[f64] {
        &self.eigenvalues
    }
    /// The applied matrix, `d_out x d_in`: components scaled by eigenvalue^eigen_power.
    pub fn matrix(&self) -> &[f32] {
        &self.matrix
    }
    /// `matrix * mean`: `transform(x) = matrix * x - bias`.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Projects each row of `data` (n x d_in) to d_out values.
    pub fn transform(&self, data: MatRef<'_>) -> Result<Vec<f32>, PcaError> {
        data.expect_cols(self.d_in)?;
        let (n, d, k) = (data.rows(), self.d_in, self.d_out);
        let mut out = vec![0f32; n * k];
        const BLOCK: usize = 1024;
        out.par_chunks_mut(BLOCK * k)
            .enumerate()
            .for_each(|(bi, o)| {
                let x = data.slice_rows(bi * BLOCK, bi * BLOCK + o.len() / k);
                matmul(
                    o,
                    Operand::new(x.as_slice(), x.rows(), d),
                    Operand::new(self.matrix.as_slice(), k, d).t(),
                    1.0,
                    Parallelism::None,
                );
                for row in o.chunks_exact_mut(k) {
                    row.iter_mut().zip(&self.bias).for_each(|(y, b)| *y -= b);
                }
            });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Points on a stretched, rotated 3-D Gaussian-ish cloud.
    fn cloud(n: usize) -> Vec<f32> {
        let mut r = Rng::new(17);
        let mut x = Vec::with_capacity(n * 3);
        for _ in 0..n {
            let a = (r.next_f64() - 0.5) * 10.0;
            let b = (r.next_f64() - 0.5) * 3.0;
            let c = (r.next_f64() - 0.5) * 0.5;
            x.extend_from_slice(&[(a + b) as f32 + 1.0, (a - b) as f32 - 2.0, c as f32 + 3.0]);
        }
        x
    }

    #[test]
    fn whitened_output_has_identity_covariance() {
        let x = cloud(2000);
        let pca = PcaParams::new(3).fit(MatRef::new(&x, 3).unwrap()).unwrap();
        assert!(pca.eigenvalues().windows(2).all(|w| w[0] >= w[1]));
        let y = pca.transform(MatRef::new(&x, 3).unwrap()).unwrap();
        let n = 2000.0;
        for i in 0..3 {
            let mean: f64 = y.chunks(3).map(|r| r[i] as f64).sum::<f64>() / n;
            assert!(mean.abs() < 1e-4, "mean {mean}");
            for j in 0..3 {
                let c: f64 = y.chunks(3).map(|r| r[i] as f64 * r[j] as f64).sum::<f64>() / n;
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((c - want).abs() < 1e-3, "cov[{i}][{j}] = {c}");
            }
        }
    }

    #[test]
    fn plain_pca_keeps_the_largest_direction_first() {
        let x = cloud(500);
        let pca = PcaParams::new(1)
            .eigen_power(0.0)
            .fit(MatRef::new(&x, 3).unwrap())
            .unwrap();
        let c = pca.components();
        // The dominant direction is (1, 1, 0) / sqrt(2).
        assert!(
            (c[0] - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.02
                && (c[1] - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.02
                && c[2].abs() < 0.02
        );
    }

    #[test]
    fn the_gram_route_for_few_samples_equals_the_covariance_route() {
        // 40 samples of 60 dimensions (n < d): low-rank signal plus noise.
        let (n, d, k) = (40, 60, 5);
        let mut r = Rng::new(5);
        let basis: Vec<f64> = (0..4 * d).map(|_| r.next_f64() - 0.5).collect();
        let mut x = Vec::with_capacity(n * d);
        for _ in 0..n {
            let w: Vec<f64> = (0..4)
                .map(|j| (r.next_f64() - 0.5) * (8.0 - 2.0 * j as f64))
                .collect();
            for i in 0..d {
                let s: f64 = (0..4).map(|j| w[j] * basis[j * d + i]).sum();
                x.push((s + 0.01 * (r.next_f64() - 0.5) + 0.3) as f32);
            }
        }
        let m = MatRef::new(&x, d).unwrap();
        let mean = column_means(m);
        let gram = gram_eigen(m, &mean, k).unwrap();
        let cov = covariance_eigen(m, &mean, k).unwrap();
        for c in 0..k {
            let (a, b) = (gram.values[c], cov.values[c]);
            assert!(
                (a - b).abs() <= 1e-9 * cov.values[0],
                "eigenvalue {c}: {a} vs {b}"
            );
            // The same unit vector up to sign.
            let dot: f64 = (0..d)
                .map(|i| gram.vectors[c * d + i] * cov.vectors[c * d + i])
                .sum();
            assert!(
                (dot.abs() - 1.0).abs() < 1e-6,
                "component {c}: |cos| {}",
                dot.abs()
            );
        }
        // Through fit (which picks the Gram route here), the whitened output's covariance is
        // the identity on the kept components.
        let pca = PcaParams::new(k).fit(m).unwrap();
        let y = pca.transform(m).unwrap();
        for i in 0..k {
            let v: f64 = y.chunks(k).map(|row| (row[i] as f64).powi(2)).sum::<f64>() / n as f64;
            assert!((v - 1.0).abs() < 1e-3, "variance {i}: {v}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = cloud(10);
        let m = MatRef::new(&x, 3).unwrap();
        assert!(matches!(
            PcaParams::new(0).fit(m),
            Err(PcaError::ZeroComponents)
        ));
        assert!(matches!(
            PcaParams::new(4).fit(m),
            Err(PcaError::TooManyComponents { .. })
        ));
        let few = MatRef::new(&x[..6], 3).unwrap();
        assert!(matches!(
            PcaParams::new(2).fit(few),
            Err(PcaError::TooFewSamples { .. })
        ));
        let mut bad = x.clone();
        bad[7] = f32::INFINITY;
        let err = PcaParams::new(2)
            .fit(MatRef::new(&bad, 3).unwrap())
            .unwrap_err();
        assert!(matches!(err, PcaError::NonFinite { row: 2 }));
        let pca = PcaParams::new(2).fit(m).unwrap();
        assert!(pca.transform(MatRef::new(&x[..8], 2).unwrap()).is_err());
    }
}
