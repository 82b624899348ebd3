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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CaptureMeta {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The camera, folder or file the frame came from.
    pub source: String,
    pub frame_id: u64,
    /// What the runtime saw of the frame; `None` in entries stored without it.
    pub detail: Option<FrameDetail>,
}

/// A stored frame's picture and how it fitted the clusters when it arrived, for reports.
/// Kept inside the entry, so a thumbnail is written, recovered and evicted with its entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FrameDetail {
    /// `None` when thumbnails are off (`--thumb-size 0`).
    pub thumbnail: Option<Thumbnail>,
    /// Distance to the cluster the frame was assigned to.
    pub distance: f32,
    /// The novelty score of the online clustering, and whether it marked the frame novel.
    pub novelty: f32,
    pub novel: bool,
}

/// A small picture of a frame: planar u8, `channels` (1 or 3) planes of `height x width`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub channels: u8,
    pub height: u16,
    pub width: u16,
    pub pixels: Vec<u8>,
}

impl Thumbnail {
    /// A thumbnail of a planar `channels x height x width` frame whose longer side is at most
    /// `max_side` pixels (box-averaged down; never enlarged). `None` when the shape does not
    /// match the pixels or `max_side` is 0.
    pub fn of_frame(
        pixels: &[u8],
        channels: usize,
        height: usize,
        width: usize,
        max_side: usize,
    ) -> Option<Self> {
        let plane = height * width;
        if max_side == 0 || plane == 0 || pixels.len() != channels * plane {
            return None;
        }
        let step = height.max(width).div_ceil(max_side);
        let (h, w) = (height.div_ceil(step), width.div_ceil(step));
        let mut out = Vec::with_capacity(channels * h * w);
        for src in pixels.chunks(plane) {
            for ty in 0..h {
                for tx in 0..w {
                    let ys = ty * step..((ty + 1) * step).min(height);
                    let xs = tx * step..((tx + 1) * step).min(width);
                    let n = ys.len() * xs.len();
                    let sum: usize = ys
                        .flat_map(|y| xs.clone().map(move |x| src[y * width + x] as usize))
                        .sum();
                    out.push(((sum + n / 2) / n) as u8);
                }
            }
        }
        Some(Self {
            channels: channels as u8,
            height: h as u16,
            width: w as u16,
            pixels: out,
        })
    }

    /// Interleaved RGB (gray repeated), for writing as an image; `None` when the pixels do not
    /// fill `channels` (1 or 3) planes of the stated size.
    pub fn to_rgb(&self) -> Option<Vec<u8>> {
        let plane = self.height as usize * self.width as usize;
        let channels = self.channels as usize;
        if !matches!(channels, 1 | 3) || self.pixels.len() != channels * plane {
            return None;
        }
        let c = |ch: usize, i: usize| self.pixels[ch.min(channels - 1) * plane + i];
        Some(
            (0..plane)
                .flat_map(|i| [c(0, i), c(1, i), c(2, i)])
                .collect(),
        )
    }

    /// As an RGB image; `None` when the pixels do not fit the stated shape.
    pub fn to_image(&self) -> Option<image::RgbImage> {
        image::RgbImage::from_raw(self.width as u32, self.height as u32, self.to_rgb()?)
    }
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
            + self
                .meta
                .detail
                .as_ref()
                .and_then(|d| d.thumbnail.as_ref())
                .map_or(0, |t| t.pixels.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thumbnail_box_averages_down_and_never_enlarges() {
        // 2 planes of 4x4: plane 0 counts 0..16, plane 1 is flat 200.
        let mut px: Vec<u8> = (0..16).collect();
        px.extend([200; 16]);
        let t = Thumbnail::of_frame(&px, 2, 4, 4, 2).unwrap();
        assert_eq!((t.channels, t.height, t.width), (2, 2, 2));
        // Top-left 2x2 block of plane 0: 0, 1, 4, 5 -> 2.5, rounded to 3.
        assert_eq!(t.pixels, vec![3, 5, 11, 13, 200, 200, 200, 200]);
        let same = Thumbnail::of_frame(&px, 2, 4, 4, 64).unwrap();
        assert_eq!((same.height, same.width), (4, 4));
        assert_eq!(same.pixels, px);
        assert!(Thumbnail::of_frame(&px, 3, 4, 4, 2).is_none());
        assert!(Thumbnail::of_frame(&px, 2, 4, 4, 0).is_none());
    }

    #[test]
    fn gray_thumbnails_become_rgb_by_repeating_the_plane() {
        let t = Thumbnail::of_frame(&[10, 20], 1, 1, 2, 8).unwrap();
        assert_eq!(t.to_rgb().unwrap(), vec![10, 10, 10, 20, 20, 20]);
        let short = Thumbnail {
            pixels: vec![1],
            ..t
        };
        assert!(short.to_rgb().is_none());
    }
}
