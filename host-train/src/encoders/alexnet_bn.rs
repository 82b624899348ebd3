//! `alexnet-bn`: AlexNet with batch-norm as DeepCluster trains it (Caron et al. 2018, the
//! official `models/alexnet.py`), for larger images (224x224 in the paper): five convs of 96,
//! 256, 384, 384 and 256 channels (11x11 stride 4, 5x5, then 3x3), each with BN and ReLU,
//! overlapping 3x3 stride-2 max-pooling after the first, second and fifth, then two
//! 4096-wide linear layers with ReLU: the features. A linear projection gives the embedding.
//!
//! One difference: no dropout before the linear layers. candle's CPU dropout draws from an
//! unseeded generator, and runs here are reproducible from their seed.

use candle_core::{bail, Module, ModuleT, Result, Tensor};
use candle_nn::{linear, VarBuilder};

use super::fold::{folded_conv, linear_layer};
use super::{BnRelu, SobelFront};
use crate::graph::{FoldedGraph, Layer};
use crate::ops::{conv2d, max_pool2d, Conv2dGeometry};

/// Shape of an `alexnet-bn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlexNetBnConfig {
    pub in_channels: usize,
    /// The input's height and width: the first linear layer's width depends on them.
    pub input_hw: (usize, usize),
    pub widths: [usize; 5],
    /// Width of the two linear layers (the features).
    pub hidden: usize,
    pub embed_dim: usize,
    /// DeepCluster's fixed grayscale + Sobel filter in front (2 channels into the net).
    pub sobel: bool,
}

impl Default for AlexNetBnConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            input_hw: (224, 224),
            widths: [96, 256, 384, 384, 256],
            hidden: 4096,
            embed_dim: 128,
            sobel: true,
        }
    }
}

/// (kernel, stride, padding, max-pool after) of each conv.
const CONVS: [(usize, usize, usize, bool); 5] = [
    (11, 4, 2, true),
    (5, 1, 2, true),
    (3, 1, 1, false),
    (3, 1, 1, false),
    (3, 1, 1, true),
];
const POOL: (usize, usize) = (3, 2);

impl AlexNetBnConfig {
    /// Height and width after the convolutions and pools, or an error for inputs too small.
    pub fn feature_map(&self) -> Result<(usize, usize)> {
        let side = |mut n: usize| -> Option<usize> {
            for (k, s, p, pool) in CONVS {
                n = (n + 2 * p).checked_sub(k)? / s + 1;
                if pool {
                    n = n.checked_sub(POOL.0)? / POOL.1 + 1;
                }
            }
            Some(n)
        };
        let (h, w) = self.input_hw;
        match (side(h), side(w)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!("alexnet-bn needs images of at least 63x63, got {h}x{w}"),
        }
    }
}

/// The network; its parameters live in the `VarBuilder`'s `VarMap`.
#[derive(Debug)]
pub struct AlexNetBn {
    sobel: Option<SobelFront>,
    convs: Vec<Tensor>,
    norms: Vec<BnRelu>,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
    proj: candle_nn::Linear,
    config: AlexNetBnConfig,
}

impl AlexNetBn {
    pub fn new(config: AlexNetBnConfig, vb: VarBuilder) -> Result<Self> {
        let (fh, fw) = config.feature_map()?;
        let sobel = config
            .sobel
            .then(|| SobelFront::new(config.in_channels, vb.device()))
            .transpose()?;
        let mut c_in = if config.sobel { 2 } else { config.in_channels };
        let (mut convs, mut norms) = (Vec::new(), Vec::new());
        for (i, (&c_out, (k, ..))) in config.widths.iter().zip(CONVS).enumerate() {
            convs.push(vb.get_with_hints(
                (c_out, c_in, k, k),
                &format!("features.{i}.conv.weight"),
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?);
            norms.push(BnRelu::new(c_out, vb.pp(format!("features.{i}.bn")))?);
            c_in = c_out;
        }
        let flat = c_in * fh * fw;
        Ok(Self {
            sobel,
            convs,
            norms,
            fc1: classifier_linear(flat, config.hidden, vb.pp("classifier.0"))?,
            fc2: classifier_linear(config.hidden, config.hidden, vb.pp("classifier.1"))?,
            proj: linear(config.hidden, config.embed_dim, vb.pp("proj"))?,
            config,
        })
    }

    pub fn config(&self) -> &AlexNetBnConfig {
        &self.config
    }

    /// The features: the second linear layer after its ReLU, (b, hidden).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if (h, w) != self.config.input_hw {
            bail!(
                "this alexnet-bn was built for {:?} images, got {h}x{w}",
                self.config.input_hw
            );
        }
        let mut x = match &self.sobel {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        for ((w, bn), (_, stride, padding, pool)) in self.convs.iter().zip(&self.norms).zip(CONVS) {
            x = bn.forward_t(&conv2d(&x, w, Conv2dGeometry { stride, padding })?, train)?;
            if pool {
                x = max_pool2d(&x, POOL.0, POOL.1)?;
            }
        }
        let x = self.fc1.forward(&x.flatten_from(1)?)?.relu()?;
        self.fc2.forward(&x)?.relu()
    }

    /// The eval-mode network with BatchNorm folded into the convolutions, for export.
    pub fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        let [c, h, w] = input_chw;
        if c != self.config.in_channels || (h, w) != self.config.input_hw {
            bail!(
                "this alexnet-bn takes {}x{:?} inputs, not {input_chw:?}",
                self.config.in_channels,
                self.config.input_hw
            );
        }
        let mut layers = Vec::new();
        if let Some(s) = &self.sobel {
            layers.push(Layer::Conv(s.as_conv()?));
        }
        for (i, ((wt, bn), (_, stride, padding, pool))) in
            self.convs.iter().zip(&self.norms).zip(CONVS).enumerate()
        {
            layers.push(folded_conv(
                format!("features.{i}.conv"),
                wt,
                bn,
                stride,
                padding,
            )?);
            layers.push(Layer::Relu);
            if pool {
                layers.push(Layer::MaxPool {
                    kernel: POOL.0,
                    stride: POOL.1,
                });
            }
        }
        layers.push(Layer::Flatten);
        for (name, l) in [("classifier.0", &self.fc1), ("classifier.1", &self.fc2)] {
            layers.push(linear_layer(name, l)?);
            layers.push(Layer::Relu);
        }
        layers.push(linear_layer("proj", &self.proj)?);
        Ok(FoldedGraph {
            input_chw,
            layers,
            embed_dim: self.config.embed_dim,
        })
    }
}

/// DeepCluster's initialisation of the linear layers: weights N(0, 0.01), biases 0. (candle's
/// default, scaled to the fan-in, let the 4096-wide layers diverge at lr 0.05.)
fn classifier_linear(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<candle_nn::Linear> {
    let init = candle_nn::Init::Randn {
        mean: 0.0,
        stdev: 0.01,
    };
    let w = vb.get_with_hints((c_out, c_in), "weight", init)?;
    let b = vb.get_with_hints(c_out, "bias", candle_nn::Init::Const(0.0))?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

impl ModuleT for AlexNetBn {
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
    use crate::ops::{max_abs, max_abs_diff};

    #[test]
    fn deepcluster_shapes_and_parameter_count() {
        // The paper's network on 224x224: 6x6 maps of 256 channels into the first linear.
        let cfg = AlexNetBnConfig::default();
        assert_eq!(cfg.feature_map().unwrap(), (6, 6));
        let small = AlexNetBnConfig {
            input_hw: (62, 80),
            ..Default::default()
        };
        assert!(small
            .feature_map()
            .unwrap_err()
            .to_string()
            .contains("63x63"));
        // DeepCluster's alexnet with Sobel (2 channels in), without its top layer, has
        // 58,272,480 parameters; ours lacks the convs' 1,376 biases, which BN makes redundant:
        // 3,734,208 conv weights, 2,752 BN scales and shifts, 54,534,144 in the linears.
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = AlexNetBn::new(cfg, vb).unwrap();
        let trainable: usize = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.contains("running") && !k.starts_with("proj"))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(trainable, 58_272_480 - 1_376);
        assert_eq!(net.config().hidden, 4096);
    }

    #[test]
    fn small_alexnet_trains_and_folds() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cfg = AlexNetBnConfig {
            in_channels: 1,
            input_hw: (64, 72),
            widths: [8, 16, 16, 16, 8],
            hidden: 32,
            embed_dim: 8,
            sobel: true,
        };
        let net = AlexNetBn::new(cfg, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 1, 64, 72), &dev).unwrap();
        let e = net.forward_t(&x, true).unwrap();
        assert_eq!(e.dims(), &[3, 8]);
        assert_eq!(net.features_t(&x, false).unwrap().dims(), &[3, 32]);
        let grads = e.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let first = vm.data().lock().unwrap()["features.0.conv.weight"].clone();
        let g = grads.get(first.as_tensor()).unwrap();
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        // Folded for export: the same embedding in eval mode.
        let graph = net.folded_graph([1, 64, 72]).unwrap();
        let want = net.forward_t(&x, false).unwrap();
        let got = graph.forward(&x, |_, _| Ok(())).unwrap();
        let scale = max_abs(&want);
        let d = max_abs_diff(&want, &got);
        assert!(
            d <= 1e-5 * scale.max(1.0),
            "folded differs by {d} (scale {scale})"
        );
        assert!(net
            .forward_t(
                &Tensor::zeros((1, 1, 64, 64), DType::F32, &dev).unwrap(),
                false
            )
            .is_err());
    }
}
