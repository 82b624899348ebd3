//! A streaming frame decoder, in the manner of postcard's `CobsAccumulator`: feed it bytes as
//! they arrive; it yields envelopes and errors, and resynchronises at the next 0x00 after
//! garbage, an overflow or a bad frame.

use super::frame::{decode, Envelope, MAX_FRAME};
use super::WireError;

#[derive(Debug)]
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME],
    len: usize,
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
            buf: [0; MAX_FRAME],
            len: 0,
            overflowed: false,
        }
    }

    /// Drops any partial frame (after a link reset).
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Takes one byte; returns a result when it completed a frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Envelope, WireError>> {
        if byte != 0 {
            if self.len == self.buf.len() {
                self.overflowed = true;
                self.len = 0;
            }
            if !self.overflowed {
                self.buf[self.len] = byte;
                self.len += 1;
            }
            return None;
        }
        let (len, overflowed) = (self.len, self.overflowed);
        self.reset();
        if overflowed {
            return Some(Err(WireError::TooLong));
        }
        if len == 0 {
            // Back-to-back delimiters: a sender may start with one to flush the line.
            return None;
        }
        Some(decode(&mut self.buf[..len]))
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
