//! Fashion-MNIST as Debian's `dataset-fashion-mnist` package installs it.

use std::path::{Path, PathBuf};

use super::{read_idx, DataError, ImageSet};

/// Where `apt-get install dataset-fashion-mnist` puts the IDX files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// `$FASHION_MNIST_DIR` when set, else [`FASHION_MNIST_DEFAULT_DIR`].
pub fn fashion_mnist_dir() -> PathBuf {
    std::env::var_os("FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DEFAULT_DIR))
}

/// The 60k training or the 10k test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The file `name`, gzipped or not, in `dir`.
fn find(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(name)
    }
}

/// True if `dir` holds the Fashion-MNIST training images (plain or gzipped).
pub fn looks_like_fashion_mnist(dir: &Path) -> bool {
    find(dir, "train-images-idx3-ubyte").exists()
}

/// Loads one split from `dir`, which holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let images_path = find(dir, &format!("{}-images-idx3-ubyte", split.prefix()));
    let labels_path = find(dir, &format!("{}-labels-idx1-ubyte", split.prefix()));
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::BadShape {
            path: images_path,
            detail: format!(
                "expected 3 dimensions (n, rows, cols), got {:?}",
                images.dims
            ),
        });
    }
    if labels.dims.len() != 1 {
        return Err(DataError::BadShape {
            path: labels_path,
            detail: format!("expected 1 dimension, got {:?}", labels.dims),
        });
    }
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::CountMismatch {
            images: images_path,
            n_images: images.dims[0],
            labels: labels_path,
            n_labels: labels.dims[0],
        });
    }
    if let Some(bad) = labels
        .data
        .iter()
        .find(|&&l| l as usize >= FASHION_MNIST_CLASSES.len())
    {
        return Err(DataError::BadShape {
            path: labels_path,
            detail: format!("label {bad} is not one of the 10 classes"),
        });
    }
    Ok(ImageSet {
        pixels: images.data,
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
        labels: Some(labels.data.iter().map(|&l| l as u32).collect()),
        class_names: FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        paths: Vec::new(),
        skipped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::tests::idx_bytes;

    #[test]
    fn loads_a_generated_split_and_checks_counts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let px: Vec<u8> = (0..3 * 4).map(|i| i as u8).collect();
        std::fs::write(
            d.join("t10k-images-idx3-ubyte.gz"),
            idx_bytes(&[3, 2, 2], &px, true),
        )
        .unwrap();
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx_bytes(&[3], &[9, 0, 4], false),
        )
        .unwrap();
        let set = load_fashion_mnist(d, Split::Test).unwrap();
        assert_eq!(
            (set.len(), set.height, set.width, set.channels),
            (3, 2, 2, 1)
        );
        assert_eq!(set.labels.as_deref(), Some(&[9u32, 0, 4][..]));
        assert_eq!(set.image(2), &[8, 9, 10, 11]);

        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx_bytes(&[2], &[9, 0], false),
        )
        .unwrap();
        let msg = load_fashion_mnist(d, Split::Test).unwrap_err().to_string();
        assert!(
            msg.contains("3 images") && msg.contains("2 labels"),
            "{msg}"
        );

        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx_bytes(&[3], &[9, 0, 10], false),
        )
        .unwrap();
        let msg = load_fashion_mnist(d, Split::Test).unwrap_err().to_string();
        assert!(msg.contains("label 10"), "{msg}");

        let msg = load_fashion_mnist(d, Split::Train).unwrap_err().to_string();
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    }
}
