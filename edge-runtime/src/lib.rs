//! edge-runtime: run the exported encoder on the board.
//!
//! - [`bundle`]: an exported model directory (manifest + ONNX files), checked on load.
//! - [`backend`]: inference backends behind one small `Runtime -> Runnable` trait.

pub mod backend;
pub mod bundle;
mod error;

pub use error::EdgeError;
