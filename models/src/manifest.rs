//! The encoder manifest: everything the board needs to feed an exported model exactly as
//! training did, and to check that the model file is the one that was exported.
//!
//! Written by `host-train export` as JSON (for people) and postcard (for small devices);
//! both carry the same [`EncoderManifest`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::preprocess::PreprocessSpec;
use crate::quant::Calibrator;

/// Bumped when a field changes meaning; readers refuse other versions.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderManifest {
    pub version: u32,
    /// The architecture name, as `host-train --arch` spells it.
    pub arch: String,
    /// The run directory the weights came from.
    pub source_checkpoint: String,
    pub input: InputSpec,
    pub preprocess: PreprocessSpec,
    pub embedding: EmbeddingSpec,
    /// One entry per exported file (fp32, int8).
    pub models: Vec<ModelFile>,
    /// k-means centroids of the training set's L2-normalised embeddings, so the board starts
    /// with clusters.
    pub centroids: Option<Centroids>,
}

/// The network input tensor: f32, NCHW, batch dimension free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub layout: Layout,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    Nchw,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingSpec {
    pub name: String,
    pub dim: u32,
    /// The graph's output is the raw projection; consumers L2-normalise it when this is set
    /// (training compared embeddings by cosine).
    pub l2_normalize: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    Fp32,
    Int8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub precision: Precision,
    /// File name, relative to the manifest.
    pub file: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    pub quantization: Option<Quantization>,
}

/// QDQ int8: weights per output channel, activations per tensor, all symmetric (zero point 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub calibrator: Calibrator,
    pub calibration_images: u32,
    pub activations: Vec<TensorQuant>,
    pub weights: Vec<WeightQuant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorQuant {
    pub tensor: String,
    pub scale: f32,
    pub zero_point: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightQuant {
    pub tensor: String,
    pub axis: u32,
    pub scales: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Centroids {
    pub k: u32,
    pub dim: u32,
    /// Row-major `k x dim`.
    pub values: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest cannot be decoded: {0}")]
    Decode(postcard::Error),
    #[error("manifest version {found} is not supported (this build reads {MANIFEST_VERSION})")]
    Version { found: u32 },
    #[error("manifest is inconsistent: {0}")]
    Invalid(String),
    #[error("manifest lists no {0:?} model")]
    NoModel(Precision),
    #[error("{file}: {actual} bytes, but the manifest says {expected}")]
    Size {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: SHA-256 {actual} does not match the manifest's {expected}; the model is not the one exported with this manifest")]
    Hash {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{file}: {what} is {actual:?}, but the manifest says {expected:?}")]
    Shape {
        file: String,
        what: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EncoderManifest {
    pub fn to_postcard(&self) -> Vec<u8> {
        // Serialising owned, plain data into a Vec cannot fail.
        postcard::to_allocvec(self).expect("manifest serialises")
    }

    pub fn from_postcard(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Self = postcard::from_bytes(bytes).map_err(ManifestError::Decode)?;
        m.validate()?;
        Ok(m)
    }

    /// Checks what a reader relies on: the version, and sizes that agree with each other.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                found: self.version,
            });
        }
        let p = &self.preprocess;
        let bad = |m: String| Err(ManifestError::Invalid(m));
        if p.mean.len() != p.channels() || p.std.len() != p.channels() {
            return bad(format!(
                "{} channels of {:?} colour, but {} means and {} stds",
                p.channels(),
                p.color,
                p.mean.len(),
                p.std.len()
            ));
        }
        if p.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return bad("a std is not positive".into());
        }
        let i = &self.input;
        if (i.channels as usize, i.height, i.width) != (p.channels(), p.height, p.width) {
            return bad(format!(
                "input {}x{}x{} does not match preprocessing {}x{}x{}",
                i.channels,
                i.height,
                i.width,
                p.channels(),
                p.height,
                p.width
            ));
        }
        if let Some(c) = &self.centroids {
            if c.dim != self.embedding.dim || c.values.len() != (c.k * c.dim) as usize {
                return bad(format!(
                    "centroids are {}x{} with {} values; the embedding has {} dims",
                    c.k,
                    c.dim,
                    c.values.len(),
                    self.embedding.dim
                ));
            }
        }
        Ok(())
    }

    pub fn model(&self, precision: Precision) -> Result<&ModelFile, ManifestError> {
        self.models
            .iter()
            .find(|m| m.precision == precision)
            .ok_or(ManifestError::NoModel(precision))
    }

    /// k of the stored centroids, or `default` when there are none.
    pub fn centroid_count_or(&self, default: usize) -> usize {
        self.centroids.as_ref().map_or(default, |c| c.k as usize)
    }

    /// `[channels, height, width]` of one input image.
    pub fn input_chw(&self) -> [usize; 3] {
        [
            self.input.channels as usize,
            self.input.height as usize,
            self.input.width as usize,
        ]
    }
}

impl ModelFile {
    /// Refuses bytes that are not the file this manifest was written for.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<(), ManifestError> {
        check_file_bytes(&self.file, self.bytes, &self.sha256, bytes)
    }
}

/// Refuses `bytes` unless they are `expected` bytes long with SHA-256 `sha256` (lower-case
/// hex); the errors name `file`. For any file a manifest-like record pins.
pub fn check_file_bytes(
    file: &str,
    expected: u64,
    sha256: &str,
    bytes: &[u8],
) -> Result<(), ManifestError> {
    if bytes.len() as u64 != expected {
        return Err(ManifestError::Size {
            file: file.into(),
            expected,
            actual: bytes.len() as u64,
        });
    }
    let actual = sha256_hex(bytes);
    if actual != sha256 {
        return Err(ManifestError::Hash {
            file: file.into(),
            expected: sha256.into(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{ColorMode, ResizeMode};
    use alloc::vec;

    pub(crate) fn sample() -> EncoderManifest {
        let onnx = b"not really onnx";
        EncoderManifest {
            version: MANIFEST_VERSION,
            arch: "small-cnn".into(),
            source_checkpoint: "runs/x".into(),
            input: InputSpec {
                name: "images".into(),
                layout: Layout::Nchw,
                channels: 1,
                height: 28,
                width: 28,
            },
            preprocess: PreprocessSpec {
                width: 28,
                height: 28,
                color: ColorMode::Gray,
                resize: ResizeMode::ShorterSideCenterCrop,
                mean: vec![0.286],
                std: vec![0.353],
                sobel_in_graph: false,
            },
            embedding: EmbeddingSpec {
                name: "embedding".into(),
                dim: 2,
                l2_normalize: true,
            },
            models: vec![ModelFile {
                precision: Precision::Int8,
                file: "m.onnx".into(),
                bytes: onnx.len() as u64,
                sha256: sha256_hex(onnx),
                quantization: Some(Quantization {
                    calibrator: Calibrator::Percentile(99.99),
                    calibration_images: 512,
                    activations: vec![TensorQuant {
                        tensor: "images".into(),
                        scale: 0.02,
                        zero_point: 0,
                    }],
                    weights: vec![WeightQuant {
                        tensor: "conv0.weight".into(),
                        axis: 0,
                        scales: vec![0.1, 0.2],
                    }],
                }),
            }],
            centroids: Some(Centroids {
                k: 2,
                dim: 2,
                values: vec![1.0, 0.0, 0.0, 1.0],
            }),
        }
    }

    #[test]
    fn sha256_of_a_known_string() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn postcard_round_trip_and_validation() {
        let m = sample();
        let back = EncoderManifest::from_postcard(&m.to_postcard()).unwrap();
        assert_eq!(back, m);
        let mut bytes = m.to_postcard();
        bytes.truncate(bytes.len() / 2);
        assert!(matches!(
            EncoderManifest::from_postcard(&bytes),
            Err(ManifestError::Decode(_))
        ));
        let mut v2 = m.clone();
        v2.version = 2;
        assert!(matches!(
            EncoderManifest::from_postcard(&v2.to_postcard()),
            Err(ManifestError::Version { found: 2 })
        ));
        let mut bad = m.clone();
        bad.input.height = 32;
        assert!(matches!(bad.validate(), Err(ManifestError::Invalid(_))));
        let mut bad = m;
        bad.centroids.as_mut().unwrap().values.pop();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn model_bytes_must_match_size_and_hash() {
        let m = sample();
        let file = m.model(Precision::Int8).unwrap();
        file.check_bytes(b"not really onnx").unwrap();
        let e = file.check_bytes(b"not really onnX").unwrap_err();
        assert!(matches!(e, ManifestError::Hash { .. }));
        assert!(e.to_string().contains("m.onnx"));
        assert!(matches!(
            file.check_bytes(b"short"),
            Err(ManifestError::Size { .. })
        ));
        assert!(matches!(
            m.model(Precision::Fp32),
            Err(ManifestError::NoModel(Precision::Fp32))
        ));
    }
}
