//! BatchNorm2d + ReLU as one layer (or BatchNorm2d alone, for the last norm of a residual
//! branch). Training on CPU f32 uses the fused op; other devices use candle ops with the same
//! maths, and keep the running statistics on the device so that no step waits for a copy
//! back. Evaluation uses the running statistics. Parameter names are candle-nn's (`weight`,
//! `bias`, `running_mean`, `running_var`).

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::graph::BatchNormParams;
use crate::ops::{batch_norm_relu_pool_train, batch_norm_relu_train, max_pool_2x2, BatchStats};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

#[derive(Debug)]
pub struct BnRelu {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    relu: bool,
}

impl BnRelu {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_relu(channels, true, vb)
    }

    /// BatchNorm2d with no ReLU after it.
    pub fn without_relu(channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_relu(channels, false, vb)
    }

    fn with_relu(channels: usize, relu: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        // Variables of the VarMap, so checkpoints carry them; they never receive gradients.
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            relu,
        })
    }

    /// The eval-mode parameters, for folding into the preceding convolution.
    pub fn batch_norm_params(&self) -> Result<BatchNormParams> {
        Ok(BatchNormParams {
            gamma: self.weight.to_vec1()?,
            beta: self.bias.to_vec1()?,
            mean: self.running_mean.as_tensor().to_vec1()?,
            var: self.running_var.as_tensor().to_vec1()?,
            eps: EPS,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            let scale = (&self.weight / (self.running_var.as_tensor() + EPS)?.sqrt()?)?;
            let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
            let y = x
                .broadcast_mul(&scale.reshape((1, (), 1, 1))?)?
                .broadcast_add(&shift.reshape((1, (), 1, 1))?)?;
            return if self.relu { y.relu() } else { Ok(y) };
        }
        let n = x.elem_count() / x.dim(1)?;
        let y = if self.fuses(x) {
            self.with_batch_stats(x, batch_norm_relu_train(x, &self.weight, &self.bias, EPS)?)?
        } else if let Some((y, mean, var)) = self.train_with_cudnn(x)? {
            self.update_running(&mean, &var, n)?;
            if self.relu {
                y.relu()?
            } else {
                y
            }
        } else {
            let (y, mean, var) = self.train_with_candle_ops(x)?;
            self.update_running(&mean.flatten_all()?, &var.flatten_all()?, n)?;
            y
        };
        Ok(y)
    }

    /// This layer, then 2x2/stride-2 max-pooling. Training on CPU f32 with the ReLU runs one
    /// fused op that never stores the full-size normalised map; elsewhere the two layers run
    /// one after the other.
    pub fn forward_pool_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if !(train && self.fuses(x) && h % 2 == 0 && w % 2 == 0) {
            return max_pool_2x2(&self.forward_t(x, train)?);
        }
        self.with_batch_stats(
            x,
            batch_norm_relu_pool_train(x, &self.weight, &self.bias, EPS)?,
        )
    }

    /// Whether training on `x` runs a fused CPU op (they all end in the ReLU).
    fn fuses(&self, x: &Tensor) -> bool {
        self.relu && x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// A fused op's output, after moving the running statistics towards its batch's.
    fn with_batch_stats(&self, x: &Tensor, (y, s): (Tensor, BatchStats)) -> Result<Tensor> {
        let dev = x.device();
        let (mean, var) = (Tensor::new(s.mean, dev)?, Tensor::new(s.var, dev)?);
        self.update_running(&mean, &var, x.elem_count() / x.dim(1)?)?;
        Ok(y)
    }

    /// Running statistics move `MOMENTUM` of the way to the batch's (variance unbiased).
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let unbiased = n as f64 / (n as f64 - 1.0).max(1.0);
        let (mean, var) = (mean.detach(), (var.detach() * unbiased)?);
        let rm = ((self.running_mean.as_tensor() * (1.0 - MOMENTUM))? + (mean * MOMENTUM)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - MOMENTUM))? + (var * MOMENTUM)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }

    /// cuDNN's batch-norm on CUDA f32 tensors: output before the ReLU, batch mean and biased
    /// batch variance; `None` elsewhere.
    #[cfg(feature = "cudnn")]
    fn train_with_cudnn(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        if !x.device().is_cuda() || x.dtype() != DType::F32 {
            return Ok(None);
        }
        crate::ops::cudnn_batch_norm::batch_norm_train(x, &self.weight, &self.bias, EPS).map(Some)
    }

    #[cfg(not(feature = "cudnn"))]
    fn train_with_cudnn(&self, _x: &Tensor) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        Ok(None)
    }

    /// Output, batch mean and biased batch variance (both (1, c, 1, 1)).
    fn train_with_candle_ops(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let xhat = centred.broadcast_div(&(&var + EPS)?.sqrt()?)?;
        let y = xhat
            .broadcast_mul(&self.weight.reshape((1, (), 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        let y = if self.relu { y.relu()? } else { y };
        Ok((y, mean, var))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    use super::*;
    use crate::ops::max_abs_diff;

    #[test]
    fn fused_and_candle_op_paths_agree_and_eval_uses_running_statistics() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let layer = BnRelu::new(4, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let x = Var::from_tensor(&(Tensor::randn(1f32, 3.0, (8, 4, 3, 3), &dev).unwrap())).unwrap();
        let r = Tensor::randn(0f32, 1.0, (8, 4, 3, 3), &dev).unwrap();
        let y_fused = layer.forward_t(x.as_tensor(), true).unwrap();
        let (y_ops, mean, _) = layer.train_with_candle_ops(x.as_tensor()).unwrap();
        let mean: Vec<f32> = mean.flatten_all().unwrap().to_vec1().unwrap();
        let diff = max_abs_diff(&y_fused, &y_ops);
        assert!(diff < 1e-5);
        let g1 = (&y_fused * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&y_ops * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gd = max_abs_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap());
        assert!(gd < 1e-4);
        // One training step moved the running mean 10% of the way to the batch mean.
        let rm: Vec<f32> = layer.running_mean.as_tensor().to_vec1().unwrap();
        assert!((rm[0] - 0.1 * mean[0]).abs() < 1e-5);
        // Eval normalises with the running statistics, not the batch's.
        let y_eval = layer.forward_t(x.as_tensor(), false).unwrap();
        let de = max_abs_diff(&y_eval, &y_fused);
        assert!(de > 0.1);
        // And the running statistics live in the VarMap, for checkpoints.
        assert!(vm.data().lock().unwrap().contains_key("running_var"));
    }

    #[test]
    fn fused_pool_path_matches_the_layer_then_the_pool_and_moves_the_same_statistics() {
        let dev = Device::Cpu;
        let x = Tensor::randn(1f32, 2.0, (4, 3, 6, 6), &dev).unwrap();
        let (vm1, vm2) = (VarMap::new(), VarMap::new());
        let fused = BnRelu::new(3, VarBuilder::from_varmap(&vm1, DType::F32, &dev)).unwrap();
        let plain = BnRelu::new(3, VarBuilder::from_varmap(&vm2, DType::F32, &dev)).unwrap();
        let y1 = fused.forward_pool_t(&x, true).unwrap();
        let y2 = max_pool_2x2(&plain.forward_t(&x, true).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&y1, &y2), 0.0);
        for (a, b) in [
            (&fused.running_mean, &plain.running_mean),
            (&fused.running_var, &plain.running_var),
        ] {
            assert!(max_abs_diff(a.as_tensor(), b.as_tensor()) < 1e-6);
        }
        assert!(
            max_abs_diff(
                fused.running_mean.as_tensor(),
                &Tensor::zeros(3, DType::F32, &dev).unwrap()
            ) > 0.01
        );
        // Evaluation (and odd sizes) take the unfused path.
        let e1 = fused.forward_pool_t(&x, false).unwrap();
        let e2 = max_pool_2x2(&fused.forward_t(&x, false).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&e1, &e2), 0.0);
    }

    #[test]
    fn without_relu_keeps_negative_outputs_with_zero_mean_and_unit_variance() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let layer =
            BnRelu::without_relu(3, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let x = Tensor::randn(2f32, 3.0, (6, 3, 4, 4), &dev).unwrap();
        let y = layer.forward_t(&x, true).unwrap();
        let mean: Vec<f32> = y.mean((0, 2, 3)).unwrap().to_vec1().unwrap();
        let var: Vec<f32> = y.sqr().unwrap().mean((0, 2, 3)).unwrap().to_vec1().unwrap();
        for (m, v) in mean.iter().zip(&var) {
            assert!(
                m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3,
                "mean {m}, var {v}"
            );
        }
        let y_relu = BnRelu::new(3, VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev))
            .unwrap()
            .forward_t(&x, true)
            .unwrap();
        assert!(max_abs_diff(&y.relu().unwrap(), &y_relu) < 1e-5);
    }
}
