//! `small-cnn`: three conv-norm-ReLU blocks (32, 64, 128 channels) for 28x28 and 32x32
//! images, the norm BatchNorm or (`small-cnn-in`) InstanceNorm, 2x2 max-pooling after the
//! first two, then global average pooling (or, with the flatten
//! head, the whole 128 x h/4 x w/4 map) and a linear projection to the embedding. Pooling
//! always sees even sizes, where candle's max-pool backward is exact.

use candle_core::{bail, Module, ModuleT, Result, Tensor};
use candle_nn::{linear, VarBuilder};

use crate::graph::{FoldedGraph, Layer};

use super::fold::{folded_conv, linear_layer};
use super::{BnRelu, InRelu, SobelFront};
use crate::graph::Conv;
use crate::ops::{conv2d, max_pool_2x2, Conv2dGeometry};

/// Shape of a `small-cnn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallCnnConfig {
    pub in_channels: usize,
    pub widths: [usize; 3],
    pub embed_dim: usize,
    /// Put DeepCluster's fixed grayscale + Sobel filter in front (2 channels into the net).
    pub sobel: bool,
    pub head: SmallCnnHead,
    pub norm: SmallCnnNorm,
}

/// The normalisation after each convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmallCnnNorm {
    /// Batch statistics in training, running ones at inference; folds into the convolution.
    #[default]
    Batch,
    /// Each image's own statistics, always: removes per-image colour casts and light levels.
    Instance,
}

/// One block's norm and ReLU.
#[derive(Debug)]
enum BlockNorm {
    Batch(BnRelu),
    Instance(InRelu),
}

/// What the projection sees of the last block's map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallCnnHead {
    /// The channel means: translation-invariant, but blind to where things are.
    GlobalAvgPool,
    /// The whole map, flattened, for inputs of this (height, width): keeps the layout,
    /// which on centred objects such as Fashion-MNIST is most of the signal.
    Flatten { input_hw: (usize, usize) },
}

impl SmallCnnHead {
    /// Length of the feature vector before the projection, for a last block of `c` channels.
    pub fn feature_dim(self, c: usize) -> usize {
        match self {
            SmallCnnHead::GlobalAvgPool => c,
            SmallCnnHead::Flatten { input_hw: (h, w) } => c * (h / 4) * (w / 4),
        }
    }
}

impl Default for SmallCnnConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            widths: [32, 64, 128],
            embed_dim: 128,
            sobel: false,
            head: SmallCnnHead::GlobalAvgPool,
            norm: SmallCnnNorm::Batch,
        }
    }
}

/// The network; its parameters live in the `VarBuilder`'s `VarMap`.
#[derive(Debug)]
pub struct SmallCnn {
    sobel: Option<SobelFront>,
    convs: Vec<Tensor>,
    norms: Vec<BlockNorm>,
    proj: candle_nn::Linear,
    config: SmallCnnConfig,
}

impl SmallCnn {
    pub fn new(config: SmallCnnConfig, vb: VarBuilder) -> Result<Self> {
        let sobel = config
            .sobel
            .then(|| SobelFront::new(config.in_channels, vb.device()))
            .transpose()?;
        let mut c_in = if config.sobel { 2 } else { config.in_channels };
        let (mut convs, mut norms) = (Vec::new(), Vec::new());
        for (i, &c_out) in config.widths.iter().enumerate() {
            let w = vb.get_with_hints(
                (c_out, c_in, 3, 3),
                &format!("block{i}.conv.weight"),
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?;
            convs.push(w);
            norms.push(match config.norm {
                SmallCnnNorm::Batch => {
                    BlockNorm::Batch(BnRelu::new(c_out, vb.pp(format!("block{i}.bn")))?)
                }
                SmallCnnNorm::Instance => {
                    BlockNorm::Instance(InRelu::new(c_out, vb.pp(format!("block{i}.in")))?)
                }
            });
            c_in = c_out;
        }
        if let SmallCnnHead::Flatten { input_hw: (h, w) } = config.head {
            check_input_hw(&config, h, w)?;
        }
        let proj = linear(
            config.head.feature_dim(c_in),
            config.embed_dim,
            vb.pp("proj"),
        )?;
        Ok(Self {
            sobel,
            convs,
            norms,
            proj,
            config,
        })
    }

    pub fn config(&self) -> &SmallCnnConfig {
        &self.config
    }

    /// The eval-mode network with BatchNorm folded into the convolutions (InstanceNorm stays
    /// a layer of its own), for export.
    pub fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        if input_chw[0] != self.config.in_channels {
            bail!(
                "small-cnn takes {} channels, not {}",
                self.config.in_channels,
                input_chw[0]
            );
        }
        let mut layers = Vec::new();
        if let Some(s) = &self.sobel {
            layers.push(Layer::Conv(s.as_conv()?));
        }
        for (i, (w, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            let name = format!("block{i}.conv");
            match norm {
                BlockNorm::Batch(bn) => layers.push(folded_conv(name, w, bn, 1, 1)?),
                BlockNorm::Instance(n) => {
                    layers.push(Layer::Conv(Conv {
                        name,
                        weight: w.flatten_all()?.to_vec1()?,
                        shape: w.dims4()?.into(),
                        bias: None,
                        stride: 1,
                        padding: 1,
                    }));
                    layers.push(Layer::InstanceNorm(
                        n.instance_norm(format!("block{i}.in"))?,
                    ));
                }
            }
            layers.push(Layer::Relu);
            if i < 2 {
                layers.push(Layer::MaxPool2x2);
            }
        }
        check_input_hw(&self.config, input_chw[1], input_chw[2])?;
        layers.push(match self.config.head {
            SmallCnnHead::GlobalAvgPool => Layer::GlobalAvgPool,
            SmallCnnHead::Flatten { .. } => Layer::Flatten,
        });
        layers.push(linear_layer("proj", &self.proj)?);
        Ok(FoldedGraph {
            input_chw,
            layers,
            embed_dim: self.config.embed_dim,
        })
    }

    /// Features before the projection: (b, head.feature_dim(widths[2])).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        check_input_hw(&self.config, h, w)?;
        let mut x = match &self.sobel {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let same = Conv2dGeometry {
            stride: 1,
            padding: 1,
        };
        for (i, (w, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            x = conv2d(&x, w, same)?;
            let pool = i < 2;
            x = match norm {
                BlockNorm::Batch(bn) if pool => bn.forward_pool_t(&x, train)?,
                BlockNorm::Batch(bn) => bn.forward_t(&x, train)?,
                BlockNorm::Instance(n) if pool => max_pool_2x2(&n.forward(&x)?)?,
                BlockNorm::Instance(n) => n.forward(&x)?,
            };
        }
        match self.config.head {
            SmallCnnHead::GlobalAvgPool => x.mean((2, 3)),
            SmallCnnHead::Flatten { .. } => x.flatten_from(1),
        }
    }
}

/// Inputs the network takes: sides divisible by 4 (two 2x2 pools), and with the flatten head
/// exactly the size it was built for.
fn check_input_hw(config: &SmallCnnConfig, h: usize, w: usize) -> Result<()> {
    if !h.is_multiple_of(4) || !w.is_multiple_of(4) || h == 0 || w == 0 {
        bail!("small-cnn needs height and width divisible by 4, got {h}x{w}");
    }
    match config.head {
        SmallCnnHead::Flatten { input_hw } if input_hw != (h, w) => bail!(
            "this small-cnn was built for {}x{} inputs, not {h}x{w}",
            input_hw.0,
            input_hw.1
        ),
        _ => Ok(()),
    }
}

impl ModuleT for SmallCnn {
    /// The embedding: (b, embed_dim), not normalised.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.proj.forward(&self.features_t(x, train)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;

    #[test]
    fn shapes_for_28_and_32_pixel_inputs_with_and_without_sobel() {
        for (c, sobel, size) in [(1, false, 28), (3, true, 32), (3, false, 32)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let cfg = SmallCnnConfig {
                in_channels: c,
                sobel,
                embed_dim: 16,
                ..Default::default()
            };
            let net = SmallCnn::new(cfg, vb).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, c, size, size), &Device::Cpu).unwrap();
            assert_eq!(net.forward_t(&x, true).unwrap().dims(), &[2, 16]);
            assert_eq!(net.features_t(&x, false).unwrap().dims(), &[2, 128]);
            let bad = Tensor::zeros((1, c, 30, 30), DType::F32, &Device::Cpu).unwrap();
            assert!(net.forward_t(&bad, false).is_err());
        }
    }

    #[test]
    fn flatten_head_keeps_the_map_and_rejects_other_sizes() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = SmallCnnConfig {
            embed_dim: 16,
            head: SmallCnnHead::Flatten { input_hw: (28, 28) },
            ..Default::default()
        };
        let net = SmallCnn::new(cfg, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 1, 28, 28), &Device::Cpu).unwrap();
        assert_eq!(net.forward_t(&x, true).unwrap().dims(), &[2, 16]);
        assert_eq!(net.features_t(&x, false).unwrap().dims(), &[2, 128 * 7 * 7]);
        let other = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let err = net.forward_t(&other, false).unwrap_err().to_string();
        assert!(err.contains("28x28"), "{err}");
        assert!(net.folded_graph([1, 32, 32]).is_err());
        assert!(net.folded_graph([1, 28, 28]).is_ok());
    }
}
