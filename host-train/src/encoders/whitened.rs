//! An encoder followed by a PCA-whitening of its embedding, fitted on the training set's
//! embeddings without labels (DeepCluster clusters its features this way).
//!
//! An embedding trained to classify pseudo-labels (DeepCluster) can put most of its variance
//! in a few directions that are not the classes; cosine k-means and nearest neighbours then
//! follow those directions. Whitening a few dozen principal directions gives each the same
//! weight. It is an affine map, so it folds into the exported graph as one `Linear` layer and
//! the board clusters in the same space as the host.

use candle_core::{Device, ModuleT, Result, Tensor};
use models::linalg::PcaParams;
use models::MatRef;
use serde::{Deserialize, Serialize};

use super::Encoder;
use crate::graph::{FoldedGraph, Layer, Linear};

/// y = weight x + bias, with `weight` (dim_out x dim_in, row-major) the principal directions
/// scaled by 1/sqrt(variance), and `bias` = -weight * mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingWhitening {
    pub dim_in: usize,
    pub dim_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl EmbeddingWhitening {
    /// Fits on `embeddings` (rows of `dim_in`), keeping `dim_out` directions (at most
    /// `dim_in` and fewer than the rows).
    pub fn fit(
        embeddings: &[f32],
        dim_in: usize,
        dim_out: usize,
    ) -> std::result::Result<Self, models::linalg::PcaError> {
        let pca = PcaParams::new(dim_out).fit(MatRef::new(embeddings, dim_in)?)?;
        Ok(Self {
            dim_in,
            dim_out: pca.d_out(),
            weight: pca.matrix().to_vec(),
            bias: pca.bias().iter().map(|b| -b).collect(),
        })
    }

    /// Whitens rows of `dim_in` values.
    pub fn apply(&self, rows: &[f32]) -> Vec<f32> {
        rows.chunks_exact(self.dim_in)
            .flat_map(|x| {
                self.weight
                    .chunks_exact(self.dim_in)
                    .zip(&self.bias)
                    .map(move |(w, b)| w.iter().zip(x).map(|(a, v)| a * v).sum::<f32>() + b)
            })
            .collect()
    }
}

/// `inner` followed by `whitening`: embeddings of `whitening.dim_out` values.
#[derive(Debug)]
pub struct WhitenedEncoder {
    inner: Box<dyn Encoder>,
    whitening: EmbeddingWhitening,
    /// (dim_in, dim_out): the transposed weight, so a batch multiplies it directly.
    weight_t: Tensor,
    bias: Tensor,
}

impl WhitenedEncoder {
    pub fn new(
        inner: Box<dyn Encoder>,
        whitening: EmbeddingWhitening,
        device: &Device,
    ) -> Result<Self> {
        if inner.embed_dim() != whitening.dim_in {
            candle_core::bail!(
                "the whitening expects {}-d embeddings, the encoder gives {}",
                whitening.dim_in,
                inner.embed_dim()
            );
        }
        let weight_t = Tensor::from_slice(
            &whitening.weight,
            (whitening.dim_out, whitening.dim_in),
            device,
        )?
        .t()?
        .contiguous()?;
        let bias = Tensor::from_slice(&whitening.bias, whitening.dim_out, device)?;
        Ok(Self {
            inner,
            whitening,
            weight_t,
            bias,
        })
    }
}

impl ModuleT for WhitenedEncoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.inner
            .embed(x, train)?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)
    }
}

impl Encoder for WhitenedEncoder {
    fn embed_dim(&self) -> usize {
        self.whitening.dim_out
    }
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.inner.features(x, train)
    }
    fn feature_dim(&self) -> usize {
        self.inner.feature_dim()
    }
    fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        let mut graph = self.inner.folded_graph(input_chw)?;
        graph.layers.push(Layer::Linear(Linear {
            name: "whiten".into(),
            weight: self.whitening.weight.clone(),
            out_features: self.whitening.dim_out,
            in_features: self.whitening.dim_in,
            bias: self.whitening.bias.clone(),
        }));
        graph.embed_dim = self.whitening.dim_out;
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::{SmallCnn, SmallCnnConfig};
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use models::rng::Rng;

    /// Rows whose first coordinate varies 100x more than the others, around a mean of 3.
    fn stretched(n: usize, d: usize) -> Vec<f32> {
        let mut rng = Rng::new(5);
        (0..n * d)
            .map(|i| 3.0 + if i % d == 0 { 100.0 } else { 1.0 } * rng.next_gaussian() as f32)
            .collect()
    }

    /// A randomly initialised small-cnn (128-d embedding).
    fn small_cnn(dev: &Device) -> SmallCnn {
        let vm = VarMap::new();
        SmallCnn::new(
            SmallCnnConfig::default(),
            VarBuilder::from_varmap(&vm, DType::F32, dev),
        )
        .unwrap()
    }

    /// A tensor's values in order.
    fn values(t: Result<Tensor>) -> Vec<f32> {
        t.unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The largest absolute difference of two equally long slices.
    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn whitened_rows_are_centred_with_unit_variance_in_every_kept_direction() {
        let (n, d) = (2000, 6);
        let x = stretched(n, d);
        let w = EmbeddingWhitening::fit(&x, d, 4).unwrap();
        let y = w.apply(&x);
        for c in 0..4 {
            let col: Vec<f64> = y.chunks_exact(4).map(|r| r[c] as f64).collect();
            let mean = col.iter().sum::<f64>() / n as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(mean.abs() < 1e-3, "direction {c}: mean {mean}");
            assert!((var - 1.0).abs() < 1e-2, "direction {c}: variance {var}");
        }
    }

    #[test]
    fn the_folded_graph_ends_in_the_whitening_and_matches_the_forward_pass() {
        let dev = Device::Cpu;
        let cnn = small_cnn(&dev);
        let x = Tensor::randn(0f32, 1.0, (64, 1, 28, 28), &dev).unwrap();
        let raw = values(cnn.embed(&x, false));
        let w = EmbeddingWhitening::fit(&raw, 128, 16).unwrap();
        let enc = WhitenedEncoder::new(Box::new(cnn), w.clone(), &dev).unwrap();
        assert_eq!(enc.embed_dim(), 16);
        let ours = values(enc.embed(&x, false));
        let d = worst(&ours, &w.apply(&raw));
        assert!(d < 1e-3, "forward differs from apply by {d}");
        let graph = enc.folded_graph([1, 28, 28]).unwrap();
        assert_eq!(graph.embed_dim, 16);
        assert!(matches!(graph.layers.last(), Some(Layer::Linear(l)) if l.name == "whiten"));
        let folded = values(graph.forward(&x, |_, _| Ok(())));
        let d = worst(&folded, &ours);
        assert!(d < 1e-3, "the folded graph differs by {d}");
    }

    #[test]
    fn a_whitening_of_another_width_is_refused() {
        let dev = Device::Cpu;
        let cnn = small_cnn(&dev);
        let w = EmbeddingWhitening::fit(&stretched(100, 6), 6, 3).unwrap();
        let e = WhitenedEncoder::new(Box::new(cnn), w, &dev).unwrap_err();
        assert!(e.to_string().contains("6-d"), "{e}");
    }
}
