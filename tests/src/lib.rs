//! Helpers shared by the integration tests in `tests/tests/`.

use std::path::PathBuf;

use models::data::FASHION_MNIST_DEFAULT_DIR;

/// The Fashion-MNIST directory: `$FASHION_MNIST_DIR`, else the Debian package's.
///
/// # Panics
/// With instructions, when the files are missing: `./scripts/test` installs them.
pub fn fashion_mnist_dir() -> PathBuf {
    let dir = std::env::var_os("FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DEFAULT_DIR));
    assert!(
        dir.join("train-images-idx3-ubyte.gz").exists()
            || dir.join("train-images-idx3-ubyte").exists(),
        "Fashion-MNIST not found in {}: run ./scripts/test (it installs dataset-fashion-mnist) \
         or set FASHION_MNIST_DIR",
        dir.display()
    );
    dir
}
