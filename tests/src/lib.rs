//! Helpers shared by the integration tests in `tests/tests/`: the Fashion-MNIST location and
//! the simulated MCU of the hardware-in-the-loop tests ([`sim`]).

pub mod sim;

use std::path::PathBuf;

use models::data::{fashion_mnist_dir as configured_dir, looks_like_fashion_mnist};

/// The Fashion-MNIST directory (`$FASHION_MNIST_DIR`, else the Debian package's).
///
/// # Panics
/// With instructions, when the files are missing: `./scripts/test` installs them.
pub fn fashion_mnist_dir() -> PathBuf {
    let dir = configured_dir();
    assert!(
        looks_like_fashion_mnist(&dir),
        "Fashion-MNIST not found in {}: run ./scripts/test (it installs dataset-fashion-mnist) \
         or set FASHION_MNIST_DIR",
        dir.display()
    );
    dir
}
