//! The link transport over any embedded-io byte stream (a UART, USB-CDC, a pty in tests):
//! numbered, framed messages out; decoded envelopes in.

use embedded_io::{Read, Write};

use crate::wire::{
    write_frame, Envelope, FrameDecoder, FrameWriteError, Message, WireError, PROTOCOL_VERSION,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LinkError<E> {
    Io(E),
    Wire(WireError),
    /// The stream ended (read returned 0 bytes).
    Closed,
}

impl<E: core::fmt::Debug> core::fmt::Display for LinkError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "link I/O: {e:?}"),
            LinkError::Wire(e) => write!(f, "link framing: {e}"),
            LinkError::Closed => f.write_str("the link's stream ended"),
        }
    }
}

impl<E: core::fmt::Debug + core::error::Error + 'static> core::error::Error for LinkError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            LinkError::Io(e) => Some(e),
            LinkError::Wire(e) => Some(e),
            LinkError::Closed => None,
        }
    }
}

#[derive(Debug)]
pub struct Link<T> {
    io: T,
    decoder: FrameDecoder,
    next_seq: u16,
}

impl<T: Read + Write> Link<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            decoder: FrameDecoder::new(),
            next_seq: 0,
        }
    }

    /// Sends `message` with the next sequence number, which it returns (for matching acks).
    pub fn send(&mut self, message: Message) -> Result<u16, LinkError<T::Error>> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.send_with_seq(seq, message)?;
        Ok(seq)
    }

    /// Sends with a given sequence number (a retry keeps its number).
    pub fn send_with_seq(&mut self, seq: u16, message: Message) -> Result<(), LinkError<T::Error>> {
        let envelope = Envelope {
            version: PROTOCOL_VERSION,
            seq,
            message,
        };
        write_frame(&mut self.io, &envelope).map_err(|e| match e {
            FrameWriteError::Io(e) => LinkError::Io(e),
            FrameWriteError::Wire(e) => LinkError::Wire(e),
        })
    }

    /// Reads until one frame completes. A damaged frame is returned as `Wire` error; the
    /// decoder has already resynchronised, so the caller just reads again.
    pub fn receive(&mut self) -> Result<Envelope, LinkError<T::Error>> {
        let mut byte = [0u8; 1];
        loop {
            if self.io.read(&mut byte).map_err(LinkError::Io)? == 0 {
                return Err(LinkError::Closed);
            }
            if let Some(r) = self.decoder.push(byte[0]) {
                return r.map_err(LinkError::Wire);
            }
        }
    }

    /// Starts over after the peer (or this side) reset: sequence numbers from 0, no partial
    /// frame.
    pub fn reset(&mut self) {
        self.next_seq = 0;
        self.decoder.reset();
    }

    pub fn release(self) -> T {
        self.io
    }
}
