//! Fast CPU kernels as candle custom ops, with their own backward passes.
//!
//! candle 0.11's CPU conv backward (`conv_transpose2d`) is a plain loop; these ops run
//! convolutions as im2col + blocked GEMM (the `gemm` crate, via `models::linalg`) and
//! spread the batch over rayon. On other devices the wrappers fall back to candle's ops, or,
//! with the `cudnn` feature, run convolutions and batch-norm through cuDNN.

mod batch_norm_relu;
mod batch_norm_relu_pool;
mod conv2d;
mod conv_geometry;
mod cross_entropy;
#[cfg(feature = "cudnn")]
pub mod cudnn_batch_norm;
#[cfg(feature = "cudnn")]
pub mod cudnn_conv;
mod im2col;
mod instance_norm_relu;
mod max_pool;
mod max_pool_window;
mod precomputed_loss;

pub use batch_norm_relu::{batch_norm_relu_train, BatchStats};
pub use batch_norm_relu_pool::batch_norm_relu_pool_train;
pub use conv2d::conv2d;
pub use conv_geometry::Conv2dGeometry;
pub use cross_entropy::cross_entropy;
pub use instance_norm_relu::{instance_norm, instance_norm_relu};
pub use max_pool::max_pool_2x2;
pub use max_pool_window::max_pool2d;
pub use precomputed_loss::precomputed_loss;

use candle_core::{bail, CpuStorage, Layout, Result};

/// The f32 values of a contiguous operand; the ops' wrappers make their inputs contiguous.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("{what} is not contiguous"),
    }
}

/// Checks that an operand is contiguous from offset 0 with `len` values: the CUDA ops'
/// kernels and cuDNN calls take device buffers whole.
#[cfg(feature = "cuda")]
pub(crate) fn check_whole(l: &Layout, len: usize, what: &str) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 || l.shape().elem_count() != len {
        bail!("{what} must be contiguous from offset 0 with {len} values, got {l:?}");
    }
    Ok(())
}

/// The device buffer of an f32 operand that passes [`check_whole`].
#[cfg(feature = "cuda")]
pub(crate) fn contiguous_cuda_f32<'a>(
    s: &'a candle_core::CudaStorage,
    l: &Layout,
    len: usize,
    what: &str,
) -> Result<&'a candle_core::cuda::cudarc::driver::CudaSlice<f32>> {
    check_whole(l, len, what)?;
    s.as_cuda_slice::<f32>()
}

/// `cpu_fwd` of the ops that exist on CUDA only.
#[cfg(feature = "cudnn")]
fn cuda_only(name: &str) -> Result<(CpuStorage, candle_core::Shape)> {
    bail!("{name} runs on CUDA only")
}

/// ||a - b|| / ||b||, for the GPU ops' parity checks.
#[cfg(feature = "cudnn")]
fn relative_error(a: &candle_core::Tensor, b: &candle_core::Tensor) -> Result<f32> {
    let num = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let den = b.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok((num / den.max(f32::MIN_POSITIVE)).sqrt())
}

/// The gradient of `v` in `grads`, for the parity checks.
#[cfg(feature = "cudnn")]
fn gradient(
    grads: &candle_core::backprop::GradStore,
    v: &candle_core::Var,
) -> Result<candle_core::Tensor> {
    match grads.get(v) {
        Some(g) => Ok(g.clone()),
        None => bail!("no gradient reached the variable"),
    }
}

/// The four dimensions of an (n, c, h, w) operand.
fn dims4(l: &Layout, what: &str) -> Result<[usize; 4]> {
    match *l.dims() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref other => bail!("{what} must have 4 dimensions (n, c, h, w), got {other:?}"),
    }
}

/// Central finite difference of `loss` at `x` along entry `i`, for gradient tests.
#[cfg(test)]
pub(crate) fn central_difference(
    loss: impl Fn(&[f32]) -> f64,
    x: &[f32],
    i: usize,
    eps: f32,
) -> f64 {
    let (mut up, mut down) = (x.to_vec(), x.to_vec());
    up[i] += eps;
    down[i] -= eps;
    (loss(&up) - loss(&down)) / (2.0 * f64::from(eps))
}

/// As [`central_difference`], for a loss of an f64 matrix held as rows: the derivative by
/// element `(i, j)`, for the tests that check a gradient against a formula written by hand.
#[cfg(test)]
pub(crate) fn central_difference_rows(
    loss: impl Fn(&[Vec<f64>]) -> f64,
    x: &[Vec<f64>],
    (i, j): (usize, usize),
    h: f64,
) -> f64 {
    let (mut up, mut down) = (x.to_vec(), x.to_vec());
    up[i][j] += h;
    down[i][j] -= h;
    (loss(&up) - loss(&down)) / (2.0 * h)
}

/// Largest absolute difference between two tensors of one shape, for tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Largest absolute entry of a tensor, for tests' tolerances.
#[cfg(test)]
pub(crate) fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}
