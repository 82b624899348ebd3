//! Parameters of batch k-means, in the linfa manner: a builder that is validated once.

use thiserror::Error;

/// How the first centroids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KMeansInit {
    /// k distinct training points chosen uniformly, as faiss does.
    #[default]
    Random,
    /// k-means++ (Arthur and Vassilvitskii 2007): D^2-weighted sampling.
    KMeansPlusPlus,
}

/// A parameter that can never work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KMeansParamsError {
    #[error("k must be at least 1")]
    ZeroClusters,
    #[error("max_iter must be at least 1")]
    ZeroIterations,
    #[error("n_redo must be at least 1")]
    ZeroRedo,
    #[error("max_points_per_centroid must be at least 1 (use None to switch sub-sampling off)")]
    ZeroPointsPerCentroid,
}

/// Unchecked k-means parameters. Defaults follow faiss and DeepCluster.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansParams(KMeansValidParams);

/// Checked k-means parameters; only [`KMeansParams::check`] makes them.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansValidParams {
    pub(crate) k: usize,
    pub(crate) max_iter: usize,
    pub(crate) n_redo: usize,
    pub(crate) seed: u64,
    pub(crate) max_points_per_centroid: Option<usize>,
    pub(crate) init: KMeansInit,
    pub(crate) spherical: bool,
}

impl KMeansParams {
    /// k clusters, 20 iterations (DeepCluster), one run, seed 1234, at most 256 training
    /// points per centroid (faiss), random initialisation, Euclidean centroids.
    pub fn new(k: usize) -> Self {
        Self(KMeansValidParams {
            k,
            max_iter: 20,
            n_redo: 1,
            seed: 1234,
            max_points_per_centroid: Some(256),
            init: KMeansInit::Random,
            spherical: false,
        })
    }

    pub fn max_iter(mut self, n: usize) -> Self {
        self.0.max_iter = n;
        self
    }

    /// Runs k-means this many times with different seeds and keeps the lowest objective.
    pub fn n_redo(mut self, n: usize) -> Self {
        self.0.n_redo = n;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }

    /// Trains on a random sample of at most `k * m` points; `None` trains on all of them,
    /// as DeepCluster does. Centroids are then used to assign every point.
    pub fn max_points_per_centroid(mut self, m: Option<usize>) -> Self {
        self.0.max_points_per_centroid = m;
        self
    }

    pub fn init(mut self, init: KMeansInit) -> Self {
        self.0.init = init;
        self
    }

    /// Re-normalises centroids to unit length after each update, for L2-normalised data.
    pub fn spherical(mut self, on: bool) -> Self {
        self.0.spherical = on;
        self
    }

    pub fn check(self) -> Result<KMeansValidParams, KMeansParamsError> {
        let p = self.0;
        if p.k == 0 {
            return Err(KMeansParamsError::ZeroClusters);
        }
        if p.max_iter == 0 {
            return Err(KMeansParamsError::ZeroIterations);
        }
        if p.n_redo == 0 {
            return Err(KMeansParamsError::ZeroRedo);
        }
        if p.max_points_per_centroid == Some(0) {
            return Err(KMeansParamsError::ZeroPointsPerCentroid);
        }
        Ok(p)
    }
}

impl KMeansValidParams {
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn max_iter(&self) -> usize {
        self.max_iter
    }
    pub fn n_redo(&self) -> usize {
        self.n_redo
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn max_points_per_centroid(&self) -> Option<usize> {
        self.max_points_per_centroid
    }
    pub fn init(&self) -> KMeansInit {
        self.init
    }
    pub fn spherical(&self) -> bool {
        self.spherical
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_faiss_and_deepcluster() {
        let p = KMeansParams::new(10).check().unwrap();
        assert_eq!(p.k(), 10);
        assert_eq!(p.max_iter(), 20);
        assert_eq!(p.max_points_per_centroid(), Some(256));
        assert_eq!(p.init(), KMeansInit::Random);
        assert!(!p.spherical());
    }

    #[test]
    fn impossible_parameters_are_rejected() {
        assert_eq!(
            KMeansParams::new(0).check(),
            Err(KMeansParamsError::ZeroClusters)
        );
        assert_eq!(
            KMeansParams::new(2).max_iter(0).check(),
            Err(KMeansParamsError::ZeroIterations)
        );
        assert_eq!(
            KMeansParams::new(2).n_redo(0).check(),
            Err(KMeansParamsError::ZeroRedo)
        );
        assert_eq!(
            KMeansParams::new(2)
                .max_points_per_centroid(Some(0))
                .check(),
            Err(KMeansParamsError::ZeroPointsPerCentroid)
        );
        assert!(KMeansParams::new(2)
            .max_points_per_centroid(None)
            .check()
            .is_ok());
    }
}
