//! A streaming frame decoder, in the manner of postcard's `CobsAccumulator`: feed it bytes as
//! they arrive; it yields envelopes and errors, and resynchronises at the next 0x00 after
//! garbage, an overflow or a bad frame.

use super::frame::{decode, Envelope, MAX_FRAME};
use super::WireError;

#[derive(Debug)]
pub struct FrameDecoder {
    buf: heapless::Vec<u8, MAX_FRAME>,
    /// Skipping an over-long frame until its delimiter.
    overflowed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            overflowed: false,
        }
    }

    /// Drops any partial frame (after a link reset).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overflowed = false;
    }

    /// Takes one byte; returns a result when it completed a frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Envelope, WireError>> {
        if byte != 0 {
            if !self.overflowed && self.buf.push(byte).is_err() {
                self.overflowed = true;
                self.buf.clear();
            }
            return None;
        }
        if self.overflowed {
            self.reset();
            return Some(Err(WireError::TooLong));
        }
        if self.buf.is_empty() {
            // Back-to-back delimiters: a sender may start with one to flush the line.
            return None;
        }
        let result = decode(&mut self.buf);
        self.reset();
        Some(result)
    }

    /// Feeds `bytes`, calling `on_frame` for every completed frame.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<Envelope, WireError>)) {
        for &b in bytes {
            if let Some(r) = self.push(b) {
                on_frame(r);
            }
        }
    }
}
