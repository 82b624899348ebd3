//! SGD with momentum and weight decay, with PyTorch's update rule (dampening 0, no Nesterov):
//!
//! ```text
//! g = grad + weight_decay * p
//! b = g                          on the first step
//! b = momentum * b + g           afterwards
//! p = p - lr * b
//! ```
//!
//! candle-nn's `SGD` has neither momentum nor weight decay.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::Optimizer;

/// Hyper-parameters; the defaults are DeepCluster's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdParams {
    fn default() -> Self {
        Self {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-5,
        }
    }
}

/// The optimiser state: one momentum buffer per variable, created on its first gradient.
#[derive(Debug)]
pub struct SgdMomentum {
    vars: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
    params: SgdParams,
}

impl SgdMomentum {
    pub fn params(&self) -> SgdParams {
        self.params
    }

    /// The momentum buffers, in the order of the variables (for checkpoints).
    pub fn buffers(&self) -> &[Option<Tensor>] {
        &self.buffers
    }

    /// Restores momentum buffers saved from an optimiser over the same variables.
    pub fn set_buffers(&mut self, buffers: Vec<Option<Tensor>>) -> Result<()> {
        if buffers.len() != self.vars.len() {
            candle_core::bail!(
                "optimizer state holds {} buffers for {} variables",
                buffers.len(),
                self.vars.len()
            );
        }
        for (v, b) in self.vars.iter().zip(&buffers) {
            if let Some(b) = b {
                if b.dims() != v.dims() {
                    candle_core::bail!(
                        "momentum buffer {:?} does not fit variable {:?}",
                        b.dims(),
                        v.dims()
                    );
                }
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

impl Optimizer for SgdMomentum {
    type Config = SgdParams;

    fn new(vars: Vec<Var>, params: SgdParams) -> Result<Self> {
        let vars: Vec<Var> = vars.into_iter().filter(|v| v.dtype().is_float()).collect();
        let buffers = vec![None; vars.len()];
        Ok(Self {
            vars,
            buffers,
            params,
        })
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let p = self.params;
        for (var, buf) in self.vars.iter().zip(self.buffers.iter_mut()) {
            let Some(grad) = grads.get(var) else { continue };
            #[cfg(feature = "cuda")]
            if var.device().is_cuda() && var.dtype() == candle_core::DType::F32 {
                // Two fused kernels per variable instead of seven candle ops.
                let b = match buf.take() {
                    Some(b) => b,
                    None => var.as_tensor().zeros_like()?,
                };
                fused::step(var, &b, &grad.contiguous()?, p)?;
                *buf = Some(b);
                continue;
            }
            // A variable's gradient can still hold the step's graph (candle detaches only the
            // gradients of intermediate nodes); a momentum buffer built on it would keep every
            // step's activations alive.
            let (grad, w) = (grad.detach(), var.as_tensor().detach());
            let g = if p.weight_decay != 0.0 {
                (grad + (w * p.weight_decay)?)?
            } else {
                grad
            };
            let b = match buf.take() {
                Some(b) if p.momentum != 0.0 => ((b * p.momentum)? + g)?,
                _ => g,
            };
            var.set(&(var.as_tensor() - (&b * p.lr)?)?)?;
            *buf = Some(b);
        }
        Ok(())
    }
}

/// The update on CUDA: `sgd.cu`'s two kernels, in place on the buffer and the variable.
#[cfg(feature = "cuda")]
mod fused {
    use candle_core::cuda::cudarc::driver::PushKernelArg;
    use candle_core::cuda::WrapErr;
    use candle_core::{
        bail, CpuStorage, CudaStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var,
    };

    use super::SgdParams;
    use crate::cuda_kernels::{elementwise, function};
    use crate::ops::{check_whole, contiguous_cuda_f32};

    const SOURCE: &str = include_str!("sgd.cu");

    pub fn step(var: &Var, buf: &Tensor, grad: &Tensor, p: SgdParams) -> Result<()> {
        buf.inplace_op3(
            grad,
            var.as_tensor(),
            &Momentum {
                momentum: p.momentum as f32,
                weight_decay: p.weight_decay as f32,
            },
        )?;
        var.as_tensor()
            .inplace_op2(buf, &Descend { lr: p.lr as f32 })
    }

    struct Momentum {
        momentum: f32,
        weight_decay: f32,
    }

    impl InplaceOp3 for Momentum {
        fn name(&self) -> &'static str {
            "sgd-momentum"
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            bail!("sgd-momentum runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            buf: &mut CudaStorage,
            bl: &Layout,
            grad: &CudaStorage,
            gl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
        ) -> Result<()> {
            let n = bl.shape().elem_count();
            check_whole(bl, n, "SGD momentum buffer")?;
            let g = contiguous_cuda_f32(grad, gl, n, "SGD gradient")?;
            let w = contiguous_cuda_f32(w, wl, n, "SGD variable")?;
            let dev = buf.device.clone();
            let func = function(&dev, "dce_sgd", SOURCE, "sgd_momentum")?;
            let b_slice = buf.as_cuda_slice_mut::<f32>()?;
            let n_i = n as i32;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(b_slice)
                .arg(g)
                .arg(w)
                .arg(&self.momentum)
                .arg(&self.weight_decay)
                .arg(&n_i);
            unsafe { b.launch(elementwise(n)) }.w()?;
            Ok(())
        }
    }

    struct Descend {
        lr: f32,
    }

    impl InplaceOp2 for Descend {
        fn name(&self) -> &'static str {
            "sgd-descend"
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            bail!("sgd-descend runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            w: &mut CudaStorage,
            wl: &Layout,
            buf: &CudaStorage,
            bl: &Layout,
        ) -> Result<()> {
            let n = wl.shape().elem_count();
            check_whole(wl, n, "SGD variable")?;
            let b_slice = contiguous_cuda_f32(buf, bl, n, "SGD momentum buffer")?;
            let dev = w.device.clone();
            let func = function(&dev, "dce_sgd", SOURCE, "sgd_descend")?;
            let w_slice = w.as_cuda_slice_mut::<f32>()?;
            let n_i = n as i32;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(w_slice).arg(b_slice).arg(&self.lr).arg(&n_i);
            unsafe { b.launch(elementwise(n)) }.w()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn three_steps_match_the_hand_computed_pytorch_rule() {
        // loss = sum(c * p) has the constant gradient c, so every step is easy to follow.
        let p = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let c = Tensor::new(&[0.5f32, 1.0], &Device::Cpu).unwrap();
        let params = SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
        };
        let mut opt = SgdMomentum::new(vec![p.clone()], params).unwrap();
        // By hand, for p0 = 1, c = 0.5:
        //   step 1: g = 0.5 + 0.01*1 = 0.51; b = 0.51; p = 1 - 0.051 = 0.949
        //   step 2: g = 0.5 + 0.00949 = 0.50949; b = 0.9*0.51 + 0.50949 = 0.96849; p = 0.8521510
        //   step 3: g = 0.5 + 0.008521510 = 0.50852151; b = 0.9*0.96849 + 0.50852151 = 1.38016251;
        //           p = 0.8521510 - 0.138016251 = 0.714134749
        let want_first = [0.949f64, 0.852151, 0.714134749];
        for want in want_first {
            let loss = (p.as_tensor() * &c).unwrap().sum_all().unwrap();
            opt.backward_step(&loss).unwrap();
            let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
            assert!((got[0] as f64 - want).abs() < 1e-6, "{} vs {want}", got[0]);
        }
        assert_eq!(opt.buffers().len(), 1);
    }

    #[test]
    fn momentum_buffers_hold_no_graph() {
        let p = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let x = Var::from_slice(&[3.0f32, 4.0], 2, &Device::Cpu).unwrap();
        let mut opt = SgdMomentum::new(vec![p.clone()], SgdParams::default()).unwrap();
        // d(sum(p * x^2))/dp = x^2: computed from x, so it carries x's graph.
        let loss = (p.as_tensor() * x.as_tensor().sqr().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.backward_step(&loss).unwrap();
        let buf = opt.buffers()[0].as_ref().unwrap();
        assert!(!buf.track_op());
    }

    #[test]
    fn mismatched_optimizer_state_is_rejected() {
        let p = Var::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut opt = SgdMomentum::new(vec![p], SgdParams::default()).unwrap();
        assert!(opt.set_buffers(vec![]).is_err());
        let wrong = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(opt.set_buffers(vec![Some(wrong)]).is_err());
    }
}
