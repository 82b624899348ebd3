//! Fast CPU kernels as candle custom ops, with their own backward passes.
//!
//! candle 0.11's CPU conv backward (`conv_transpose2d`) is a plain loop; these ops run
//! convolutions as im2col + blocked GEMM (the `gemm` crate, via `models::linalg`) and
//! spread the batch over rayon. On other devices the wrappers fall back to candle's ops.

mod batch_norm_relu;
mod conv2d;
mod im2col;
mod max_pool;

pub use batch_norm_relu::{batch_norm_relu_train, BatchStats};
pub use conv2d::{conv2d, Conv2dGeometry};
pub use max_pool::max_pool_2x2;
