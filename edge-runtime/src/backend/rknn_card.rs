//! What the `rknn` backend checks before it hands a file to Rockchip's runtime, in plain Rust
//! so it is built and tested everywhere (librknnrt exists only on the boards).
//!
//! A `.rknn` file is converted from the bundle's fp32 ONNX by rknn-toolkit2
//! (`scripts/export-rknn`), next to it as `encoder.<precision>.rknn`, with a card
//! `encoder.<precision>.rknn.json` that names the ONNX it came from. The card ties the NPU
//! model to the manifest, so the board runs what training exported or nothing.

use std::path::{Path, PathBuf};

use models::manifest::{check_file_bytes, Precision};
use serde::{Deserialize, Serialize};

use crate::bundle::ModelBundle;
use crate::EdgeError;

/// `encoder.<precision>.rknn.json`, written by `scripts/export-rknn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RknnCard {
    /// The ONNX file it was converted from, as the manifest names it, and its SHA-256.
    pub source_file: String,
    pub source_sha256: String,
    /// The `.rknn` file, relative to the card.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    /// The SoC it was built for (rk3588, rk3576, rk3568, rk3566, rv1106, ...).
    pub target_platform: String,
    /// int8 on the NPU (rknn-toolkit2's quantizer, on `calibration_images` real images);
    /// otherwise fp16.
    pub quantized: bool,
    pub calibration_images: u32,
    /// The batch the model was converted with (the NPU runs fixed shapes).
    pub batch: u32,
    /// e.g. "rknn-toolkit2 2.5.0".
    pub toolkit: String,
}

/// A `.rknn` file that belongs to a checked bundle.
#[derive(Debug, Clone)]
pub struct RknnModel {
    pub path: PathBuf,
    pub card: RknnCard,
}

/// The `.rknn` file the backend loads for `bundle`: `encoder.fp32.onnx` -> `encoder.fp32.rknn`.
pub fn rknn_path(bundle: &ModelBundle) -> PathBuf {
    bundle.path.with_extension("rknn")
}

fn card_path(rknn: &Path) -> PathBuf {
    let mut name = rknn.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

impl RknnModel {
    /// Reads and checks `rknn` and its card against `bundle`: the card must name the
    /// manifest's fp32 ONNX by hash, and the file must have the card's size and hash.
    pub fn open(bundle: &ModelBundle, rknn: &Path) -> Result<Self, EdgeError> {
        let card_file = card_path(rknn);
        let text = std::fs::read(&card_file).map_err(|source| EdgeError::Io {
            path: card_file.clone(),
            source,
        })?;
        let card: RknnCard =
            serde_json::from_slice(&text).map_err(|source| EdgeError::ManifestJson {
                path: card_file.clone(),
                source,
            })?;
        let source =
            bundle
                .manifest
                .model(Precision::Fp32)
                .map_err(|source| EdgeError::Manifest {
                    path: card_file.clone(),
                    source,
                })?;
        if card.source_file != source.file || card.source_sha256 != source.sha256 {
            return Err(EdgeError::Model {
                path: card_file,
                source: format!(
                    "converted from {} (sha256 {}), but this manifest's fp32 model is {} \
                     (sha256 {}): convert it again with scripts/export-rknn",
                    card.source_file, card.source_sha256, source.file, source.sha256
                )
                .into(),
            });
        }
        let bytes = std::fs::read(rknn).map_err(|source| EdgeError::Io {
            path: rknn.to_path_buf(),
            source,
        })?;
        check_file_bytes(&card.file, card.bytes, &card.sha256, &bytes).map_err(|source| {
            EdgeError::Manifest {
                path: rknn.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            path: rknn.to_path_buf(),
            card,
        })
    }
}

/// How the runtime lays out the model's 4-D input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    Nchw,
    Nhwc,
}

/// The model's batch, from its input dims as the runtime reports them, after checking the
/// other three against the manifest's (c, h, w).
pub fn model_batch(
    dims: &[u32],
    layout: InputLayout,
    chw: [usize; 3],
) -> Result<usize, (Vec<usize>, Vec<usize>)> {
    let [c, h, w] = chw;
    let expected = match layout {
        InputLayout::Nchw => [c, h, w],
        InputLayout::Nhwc => [h, w, c],
    };
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    match dims.as_slice() {
        [b, rest @ ..] if *b > 0 && rest == expected => Ok(*b),
        _ => Err((expected.to_vec(), dims.iter().skip(1).copied().collect())),
    }
}

/// `n` images from NCHW to NHWC, the NPU's native input layout.
pub fn nchw_to_nhwc(images: &[f32], n: usize, chw: [usize; 3]) -> Vec<f32> {
    let [c, h, w] = chw;
    let plane = h * w;
    let mut out = vec![0.0; n * c * plane];
    for (src, dst) in images
        .chunks_exact(c * plane)
        .zip(out.chunks_exact_mut(c * plane))
        .take(n)
    {
        for ch in 0..c {
            for p in 0..plane {
                dst[p * c + ch] = src[ch * plane + p];
            }
        }
    }
    out
}

/// The NPU cores a run may use for `threads` (RK3588 has three; 1 lets the runtime choose).
pub fn core_mask_bits(threads: usize) -> u32 {
    match threads {
        0 | 1 => 0, // RKNN_NPU_CORE_AUTO
        2 => 0b011, // cores 0 and 1
        _ => 0b111, // cores 0, 1 and 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::manifest::{sha256_hex, ModelFile};

    #[test]
    fn nhwc_interleaves_channels() {
        // Two 3-channel 1x2 images; channel values 10s, 20s, 30s.
        let img = [10., 11., 20., 21., 30., 31.];
        let both: Vec<f32> = img
            .iter()
            .chain(img.iter().map(|v| v + 100.0).collect::<Vec<_>>().iter())
            .copied()
            .collect();
        let out = nchw_to_nhwc(&both, 2, [3, 1, 2]);
        assert_eq!(&out[..6], &[10., 20., 30., 11., 21., 31.]);
        assert_eq!(&out[6..], &[110., 120., 130., 111., 121., 131.]);
        // One channel: the layouts coincide.
        let gray: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(nchw_to_nhwc(&gray, 2, [1, 2, 2]), gray);
    }

    #[test]
    fn model_batch_checks_the_layout() {
        assert_eq!(
            model_batch(&[4, 28, 28, 1], InputLayout::Nhwc, [1, 28, 28]),
            Ok(4)
        );
        assert_eq!(
            model_batch(&[1, 3, 32, 32], InputLayout::Nchw, [3, 32, 32]),
            Ok(1)
        );
        assert_eq!(
            model_batch(&[1, 32, 32, 3], InputLayout::Nhwc, [1, 28, 28]),
            Err((vec![28, 28, 1], vec![32, 32, 3]))
        );
        assert!(model_batch(&[0, 28, 28, 1], InputLayout::Nhwc, [1, 28, 28]).is_err());
        assert!(model_batch(&[28, 28, 1], InputLayout::Nhwc, [1, 28, 28]).is_err());
    }

    #[test]
    fn core_masks() {
        assert_eq!(core_mask_bits(1), 0);
        assert_eq!(core_mask_bits(2), 3);
        assert_eq!(core_mask_bits(8), 7);
    }

    /// A bundle whose fp32 entry is `onnx`, in `dir`.
    fn bundle(dir: &Path, onnx: &[u8]) -> ModelBundle {
        let committed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn");
        let mut manifest = crate::bundle::read_manifest(&committed).unwrap();
        manifest.models = vec![ModelFile {
            precision: Precision::Fp32,
            file: "encoder.fp32.onnx".into(),
            bytes: onnx.len() as u64,
            sha256: sha256_hex(onnx),
            quantization: None,
        }];
        ModelBundle {
            manifest,
            precision: Precision::Fp32,
            path: dir.join("encoder.fp32.onnx"),
            bytes: onnx.to_vec(),
        }
    }

    fn write_card(dir: &Path, onnx: &[u8], rknn: &[u8]) -> PathBuf {
        let path = dir.join("encoder.fp32.rknn");
        std::fs::write(&path, rknn).unwrap();
        let card = RknnCard {
            source_file: "encoder.fp32.onnx".into(),
            source_sha256: sha256_hex(onnx),
            file: "encoder.fp32.rknn".into(),
            bytes: rknn.len() as u64,
            sha256: sha256_hex(rknn),
            target_platform: "rk3588".into(),
            quantized: true,
            calibration_images: 512,
            batch: 1,
            toolkit: "rknn-toolkit2 2.5.0".into(),
        };
        std::fs::write(card_path(&path), serde_json::to_vec(&card).unwrap()).unwrap();
        path
    }

    #[test]
    fn card_ties_the_npu_model_to_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path(), b"the onnx");
        let path = write_card(dir.path(), b"the onnx", b"the rknn");
        assert_eq!(rknn_path(&b), path);
        let model = RknnModel::open(&b, &path).unwrap();
        assert_eq!(model.card.target_platform, "rk3588");

        // Converted from another ONNX file.
        let other = bundle(dir.path(), b"retrained onnx");
        let e = RknnModel::open(&other, &path).unwrap_err().to_string();
        assert!(
            e.contains("encoder.fp32.rknn.json") && e.contains("convert it again"),
            "{e}"
        );

        // The .rknn file changed after conversion.
        std::fs::write(&path, b"the rknX").unwrap();
        let e = RknnModel::open(&b, &path).unwrap_err().to_string();
        assert!(
            e.contains("encoder.fp32.rknn") && e.contains("SHA-256"),
            "{e}"
        );
        std::fs::write(&path, b"short").unwrap();
        let e = RknnModel::open(&b, &path).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");

        // No card, or a broken one.
        std::fs::remove_file(card_path(&path)).unwrap();
        let e = RknnModel::open(&b, &path).unwrap_err().to_string();
        assert!(e.contains("encoder.fp32.rknn.json"), "{e}");
        std::fs::write(card_path(&path), b"{\"source_file\": 3").unwrap();
        let e = RknnModel::open(&b, &path).unwrap_err().to_string();
        assert!(
            e.contains("not a valid manifest") || e.contains("rknn.json"),
            "{e}"
        );
    }
}
