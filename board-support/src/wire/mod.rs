//! The wire protocol between the Linux board and the microcontroller; `WIRE.md` is its spec.

mod decoder;
mod frame;
mod message;

pub use decoder::FrameDecoder;
pub use frame::{decode, encode, write_frame, Envelope, FrameWriteError, MAX_BODY, MAX_FRAME};
pub use message::{Command, Message, NackCode, Role, PROTOCOL_VERSION};

/// Why a frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WireError {
    /// Not valid COBS.
    Cobs,
    /// Fewer bytes than a version, a sequence number and a CRC.
    TooShort,
    /// Longer than any message (or a frame overran the decoder's buffer).
    TooLong,
    /// The CRC does not match: noise on the line.
    Crc,
    /// The CRC matched but the bytes are not a message of this version.
    Decode,
    /// The output buffer cannot hold the frame.
    BufferTooSmall,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            WireError::Cobs => "invalid COBS framing",
            WireError::TooShort => "frame too short",
            WireError::TooLong => "frame too long",
            WireError::Crc => "CRC mismatch",
            WireError::Decode => "not a valid message",
            WireError::BufferTooSmall => "output buffer too small",
        })
    }
}

impl core::error::Error for WireError {}

/// The highest version both sides speak, from a peer's `Hello` range.
pub fn negotiate(peer_min: u8, peer_max: u8) -> Option<u8> {
    let v = peer_max.min(PROTOCOL_VERSION);
    (v >= peer_min && v >= 1).then_some(v)
}

#[cfg(test)]
mod tests;
