use std::path::PathBuf;

use models::manifest::ManifestError;

/// An error of a library the runtime drives (tract, onnxruntime, rknn, the serial port), kept
/// whole as the source, or the runtime's own account of what is wrong.
pub type LibraryError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What is wrong with a memory bank's directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankProblem {
    #[error("capacity must be positive")]
    NoCapacity,
    #[error("in use by another process (bank.lock is held)")]
    Locked,
    #[error(
        "every snapshot is corrupt and the segments before them are gone; refusing to start \
         empty over stored data"
    )]
    SnapshotsLost,
    #[error("unreadable identity: {0}")]
    Identity(#[source] serde_json::Error),
}

/// What is wrong with a bank's adapter file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterProblem {
    #[error(
        "it adapts the model with sha256 {stored}..., not this one ({given}...); \
         `edge-runtime adapt reset --bank DIR` returns to the shipped model"
    )]
    OtherModel { stored: String, given: String },
    #[error(
        "it was made with --adapt {stored}, and its layer was trained on those statistics; \
         run with --adapt {stored}, or `edge-runtime adapt reset --bank DIR` to start over \
         with --adapt {given}"
    )]
    OtherStatistics {
        stored: &'static str,
        given: &'static str,
    },
    #[error("format {found} is not the one this build reads ({expected})")]
    Format { found: u32, expected: u32 },
    #[error(
        "damaged (its checksum or length is wrong); `edge-runtime adapt reset --bank DIR` \
         moves it aside"
    )]
    Damaged,
}

/// Errors of the edge runtime; each names the file or input it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("{path}: not a valid manifest: {source}")]
    ManifestJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot load the model: {source}")]
    Model { path: PathBuf, source: LibraryError },
    #[error("{path}: {source}")]
    Data {
        path: PathBuf,
        source: models::data::DataError,
    },
    #[error("{path}: images are {got:?} (c, h, w), the model takes {want:?}")]
    ImageShape {
        path: PathBuf,
        got: [usize; 3],
        want: [usize; 3],
    },
    /// A bank's stored thumbnail could not be brought back to the model's input.
    #[error("{path}: {source}")]
    Thumbnail {
        path: PathBuf,
        #[source]
        source: ThumbnailError,
    },
    #[error("{device}: {source}")]
    Camera {
        device: String,
        source: crate::camera::CameraError,
    },
    #[error("{path}: cannot write the image: {source}")]
    ImageWrite {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("online clustering: {0}")]
    OnlineKMeans(#[from] models::cluster::OnlineKMeansError),
    #[error("re-clustering: {0}")]
    KMeans(#[from] models::cluster::KMeansError),
    #[error("re-clustering parameters: {0}")]
    KMeansParams(#[from] models::cluster::KMeansParamsError),
    #[error("embeddings: {0}")]
    Shape(#[from] models::ShapeError),
    #[error("{path}: memory bank: {problem}")]
    Bank { path: PathBuf, problem: BankProblem },
    #[error(
        "{path}: this memory bank holds embeddings of {stored}; refusing to add those of \
         {given}: use another --bank, or the model the bank was made with"
    )]
    BankModelMismatch {
        path: PathBuf,
        stored: String,
        given: String,
    },
    #[error(
        "{path}: {missing} of the bank's {entries} entries have no thumbnail to embed again, so \
         rebinding would lose them; run the new model on another --bank"
    )]
    RebindWithoutThumbnails {
        path: PathBuf,
        missing: usize,
        entries: usize,
    },
    #[error(
        "{library}: onnxruntime cannot run the {provider}: {source}; refusing to fall back to \
         the CPU (use --ep cpu for that)"
    )]
    ProviderUnavailable {
        provider: &'static str,
        library: PathBuf,
        source: LibraryError,
    },
    #[error("{backend}: {source}")]
    Inference {
        backend: &'static str,
        source: LibraryError,
    },
    #[error("{port}: MCU link: {source}")]
    Link { port: String, source: LibraryError },
    #[error("{path}: adapter: {problem}")]
    Adapter {
        path: PathBuf,
        problem: AdapterProblem,
    },
    #[error(
        "{path}: not found; statistics adaptation needs the training embeddings' statistics \
         (`edge-runtime adapt stats --model DIR --data SOURCE` writes them)"
    )]
    NoEmbeddingStats { path: PathBuf },
    #[error("{path}: not valid embedding statistics: {source}")]
    EmbeddingStats {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: embedding statistics of {dim}-d with {means} means and {covariance} \
         covariance values; the model's embedding is {model_dim}-d"
    )]
    EmbeddingStatsShape {
        path: PathBuf,
        dim: u32,
        means: usize,
        covariance: usize,
        model_dim: usize,
    },
    #[error("input has {actual} values, expected {expected} ({what})")]
    InputShape {
        what: String,
        expected: usize,
        actual: usize,
    },
}

/// Why a stored thumbnail could not be brought back to the model's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ThumbnailError {
    #[error("a stored thumbnail's pixels do not fill its shape")]
    Shape,
    #[error("a stored thumbnail: {0}")]
    Pixels(#[from] models::data::DecodeError),
}
