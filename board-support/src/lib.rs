//! board-support: the microcontroller side of deepcluster-edge.
//!
//! - [`wire`]: the link protocol between the Linux board and the MCU (postcard messages, a
//!   version byte and sequence number, CRC-32, COBS framing), with a streaming decoder that
//!   recovers after garbage. The byte layout is written down in `WIRE.md`.
//! - [`drivers`]: camera trigger, status LED, frame-sync input and the link transport, generic
//!   over embedded-hal 1.0 and embedded-io.
//!
//! `no_std`, no allocator; `cargo check --target thumbv7em-none-eabihf` is part of the tests.
#![cfg_attr(not(test), no_std)]

pub mod drivers;
pub mod wire;
