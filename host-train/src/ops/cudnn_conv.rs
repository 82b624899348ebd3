//! 2-D convolution through cuDNN (feature `cudnn`): forward, backward-data and
//! backward-filter as three candle custom ops on CUDA f32 tensors.
//!
//! candle 0.11 takes a convolution's input gradient with `conv_transpose2d`, a plain CUDA
//! kernel, and its weight gradient with a forward convolution of transposed tensors; both
//! are slow for ResNet-sized layers. By default f32 convolutions may run on TF32 tensor cores,
//! as PyTorch's do (`torch.backends.cudnn.allow_tf32`); `set_allow_tf32(false)` keeps them in
//! exact f32, which halved the resnet18 training step on an H100 (5,386 against 9,848
//! images/s). The small layers of `parity_check` run f32-exact either way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::cuda::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
};
use candle_core::cuda::cudarc::cudnn::sys;
use candle_core::cuda::cudarc::driver::CudaSlice;
use candle_core::cuda::{CudaDevice, DeviceId};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::Conv2dGeometry;

/// Input dims, weight dims, geometry and TF32: what an algorithm choice depends on.
type ConvKey = ([usize; 4], [usize; 4], Conv2dGeometry, bool);

static ALLOW_TF32: AtomicBool = AtomicBool::new(true);

/// Lets cuDNN run f32 convolutions on TF32 tensor cores (the default, as PyTorch's
/// `torch.backends.cudnn.allow_tf32`), or keeps them in exact f32 FMA arithmetic.
pub fn set_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed);
}

pub fn allow_tf32() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, as candle does.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    // cuDNN's heuristics are asked once per layer shape, not at every step.
    static FWD: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionFwdAlgo_t, usize)>> =
        RefCell::new(HashMap::new());
    static BWD_DATA: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionBwdDataAlgo_t, usize)>> =
        RefCell::new(HashMap::new());
    static BWD_FILTER: RefCell<HashMap<ConvKey, (sys::cudnnConvolutionBwdFilterAlgo_t, usize)>> =
        RefCell::new(HashMap::new());
}

/// The most workspace a convolution may take; the heuristics' first choice can ask for more
/// (FFT algorithms at large batches), and then a GEMM-based algorithm that needs little runs.
const MAX_WORKSPACE: usize = 512 << 20;

/// The algorithm for `key` and its workspace: cached, else the heuristics' pick if its
/// workspace fits, else `fallback`.
fn choose<A: Copy + std::fmt::Debug>(
    cache: &'static std::thread::LocalKey<RefCell<HashMap<ConvKey, (A, usize)>>>,
    key: ConvKey,
    pick: impl FnOnce() -> Result<A>,
    size: impl Fn(A) -> Result<usize>,
    fallback: A,
) -> Result<(A, usize)> {
    if let Some(hit) = cache.with(|c| c.borrow().get(&key).copied()) {
        return Ok(hit);
    }
    let first = pick()?;
    let choice = match size(first)? {
        bytes if bytes <= MAX_WORKSPACE => (first, bytes),
        bytes => {
            tracing::debug!(?first, bytes, ?fallback, "cuDNN workspace over the cap");
            (fallback, size(fallback)?)
        }
    };
    cache.with(|c| c.borrow_mut().insert(key, choice));
    Ok(choice)
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream())?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// `x` (b, c, h, w) convolved with `w` (oc, c, kh, kw) on CUDA through cuDNN.
pub fn conv2d(x: &Tensor, w: &Tensor, g: Conv2dGeometry) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, CudnnConv2d(g))
}

fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match *l.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref other => bail!("cudnn conv2d: {what} must have 4 dimensions, got {other:?}"),
    }
}

fn output_dims(x: [usize; 4], w: [usize; 4], g: Conv2dGeometry) -> Result<[usize; 4]> {
    let ([b, c, h, wd], [oc, wc, kh, kw]) = (x, w);
    if c != wc {
        bail!("cudnn conv2d: input has {c} channels, weight expects {wc}");
    }
    if g.stride == 0 || h + 2 * g.padding < kh || wd + 2 * g.padding < kw {
        bail!(
            "cudnn conv2d: kernel {kh}x{kw} stride {} does not fit {h}x{wd}",
            g.stride
        );
    }
    let out = |n: usize, k: usize| (n + 2 * g.padding - k) / g.stride + 1;
    Ok([b, oc, out(h, kh), out(wd, kw)])
}

/// The descriptors of one convolution: input, filter, output.
struct Descriptors {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
}

fn descriptors(
    cudnn: &Arc<Cudnn>,
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    g: Conv2dGeometry,
) -> Result<Descriptors> {
    let i = |d: [usize; 4]| d.map(|v| v as i32);
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let mut conv = cudnn.create_conv2d::<f32>(
        [g.padding as i32; 2],
        [g.stride as i32; 2],
        [1, 1],
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_math_type(if allow_tf32() {
        // f32 operands may be rounded to TF32 for the tensor cores ("conversion").
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    })?;
    Ok(Descriptors {
        conv,
        x: cudnn.create_4d_tensor::<f32>(nchw, i(x))?,
        w: cudnn.create_4d_filter::<f32>(nchw, i(w))?,
        y: cudnn.create_4d_tensor::<f32>(nchw, i(y))?,
    })
}

/// The f32 device buffer of a contiguous operand and its device.
fn operand<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<&'a CudaSlice<f32>> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        bail!("cudnn conv2d: {what} must be contiguous from offset 0");
    }
    s.as_cuda_slice::<f32>()
}

fn workspace(dev: &CudaDevice, bytes: usize) -> Result<CudaSlice<u8>> {
    // Scratch space: cuDNN writes before it reads.
    unsafe { dev.alloc::<u8>(bytes.max(1)) }
}

fn cpu_error(name: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{name} runs on CUDA only")
}

/// Forward: (x, w) -> y.
#[derive(Debug, Clone, Copy)]
struct CudnnConv2d(Conv2dGeometry);

impl CustomOp2 for CudnnConv2d {
    fn name(&self) -> &'static str {
        "cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_error(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (xd, wd) = (dims4(xl, "input")?, dims4(wl, "weight")?);
        let yd = output_dims(xd, wd, self.0)?;
        let dev = &xs.device;
        let cudnn = handle(dev)?;
        let d = descriptors(&cudnn, xd, wd, yd, self.0)?;
        let (x, w) = (operand(xs, xl, "input")?, operand(ws, wl, "weight")?);
        let mut y = unsafe { dev.alloc::<f32>(yd.iter().product()) }?;
        let op = ConvForward {
            conv: &d.conv,
            x: &d.x,
            w: &d.w,
            y: &d.y,
        };
        let (algo, bytes) = choose(
            &FWD,
            (xd, wd, self.0, allow_tf32()),
            || Ok(op.pick_algorithm()?),
            |a| Ok(op.get_workspace_size(a)?),
            sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        )?;
        let mut ws_buf = workspace(dev, bytes)?;
        unsafe { op.launch(algo, Some(&mut ws_buf), (1f32, 0f32), x, w, &mut y) }?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from(&yd),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // Gradients carry no graph: second derivatives are out of scope, as in candle.
        let dx = dy.apply_op2_no_bwd(
            w,
            &CudnnConv2dBackwardData {
                geometry: self.0,
                x_dims: x.dims4()?.into(),
            },
        )?;
        let dw = x.apply_op2_no_bwd(
            &dy,
            &CudnnConv2dBackwardFilter {
                geometry: self.0,
                w_dims: w.dims4()?.into(),
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Input gradient: (dy, w) -> dx.
#[derive(Debug, Clone, Copy)]
struct CudnnConv2dBackwardData {
    geometry: Conv2dGeometry,
    x_dims: [usize; 4],
}

impl CustomOp2 for CudnnConv2dBackwardData {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_error(self.name())
    }

    fn cuda_fwd(
        &self,
        dys: &CudaStorage,
        dyl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (yd, wd, xd) = (
            dims4(dyl, "output gradient")?,
            dims4(wl, "weight")?,
            self.x_dims,
        );
        if output_dims(xd, wd, self.geometry)? != yd {
            bail!("cudnn conv2d backward: gradient {yd:?} does not match input {xd:?}");
        }
        let dev = &dys.device;
        let cudnn = handle(dev)?;
        let d = descriptors(&cudnn, xd, wd, yd, self.geometry)?;
        let (dy, w) = (
            operand(dys, dyl, "output gradient")?,
            operand(ws, wl, "weight")?,
        );
        let mut dx = unsafe { dev.alloc::<f32>(xd.iter().product()) }?;
        let op = ConvBackwardData {
            conv: &d.conv,
            dx: &d.x,
            w: &d.w,
            dy: &d.y,
        };
        let (algo, bytes) = choose(
            &BWD_DATA,
            (xd, wd, self.geometry, allow_tf32()),
            || Ok(op.pick_algorithm()?),
            |a| Ok(op.get_workspace_size(a)?),
            sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        )?;
        let mut ws_buf = workspace(dev, bytes)?;
        unsafe { op.launch(algo, Some(&mut ws_buf), (1f32, 0f32), &mut dx, w, dy) }?;
        Ok((
            CudaStorage::wrap_cuda_slice(dx, dev.clone()),
            Shape::from(&xd),
        ))
    }
}

/// Weight gradient: (x, dy) -> dw.
#[derive(Debug, Clone, Copy)]
struct CudnnConv2dBackwardFilter {
    geometry: Conv2dGeometry,
    w_dims: [usize; 4],
}

impl CustomOp2 for CudnnConv2dBackwardFilter {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_error(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (xd, yd, wd) = (
            dims4(xl, "input")?,
            dims4(dyl, "output gradient")?,
            self.w_dims,
        );
        if output_dims(xd, wd, self.geometry)? != yd {
            bail!("cudnn conv2d backward: gradient {yd:?} does not match input {xd:?}");
        }
        let dev = &xs.device;
        let cudnn = handle(dev)?;
        let d = descriptors(&cudnn, xd, wd, yd, self.geometry)?;
        let (x, dy) = (
            operand(xs, xl, "input")?,
            operand(dys, dyl, "output gradient")?,
        );
        let mut dw = unsafe { dev.alloc::<f32>(wd.iter().product()) }?;
        let op = ConvBackwardFilter {
            conv: &d.conv,
            x: &d.x,
            dw: &d.w,
            dy: &d.y,
        };
        let (algo, bytes) = choose(
            &BWD_FILTER,
            (xd, wd, self.geometry, allow_tf32()),
            || Ok(op.pick_algorithm()?),
            |a| Ok(op.get_workspace_size(a)?),
            sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        )?;
        let mut ws_buf = workspace(dev, bytes)?;
        unsafe { op.launch(algo, Some(&mut ws_buf), (1f32, 0f32), x, &mut dw, dy) }?;
        Ok((
            CudaStorage::wrap_cuda_slice(dw, dev.clone()),
            Shape::from(&wd),
        ))
    }
}

/// Checks the three ops against candle's own convolution and its autograd on the GPU:
/// relative errors of y, dx and dw (TF32-sized, ~1e-3, when TF32 is allowed).
/// Even sizes: candle's own stride-2 input gradient has the wrong width for odd ones.
pub fn parity_check(dev: &candle_core::Device) -> Result<[f32; 3]> {
    let g = Conv2dGeometry {
        stride: 2,
        padding: 1,
    };
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 16, 16, 16), dev)?)?;
    let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (32, 16, 3, 3), dev)?)?;
    let r = Tensor::randn(0f32, 1.0, (8, 32, 8, 8), dev)?;
    let ours = conv2d(x.as_tensor(), w.as_tensor(), g)?;
    let theirs = x
        .as_tensor()
        .conv2d(w.as_tensor(), g.padding, g.stride, 1, 1)?;
    let go = (&ours * &r)?.sum_all()?.backward()?;
    let gt = (&theirs * &r)?.sum_all()?.backward()?;
    let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
        let num = (a - b)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        let den = b.sqr()?.sum_all()?.to_scalar::<f32>()?;
        Ok((num / den.max(f32::MIN_POSITIVE)).sqrt())
    };
    let missing = || candle_core::Error::Msg("no gradient".into());
    Ok([
        rel(&ours, &theirs)?,
        rel(
            go.get(&x).ok_or_else(missing)?,
            gt.get(&x).ok_or_else(missing)?,
        )?,
        rel(
            go.get(&w).ok_or_else(missing)?,
            gt.get(&w).ok_or_else(missing)?,
        )?,
    ])
}
