//! board-support: the microcontroller side of deepcluster-edge.
//!
//! - [`wire`]: the link protocol between the Linux board and the MCU (postcard messages, a
//!   version byte and sequence number, CRC-32, COBS framing), with a streaming decoder that
//!   recovers after garbage. The byte layout is written down in `WIRE.md`.
//! - [`session`]: the reliable layer both ends run: handshake, acks, resends, duplicates.
//! - [`drivers`]: camera trigger, status LED, frame-sync input and the link transport, generic
//!   over embedded-hal 1.0 and embedded-io.
//! - [`companion`]: the MCU application (triggers, cluster events on the LED), HAL-agnostic:
//!   the firmware example and the hardware-in-the-loop simulation run the same code.
//!
//! `no_std`, no allocator (buffers are `heapless`); `cargo check --target thumbv7em-none-eabihf`
//! is part of the tests. Logs go to `defmt` or `log`, by feature.
#![cfg_attr(not(test), no_std)]

#[macro_use]
mod fmt;

pub mod companion;
pub mod drivers;
pub mod session;
pub mod wire;

#[cfg(test)]
mod test_pipe;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
