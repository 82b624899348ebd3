//! Reading images for both sides: Fashion-MNIST IDX files and folders of JPEG/PNG images;
//! generated scenes and random figures, and domain shifts of any set (for measuring adaptation).
//!
//! Every error names the file it is about. Images come out as [`ImageSet`]: `u8` pixels,
//! planar (channel, row, column), all of one size.

mod error;
mod fashion_mnist;
mod figures;
mod idx;
#[cfg(feature = "image")]
mod image_folder;
mod image_set;
mod scenes;
#[cfg(feature = "image")]
mod shifts;
mod source;

pub use error::DataError;
#[cfg(feature = "image")]
pub use error::DecodeError;
pub use fashion_mnist::{
    fashion_mnist_dir, load_fashion_mnist, looks_like_fashion_mnist, Split, FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT_DIR,
};
pub use figures::{render_figure_pair, Figure};
pub use idx::{read_idx, IdxArray};
#[cfg(feature = "image")]
pub use image_folder::{
    image_pixels, read_image, read_image_folder, survey_image_folder, ColorMode,
    ImageFolderOptions, ResizeMode,
};
pub use image_set::{ImageSet, SkippedFile};
pub use scenes::{render_scene, render_scenes, SceneParams, SCENE_SHAPES};
#[cfg(feature = "image")]
pub use shifts::{shifted, Shift};
pub use source::DataSource;
