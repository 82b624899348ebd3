//! `--data fashion-mnist|PATH`: the built-in data set, a folder of IDX files, or a folder of
//! images.

use std::path::{Path, PathBuf};

use super::fashion_mnist::{fashion_mnist_dir, looks_like_fashion_mnist};
use super::DataError;

/// Where images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// A directory holding Fashion-MNIST IDX files.
    FashionMnist(PathBuf),
    /// A directory of JPEG/PNG images, searched recursively.
    ImageFolder(PathBuf),
}

impl DataSource {
    /// `fashion-mnist` is `$FASHION_MNIST_DIR` or the Debian package's directory; a path is
    /// IDX files if it holds them, an image folder otherwise.
    pub fn resolve(spec: &str) -> Result<Self, DataError> {
        if spec == "fashion-mnist" {
            return Ok(Self::FashionMnist(fashion_mnist_dir()));
        }
        let path = Path::new(spec);
        if !path.is_dir() {
            return Err(DataError::UnknownSource { path: path.into() });
        }
        Ok(if looks_like_fashion_mnist(path) {
            Self::FashionMnist(path.into())
        } else {
            Self::ImageFolder(path.into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::FASHION_MNIST_DEFAULT_DIR;

    #[test]
    fn resolves_names_idx_folders_and_image_folders() {
        if std::env::var_os("FASHION_MNIST_DIR").is_none() {
            assert_eq!(
                DataSource::resolve("fashion-mnist").unwrap(),
                DataSource::FashionMnist(FASHION_MNIST_DEFAULT_DIR.into())
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_str().unwrap();
        assert_eq!(
            DataSource::resolve(p).unwrap(),
            DataSource::ImageFolder(dir.path().into())
        );
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), b"").unwrap();
        assert_eq!(
            DataSource::resolve(p).unwrap(),
            DataSource::FashionMnist(dir.path().into())
        );
        let msg = DataSource::resolve("/no/such/dir").unwrap_err().to_string();
        assert!(msg.contains("/no/such/dir"), "{msg}");
    }
}
