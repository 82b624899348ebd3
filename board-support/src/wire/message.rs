//! The messages of the link. Variant order is the wire tag (postcard varint): append only.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; `Hello` negotiates a common one.
pub const PROTOCOL_VERSION: u8 = 1;

/// Who sends a `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Role {
    Board,
    Mcu,
}

/// Commands from the MCU (a button, a host tool) to the board's clustering.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Command {
    /// Publish a memory-bank snapshot now.
    Snapshot,
    /// Forget the clusters (ids keep counting up).
    ResetClusters,
    /// Distance / radius above which a frame is novel.
    SetNoveltyThreshold(f32),
    /// Drop what on-device adaptation learned and return to the shipped model.
    ResetAdaptation,
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NackCode {
    UnsupportedVersion,
    /// The receiver cannot take it now (no handshake yet, queue full).
    Busy,
    InvalidArgument,
    Unsupported,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Message {
    /// Opens (or re-opens, after a reset) a session: the sender's range of versions. Answered
    /// by `Welcome` (or `Nack { UnsupportedVersion }`).
    Hello {
        role: Role,
        min_version: u8,
        max_version: u8,
    },
    /// Board -> MCU: fire the camera now (the board's own capture schedule).
    CaptureTrigger {
        frame_id: u32,
        exposure_us: u32,
    },
    /// MCU -> board: the camera finished exposing frame `frame_id` (its frame-sync edge); the
    /// board reads it and answers, in the end, with a `ClusterEvent`.
    FrameReady {
        frame_id: u32,
    },
    /// Board -> MCU: where the frame went.
    ClusterEvent {
        frame_id: u32,
        cluster_id: u32,
        distance: f32,
        novel: bool,
    },
    /// Either way: health. Temperature in hundredths of a degree, bank fill in thousandths.
    Status {
        uptime_ms: u32,
        temperature_centi_c: i16,
        bank_fill_permille: u16,
    },
    Command(Command),
    /// The message with sequence number `seq` was taken.
    Ack {
        seq: u16,
    },
    Nack {
        seq: u16,
        code: NackCode,
    },
    /// The answer to a `Hello`: the version both sides speak from now on. A separate message
    /// (not a `Hello` back) so that two sides greeting at once cannot answer each other forever.
    Welcome {
        role: Role,
        version: u8,
    },
}

impl Message {
    /// Messages the receiver must acknowledge (the sender retries until it does).
    pub fn needs_ack(&self) -> bool {
        matches!(
            self,
            Message::ClusterEvent { .. }
                | Message::Command(_)
                | Message::CaptureTrigger { .. }
                | Message::FrameReady { .. }
        )
    }
}
