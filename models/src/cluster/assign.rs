//! The assignment step of Lloyd's algorithm, behind a trait so that another device can run it.
//!
//! Distances are expanded as ||x||^2 - 2 x.c + ||c||^2: the cross term is one GEMM per block
//! of points, which is where almost all of k-means' time goes.

use rayon::prelude::*;
use thiserror::Error;

use crate::linalg::{matmul, squared_norms, Operand};
use crate::MatRef;

/// The assignment backend failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AssignError {
    #[error("points have {points} dimensions but centroids have {centroids}")]
    DimMismatch { points: usize, centroids: usize },
    #[error("output buffers hold {got} entries for {expected} points")]
    OutputLen { expected: usize, got: usize },
    #[error("assignment backend failed: {0}")]
    Backend(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// Finds, for each point, the nearest centroid and the squared Euclidean distance to it.
pub trait AssignStep: Sync {
    /// State kept across iterations for one data set, such as a copy of the points on a GPU.
    type Prepared;

    fn prepare(&self, points: MatRef<'_>) -> Result<Self::Prepared, AssignError>;

    /// Fills `labels[i]` and `dists[i]` for every row `i` of `points`.
    fn assign(
        &self,
        prepared: &Self::Prepared,
        points: MatRef<'_>,
        centroids: MatRef<'_>,
        labels: &mut [u32],
        dists: &mut [f32],
    ) -> Result<(), AssignError>;
}

/// The checks every [`AssignStep`] makes: points and centroids of one dimension, one output
/// entry per point.
pub fn check_shapes(
    points: MatRef<'_>,
    centroids: MatRef<'_>,
    labels: &[u32],
    dists: &[f32],
) -> Result<(), AssignError> {
    if points.cols() != centroids.cols() {
        return Err(AssignError::DimMismatch {
            points: points.cols(),
            centroids: centroids.cols(),
        });
    }
    let got = labels.len().min(dists.len());
    if labels.len() != points.rows() || dists.len() != points.rows() {
        return Err(AssignError::OutputLen {
            expected: points.rows(),
            got,
        });
    }
    Ok(())
}

/// Blocked GEMM on the CPU, blocks spread over the current rayon pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuGemmAssign {
    /// Points per GEMM call; 0 picks a size that keeps one block of distances in L2 cache.
    pub block_rows: usize,
}

impl CpuGemmAssign {
    fn block_rows(&self, k: usize, n: usize) -> usize {
        if self.block_rows > 0 {
            return self.block_rows;
        }
        // The GEMM packs all centroids once per block, so blocks must be tall enough for that
        // to stay a small cost: ~2 MiB of distances per block measured best at k = 1000
        // (182 GFLOP/s against 152 with 256 KiB blocks on 2 AVX2 cores).
        let by_cache = ((1 << 19) / k.max(1)).clamp(256, 1024);
        // Leave several blocks per thread so that rayon can balance them.
        let by_threads = n.div_ceil(4 * rayon::current_num_threads()).max(16);
        by_cache.min(by_threads)
    }
}

/// Squared norms of the points, computed once per data set rather than per iteration.
#[derive(Debug, Clone)]
pub struct PointNorms(Vec<f32>);

impl AssignStep for CpuGemmAssign {
    type Prepared = PointNorms;

    fn prepare(&self, points: MatRef<'_>) -> Result<PointNorms, AssignError> {
        Ok(PointNorms(squared_norms(points.as_slice(), points.cols())))
    }

    fn assign(
        &self,
        prepared: &PointNorms,
        points: MatRef<'_>,
        centroids: MatRef<'_>,
        labels: &mut [u32],
        dists: &mut [f32],
    ) -> Result<(), AssignError> {
        check_shapes(points, centroids, labels, dists)?;
        if prepared.0.len() != points.rows() {
            return Err(AssignError::OutputLen {
                expected: points.rows(),
                got: prepared.0.len(),
            });
        }
        let (k, d) = (centroids.rows(), centroids.cols());
        if k == 0 || points.rows() == 0 {
            return Ok(());
        }
        let cnorm = squared_norms(centroids.as_slice(), d);
        let b = self.block_rows(k, points.rows());
        labels
            .par_chunks_mut(b)
            .zip(dists.par_chunks_mut(b))
            .enumerate()
            .for_each_init(
                || vec![0.0f32; b * k],
                |buf, (bi, (lab, dis))| {
                    let start = bi * b;
                    let x = points.slice_rows(start, start + lab.len());
                    let rows = x.rows();
                    // buf = -2 * X C^T
                    matmul(
                        &mut buf[..rows * k],
                        Operand::new(x.as_slice(), rows, d),
                        Operand::new(centroids.as_slice(), k, d).t(),
                        -2.0,
                        gemm::Parallelism::None,
                    );
                    for r in 0..rows {
                        let (best, best_j) = argmin_shifted(&buf[r * k..(r + 1) * k], &cnorm);
                        let xn = prepared.0[start + r];
                        lab[r] = best_j;
                        // Rounding can make a tiny distance negative.
                        dis[r] = (xn + best).max(0.0);
                    }
                },
            );
        Ok(())
    }
}

const LANES: usize = 8;

/// The index and value of the smallest `row[j] + shift[j]`, the lowest index on ties.
///
/// Written as eight independent lanes so that LLVM turns it into vector compares and blends:
/// at k = 1000 this scan is the largest cost after the GEMM.
#[inline]
fn argmin_shifted(row: &[f32], shift: &[f32]) -> (f32, u32) {
    let mut best = [f32::INFINITY; LANES];
    let mut idx = [0u32; LANES];
    let full = row.len() / LANES * LANES;
    for (c, (r, s)) in row[..full]
        .chunks_exact(LANES)
        .zip(shift[..full].chunks_exact(LANES))
        .enumerate()
    {
        for l in 0..LANES {
            let v = r[l] + s[l];
            let better = v < best[l];
            best[l] = if better { v } else { best[l] };
            idx[l] = if better {
                (c * LANES + l) as u32
            } else {
                idx[l]
            };
        }
    }
    let (mut b, mut bi) = (f32::INFINITY, 0u32);
    for l in 0..LANES {
        if best[l] < b || (best[l] == b && idx[l] < bi) {
            b = best[l];
            bi = idx[l];
        }
    }
    for j in full..row.len() {
        let v = row[j] + shift[j];
        if v < b {
            b = v;
            bi = j as u32;
        }
    }
    (b, bi)
}

/// Exact distances in f64, one pair at a time: the reference the fast steps are tested against.
#[derive(Debug, Clone, Copy, Default)]
pub struct BruteForceAssign;

impl AssignStep for BruteForceAssign {
    type Prepared = ();

    fn prepare(&self, _points: MatRef<'_>) -> Result<(), AssignError> {
        Ok(())
    }

    fn assign(
        &self,
        _prepared: &(),
        points: MatRef<'_>,
        centroids: MatRef<'_>,
        labels: &mut [u32],
        dists: &mut [f32],
    ) -> Result<(), AssignError> {
        check_shapes(points, centroids, labels, dists)?;
        for i in 0..points.rows() {
            let x = points.row(i);
            let (mut best, mut best_j) = (f64::INFINITY, 0u32);
            for j in 0..centroids.rows() {
                let d: f64 = x
                    .iter()
                    .zip(centroids.row(j))
                    .map(|(&a, &c)| (a as f64 - c as f64).powi(2))
                    .sum();
                if d < best {
                    best = d;
                    best_j = j as u32;
                }
            }
            labels[i] = best_j;
            dists[i] = best as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n * d)
            .map(|_| r.next_f64() as f32 * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn gemm_assignment_matches_brute_force_across_block_sizes() {
        let (n, k, d) = (1000, 37, 19);
        let x = random(n, d, 1);
        let c = random(k, d, 2);
        let (xm, cm) = (MatRef::new(&x, d).unwrap(), MatRef::new(&c, d).unwrap());
        let (mut l0, mut d0) = (vec![0; n], vec![0.0; n]);
        BruteForceAssign
            .assign(&(), xm, cm, &mut l0, &mut d0)
            .unwrap();
        for block_rows in [0, 1, 7, 64, 5000] {
            let (mut l1, mut d1) = (vec![0; n], vec![0.0; n]);
            let gemm = CpuGemmAssign { block_rows };
            let norms = gemm.prepare(xm).unwrap();
            gemm.assign(&norms, xm, cm, &mut l1, &mut d1).unwrap();
            for i in 0..n {
                assert!(
                    (d0[i] - d1[i]).abs() < 1e-4,
                    "point {i}: {} vs {}",
                    d0[i],
                    d1[i]
                );
                if l0[i] != l1[i] {
                    // Only a near-tie may be broken differently.
                    let alt = cm.row(l1[i] as usize);
                    let dalt: f32 = xm
                        .row(i)
                        .iter()
                        .zip(alt)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum();
                    assert!((dalt - d0[i]).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn argmin_takes_the_lowest_index_on_ties_in_every_lane() {
        for k in [1, 7, 8, 9, 16, 17, 100] {
            let shift = vec![0.0f32; k];
            for target in 0..k {
                let mut row = vec![5.0f32; k];
                row[target] = 1.0;
                assert_eq!(argmin_shifted(&row, &shift), (1.0, target as u32));
                // A tie with a later index keeps the earlier one.
                if target + 1 < k {
                    row[k - 1] = 1.0;
                    assert_eq!(argmin_shifted(&row, &shift).1, target as u32);
                }
            }
            let row = vec![2.0f32; k];
            assert_eq!(argmin_shifted(&row, &shift), (2.0, 0));
        }
        // The shift takes part in the comparison.
        assert_eq!(argmin_shifted(&[1.0, 2.0], &[5.0, 0.0]), (2.0, 1));
    }

    #[test]
    fn shape_errors_are_reported() {
        let x = [0.0f32; 6];
        let c = [0.0f32; 4];
        let (mut l, mut d) = (vec![0; 3], vec![0.0; 3]);
        let g = CpuGemmAssign::default();
        let norms3 = g.prepare(MatRef::new(&x, 2).unwrap()).unwrap();
        let err = g
            .assign(
                &norms3,
                MatRef::new(&x, 2).unwrap(),
                MatRef::new(&c, 4).unwrap(),
                &mut l,
                &mut d,
            )
            .unwrap_err();
        assert!(matches!(
            err,
            AssignError::DimMismatch {
                points: 2,
                centroids: 4
            }
        ));
        let norms2 = g.prepare(MatRef::new(&x, 3).unwrap()).unwrap();
        let err = g
            .assign(
                &norms2,
                MatRef::new(&x, 3).unwrap(),
                MatRef::new(&c[..3], 3).unwrap(),
                &mut l,
                &mut d,
            )
            .unwrap_err();
        assert!(matches!(err, AssignError::OutputLen { expected: 2, .. }));
    }
}
