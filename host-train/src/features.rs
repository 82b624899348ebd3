//! The feature pass: embeddings of a whole data set, without augmentation.

use candle_core::Device;

use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::progress::Progress;
use crate::TrainError;

/// Embeddings of every image of `set`, row by row (n x embed_dim), in eval mode.
pub fn extract(
    encoder: &dyn Encoder,
    set: &TrainSet,
    batch: usize,
    device: &Device,
    what: &str,
) -> Result<Vec<f32>, TrainError> {
    let n = set.len();
    let mut out = Vec::with_capacity(n * encoder.embed_dim());
    let bar = Progress::new(n as u64, what);
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let x = set.batch(chunk, &AugmentConfig::none(), 0, device)?;
        let e = encoder.embed(&x, false)?;
        out.extend(e.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(out)
}
