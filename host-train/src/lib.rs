//! host-train: unsupervised pretraining of image encoders with candle.
//!
//! - [`ops`]: fast CPU convolution, pooling and batch-norm as candle custom ops with tested
//!   gradients.
//! - [`optim`]: SGD with momentum and weight decay, as PyTorch defines it.
//! - [`encoders`]: the networks, one file each, each with a `Config`.
//! - [`methods`]: DeepCluster, NPID, Local Aggregation and SwAV.
//! - [`cluster_head`]: a SCAN-style cluster head trained on a pretrained encoder.
//! - [`pretrain`]: the loop with run directory, checkpoints, resume and evaluation.

pub mod augment;
pub mod cluster_head;
#[cfg(feature = "cuda")]
mod cuda_kernels;
pub mod dataset;
pub mod device;
pub mod device_kmeans;
pub mod encoders;
mod error;
pub mod eval;
pub mod export;
pub mod features;
pub mod gallery;
pub mod graph;
pub mod malloc;
pub mod methods;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod pretrain;
mod progress;
pub mod run_dir;
pub mod scan_finetune;
pub mod seeded_init;

pub use error::TrainError;
