//! An exported model directory: `manifest.json` (or `manifest.postcard`) next to the ONNX
//! files it lists. Loading checks the manifest and the chosen file's size and SHA-256, so a
//! model that is not the one exported with its manifest never runs.

use std::path::{Path, PathBuf};

use models::manifest::{EncoderManifest, ModelFile, Precision};

use crate::EdgeError;

pub const MANIFEST_JSON: &str = "manifest.json";
pub const MANIFEST_POSTCARD: &str = "manifest.postcard";

/// A checked model: its manifest, which file, and the file's bytes.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    pub manifest: EncoderManifest,
    pub precision: Precision,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl ModelBundle {
    /// Reads `dir`'s manifest (JSON first, then postcard) and the model of `precision`.
    pub fn load(dir: &Path, precision: Precision) -> Result<Self, EdgeError> {
        let manifest = read_manifest(dir)?;
        let entry = manifest
            .model(precision)
            .map_err(|source| EdgeError::Manifest {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = dir.join(&entry.file);
        let bytes = read(&path)?;
        check_file(entry, &path, &bytes)?;
        Ok(Self {
            precision,
            path,
            bytes,
            manifest,
        })
    }

    pub fn file(&self) -> &ModelFile {
        // `load` found it, and the manifest is immutable here.
        self.manifest
            .model(self.precision)
            .expect("checked on load")
    }
}

fn check_file(entry: &ModelFile, path: &Path, bytes: &[u8]) -> Result<(), EdgeError> {
    entry
        .check_bytes(bytes)
        .map_err(|source| EdgeError::Manifest {
            path: path.to_path_buf(),
            source,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, EdgeError> {
    std::fs::read(path).map_err(|source| EdgeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The manifest of an exported model directory, validated.
pub fn read_manifest(dir: &Path) -> Result<EncoderManifest, EdgeError> {
    let json = dir.join(MANIFEST_JSON);
    let manifest = if json.exists() {
        let text = read(&json)?;
        let m: EncoderManifest =
            serde_json::from_slice(&text).map_err(|source| EdgeError::ManifestJson {
                path: json.clone(),
                source,
            })?;
        m.validate()
            .map_err(|source| EdgeError::Manifest { path: json, source })?;
        m
    } else {
        let path = dir.join(MANIFEST_POSTCARD);
        EncoderManifest::from_postcard(&read(&path)?)
            .map_err(|source| EdgeError::Manifest { path, source })?
    };
    Ok(manifest)
}
