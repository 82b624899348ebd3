//! Clustering and representation quality against labels (never used in training).
//!
//! The contingency metrics (NMI, ARI, purity) are `no_std`; Hungarian accuracy and weighted
//! kNN need `std`. Reference values come from scikit-learn and scipy: see
//! `models/tests/reference/`.

mod contingency;
mod silhouette;
pub use contingency::{adjusted_rand_index, normalized_mutual_info, purity, Contingency};
pub use silhouette::silhouette;

#[cfg(feature = "std")]
mod hungarian;
#[cfg(feature = "std")]
mod knn;
#[cfg(feature = "std")]
pub use hungarian::{clustering_accuracy, max_weight_assignment, min_cost_assignment};
#[cfg(feature = "std")]
pub use knn::{nearest_neighbours, WeightedKnn, WeightedKnnParams};

use thiserror::Error;

/// Inputs a metric cannot be computed on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("label lists differ in length: {left} vs {right}")]
    LengthMismatch { left: usize, right: usize },
    #[error("no samples")]
    Empty,
    #[error("reference features have {reference} dimensions, queries {query}")]
    DimMismatch { reference: usize, query: usize },
    #[error("k must be at least 1")]
    ZeroK,
    #[error("temperature must be positive and finite")]
    BadTemperature,
    #[error("cost matrix of {len} values is not {rows} x {cols}")]
    BadCostMatrix {
        len: usize,
        rows: usize,
        cols: usize,
    },
}
