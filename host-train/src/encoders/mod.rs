//! Encoders: image batch (b, c, h, w) in, embedding (b, d) out. One file per network, each
//! with a `Config` that implements `Default`.

mod alexnet_bn;
mod bn_relu;
mod fold;
mod in_relu;
mod resnet18;
mod small_cnn;
mod sobel;
mod whitened;

pub use alexnet_bn::{AlexNetBn, AlexNetBnConfig};
pub use bn_relu::BnRelu;
pub use in_relu::InRelu;
pub use resnet18::{ResNet18, ResNet18Config};
pub use small_cnn::{SmallCnn, SmallCnnConfig, SmallCnnHead, SmallCnnNorm};
pub use sobel::SobelFront;
pub use whitened::{EmbeddingWhitening, WhitenedEncoder};

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::graph::FoldedGraph;

/// A network that maps images to embeddings; its `forward_t` is the embedding.
pub trait Encoder: ModuleT + std::fmt::Debug {
    /// (b, c, h, w) -> (b, embed_dim); `train` switches batch-norm to batch statistics.
    fn embed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_t(x, train)
    }
    fn embed_dim(&self) -> usize;
    /// The backbone's pooled features, before the projection: (b, feature_dim).
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    fn feature_dim(&self) -> usize;
    /// The eval-mode graph with BatchNorm folded, for export at input size `(c, h, w)`.
    fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph>;
}

impl Encoder for SmallCnn {
    fn embed_dim(&self) -> usize {
        self.config().embed_dim
    }
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.features_t(x, train)
    }
    fn feature_dim(&self) -> usize {
        self.config().head.feature_dim(self.config().widths[2])
    }
    fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        SmallCnn::folded_graph(self, input_chw)
    }
}

impl Encoder for AlexNetBn {
    fn embed_dim(&self) -> usize {
        self.config().embed_dim
    }
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.features_t(x, train)
    }
    fn feature_dim(&self) -> usize {
        self.config().hidden
    }
    fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        AlexNetBn::folded_graph(self, input_chw)
    }
}

impl Encoder for ResNet18 {
    fn embed_dim(&self) -> usize {
        self.config().embed_dim
    }
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.features_t(x, train)
    }
    fn feature_dim(&self) -> usize {
        self.config().widths[3]
    }
    fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        ResNet18::folded_graph(self, input_chw)
    }
}

/// The architectures `--arch` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    SmallCnn,
    /// small-cnn whose projection sees the whole last map (128 x h/4 x w/4), not its
    /// channel means; built for one input size.
    SmallCnnFlat,
    /// small-cnn with InstanceNorm in place of BatchNorm: each image normalised by its own
    /// statistics, so that colour casts, light levels and a background's tone drop out
    /// early. The encoder `--method figure-pairs` trains.
    SmallCnnIn,
    /// CIFAR-style ResNet-18 for 32x32 inputs (`--size 32` pads Fashion-MNIST).
    Resnet18,
    /// DeepCluster's AlexNet with batch-norm, for larger images (at least 63x63; 224 in
    /// the paper).
    AlexnetBn,
}

impl Arch {
    /// The network for inputs of `(channels, height, width)`.
    pub fn build(
        self,
        input: (usize, usize, usize),
        embed_dim: usize,
        sobel: bool,
        vb: VarBuilder,
    ) -> Result<Box<dyn Encoder>> {
        let (in_channels, h, w) = input;
        Ok(match self {
            Arch::SmallCnn | Arch::SmallCnnFlat | Arch::SmallCnnIn => Box::new(SmallCnn::new(
                SmallCnnConfig {
                    in_channels,
                    embed_dim,
                    sobel,
                    head: match self {
                        Arch::SmallCnnFlat => SmallCnnHead::Flatten { input_hw: (h, w) },
                        _ => SmallCnnHead::GlobalAvgPool,
                    },
                    norm: match self {
                        Arch::SmallCnnIn => SmallCnnNorm::Instance,
                        _ => SmallCnnNorm::Batch,
                    },
                    ..Default::default()
                },
                vb,
            )?),
            Arch::Resnet18 => Box::new(ResNet18::new(
                ResNet18Config {
                    in_channels,
                    embed_dim,
                    sobel,
                    ..Default::default()
                },
                vb,
            )?),
            Arch::AlexnetBn => Box::new(AlexNetBn::new(
                AlexNetBnConfig {
                    in_channels,
                    input_hw: (h, w),
                    embed_dim,
                    sobel,
                    ..Default::default()
                },
                vb,
            )?),
        })
    }
}
