//! What a bank's embeddings were made with. Embeddings of two models (or two preprocessings)
//! are not comparable: mixed in one bank they cluster by model, not by scene. The first run
//! on a bank records the model here; every later run must match it.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EmbeddingFormat;
use crate::bundle::ModelBundle;
use crate::error::BankProblem;
use crate::EdgeError;

/// The identity file in a bank's directory.
pub const IDENTITY_FILE: &str = "identity.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankIdentity {
    /// SHA-256 of the model file that made the embeddings.
    pub model_sha256: String,
    pub model_file: String,
    /// Where the model was loaded from (for messages only; not compared).
    pub model_dir: String,
    pub embedding_dim: u32,
    pub format: EmbeddingFormat,
    /// The manifest's preprocessing, as JSON.
    pub preprocess: serde_json::Value,
}

impl BankIdentity {
    pub fn of(model: &ModelBundle, format: EmbeddingFormat) -> Self {
        let file = model.file();
        Self {
            model_sha256: file.sha256.clone(),
            model_file: file.file.clone(),
            model_dir: model.path.display().to_string(),
            embedding_dim: model.manifest.embedding.dim,
            format,
            preprocess: serde_json::to_value(&model.manifest.preprocess)
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// Whether embeddings made under `other` can join a bank made under `self`.
    pub fn matches(&self, other: &Self) -> bool {
        self.model_sha256 == other.model_sha256
            && self.embedding_dim == other.embedding_dim
            && self.format == other.format
            && self.preprocess == other.preprocess
    }

    /// One line naming the model, for errors.
    pub fn describe(&self) -> String {
        let sha = self.model_sha256.get(..12).unwrap_or(&self.model_sha256);
        format!(
            "{} in {} (sha256 {sha}..., {}-d, stored as {:?})",
            self.model_file, self.model_dir, self.embedding_dim, self.format
        )
    }
}

/// Binds the bank in `dir` to `id`: the first run records it (a temporary file, fsync,
/// rename); a later run whose model, embedding size, stored format or preprocessing differ is
/// refused, naming both models.
pub fn bind(dir: &Path, id: &BankIdentity) -> Result<(), EdgeError> {
    match read(dir)? {
        Some(stored) if stored.matches(id) => Ok(()),
        Some(stored) => Err(EdgeError::BankModelMismatch {
            path: dir.to_path_buf(),
            stored: stored.describe(),
            given: id.describe(),
        }),
        None => write(dir, &dir.join(IDENTITY_FILE), id),
    }
}

/// The identity recorded in the bank in `dir`; `None` before its first run.
pub fn read(dir: &Path) -> Result<Option<BankIdentity>, EdgeError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EdgeError::Bank {
                path,
                problem: BankProblem::Identity(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EdgeError::Io { path, source: e }),
    }
}

fn write(dir: &Path, path: &Path, id: &BankIdentity) -> Result<(), EdgeError> {
    let tmp = path.with_extension("json.tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| EdgeError::Io { path: p, source: e }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let json = serde_json::to_vec_pretty(id).expect("an identity serialises");
    f.write_all(&json).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
