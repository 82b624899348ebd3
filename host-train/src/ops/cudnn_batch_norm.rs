//! Training-mode BatchNorm2d through cuDNN (feature `cudnn`): one kernel forward and one
//! backward, where candle ops take about ten forward and twenty-five backward passes over
//! the activations.
//!
//! A candle custom op has one output, so the forward op writes one flat buffer
//! `[y (n), batch mean (c), batch inverse std (c), gamma (c)]`: the backward op finds in it
//! what cuDNN saved, and writes `[dx (n), dgamma (c), dbeta (c)]` the same way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

use candle_core::cuda::cudarc::cudnn::{result, sys};
use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::cuda::{CudaDevice, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::{contiguous_cuda_f32, cuda_only, dims4, gradient, relative_error};

const MODE: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

thread_local! {
    // One raw handle per thread and device (cudarc's safe handle keeps its pointer private);
    // like candle's, it lives as long as the thread.
    static HANDLES: RefCell<HashMap<DeviceId, usize>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<sys::cudnnHandle_t> {
    HANDLES.with(|h| {
        if let Some(&raw) = h.borrow().get(&dev.id()) {
            return Ok(raw as sys::cudnnHandle_t);
        }
        let raw = result::create_handle()?;
        unsafe { result::set_stream(raw, dev.cuda_stream().cu_stream() as _) }?;
        h.borrow_mut().insert(dev.id(), raw as usize);
        Ok(raw)
    })
}

/// A tensor descriptor, destroyed on drop.
struct Desc(sys::cudnnTensorDescriptor_t);

impl Drop for Desc {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_tensor_descriptor(self.0);
        }
    }
}

/// Descriptors of the activations (n, c, h, w) and of the per-channel parameters.
fn descriptors(dims: [usize; 4]) -> Result<(Desc, Desc)> {
    let x = Desc(result::create_tensor_descriptor()?);
    unsafe {
        result::set_tensor4d_descriptor(
            x.0,
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            dims.map(|d| d as i32),
        )
    }?;
    let bn = Desc(result::create_tensor_descriptor()?);
    unsafe { sys::cudnnDeriveBNTensorDescriptor(bn.0, x.0, MODE) }.result()?;
    Ok((x, bn))
}

/// Pointer `at` f32 values past `base`.
fn at(base: u64, values: usize) -> *mut c_void {
    (base + 4 * values as u64) as *mut c_void
}

/// cuDNN's scaling factors: results are written, not blended.
const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn scale(v: &'static f32) -> *const c_void {
    v as *const f32 as *const c_void
}

/// The input both ops start from: its dims, values (n) and channels (c), buffer and
/// descriptors.
struct Input<'a> {
    dims: [usize; 4],
    n: usize,
    c: usize,
    x: &'a CudaSlice<f32>,
}

impl<'a> Input<'a> {
    fn new(xs: &'a CudaStorage, xl: &Layout) -> Result<Self> {
        let dims = dims4(xl, "cudnn batch norm input")?;
        let n = dims.iter().product();
        Ok(Self {
            dims,
            n,
            c: dims[1],
            x: contiguous_cuda_f32(xs, xl, n, "cudnn batch norm input")?,
        })
    }
}

/// y = gamma * (x - mean) / sqrt(var + eps) + beta with the batch's statistics, on CUDA f32
/// (n, c, h, w) tensors; returns y, the batch mean and the biased batch variance (both (c),
/// detached).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let (n, c) = (x.elem_count(), x.dim(1)?);
    let out = x.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BatchNormForward { eps },
    )?;
    let y = out.narrow(0, 0, n)?.reshape(x.shape())?;
    let mean = out.narrow(0, n, c)?.detach();
    let inv_std = out.narrow(0, n + c, c)?.detach();
    let var = (inv_std.sqr()?.recip()? - eps)?;
    Ok((y, mean, var))
}

/// (x, gamma, beta) -> [y, mean, inv_std, gamma].
#[derive(Debug, Clone, Copy)]
struct BatchNormForward {
    eps: f64,
}

impl CustomOp3 for BatchNormForward {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let Input { dims, n, c, x } = Input::new(xs, xl)?;
        let g = contiguous_cuda_f32(gs, gl, c, "cudnn batch norm gamma")?;
        let b = contiguous_cuda_f32(bs, bl, c, "cudnn batch norm beta")?;
        let dev = &xs.device;
        let mut out = unsafe { dev.alloc::<f32>(n + 3 * c) }?;
        dev.memcpy_dtod(g, &mut out.slice_mut(n + 2 * c..))?;
        let (xd, bnd) = descriptors(dims)?;
        let h = handle(dev)?;
        let stream = dev.cuda_stream();
        let (xp, _x) = x.device_ptr(&stream);
        let (gp, _g) = g.device_ptr(&stream);
        let (bp, _b) = b.device_ptr(&stream);
        let (op, _o) = out.device_ptr_mut(&stream);
        unsafe {
            sys::cudnnBatchNormalizationForwardTraining(
                h,
                MODE,
                scale(&ONE),
                scale(&ZERO),
                xd.0,
                xp as *const c_void,
                xd.0,
                at(op, 0),
                bnd.0,
                gp as *const c_void,
                bp as *const c_void,
                0.0, // running statistics are kept by the caller
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                self.eps,
                at(op, n),
                at(op, n + c),
            )
        }
        .result()?;
        drop((_x, _g, _b, _o));
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(n + 3 * c),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _gamma: &Tensor,
        _beta: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = (x.elem_count(), x.dim(1)?);
        let dy = grad_out.narrow(0, 0, n)?.contiguous()?;
        let grads = x.apply_op3_no_bwd(&dy, out, &BatchNormBackward { eps: self.eps })?;
        Ok((
            Some(grads.narrow(0, 0, n)?.reshape(x.shape())?),
            Some(grads.narrow(0, n, c)?),
            Some(grads.narrow(0, n + c, c)?),
        ))
    }
}

/// (x, dy, [y, mean, inv_std, gamma]) -> [dx, dgamma, dbeta].
#[derive(Debug, Clone, Copy)]
struct BatchNormBackward {
    eps: f64,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "cudnn-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
        ss: &CudaStorage,
        sl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let Input { dims, n, c, x } = Input::new(xs, xl)?;
        let dy = contiguous_cuda_f32(dys, dyl, n, "cudnn batch norm output gradient")?;
        let saved = contiguous_cuda_f32(ss, sl, n + 3 * c, "cudnn batch norm saved output")?;
        let dev = &xs.device;
        let mut grads = unsafe { dev.alloc::<f32>(n + 2 * c) }?;
        let (xd, bnd) = descriptors(dims)?;
        let h = handle(dev)?;
        let stream = dev.cuda_stream();
        let (xp, _x) = x.device_ptr(&stream);
        let (dyp, _dy) = dy.device_ptr(&stream);
        let (sp, _s) = saved.device_ptr(&stream);
        let (gp, _g) = grads.device_ptr_mut(&stream);
        unsafe {
            sys::cudnnBatchNormalizationBackward(
                h,
                MODE,
                scale(&ONE),
                scale(&ZERO),
                scale(&ONE),
                scale(&ZERO),
                xd.0,
                xp as *const c_void,
                xd.0,
                dyp as *const c_void,
                xd.0,
                at(gp, 0),
                bnd.0,
                at(sp, n + 2 * c),
                at(gp, n),
                at(gp, n + c),
                self.eps,
                at(sp, n),
                at(sp, n + c),
            )
        }
        .result()?;
        drop((_x, _dy, _s, _g));
        Ok((
            CudaStorage::wrap_cuda_slice(grads, dev.clone()),
            Shape::from(n + 2 * c),
        ))
    }
}

/// Relative errors of y, dx, dgamma and dbeta against the same maths in candle ops, on the
/// GPU, for a layer of `c` channels.
pub fn parity_check(dev: &Device) -> Result<[f32; 4]> {
    let (b, c, hw) = (16, 24, 10);
    let x = candle_core::Var::from_tensor(&Tensor::randn(1f32, 2.0, (b, c, hw, hw), dev)?)?;
    let g = candle_core::Var::from_tensor(&Tensor::randn(1f32, 0.3, c, dev)?)?;
    let be = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.3, c, dev)?)?;
    let r = Tensor::randn(0f32, 1.0, (b, c, hw, hw), dev)?;
    let eps = 1e-5;
    let (ours, _, _) = batch_norm_train(x.as_tensor(), g.as_tensor(), be.as_tensor(), eps)?;
    let mean = x.as_tensor().mean_keepdim((0, 2, 3))?;
    let centred = x.as_tensor().broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
    let theirs = centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&g.as_tensor().reshape((1, c, 1, 1))?)?
        .broadcast_add(&be.as_tensor().reshape((1, c, 1, 1))?)?;
    let go = (&ours * &r)?.sum_all()?.backward()?;
    let gt = (&theirs * &r)?.sum_all()?.backward()?;
    Ok([
        relative_error(&ours, &theirs)?,
        relative_error(&gradient(&go, &x)?, &gradient(&gt, &x)?)?,
        relative_error(&gradient(&go, &g)?, &gradient(&gt, &g)?)?,
        relative_error(&gradient(&go, &be)?, &gradient(&gt, &be)?)?,
    ])
}
