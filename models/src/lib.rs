//! The shared core of deepcluster-edge, written once and used by `host-train` on the GPU host
//! and by `edge-runtime` on the board.
//!
//! - [`adapt`]: forward-only statistics adaptation of embeddings to a drifting camera.
//! - [`chart`]: line charts drawn into images (training curves, cluster sizes).
//! - [`cluster`]: batch k-means (with a pluggable assignment step) and its parameters.
//! - [`linalg`]: PCA-whitening and L2 normalisation.
//! - [`metrics`]: NMI, ARI, purity, clustering accuracy and weighted kNN.
//! - [`data`]: Fashion-MNIST IDX files and folders of JPEG/PNG images.
//! - [`preprocess`], [`manifest`], [`quant`]: what an exported encoder expects, and its int8
//!   maths.
//!
//! Without the `std` feature the crate is `no_std + alloc`: the label metrics and the
//! random number generator stay available, the batch algorithms do not.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod adapt;
#[cfg(feature = "image")]
pub mod chart;
pub mod cluster;
#[cfg(feature = "std")]
pub mod data;
pub mod geometry;
#[cfg(feature = "std")]
pub mod linalg;
pub mod manifest;
pub mod matrix;
pub mod metrics;
pub mod preprocess;
pub mod quant;
pub mod rng;

pub use matrix::{MatRef, ShapeError};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
