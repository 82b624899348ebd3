use std::path::PathBuf;

use thiserror::Error;

/// A data file or folder could not be used. Each variant names the path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an IDX file (magic bytes {magic:02x?})")]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: IDX element type 0x{code:02x} is not unsigned bytes")]
    UnsupportedIdxType { path: PathBuf, code: u8 },
    #[error("{path}: truncated, header promises {expected} bytes of data but {got} follow")]
    Truncated {
        path: PathBuf,
        expected: usize,
        got: usize,
    },
    #[error("{path}: {detail}")]
    BadShape { path: PathBuf, detail: String },
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },
    #[cfg(feature = "image")]
    #[error("{path}: cannot decode image: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error("{path}: no JPEG or PNG images found (searched recursively)")]
    NoImages { path: PathBuf },
    #[error("{path}: every image failed to load ({skipped} skipped)")]
    AllSkipped { path: PathBuf, skipped: usize },
    #[error("{path}: class folder `{class}` is not among the training classes ({known})")]
    UnknownClass {
        path: PathBuf,
        class: String,
        known: String,
    },
    #[error("{path}: neither Fashion-MNIST IDX files nor a folder of images")]
    UnknownSource { path: PathBuf },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why one image could not be turned into pixels.
#[cfg(feature = "image")]
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("image has no pixels")]
    Empty,
}
