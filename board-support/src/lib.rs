//! board-support: the microcontroller side of deepcluster-edge.
//!
//! Only the skeleton exists so far (issue 6 adds the postcard wire protocol and the
//! embedded-hal drivers). It is `no_std` and needs no allocator, and the test command
//! checks that it builds for `thumbv7em-none-eabihf`.
#![cfg_attr(not(test), no_std)]
