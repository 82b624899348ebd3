//! `resnet18`: ResNet-18 (He et al. 2016) in its CIFAR form for 32x32 inputs: a 3x3 stem of
//! 64 channels without max-pooling, four stages of two basic blocks (64, 128, 256, 512
//! channels, stride 2 from the second stage on, 1x1 projections on the shortcuts that change
//! shape), global average pooling, then a linear projection to the embedding.

use candle_core::{bail, Module, ModuleT, Result, Tensor};
use candle_nn::{linear, VarBuilder};

use super::fold::{folded_conv, linear_layer};
use super::{BnRelu, SobelFront};
use crate::graph::{FoldedGraph, Layer, Residual};
use crate::ops::{conv2d, Conv2dGeometry};

/// Shape of a `resnet18`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNet18Config {
    pub in_channels: usize,
    pub widths: [usize; 4],
    pub embed_dim: usize,
    /// DeepCluster's fixed grayscale + Sobel filter in front (2 channels into the net).
    pub sobel: bool,
}

impl Default for ResNet18Config {
    fn default() -> Self {
        Self {
            in_channels: 1,
            widths: [64, 128, 256, 512],
            embed_dim: 128,
            sobel: false,
        }
    }
}

fn conv_weight(vb: &VarBuilder, c_out: usize, c_in: usize, k: usize) -> Result<Tensor> {
    vb.get_with_hints(
        (c_out, c_in, k, k),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )
}

/// Two 3x3 conv-BN layers and a shortcut, ReLU after the sum.
#[derive(Debug)]
struct BasicBlock {
    conv1: Tensor,
    bn1: BnRelu,
    conv2: Tensor,
    bn2: BnRelu,
    /// 1x1 conv + BN where the block changes the number of channels or the size.
    projection: Option<(Tensor, BnRelu)>,
    stride: usize,
}

impl BasicBlock {
    /// The block for export: the residual sum, then its ReLU.
    fn folded(&self, name: &str) -> Result<[Layer; 2]> {
        let body = vec![
            folded_conv(
                format!("{name}.conv1"),
                &self.conv1,
                &self.bn1,
                self.stride,
                1,
            )?,
            Layer::Relu,
            folded_conv(format!("{name}.conv2"), &self.conv2, &self.bn2, 1, 1)?,
        ];
        let shortcut = match &self.projection {
            Some((w, bn)) => vec![folded_conv(
                format!("{name}.shortcut"),
                w,
                bn,
                self.stride,
                0,
            )?],
            None => Vec::new(),
        };
        Ok([Layer::Residual(Residual { body, shortcut }), Layer::Relu])
    }

    fn new(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let projection = if stride != 1 || c_in != c_out {
            Some((
                conv_weight(&vb.pp("shortcut.conv"), c_out, c_in, 1)?,
                BnRelu::without_relu(c_out, vb.pp("shortcut.bn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv_weight(&vb.pp("conv1"), c_out, c_in, 3)?,
            bn1: BnRelu::new(c_out, vb.pp("bn1"))?,
            conv2: conv_weight(&vb.pp("conv2"), c_out, c_out, 3)?,
            bn2: BnRelu::without_relu(c_out, vb.pp("bn2"))?,
            projection,
            stride,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = |stride, padding| Conv2dGeometry { stride, padding };
        let y = self
            .bn1
            .forward_t(&conv2d(x, &self.conv1, g(self.stride, 1))?, train)?;
        let y = self
            .bn2
            .forward_t(&conv2d(&y, &self.conv2, g(1, 1))?, train)?;
        let shortcut = match &self.projection {
            Some((w, bn)) => bn.forward_t(&conv2d(x, w, g(self.stride, 0))?, train)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// The network; its parameters live in the `VarBuilder`'s `VarMap`.
#[derive(Debug)]
pub struct ResNet18 {
    sobel: Option<SobelFront>,
    stem: Tensor,
    stem_bn: BnRelu,
    blocks: Vec<BasicBlock>,
    proj: candle_nn::Linear,
    config: ResNet18Config,
}

impl ResNet18 {
    pub fn new(config: ResNet18Config, vb: VarBuilder) -> Result<Self> {
        let sobel = config
            .sobel
            .then(|| SobelFront::new(config.in_channels, vb.device()))
            .transpose()?;
        let c_in = if config.sobel { 2 } else { config.in_channels };
        let w = config.widths;
        let stem = conv_weight(&vb.pp("stem.conv"), w[0], c_in, 3)?;
        let stem_bn = BnRelu::new(w[0], vb.pp("stem.bn"))?;
        let mut blocks = Vec::new();
        let mut c = w[0];
        for (stage, &c_out) in w.iter().enumerate() {
            for i in 0..2 {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                blocks.push(BasicBlock::new(c, c_out, stride, vb.pp(name))?);
                c = c_out;
            }
        }
        let proj = linear(c, config.embed_dim, vb.pp("proj"))?;
        Ok(Self {
            sobel,
            stem,
            stem_bn,
            blocks,
            proj,
            config,
        })
    }

    pub fn config(&self) -> &ResNet18Config {
        &self.config
    }

    /// Pooled features before the projection: (b, widths[3]).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if h < 8 || w < 8 {
            bail!("resnet18 needs images of at least 8x8, got {h}x{w}");
        }
        let x = match &self.sobel {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let same = Conv2dGeometry {
            stride: 1,
            padding: 1,
        };
        let mut x = self
            .stem_bn
            .forward_t(&conv2d(&x, &self.stem, same)?, train)?;
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        x.mean((2, 3))
    }
}

impl ResNet18 {
    /// The eval-mode graph with every BatchNorm folded into its convolution.
    pub fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        if input_chw[0] != self.config.in_channels {
            bail!(
                "resnet18 takes {} channels, not {}",
                self.config.in_channels,
                input_chw[0]
            );
        }
        let mut layers = Vec::new();
        if let Some(s) = &self.sobel {
            layers.push(Layer::Conv(s.as_conv()?));
        }
        layers.push(folded_conv(
            "stem.conv".into(),
            &self.stem,
            &self.stem_bn,
            1,
            1,
        )?);
        layers.push(Layer::Relu);
        for (i, block) in self.blocks.iter().enumerate() {
            layers.extend(block.folded(&format!("layer{}.{}", i / 2 + 1, i % 2))?);
        }
        layers.push(Layer::GlobalAvgPool);
        layers.push(linear_layer("proj", &self.proj)?);
        Ok(FoldedGraph {
            input_chw,
            layers,
            embed_dim: self.config.embed_dim,
        })
    }
}

impl ModuleT for ResNet18 {
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
    fn shapes_parameter_count_and_gradients() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = ResNet18Config {
            in_channels: 3,
            embed_dim: 16,
            ..Default::default()
        };
        let net = ResNet18::new(cfg, vb).unwrap();
        // torchvision's resnet18 with a 3x3 stem and no fc has 11,168,832 parameters (conv
        // weights, batch-norm scales and shifts); the running statistics are buffers there.
        let trainable: usize = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.contains("running"))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(trainable, 11_168_832 + 512 * 16 + 16);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let e = net.forward_t(&x, true).unwrap();
        assert_eq!(e.dims(), &[2, 16]);
        assert_eq!(net.features_t(&x, false).unwrap().dims(), &[2, 512]);
        let grads = e.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let stem = vm.data().lock().unwrap()["stem.conv.weight"].clone();
        let g: f32 = grads
            .get(stem.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(g > 0.0 && g.is_finite());
        let small = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        assert!(net.forward_t(&small, false).is_err());
    }
}
