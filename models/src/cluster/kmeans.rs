//! Batch k-means by Lloyd iterations, as faiss `Clustering::train` runs it: optional
//! sub-sampling, random or k-means++ initialisation, assignment through [`AssignStep`],
//! centroid update, empty-cluster splitting, optional spherical re-normalisation.

use rayon::prelude::*;
use thiserror::Error;

use super::assign::{AssignError, AssignStep, CpuGemmAssign};
use super::init::{kmeans_plus_plus, random_rows};
use super::params::{KMeansInit, KMeansValidParams};
use super::split::split_empty_clusters;
use crate::linalg::l2_normalize_rows;
use crate::rng::Rng;
use crate::{MatRef, ShapeError};

/// Fitting or applying k-means failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KMeansError {
    #[error("data: {0}")]
    Shape(#[from] ShapeError),
    #[error("{n} points cannot make {k} clusters")]
    TooFewPoints { n: usize, k: usize },
    #[error("initial centroids must be {k} rows of {dim} values, got {len} values")]
    BadInit { k: usize, dim: usize, len: usize },
    #[error("row {row} holds a NaN or infinite value")]
    NonFinite { row: usize },
    #[error(transparent)]
    Assign(#[from] AssignError),
}

/// What one Lloyd iteration saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterStats {
    /// Sum of squared distances from each training point to its centroid at this
    /// iteration's assignment step (before the update), as faiss reports it.
    pub objective: f64,
    /// Empty clusters split after this iteration's update.
    pub n_splits: usize,
}

/// Fitted centroids.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    centroids: Vec<f32>,
    dim: usize,
}

/// The result of [`KMeansValidParams::fit`].
#[derive(Debug, Clone)]
pub struct KMeansFit {
    pub model: KMeans,
    /// Assignment of every input point to the final centroids.
    pub labels: Vec<u32>,
    /// Squared distance of every input point to its centroid.
    pub distances: Vec<f32>,
    /// The iterations of the run that was kept (the best of `n_redo`), followed by any
    /// repair steps on the full data that filled clusters left empty.
    pub iterations: Vec<IterStats>,
    /// Points the centroids were trained on, after sub-sampling.
    pub n_train: usize,
}

impl KMeansFit {
    /// Sum of squared distances of all points to their final centroids.
    pub fn objective(&self) -> f64 {
        self.distances.iter().map(|&d| d as f64).sum()
    }

    /// Empty-cluster splits over the kept run.
    pub fn n_splits(&self) -> usize {
        self.iterations.iter().map(|s| s.n_splits).sum()
    }
}

impl KMeans {
    /// Wraps existing centroids (for example from a manifest) as a model.
    pub fn from_centroids(centroids: Vec<f32>, dim: usize) -> Result<Self, KMeansError> {
        MatRef::new(&centroids, dim)?;
        Ok(Self { centroids, dim })
    }

    pub fn centroids(&self) -> MatRef<'_> {
        MatRef::new(&self.centroids, self.dim).expect("validated at construction")
    }

    pub fn k(&self) -> usize {
        self.centroids.len() / self.dim
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Nearest centroid and squared distance for each row of `data`.
    pub fn predict(&self, data: MatRef<'_>) -> Result<(Vec<u32>, Vec<f32>), KMeansError> {
        self.predict_with(&CpuGemmAssign::default(), data)
    }

    pub fn predict_with<A: AssignStep>(
        &self,
        assign: &A,
        data: MatRef<'_>,
    ) -> Result<(Vec<u32>, Vec<f32>), KMeansError> {
        data.expect_cols(self.dim)?;
        let (mut labels, mut dists) = (vec![0u32; data.rows()], vec![0f32; data.rows()]);
        let prepared = assign.prepare(data)?;
        assign.assign(&prepared, data, self.centroids(), &mut labels, &mut dists)?;
        Ok((labels, dists))
    }
}

fn check_finite(data: MatRef<'_>) -> Result<(), KMeansError> {
    let bad = (0..data.rows())
        .into_par_iter()
        .find_first(|&i| data.row(i).iter().any(|v| !v.is_finite()));
    match bad {
        Some(row) => Err(KMeansError::NonFinite { row }),
        None => Ok(()),
    }
}

impl KMeansValidParams {
    /// Fits on `data` with the CPU GEMM assignment and assigns every point.
    pub fn fit(&self, data: MatRef<'_>) -> Result<KMeansFit, KMeansError> {
        self.fit_with(&CpuGemmAssign::default(), data)
    }

    /// Fits with the given assignment step (a GPU one, say) and assigns every point.
    pub fn fit_with<A: AssignStep>(
        &self,
        assign: &A,
        data: MatRef<'_>,
    ) -> Result<KMeansFit, KMeansError> {
        let (mut model, mut iterations, n_train) = self.train(assign, data, None)?;
        let (mut labels, mut distances) = model.predict_with(assign, data)?;
        // A split in the last iteration, or training on a sample, can leave a cluster empty
        // on the full data. A few more Lloyd steps on all points repair it, as long as the
        // data has at least k distinct points.
        let mut rng = Rng::new(self.seed ^ 0x005E_ED0F_E4D5);
        for _ in 0..MAX_REPAIR_STEPS {
            let counts = cluster_sizes(&labels, self.k);
            if counts.iter().all(|&c| c > 0) {
                break;
            }
            let step = self.lloyd_step(
                data,
                &mut model.centroids,
                &labels,
                &distances,
                counts,
                &mut rng,
            );
            iterations.push(step);
            (labels, distances) = model.predict_with(assign, data)?;
        }
        Ok(KMeansFit {
            model,
            labels,
            distances,
            iterations,
            n_train,
        })
    }

    /// Lloyd iterations only, from the given centroids when there are some (then `n_redo`
    /// is not used). This is the part faiss calls `train`, so benchmarks time exactly it.
    pub fn train<A: AssignStep>(
        &self,
        assign: &A,
        data: MatRef<'_>,
        init: Option<MatRef<'_>>,
    ) -> Result<(KMeans, Vec<IterStats>, usize), KMeansError> {
        let (n, d, k) = (data.rows(), data.cols(), self.k);
        if n < k {
            return Err(KMeansError::TooFewPoints { n, k });
        }
        check_finite(data)?;
        if let Some(c) = init {
            if c.cols() != d || c.rows() != k {
                return Err(KMeansError::BadInit {
                    k,
                    dim: d,
                    len: c.as_slice().len(),
                });
            }
        }

        let mut rng = Rng::new(self.seed);
        let sample: Option<Vec<f32>> = match self.max_points_per_centroid {
            Some(m) if n > k.saturating_mul(m) => {
                let mut idx = rng.sample_indices(n, k * m);
                idx.sort_unstable(); // sequential reads
                let mut s = Vec::with_capacity(idx.len() * d);
                for i in idx {
                    s.extend_from_slice(data.row(i));
                }
                Some(s)
            }
            _ => None,
        };
        let train = match &sample {
            Some(s) => MatRef::new(s, d)?,
            None => data,
        };
        let prepared = assign.prepare(train)?;

        let runs = if init.is_some() { 1 } else { self.n_redo };
        let mut best: Option<(Vec<f32>, Vec<IterStats>)> = None;
        for redo in 0..runs {
            let mut run_rng = Rng::new(self.seed.wrapping_add(1 + 15_486_557 * redo as u64));
            let centroids = match (init, self.init) {
                (Some(c), _) => c.as_slice().to_vec(),
                (None, KMeansInit::Random) => random_rows(train, k, &mut run_rng),
                (None, KMeansInit::KMeansPlusPlus) => kmeans_plus_plus(train, k, &mut run_rng),
            };
            let (centroids, stats) =
                self.lloyd(assign, &prepared, train, centroids, &mut run_rng)?;
            let obj = stats.last().map_or(f64::INFINITY, |s| s.objective);
            if best
                .as_ref()
                .is_none_or(|(_, b)| obj < b.last().map_or(f64::INFINITY, |s| s.objective))
            {
                best = Some((centroids, stats));
            }
        }
        let (centroids, stats) = best.expect("at least one run");
        Ok((KMeans { centroids, dim: d }, stats, train.rows()))
    }

    fn lloyd<A: AssignStep>(
        &self,
        assign: &A,
        prepared: &A::Prepared,
        train: MatRef<'_>,
        mut centroids: Vec<f32>,
        rng: &mut Rng,
    ) -> Result<(Vec<f32>, Vec<IterStats>), KMeansError> {
        let (n, d, k) = (train.rows(), train.cols(), self.k);
        let (mut labels, mut dists) = (vec![0u32; n], vec![0f32; n]);
        let mut stats = Vec::with_capacity(self.max_iter);
        if self.spherical {
            l2_normalize_rows(&mut centroids, d);
        }
        for _ in 0..self.max_iter {
            let cm = MatRef::new(&centroids, d)?;
            assign.assign(prepared, train, cm, &mut labels, &mut dists)?;
            let counts = cluster_sizes(&labels, k);
            stats.push(self.lloyd_step(train, &mut centroids, &labels, &dists, counts, rng));
        }
        Ok((centroids, stats))
    }

    /// The update half of an iteration, given an assignment: means, splits, re-normalisation.
    fn lloyd_step(
        &self,
        train: MatRef<'_>,
        centroids: &mut [f32],
        labels: &[u32],
        dists: &[f32],
        mut counts: Vec<usize>,
        rng: &mut Rng,
    ) -> IterStats {
        let d = train.cols();
        let objective: f64 = dists.iter().map(|&v| v as f64).sum();
        update_centroids(centroids, train, labels, &counts);
        let n_splits = split_empty_clusters(centroids, d, &mut counts, rng);
        if self.spherical {
            l2_normalize_rows(centroids, d);
        }
        IterStats {
            objective,
            n_splits,
        }
    }
}

const MAX_REPAIR_STEPS: usize = 10;

fn cluster_sizes(labels: &[u32], k: usize) -> Vec<usize> {
    let mut counts = vec![0usize; k];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

/// Each centroid becomes the mean of its points; centroids without points are left for
/// the split. Threads own disjoint ranges of centroids, so no reduction is needed.
fn update_centroids(centroids: &mut [f32], train: MatRef<'_>, labels: &[u32], counts: &[usize]) {
    let (d, k) = (train.cols(), counts.len());
    let per = k.div_ceil(rayon::current_num_threads()).max(1);
    centroids
        .par_chunks_mut(per * d)
        .enumerate()
        .for_each(|(t, chunk)| {
            let c0 = t * per;
            let c1 = c0 + chunk.len() / d;
            // f32 sums, as faiss: they vectorise, and k-means' own noise dwarfs the rounding.
            let mut acc = vec![0f32; chunk.len()];
            for (i, &l) in labels.iter().enumerate() {
                let l = l as usize;
                if (c0..c1).contains(&l) {
                    let dst = &mut acc[(l - c0) * d..(l - c0 + 1) * d];
                    for (a, &x) in dst.iter_mut().zip(train.row(i)) {
                        *a += x;
                    }
                }
            }
            for c in c0..c1 {
                if counts[c] > 0 {
                    let inv = 1.0 / counts[c] as f32;
                    let src = &acc[(c - c0) * d..(c - c0 + 1) * d];
                    for (dst, &s) in chunk[(c - c0) * d..(c - c0 + 1) * d].iter_mut().zip(src) {
                        *dst = s * inv;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::KMeansParams;

    /// `per` points around each of `centers`, jittered deterministically.
    pub(crate) fn blobs(
        centers: &[[f32; 2]],
        per: usize,
        spread: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<u32>) {
        let mut r = Rng::new(seed);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (c, ctr) in centers.iter().enumerate() {
            for _ in 0..per {
                x.push(ctr[0] + spread * (r.next_f64() as f32 - 0.5));
                x.push(ctr[1] + spread * (r.next_f64() as f32 - 0.5));
                y.push(c as u32);
            }
        }
        (x, y)
    }

    #[test]
    fn recovers_well_separated_blobs() {
        let centers = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        let (x, y) = blobs(&centers, 100, 1.0, 3);
        let data = MatRef::new(&x, 2).unwrap();
        let fit = KMeansParams::new(4)
            .init(KMeansInit::KMeansPlusPlus)
            .n_redo(3)
            .check()
            .unwrap()
            .fit(data)
            .unwrap();
        // Every blob maps to exactly one cluster.
        for c in 0..4u32 {
            let labels: Vec<u32> = (0..400)
                .filter(|&i| y[i] == c)
                .map(|i| fit.labels[i])
                .collect();
            assert!(labels.iter().all(|&l| l == labels[0]));
        }
        let mut used: Vec<u32> = fit.labels.clone();
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), 4);
        assert!(fit.objective() < 400.0 * 0.2);
        assert_eq!(fit.iterations.len(), 20);
    }

    #[test]
    fn subsamples_to_k_times_max_points_per_centroid() {
        let (x, _) = blobs(&[[0.0, 0.0], [5.0, 5.0]], 500, 1.0, 1);
        let data = MatRef::new(&x, 2).unwrap();
        let p = KMeansParams::new(2).max_points_per_centroid(Some(100));
        let fit = p.clone().check().unwrap().fit(data).unwrap();
        assert_eq!(fit.n_train, 200);
        assert_eq!(fit.labels.len(), 1000);
        let off = p
            .max_points_per_centroid(None)
            .check()
            .unwrap()
            .fit(data)
            .unwrap();
        assert_eq!(off.n_train, 1000);
    }

    #[test]
    fn spherical_centroids_have_unit_norm() {
        let mut x: Vec<f32> = blobs(&[[1.0, 0.2], [0.1, 1.0], [-1.0, 0.1]], 50, 0.3, 2).0;
        l2_normalize_rows(&mut x, 2);
        let fit = KMeansParams::new(3)
            .spherical(true)
            .check()
            .unwrap()
            .fit(MatRef::new(&x, 2).unwrap())
            .unwrap();
        for c in fit.model.centroids().as_slice().chunks(2) {
            assert!(((c[0] * c[0] + c[1] * c[1]).sqrt() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn identical_initial_centroids_are_split_and_no_cluster_ends_empty() {
        // Centroids 0 and 1 coincide (ties go to 0) and 2 is far from every point:
        // clusters 1 and 2 start empty and must be split off cluster 0.
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let init = [10.0f32, 10.0, 1000.0];
        let p = KMeansParams::new(3)
            .max_points_per_centroid(None)
            .check()
            .unwrap();
        let data = MatRef::new(&x, 1).unwrap();
        let (model, iters, _) = p
            .train(
                &CpuGemmAssign::default(),
                data,
                Some(MatRef::new(&init, 1).unwrap()),
            )
            .unwrap();
        assert_eq!(iters[0].n_splits, 2);
        let (labels, _) = model.predict(data).unwrap();
        let mut counts = [0; 3];
        for &l in &labels {
            counts[l as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 20), "{counts:?}");
    }

    #[test]
    fn same_seed_same_result() {
        let (x, _) = blobs(&[[0.0, 0.0], [3.0, 3.0], [6.0, 0.0]], 80, 2.0, 9);
        let data = MatRef::new(&x, 2).unwrap();
        let p = KMeansParams::new(3).seed(42).check().unwrap();
        assert_eq!(p.fit(data).unwrap().model, p.fit(data).unwrap().model);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = [0.0f32, 1.0, 2.0, f32::NAN];
        let p = KMeansParams::new(2).check().unwrap();
        let err = p.fit(MatRef::new(&x, 1).unwrap()).unwrap_err();
        assert!(matches!(err, KMeansError::NonFinite { row: 3 }), "{err}");
        let err = KMeansParams::new(5)
            .check()
            .unwrap()
            .fit(MatRef::new(&x, 1).unwrap())
            .unwrap_err();
        assert!(matches!(err, KMeansError::TooFewPoints { n: 4, k: 5 }));
        let ok = [0.0f32, 1.0, 2.0, 3.0];
        let init = [0.0f32; 3];
        let err = p
            .train(
                &CpuGemmAssign::default(),
                MatRef::new(&ok, 1).unwrap(),
                Some(MatRef::new(&init, 1).unwrap()),
            )
            .unwrap_err();
        assert!(matches!(err, KMeansError::BadInit { k: 2, .. }));
        let model = KMeans::from_centroids(vec![0.0, 1.0], 2).unwrap();
        assert!(model.predict(MatRef::new(&ok, 1).unwrap()).is_err());
    }
}
