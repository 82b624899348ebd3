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
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::conv_geometry::conv_shape;
use super::{contiguous_cuda_f32, cuda_only, dims4, gradient, relative_error, Conv2dGeometry};

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

/// What each of the three ops sets up: the shapes of input, weight and output (checked
/// against each other with the CPU op's rules), the device and the descriptors.
struct Setup {
    dev: CudaDevice,
    d: Descriptors,
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    g: Conv2dGeometry,
}

impl Setup {
    /// `y`: the output gradient's dims for the backward ops, which must be the output's.
    fn new(
        dev: &CudaDevice,
        x: [usize; 4],
        w: [usize; 4],
        y: Option<[usize; 4]>,
        g: Conv2dGeometry,
    ) -> Result<Self> {
        let (b, oc, s) = conv_shape(x, w, g)?;
        let out = [b, oc, s.oh, s.ow];
        if y.is_some_and(|y| y != out) {
            bail!("cudnn conv2d backward: gradient {y:?} does not fit input {x:?}");
        }
        Ok(Self {
            d: descriptors(&handle(dev)?, x, w, out, g)?,
            dev: dev.clone(),
            x,
            w,
            y: out,
            g,
        })
    }

    fn key(&self) -> ConvKey {
        (self.x, self.w, self.g, allow_tf32())
    }

    /// The f32 buffer of an operand of dims `dims`.
    fn operand<'a>(
        s: &'a CudaStorage,
        l: &Layout,
        dims: [usize; 4],
        what: &str,
    ) -> Result<&'a CudaSlice<f32>> {
        contiguous_cuda_f32(s, l, dims.iter().product(), what)
    }

    fn alloc(&self, dims: [usize; 4]) -> Result<CudaSlice<f32>> {
        unsafe { self.dev.alloc::<f32>(dims.iter().product()) }
    }

    /// Scratch space: cuDNN writes before it reads.
    fn workspace(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        unsafe { self.dev.alloc::<u8>(bytes.max(1)) }
    }

    fn output(&self, out: CudaSlice<f32>, dims: [usize; 4]) -> (CudaStorage, Shape) {
        (
            CudaStorage::wrap_cuda_slice(out, self.dev.clone()),
            Shape::from(&dims),
        )
    }
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
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let xd = dims4(xl, "cudnn conv2d input")?;
        let s = Setup::new(
            &xs.device,
            xd,
            dims4(wl, "cudnn conv2d weight")?,
            None,
            self.0,
        )?;
        let x = Setup::operand(xs, xl, s.x, "cudnn conv2d input")?;
        let w = Setup::operand(ws, wl, s.w, "cudnn conv2d weight")?;
        let mut y = s.alloc(s.y)?;
        let op = ConvForward {
            conv: &s.d.conv,
            x: &s.d.x,
            w: &s.d.w,
            y: &s.d.y,
        };
        let (algo, bytes) = choose(
            &FWD,
            s.key(),
            || Ok(op.pick_algorithm()?),
            |a| Ok(op.get_workspace_size(a)?),
            sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        )?;
        let mut scratch = s.workspace(bytes)?;
        unsafe { op.launch(algo, Some(&mut scratch), (1f32, 0f32), x, w, &mut y) }?;
        Ok(s.output(y, s.y))
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
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        dys: &CudaStorage,
        dyl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let yd = dims4(dyl, "cudnn conv2d output gradient")?;
        let wd = dims4(wl, "cudnn conv2d weight")?;
        let s = Setup::new(&dys.device, self.x_dims, wd, Some(yd), self.geometry)?;
        let dy = Setup::operand(dys, dyl, s.y, "cudnn conv2d output gradient")?;
        let w = Setup::operand(ws, wl, s.w, "cudnn conv2d weight")?;
        let mut dx = s.alloc(s.x)?;
        let op = ConvBackwardData {
            conv: &s.d.conv,
            dx: &s.d.x,
            w: &s.d.w,
            dy: &s.d.y,
        };
        let (algo, bytes) = choose(
            &BWD_DATA,
            s.key(),
            || Ok(op.pick_algorithm()?),
            |a| Ok(op.get_workspace_size(a)?),
            sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        )?;
        let mut scratch = s.workspace(bytes)?;
        unsafe { op.launch(algo, Some(&mut scratch), (1f32, 0f32), &mut dx, w, dy) }?;
        Ok(s.output(dx, s.x))
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
        cuda_only(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let xd = dims4(xl, "cudnn conv2d input")?;
        let yd = dims4(dyl, "cudnn conv2d output gradient")?;
        let s = Setup::new(&xs.device, xd, self.w_dims, Some(yd), self.geometry)?;
        let x = Setup::operand(xs, xl, s.x, "cudnn conv2d input")?;
        let dy = Setup::operand(dys, dyl, s.y, "cudnn conv2d output gradient")?;
        let mut dw = s.alloc(s.w)?;
        let op = ConvBackwardFilter {
            conv: &s.d.conv,
            x: &s.d.x,
            dw: &s.d.w,
            dy: &s.d.y,
        };
        let (algo, bytes) = choose(
            &BWD_FILTER,
            s.key(),
            || Ok(op.pick_algorithm()?),
            |a| Ok(op.get_workspace_size(a)?),
            sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        )?;
        let mut scratch = s.workspace(bytes)?;
        unsafe { op.launch(algo, Some(&mut scratch), (1f32, 0f32), x, &mut dw, dy) }?;
        Ok(s.output(dw, s.w))
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
    Ok([
        relative_error(&ours, &theirs)?,
        relative_error(&gradient(&go, &x)?, &gradient(&gt, &x)?)?,
        relative_error(&gradient(&go, &w)?, &gradient(&gt, &w)?)?,
    ])
}
