//! One frame: `COBS(version | seq | postcard(message) | crc32_le) 0x00`.
//!
//! `seq` is a postcard varint u16; the CRC is CRC-32/ISO-HDLC (zlib's) over everything before
//! it. See `WIRE.md` for byte tables.

use crc::{Crc, CRC_32_ISO_HDLC};
use serde::{Deserialize, Serialize};

use super::{Message, WireError};

pub(crate) const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// The largest body (version, seq, message) any message encodes to, with margin.
pub const MAX_BODY: usize = 32;
/// Body + CRC, COBS-encoded, plus the 0x00 delimiter.
pub const MAX_FRAME: usize = MAX_BODY + 4 + (MAX_BODY + 4) / 254 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Envelope {
    pub version: u8,
    pub seq: u16,
    pub message: Message,
}

/// Encodes `envelope` into `out` (at least [`MAX_FRAME`] bytes); returns the frame, which
/// ends with the 0x00 delimiter.
pub fn encode<'a>(envelope: &Envelope, out: &'a mut [u8]) -> Result<&'a [u8], WireError> {
    let mut raw = [0u8; MAX_BODY + 4];
    let body = postcard::to_slice(envelope, &mut raw[..MAX_BODY])
        .map_err(|_| WireError::TooLong)?
        .len();
    let crc = CRC32.checksum(&raw[..body]);
    raw[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    let n = cobs::try_encode(&raw[..body + 4], out).map_err(|_| WireError::BufferTooSmall)?;
    if n >= out.len() {
        return Err(WireError::BufferTooSmall);
    }
    out[n] = 0;
    Ok(&out[..=n])
}

/// Decodes one frame's COBS bytes (without the delimiter), in place.
pub fn decode(cobs_bytes: &mut [u8]) -> Result<Envelope, WireError> {
    let n = cobs::decode_in_place(cobs_bytes).map_err(|_| WireError::Cobs)?;
    if n < 5 {
        return Err(WireError::TooShort);
    }
    let (body, crc) = cobs_bytes[..n].split_at(n - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC32.checksum(body) != want {
        return Err(WireError::Crc);
    }
    let (env, rest): (Envelope, _) =
        postcard::take_from_bytes(body).map_err(|_| WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::Decode);
    }
    Ok(env)
}

/// Encodes one envelope and writes the whole frame to `io` (every sender goes through here).
pub fn write_frame<W: embedded_io::Write>(
    io: &mut W,
    envelope: &Envelope,
) -> Result<(), FrameWriteError<W::Error>> {
    let mut buf = [0u8; MAX_FRAME];
    let frame = encode(envelope, &mut buf).map_err(FrameWriteError::Wire)?;
    io.write_all(frame).map_err(FrameWriteError::Io)?;
    io.flush().map_err(FrameWriteError::Io)
}

/// Why [`write_frame`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameWriteError<E> {
    Io(E),
    Wire(WireError),
}

impl<E: core::fmt::Debug> core::fmt::Display for FrameWriteError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameWriteError::Io(e) => write!(f, "writing a frame: {e:?}"),
            FrameWriteError::Wire(e) => write!(f, "encoding a frame: {e}"),
        }
    }
}

impl<E: core::fmt::Debug + core::error::Error + 'static> core::error::Error for FrameWriteError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            FrameWriteError::Io(e) => Some(e),
            FrameWriteError::Wire(e) => Some(e),
        }
    }
}
