//! The feature pass: outputs of the encoder for a whole data set, without augmentation (or
//! with it, for the views a cluster head trains on).

use candle_core::Device;

use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::progress::Progress;
use crate::TrainError;

/// Which output of the encoder to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layer {
    /// The projected embedding (what training shapes and the board will use).
    #[default]
    Embedding,
    /// The pooled backbone features before the projection.
    Backbone,
}

impl Layer {
    pub fn dim(self, encoder: &dyn Encoder) -> usize {
        match self {
            Layer::Embedding => encoder.embed_dim(),
            Layer::Backbone => encoder.feature_dim(),
        }
    }
}

/// Embeddings of every image of `set`, row by row (n x embed_dim), in eval mode.
pub fn extract(
    encoder: &dyn Encoder,
    set: &TrainSet,
    batch: usize,
    device: &Device,
    what: &str,
) -> Result<Vec<f32>, TrainError> {
    extract_layer(encoder, Layer::Embedding, set, batch, device, what)
}

/// Embeddings of an augmented view of every image of `set` (seeded), in eval mode.
pub fn extract_view(
    encoder: &dyn Encoder,
    set: &TrainSet,
    augment: &AugmentConfig,
    seed: u64,
    device: &Device,
) -> Result<Vec<f32>, TrainError> {
    pass(
        encoder,
        Layer::Embedding,
        set,
        augment,
        seed,
        512,
        device,
        "view",
    )
}

/// Outputs of `layer` for every image of `set`, row by row, in eval mode.
pub fn extract_layer(
    encoder: &dyn Encoder,
    layer: Layer,
    set: &TrainSet,
    batch: usize,
    device: &Device,
    what: &str,
) -> Result<Vec<f32>, TrainError> {
    pass(
        encoder,
        layer,
        set,
        &AugmentConfig::none(),
        0,
        batch,
        device,
        what,
    )
}

fn pass(
    encoder: &dyn Encoder,
    layer: Layer,
    set: &TrainSet,
    augment: &AugmentConfig,
    seed: u64,
    batch: usize,
    device: &Device,
    what: &str,
) -> Result<Vec<f32>, TrainError> {
    let n = set.len();
    let mut out = Vec::with_capacity(n * layer.dim(encoder));
    let bar = Progress::new(n as u64, what);
    let idx: Vec<usize> = (0..n).collect();
    for (bi, chunk) in idx.chunks(batch.max(1)).enumerate() {
        let x = set.batch(chunk, augment, seed ^ ((bi as u64) << 24), device)?;
        let e = match layer {
            Layer::Embedding => encoder.embed(&x, false)?,
            Layer::Backbone => encoder.features(&x, false)?,
        };
        out.extend(e.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(out)
}
