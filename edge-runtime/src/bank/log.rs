//! The on-disk record format shared by segments and snapshots: `[len u32 LE][crc32 u32 LE]
//! [postcard payload]`. A reader stops at the first record that is short or fails its CRC.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::entry::BankEntry;

/// One change to the bank, appended to the current segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Add(BankEntry),
    Remove(u64),
    /// New cluster ids after re-clustering: (seq, cluster id).
    Relabel(Vec<(u64, u32)>),
    /// Online clustering state is outside the bank; this marks ids as used so they are never
    /// handed out again after a restart.
    NextClusterId(u32),
    /// Reservoir sampling passed over a frame (counts towards `seen`).
    Skip,
    /// At least this many frames were seen (a rebuilt bank carries its predecessor's count,
    /// so frame ids go on). Appended last: older records keep their encoding.
    SeenAtLeast(u64),
}

pub const HEADER: usize = 8;

pub fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = postcard::to_stdvec(value).expect("bank records serialise");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Why reading stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The bytes ended inside a record: a write torn by a crash.
    Truncated,
    /// A complete record failed its CRC or did not decode.
    Corrupt,
}

/// The records at the start of `bytes` that are whole and intact, the length they cover, and
/// why reading stopped early, if it did.
pub fn read_records<T: DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, usize, Option<Stop>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes.len() - pos < HEADER {
            return (out, pos, Some(Stop::Truncated));
        }
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        let end = pos + HEADER + len;
        if end > bytes.len() {
            return (out, pos, Some(Stop::Truncated));
        }
        let payload = &bytes[pos + HEADER..end];
        if crc32fast::hash(payload) != crc {
            return (out, pos, Some(Stop::Corrupt));
        }
        match postcard::from_bytes(payload) {
            Ok(v) => out.push(v),
            Err(_) => return (out, pos, Some(Stop::Corrupt)),
        }
        pos = end;
    }
    (out, pos, None)
}
