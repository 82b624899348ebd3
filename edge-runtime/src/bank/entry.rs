//! One memory-bank entry: an embedding in the chosen precision, where it came from, and its
//! cluster.

use serde::{Deserialize, Serialize};

/// How embeddings are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmbeddingFormat {
    F32,
    F16,
    /// Symmetric int8 with one scale per entry.
    #[default]
    I8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredEmbedding {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    I8 { scale: f32, codes: Vec<i8> },
}

impl StoredEmbedding {
    pub fn encode(x: &[f32], format: EmbeddingFormat) -> Self {
        match format {
            EmbeddingFormat::F32 => Self::F32(x.to_vec()),
            EmbeddingFormat::F16 => Self::F16(x.iter().map(|&v| half::f16::from_f32(v)).collect()),
            EmbeddingFormat::I8 => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = models::quant::symmetric_scale(amax);
                let codes = x
                    .iter()
                    .map(|&v| models::quant::quantize(v, scale))
                    .collect();
                Self::I8 { scale, codes }
            }
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::F16(v) => v.iter().map(|h| h.to_f32()).collect(),
            Self::I8 { scale, codes } => codes.iter().map(|&q| q as f32 * scale).collect(),
        }
    }

    /// Bytes of the values themselves.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::F16(v) => v.len() * 2,
            Self::I8 { codes, .. } => codes.len() + 4,
        }
    }
}

/// Where and when a frame was captured.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CaptureMeta {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The camera, folder or file the frame came from.
    pub source: String,
    pub frame_id: u64,
    pub thumbnail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankEntry {
    /// Insertion sequence number, unique for the bank's lifetime.
    pub seq: u64,
    pub embedding: StoredEmbedding,
    pub meta: CaptureMeta,
    pub cluster_id: u32,
}

impl BankEntry {
    /// What the entry costs in memory, counted against the bank's byte capacity.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.embedding.payload_bytes()
            + self.meta.source.len()
            + self.meta.thumbnail.as_ref().map_or(0, String::len)
    }
}
