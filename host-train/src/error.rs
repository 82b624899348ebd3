use std::path::PathBuf;

use thiserror::Error;

/// Anything that can stop pretraining or evaluation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] models::data::DataError),
    #[error("k-means: {0}")]
    KMeans(#[from] models::cluster::KMeansError),
    #[error("k-means parameters: {0}")]
    KMeansParams(#[from] models::cluster::KMeansParamsError),
    #[error("PCA: {0}")]
    Pca(#[from] models::linalg::PcaError),
    #[error("metrics: {0}")]
    Metrics(#[from] models::metrics::MetricsError),
    #[error(transparent)]
    Shape(#[from] models::ShapeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Training stopped before its checkpoint was overwritten, so the run can resume from
    /// the last good epoch.
    #[error("epoch {epoch}: the loss became {loss}; training diverged (try a lower --lr); the checkpoint of the previous epoch is kept")]
    Diverged { epoch: usize, loss: f64 },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
