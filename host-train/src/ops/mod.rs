//! Fast CPU kernels as candle custom ops, with their own backward passes.
//!
//! candle 0.11's CPU conv backward (`conv_transpose2d`) is a plain loop; these ops run
//! convolutions as im2col + blocked GEMM (the `gemm` crate, via `models::linalg`) and
//! spread the batch over rayon. On other devices the wrappers fall back to candle's ops, or,
//! with the `cudnn` feature, run convolutions and batch-norm through cuDNN.

mod batch_norm_relu;
mod conv2d;
mod cross_entropy;
#[cfg(feature = "cudnn")]
pub mod cudnn_batch_norm;
#[cfg(feature = "cudnn")]
pub mod cudnn_conv;
mod im2col;
mod max_pool;

pub use batch_norm_relu::{batch_norm_relu_train, BatchStats};
pub use conv2d::{conv2d, Conv2dGeometry};
pub use cross_entropy::cross_entropy;
pub use max_pool::max_pool_2x2;

use candle_core::{bail, CpuStorage, Layout, Result};

/// The f32 values of a contiguous operand; the ops' wrappers make their inputs contiguous.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => bail!("{what} is not contiguous"),
    }
}

/// Largest absolute difference between two tensors of one shape, for tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
