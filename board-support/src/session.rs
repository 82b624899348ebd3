//! A reliable session over the link, sans-IO: both ends (the MCU firmware and the Linux board)
//! run this same state machine. Bytes go in through [`Session::push`], frames go out through
//! any embedded-io `Write`, and time is a `u32` millisecond clock the caller passes in, so it
//! runs the same on a microcontroller, on the board and in the simulations.
//!
//! - Handshake: `Hello` (the sender's version range) is answered by `Welcome` (the version both
//!   now speak). A `Hello` from a peer that was already connected means the peer restarted.
//! - Messages that [`Message::needs_ack`] wait in a bounded outbox and are resent with the same
//!   sequence number every `retry_ms` until an `Ack` or a `Nack` names them. The receiver acks
//!   every copy but hands only the first one to the application (a window of recent sequence
//!   numbers): delivery is at least once, and in practice once.

use embedded_io::Write;
use heapless::Deque;

use crate::wire::{
    negotiate, write_frame, Command, Envelope, FrameDecoder, FrameWriteError, Message, NackCode,
    Role, WireError, PROTOCOL_VERSION,
};

/// How many recently delivered sequence numbers the receiver remembers to drop duplicates.
const SEEN_WINDOW: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SessionConfig {
    /// Resend an unacknowledged message (or an unanswered `Hello`) after this long.
    pub retry_ms: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        // A 38-byte frame takes 3.3 ms at 115200 baud; 100 ms leaves room for the peer's work.
        Self { retry_ms: 100 }
    }
}

/// What a received frame meant.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SessionEvent {
    /// The handshake finished. `peer_restarted`: this side was connected and the peer greeted
    /// again (it reset); its unacknowledged messages will be resent by it, ours by us.
    Connected {
        version: u8,
        peer: Role,
        peer_restarted: bool,
    },
    /// A message from the peer, handed over once (already acknowledged if it needed it).
    Received { seq: u16, message: Message },
    /// The peer acknowledged a message of ours.
    Delivered { seq: u16, message: Message },
    /// The peer refused a message of ours; it will not be resent.
    Refused {
        seq: u16,
        message: Message,
        code: NackCode,
    },
    /// A damaged frame (noise); the decoder has resynchronised.
    Damaged(WireError),
}

/// Why the session could not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SessionError<E> {
    Io(E),
    Wire(WireError),
    /// Every outbox slot waits for an ack; poll and retry later.
    OutboxFull,
}

impl<E: core::fmt::Debug> core::fmt::Display for SessionError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionError::Io(e) => write!(f, "link I/O: {e:?}"),
            SessionError::Wire(e) => write!(f, "link framing: {e}"),
            SessionError::OutboxFull => f.write_str("every outbox slot waits for an ack"),
        }
    }
}

impl<E: core::fmt::Debug + core::error::Error + 'static> core::error::Error for SessionError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            SessionError::Io(e) => Some(e),
            SessionError::Wire(e) => Some(e),
            SessionError::OutboxFull => None,
        }
    }
}

impl<E> From<FrameWriteError<E>> for SessionError<E> {
    fn from(e: FrameWriteError<E>) -> Self {
        match e {
            FrameWriteError::Io(e) => SessionError::Io(e),
            FrameWriteError::Wire(e) => SessionError::Wire(e),
        }
    }
}

/// Counters for logs, status pages and the noise tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SessionStats {
    pub frames_sent: u32,
    pub retransmits: u32,
    pub damaged: u32,
    pub duplicates: u32,
    pub delivered: u32,
    pub handshakes: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u16,
    message: Message,
    sent_ms: u32,
}

/// One end of the link; `N` is how many acked messages may be in flight at once.
#[derive(Debug)]
pub struct Session<const N: usize> {
    role: Role,
    config: SessionConfig,
    decoder: FrameDecoder,
    /// The negotiated version, once connected.
    version: Option<u8>,
    /// When our `Hello` went out, while it waits for a `Welcome`.
    hello_sent_ms: Option<u32>,
    next_seq: u16,
    outbox: Deque<Pending, N>,
    seen: Deque<u16, SEEN_WINDOW>,
    stats: SessionStats,
}

impl<const N: usize> Session<N> {
    pub const fn new(role: Role, config: SessionConfig) -> Self {
        Self {
            role,
            config,
            decoder: FrameDecoder::new(),
            version: None,
            hello_sent_ms: None,
            next_seq: 0,
            outbox: Deque::new(),
            seen: Deque::new(),
            stats: SessionStats {
                frames_sent: 0,
                retransmits: 0,
                damaged: 0,
                duplicates: 0,
                delivered: 0,
                handshakes: 0,
            },
        }
    }

    pub fn is_connected(&self) -> bool {
        self.version.is_some()
    }

    pub fn version(&self) -> Option<u8> {
        self.version
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Acked messages sent (or queued before the handshake) and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.outbox.len()
    }

    pub fn has_room(&self) -> bool {
        !self.outbox.is_full()
    }

    /// (Re)starts the handshake: sends `Hello` and resends it every `retry_ms` until a
    /// `Welcome` comes. Queued messages stay queued and go out once connected.
    pub fn connect<W: Write>(
        &mut self,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<(), SessionError<W::Error>> {
        self.version = None;
        self.decoder.reset();
        self.send_hello(now_ms, tx)
    }

    /// Sends `message`. One that needs an ack is queued until acknowledged (and only goes out
    /// after the handshake); the others are sent once, best effort, if connected.
    pub fn send<W: Write>(
        &mut self,
        message: Message,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<u16, SessionError<W::Error>> {
        if message.needs_ack() && self.outbox.is_full() {
            return Err(SessionError::OutboxFull);
        }
        let seq = self.take_seq();
        if message.needs_ack() {
            let pending = Pending {
                seq,
                message,
                sent_ms: now_ms,
            };
            // Cannot fail: checked above.
            let _ = self.outbox.push_back(pending);
        }
        if let Some(version) = self.version {
            self.write(version, seq, message, tx)?;
        }
        Ok(seq)
    }

    /// Takes one received byte; returns what it completed, if anything. Acks and handshake
    /// answers are written to `tx` on the way.
    pub fn push<W: Write>(
        &mut self,
        byte: u8,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<Option<SessionEvent>, SessionError<W::Error>> {
        match self.decoder.push(byte) {
            None => Ok(None),
            Some(Err(e)) => {
                self.stats.damaged = self.stats.damaged.wrapping_add(1);
                debug!("damaged frame: {:?}", e);
                Ok(Some(SessionEvent::Damaged(e)))
            }
            Some(Ok(envelope)) => self.handle(envelope, now_ms, tx),
        }
    }

    /// Resends what is due: an unanswered `Hello`, unacknowledged messages.
    pub fn poll<W: Write>(
        &mut self,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<(), SessionError<W::Error>> {
        let retry_ms = self.config.retry_ms;
        let due = |sent: u32| now_ms.wrapping_sub(sent) >= retry_ms;
        if let Some(sent) = self.hello_sent_ms {
            if due(sent) {
                self.send_hello(now_ms, tx)?;
            }
        }
        let Some(version) = self.version else {
            return Ok(());
        };
        for i in 0..self.outbox.len() {
            let Some(p) = self.outbox.iter().nth(i).copied() else {
                break;
            };
            if due(p.sent_ms) {
                self.write(version, p.seq, p.message, tx)?;
                self.stats.retransmits = self.stats.retransmits.wrapping_add(1);
                if let Some(slot) = self.outbox.iter_mut().nth(i) {
                    slot.sent_ms = now_ms;
                }
            }
        }
        Ok(())
    }

    fn handle<W: Write>(
        &mut self,
        env: Envelope,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<Option<SessionEvent>, SessionError<W::Error>> {
        let Envelope {
            version,
            seq,
            message,
        } = env;
        match message {
            Message::Hello {
                role,
                min_version,
                max_version,
            } => {
                let Some(v) = negotiate(min_version, max_version) else {
                    warn!(
                        "peer speaks versions {}..={}, we speak {}",
                        min_version, max_version, PROTOCOL_VERSION
                    );
                    self.write(
                        PROTOCOL_VERSION,
                        self.next_seq,
                        Message::Nack {
                            seq,
                            code: NackCode::UnsupportedVersion,
                        },
                        tx,
                    )?;
                    return Ok(None);
                };
                let restarted = self.version.is_some() && self.hello_sent_ms.is_none();
                // The peer numbers its frames from 0 again.
                self.seen.clear();
                let seq_out = self.take_seq();
                self.write(
                    v,
                    seq_out,
                    Message::Welcome {
                        role: self.role,
                        version: v,
                    },
                    tx,
                )?;
                Ok(Some(self.connected(v, role, restarted, now_ms, tx)?))
            }
            Message::Welcome { role, version: v } => {
                if self.hello_sent_ms.is_none() || v == 0 || v > PROTOCOL_VERSION {
                    return Ok(None); // A stale or foreign answer.
                }
                Ok(Some(self.connected(v, role, false, now_ms, tx)?))
            }
            _ if self.version != Some(version) => {
                if message.needs_ack() {
                    let code = if self.version.is_none() {
                        NackCode::Busy
                    } else {
                        NackCode::UnsupportedVersion
                    };
                    self.reply(seq, Err(code), tx)?;
                }
                Ok(None)
            }
            Message::Ack { seq: acked } => Ok(self.settle(acked).map(|message| {
                self.stats.delivered = self.stats.delivered.wrapping_add(1);
                SessionEvent::Delivered {
                    seq: acked,
                    message,
                }
            })),
            Message::Nack {
                code: NackCode::Busy,
                ..
            } => Ok(None), // Resent on the next poll.
            Message::Nack { seq: refused, code } => {
                Ok(self.settle(refused).map(|message| SessionEvent::Refused {
                    seq: refused,
                    message,
                    code,
                }))
            }
            m if m.needs_ack() => {
                if let Message::Command(Command::SetNoveltyThreshold(t)) = m {
                    if !(t.is_finite() && t > 0.0) {
                        self.reply(seq, Err(NackCode::InvalidArgument), tx)?;
                        return Ok(None);
                    }
                }
                self.reply(seq, Ok(()), tx)?;
                if self.seen.iter().any(|&s| s == seq) {
                    self.stats.duplicates = self.stats.duplicates.wrapping_add(1);
                    return Ok(None);
                }
                if self.seen.is_full() {
                    self.seen.pop_front();
                }
                let _ = self.seen.push_back(seq);
                Ok(Some(SessionEvent::Received { seq, message: m }))
            }
            m => Ok(Some(SessionEvent::Received { seq, message: m })),
        }
    }

    /// Marks the handshake done and sends everything that waited for it.
    fn connected<W: Write>(
        &mut self,
        version: u8,
        peer: Role,
        peer_restarted: bool,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<SessionEvent, SessionError<W::Error>> {
        self.version = Some(version);
        self.hello_sent_ms = None;
        self.stats.handshakes = self.stats.handshakes.wrapping_add(1);
        info!(
            "link up: version {}, peer {:?}, peer restarted: {}",
            version, peer, peer_restarted
        );
        for i in 0..self.outbox.len() {
            if let Some(p) = self.outbox.iter_mut().nth(i) {
                p.sent_ms = now_ms;
                let (seq, message) = (p.seq, p.message);
                self.write(version, seq, message, tx)?;
            }
        }
        Ok(SessionEvent::Connected {
            version,
            peer,
            peer_restarted,
        })
    }

    /// Removes `seq` from the outbox, keeping the others' order; returns its message.
    fn settle(&mut self, seq: u16) -> Option<Message> {
        let mut found = None;
        for _ in 0..self.outbox.len() {
            let p = self.outbox.pop_front()?;
            if p.seq == seq && found.is_none() {
                found = Some(p.message);
            } else {
                // Cannot fail: one slot was just freed.
                let _ = self.outbox.push_back(p);
            }
        }
        found
    }

    fn reply<W: Write>(
        &mut self,
        seq: u16,
        outcome: Result<(), NackCode>,
        tx: &mut W,
    ) -> Result<(), SessionError<W::Error>> {
        let message = match outcome {
            Ok(()) => Message::Ack { seq },
            Err(code) => Message::Nack { seq, code },
        };
        let out = self.take_seq();
        self.write(self.version.unwrap_or(PROTOCOL_VERSION), out, message, tx)
    }

    fn send_hello<W: Write>(
        &mut self,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<(), SessionError<W::Error>> {
        self.hello_sent_ms = Some(now_ms);
        let seq = self.take_seq();
        let hello = Message::Hello {
            role: self.role,
            min_version: 1,
            max_version: PROTOCOL_VERSION,
        };
        self.write(PROTOCOL_VERSION, seq, hello, tx)
    }

    fn write<W: Write>(
        &mut self,
        version: u8,
        seq: u16,
        message: Message,
        tx: &mut W,
    ) -> Result<(), SessionError<W::Error>> {
        self.stats.frames_sent = self.stats.frames_sent.wrapping_add(1);
        write_frame(
            tx,
            &Envelope {
                version,
                seq,
                message,
            },
        )
        .map_err(SessionError::from)
    }

    fn take_seq(&mut self) -> u16 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }
}

#[cfg(test)]
mod tests;
