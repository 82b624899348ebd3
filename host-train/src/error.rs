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
    /// A run directory or checkpoint that is not what it should be (no typed cause).
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: line {line}: {source}")]
    JsonLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// Weights or tensors that could not be read or written.
    #[error("{path}: {source}")]
    Tensors {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("{path}: not an adapter written by `edge-runtime adapt export`: {source}")]
    Adapter {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("a generated figure: {0}")]
    Figure(#[source] models::data::DecodeError),
    #[error("exported manifest: {0}")]
    Manifest(#[from] models::manifest::ManifestError),
    /// The edge runtime, run by the export's parity check (boxed: its errors are large).
    #[error(transparent)]
    Edge(Box<edge_runtime::EdgeError>),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Training stopped before its checkpoint was overwritten, so the run can resume from
    /// the last good epoch.
    #[error("epoch {epoch}: the loss became {loss}; training diverged (try a lower --lr); the checkpoint of the previous epoch is kept")]
    Diverged { epoch: usize, loss: f64 },
    /// Fine-tuning the encoder with the cluster head stopped before anything was saved.
    #[error("fine-tuning step {step}: the loss became {loss} (try a lower --finetune-lr); the run's encoder and head are left as they were")]
    FinetuneDiverged { step: usize, loss: f64 },
}

impl From<edge_runtime::EdgeError> for TrainError {
    fn from(e: edge_runtime::EdgeError) -> Self {
        Self::Edge(Box::new(e))
    }
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
