//! host-train: unsupervised pretraining of image encoders with candle.
//!
//! - [`ops`]: fast CPU convolution as candle custom ops with tested gradients.
//! - [`optim`]: SGD with momentum and weight decay, as PyTorch defines it.
//! - [`encoders`]: the networks, one file each, each with a `Config`.

pub mod encoders;
pub mod ops;
pub mod optim;
