//! The adapter's file beside the bank (`BANK/adapter.bin`): one framed postcard record
//! (`[len][crc32][payload]`, as the bank's snapshots), published by temporary file, fsync,
//! rename and directory fsync, so a crash mid-save leaves the previous adapter whole.
//!
//! The record names the model it was trained on (the SHA-256 of the model file); it is
//! refused for any other model. `reset` moves it aside (`adapter.bin.reset-<unix ms>`), which
//! returns the board to the shipped model without deleting what was learned.

use std::path::{Path, PathBuf};

use models::adapt::deblock::DeblockEstimate;
use models::adapt::roll::RollEstimate;
use models::adapt::smoothing::SmoothingEstimate;
use models::adapt::{AdapterExport, InputStats, LinearAdapter, Recentring};
use serde::{Deserialize, Serialize};

use crate::bank::{log, publish_record};
use crate::error::AdapterProblem;
use crate::EdgeError;

/// The adapter file's name inside the bank directory.
pub const ADAPTER_FILE: &str = "adapter.bin";

/// Bumped when the record changes meaning; other versions are refused.
pub const ADAPTER_FORMAT: u32 = 5;

/// What is persisted: the trained layer and the running statistics it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    pub format: u32,
    /// SHA-256 of the model file whose embeddings it adapts.
    pub model_sha256: String,
    /// Accepted updates so far.
    pub updates: u64,
    /// Frames adapted so far.
    pub frames: u64,
    pub linear: LinearAdapter,
    pub recentring: Option<Recentring>,
    /// The input's running statistics (`AdaptConfig::input`).
    pub input: Option<InputStats>,
    /// The camera roll the device found and undoes (`None` until searched).
    pub roll: Option<RollEstimate>,
    /// The input smoothing the device found and applies (`None` until searched).
    pub smoothing: Option<SmoothingEstimate>,
    /// The frames' blockiness the device measured, and the grid it deblocks (`None` until
    /// searched).
    pub deblock: Option<DeblockEstimate>,
}

impl AdapterRecord {
    /// Bytes the adapter holds in memory: the layer and the statistics.
    pub fn memory_bytes(&self) -> usize {
        let stats = match &self.recentring {
            None => 0,
            Some(Recentring::Diagonal(a)) => a.dim() * 8 * 4,
            // Running covariance, the training square root (f64) and the map (f32).
            Some(Recentring::Full(a)) => a.dim() * a.dim() * (8 + 8 + 4) + a.dim() * 8 * 3,
        };
        let input = self.input.as_ref().map_or(0, |s| s.channels() * 8 * 2);
        self.linear.bytes() + stats + input
    }
}

pub fn path(bank_dir: &Path) -> PathBuf {
    bank_dir.join(ADAPTER_FILE)
}

/// Writes `record` crash-safely.
pub fn save(bank_dir: &Path, record: &AdapterRecord) -> Result<(), EdgeError> {
    publish_record(&path(bank_dir), record)
}

/// The stored adapter for the model `model_sha256`, or `None` when there is none. A damaged
/// file, another format or another model is an error naming the file.
pub fn load(bank_dir: &Path, model_sha256: &str) -> Result<Option<AdapterRecord>, EdgeError> {
    let Some(record) = read(bank_dir)? else {
        return Ok(None);
    };
    if record.model_sha256 != model_sha256 {
        return Err(adapter_error(
            bank_dir,
            AdapterProblem::OtherModel {
                stored: short(&record.model_sha256),
                given: short(model_sha256),
            },
        ));
    }
    Ok(Some(record))
}

/// The stored adapter, whatever model it belongs to.
pub fn read(bank_dir: &Path) -> Result<Option<AdapterRecord>, EdgeError> {
    let file = path(bank_dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EdgeError::Io {
                path: file,
                source: e,
            })
        }
    };
    let (mut records, _, stop) = log::read_records::<AdapterRecord>(&bytes);
    match (records.pop(), stop) {
        (Some(r), None) if r.format == ADAPTER_FORMAT => Ok(Some(r)),
        (Some(r), None) => Err(adapter_error(
            bank_dir,
            AdapterProblem::Format {
                found: r.format,
                expected: ADAPTER_FORMAT,
            },
        )),
        // A record of another format may not parse as this one: its leading format number
        // still says which it is.
        _ => match log::read_records::<FormatOnly>(&bytes) {
            (found, _, None) if found.last().is_some_and(|f| f.format != ADAPTER_FORMAT) => {
                Err(adapter_error(
                    bank_dir,
                    AdapterProblem::Format {
                        found: found.last().map_or(0, |f| f.format),
                        expected: ADAPTER_FORMAT,
                    },
                ))
            }
            _ => Err(adapter_error(bank_dir, AdapterProblem::Damaged)),
        },
    }
}

/// The first field of any format's record.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// Moves the adapter aside; returns where it went (`None` when there was none).
pub fn reset(bank_dir: &Path) -> Result<Option<PathBuf>, EdgeError> {
    let file = path(bank_dir);
    if !file.exists() {
        return Ok(None);
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = bank_dir.join(format!("{ADAPTER_FILE}.reset-{ms}"));
    std::fs::rename(&file, &aside).map_err(|e| EdgeError::Io {
        path: file.clone(),
        source: e,
    })?;
    Ok(Some(aside))
}

fn short(sha: &str) -> String {
    sha.get(..12).unwrap_or(sha).to_string()
}

fn adapter_error(bank_dir: &Path, problem: AdapterProblem) -> EdgeError {
    EdgeError::Adapter {
        path: path(bank_dir),
        problem,
    }
}

impl AdapterRecord {
    /// The adapter as the host reads it (`edge-runtime adapt export`).
    pub fn export(&self) -> AdapterExport {
        AdapterExport {
            roll_degrees: self.roll.as_ref().map_or(0.0, |r| r.degrees),
            smoothing_sigma: self.smoothing.as_ref().map_or(0.0, |s| s.sigma),
            deblock_block: self.deblock.as_ref().map_or(0, |d| d.block),
            ..AdapterExport::compose(
                ADAPTER_FORMAT,
                &self.model_sha256,
                self.updates,
                self.frames,
                &self.linear,
                self.recentring.as_ref(),
                self.input.as_ref(),
            )
        }
    }
}
