//! edge-runtime: run the exported encoder on the board.
//!
//! - [`adapt`]: on-device adaptation of the embedding to the scene (statistics, a trained
//!   layer), persisted beside the bank.
//! - [`bundle`]: an exported model directory (manifest + ONNX files), checked on load.
//! - [`bank`]: the bounded, crash-safe on-device memory bank.
//! - [`camera`]: live frames from V4L2 cameras (capture behind the `v4l2` feature).
//! - [`backend`]: inference backends behind one small `Runtime -> Runnable` trait.
//! - [`link`]: the serial link to the microcontroller companion (board-support's protocol).
//! - [`pipeline`]: frames -> embeddings -> online clusters -> bank and events.
//! - [`preprocess`]: manifest-driven preprocessing shared by every backend.
//! - [`rebind`]: a bank's stored thumbnails embedded again by another model.
//! - [`report`]: a static HTML page of a bank's clusters and novel frames.

pub mod adapt;
pub mod backend;
pub mod bank;
pub mod bundle;
pub mod camera;
mod error;
pub mod link;
pub mod memory;
pub mod npy;
pub mod pipeline;
pub mod preprocess;
pub mod rebind;
pub mod report;

pub use error::{AdapterProblem, BankProblem, EdgeError, LibraryError};
