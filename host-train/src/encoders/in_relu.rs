//! InstanceNorm2d + ReLU: each image's channels normalised by their own spatial mean and
//! variance, then scaled and shifted per channel (Ulyanov et al. 2016). It removes what is
//! constant over one image in a channel, such as a colour cast, the light level or a
//! background's overall tone, before the next layer sees it (the appearance invariance
//! IBN-Net, Pan et al. 2018, builds on). Training and inference compute the same thing, so
//! there are no running statistics and nothing folds into the convolution: the export
//! writes ONNX's `InstanceNormalization`. Parameter names follow `BnRelu` (`weight`, `bias`).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::graph::InstanceNorm;
use crate::ops::{instance_norm, instance_norm_relu};

const EPS: f64 = 1e-5;

#[derive(Debug)]
pub struct InRelu {
    weight: Tensor,
    bias: Tensor,
}

impl InRelu {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
        })
    }

    /// (b, c, h, w) -> the same shape: one fused op on the CPU, candle ops elsewhere.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            return instance_norm_relu(x, &self.weight, &self.bias, EPS);
        }
        instance_norm(x, &self.weight, &self.bias, EPS)?.relu()
    }

    /// The parameters the export writes, under `name`.
    pub fn instance_norm(&self, name: String) -> Result<InstanceNorm> {
        Ok(InstanceNorm {
            name,
            scale: self.weight.to_vec1()?,
            bias: self.bias.to_vec1()?,
            eps: EPS,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;

    #[test]
    fn each_image_and_channel_comes_out_centred_and_scaled_whatever_its_level() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let layer = InRelu::new(2, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 2, 4, 4), &Device::Cpu).unwrap();
        // The same images under another light level and tone: nothing changes after the norm.
        let lit = ((&x * 3.0).unwrap() + 5.0).unwrap();
        let a: Vec<f32> = layer
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = layer
            .forward(&lit)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
        // Before the ReLU each (image, channel) has mean 0 and variance 1, so about half the
        // values are positive and the positive part of a unit Gaussian has mean ~0.4.
        let positive = a.iter().filter(|&&v| v > 0.0).count();
        assert!((30..66).contains(&positive), "{positive} of 96");
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((0.2..0.6).contains(&mean), "{mean}");
    }
}
