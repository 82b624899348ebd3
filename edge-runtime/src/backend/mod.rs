//! Inference backends behind one small trait, in tract's manner: a [`Runtime`] prepares a
//! checked [`ModelBundle`] into a [`Runnable`] with concrete shapes, which maps a batch of
//! preprocessed images to embeddings.

#[cfg(feature = "tract")]
mod tract;
#[cfg(feature = "tract")]
mod tract_conv;
#[cfg(feature = "tract")]
mod tract_pool;

#[cfg(feature = "ort")]
mod ort;

#[cfg(feature = "rknn")]
mod rknn;
pub mod rknn_card;

#[cfg(feature = "ort")]
pub use self::ort::{OrtRuntime, Provider, TensorRtOptions};
#[cfg(feature = "rknn")]
pub use self::rknn::RknnRuntime;
#[cfg(feature = "tract")]
pub use self::tract::{optimized_model, TractRuntime};

use models::data::ImageSet;

use crate::bundle::ModelBundle;
use crate::preprocess::Preprocessor;
use crate::EdgeError;

/// How to prepare a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Images per run; shapes are fixed to it so the backend can optimise.
    pub batch: usize,
    /// Worker threads for one run (1: the caller's thread only).
    pub threads: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            threads: 1,
        }
    }
}

pub trait Runtime {
    fn name(&self) -> &'static str;
    fn prepare(
        &self,
        model: &ModelBundle,
        options: &PrepareOptions,
    ) -> Result<Box<dyn Runnable>, EdgeError>;
}

pub trait Runnable: Send {
    /// The batch size the model was prepared for.
    fn batch(&self) -> usize;
    /// Output values per image.
    fn embed_dim(&self) -> usize;
    /// `images` holds `n <= batch()` preprocessed images (NCHW f32); returns `n` embeddings,
    /// row-major, exactly as the graph computes them (not normalised).
    fn run(&self, images: &[f32], n: usize) -> Result<Vec<f32>, EdgeError>;
}

/// The fixed shapes a prepared model runs with; every backend checks its input here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchShape {
    pub batch: usize,
    pub chw: [usize; 3],
    pub dim: usize,
}

impl BatchShape {
    pub fn image_len(&self) -> usize {
        self.chw.iter().product()
    }

    /// `images` must hold `n <= batch` images.
    pub fn check(&self, images: &[f32], n: usize) -> Result<(), EdgeError> {
        let per = self.image_len();
        if n > self.batch || images.len() != n * per {
            return Err(EdgeError::InputShape {
                what: format!("{n} images of {:?}, batch {}", self.chw, self.batch),
                expected: n.min(self.batch) * per,
                actual: images.len(),
            });
        }
        Ok(())
    }
}

/// `frames` (planar u8 at the manifest's size, lengths already checked), normalised as `spec`
/// says and run in batches of `run.batch()`: raw embeddings, row-major.
pub fn embed_pixels(
    run: &dyn Runnable,
    spec: &models::preprocess::PreprocessSpec,
    frames: &[&[u8]],
) -> Result<Vec<f32>, EdgeError> {
    embed_pixels_mapped(run, spec, frames, &mut |_| {})
}

/// [`embed_pixels`], with `map` applied to each preprocessed frame before the model (the
/// input's statistics adaptation).
pub fn embed_pixels_mapped(
    run: &dyn Runnable,
    spec: &models::preprocess::PreprocessSpec,
    frames: &[&[u8]],
    map: &mut dyn FnMut(&mut [f32]),
) -> Result<Vec<f32>, EdgeError> {
    let len = spec.image_len();
    let mut out = Vec::with_capacity(frames.len() * run.embed_dim());
    for chunk in frames.chunks(run.batch()) {
        let mut x = vec![0f32; chunk.len() * len];
        for (f, o) in chunk.iter().zip(x.chunks_mut(len)) {
            spec.normalize_into(f, o);
            map(o);
        }
        out.extend(run.run(&x, chunk.len())?);
    }
    Ok(out)
}

/// Every image of `set`, preprocessed by `pre` and run in batches of `run.batch()`: raw
/// embeddings, row-major.
pub fn embed_images(
    run: &dyn Runnable,
    pre: &Preprocessor,
    set: &ImageSet,
) -> Result<Vec<f32>, EdgeError> {
    let mut out = Vec::with_capacity(set.len() * run.embed_dim());
    for start in (0..set.len()).step_by(run.batch()) {
        let end = (start + run.batch()).min(set.len());
        out.extend(run.run(&pre.tensor(set, start..end)?, end - start)?);
    }
    Ok(out)
}
