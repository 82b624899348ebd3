//! Preprocessing, implemented once and driven by the manifest: every backend receives the
//! same NCHW f32 tensors that training saw.

use std::path::Path;

use models::data::{
    image_pixels, load_fashion_mnist, read_image_folder, DataSource, ImageFolderOptions, ImageSet,
    Split,
};
use models::preprocess::PreprocessSpec;

use crate::bank::Thumbnail;
pub use crate::error::ThumbnailError;
use crate::EdgeError;

#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: PreprocessSpec,
}

impl Preprocessor {
    pub fn new(spec: PreprocessSpec) -> Self {
        Self { spec }
    }

    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// How an image file (or a camera frame) becomes the model's input: the manifest's size,
    /// colour and resize mode.
    pub fn image_options(&self, skip_bad: bool) -> ImageFolderOptions {
        ImageFolderOptions {
            width: self.spec.width,
            height: self.spec.height,
            color: self.spec.color,
            resize: self.spec.resize,
            skip_bad,
        }
    }

    /// A bank thumbnail as the model's input pixels (planar u8 at the manifest's size and
    /// colour): as stored when it already has that shape, else resized like an image file.
    pub fn thumbnail_input(&self, thumb: &Thumbnail) -> Result<Vec<u8>, ThumbnailError> {
        let spec = &self.spec;
        let shape = (spec.channels(), spec.height as usize, spec.width as usize);
        let stored = (
            thumb.channels as usize,
            thumb.height as usize,
            thumb.width as usize,
        );
        if stored == shape && thumb.pixels.len() == spec.image_len() {
            return Ok(thumb.pixels.clone());
        }
        let img = thumb.to_image().ok_or(ThumbnailError::Shape)?;
        Ok(image_pixels(
            image::DynamicImage::ImageRgb8(img),
            &self.image_options(false),
        )?)
    }

    /// Reads a folder of JPEG/PNG images at the manifest's size, colour and resize mode.
    pub fn read_folder(&self, dir: &Path, skip_bad: bool) -> Result<ImageSet, EdgeError> {
        read_image_folder(dir, &self.image_options(skip_bad)).map_err(|e| data_error(dir, e))
    }

    /// `fashion-mnist`, a folder of IDX files (its test split), or a folder of images.
    pub fn read_source(&self, source: &str, skip_bad: bool) -> Result<ImageSet, EdgeError> {
        self.read_split(source, Split::Test, skip_bad)
    }

    /// As [`Self::read_source`], with the IDX split chosen (image folders have none).
    pub fn read_split(
        &self,
        source: &str,
        split: Split,
        skip_bad: bool,
    ) -> Result<ImageSet, EdgeError> {
        match DataSource::resolve(source).map_err(|e| data_error(Path::new(source), e))? {
            DataSource::FashionMnist(dir) => {
                let set = load_fashion_mnist(&dir, split).map_err(|e| data_error(&dir, e))?;
                self.check(&set, &dir)?;
                Ok(set)
            }
            DataSource::ImageFolder(dir) => self.read_folder(&dir, skip_bad),
        }
    }

    /// Images `range` of `set` as normalised NCHW f32.
    pub fn tensor(
        &self,
        set: &ImageSet,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, EdgeError> {
        self.check(set, Path::new("<images>"))?;
        let len = self.spec.image_len();
        let mut out = vec![0f32; range.len() * len];
        for (o, i) in out.chunks_mut(len).zip(range) {
            self.spec.normalize_into(set.image(i), o);
        }
        Ok(out)
    }

    fn check(&self, set: &ImageSet, source: &Path) -> Result<(), EdgeError> {
        let want = [
            self.spec.channels(),
            self.spec.height as usize,
            self.spec.width as usize,
        ];
        let got = [set.channels, set.height, set.width];
        if want != got && !set.is_empty() {
            return Err(EdgeError::ImageShape {
                path: source.to_path_buf(),
                got,
                want,
            });
        }
        Ok(())
    }
}

fn data_error(path: &Path, e: models::data::DataError) -> EdgeError {
    EdgeError::Data {
        path: path.to_path_buf(),
        source: e,
    }
}
