//! Clustering models.
//!
//! [`KMeansParams`] validates into [`KMeansValidParams`]; with `std`, those fit a [`KMeans`]
//! model by Lloyd iterations whose assignment step is the [`AssignStep`] trait, so that
//! `host-train` can swap in a GPU implementation.

mod online;
mod params;
mod sinkhorn;
pub use online::{
    Assignment, Cluster, ClusterChange, OnlineKMeans, OnlineKMeansError, OnlineKMeansParams,
};
pub use params::{KMeansInit, KMeansParams, KMeansParamsError, KMeansValidParams};
pub use sinkhorn::sinkhorn;

#[cfg(feature = "std")]
mod assign;
#[cfg(feature = "std")]
mod init;
#[cfg(feature = "std")]
mod kmeans;
#[cfg(feature = "std")]
mod split;

#[cfg(feature = "std")]
pub use assign::{
    check_shapes, AssignError, AssignStep, BruteForceAssign, CpuGemmAssign, PointNorms,
};
#[cfg(feature = "std")]
pub use kmeans::{IterStats, KMeans, KMeansError, KMeansFit};
