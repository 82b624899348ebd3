//! Rebinding a bank to another model: every stored thumbnail is embedded again with the new
//! model, re-clustered, and written to a fresh bank that replaces the old one. The old bank
//! is kept beside it (`DIR.before-rebind-<unix ms>`), so nothing stored is lost.
//!
//! A bank holding any entry without a thumbnail (an older bank, or `--thumb-size 0`) is not
//! rebound: those entries could not be carried over, and the error says how many.

use std::path::{Path, PathBuf};

use models::cluster::KMeansParams;
use models::data::ImageSet;
use models::linalg::l2_normalize_rows;
use models::MatRef;
use serde::Serialize;

use crate::backend::{embed_images, PrepareOptions, Runtime};
use crate::bank::identity::{self, BankIdentity};
use crate::bank::{BankConfig, BankEntry, MemoryBank, Thumbnail};
use crate::bundle::ModelBundle;
use crate::preprocess::Preprocessor;
use crate::EdgeError;

/// What a rebind did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rebound {
    pub entries: usize,
    pub clusters: usize,
    /// Where the old bank now is.
    pub previous: PathBuf,
    pub previous_model: String,
    pub model: String,
}

/// Re-embeds the bank in `dir` with `model` (see the module docs). `config` is the new bank's
/// configuration (its format decides the stored precision); its capacities must hold every
/// entry.
pub fn rebind(
    dir: &Path,
    model: &ModelBundle,
    runtime: &dyn Runtime,
    options: &PrepareOptions,
    config: &BankConfig,
) -> Result<Rebound, EdgeError> {
    let new_id = BankIdentity::of(model, config.format);
    let old_id = identity::read(dir)?;
    let (entries, seen, next_cluster_id) = read_all(dir)?;
    let pre = Preprocessor::new(model.manifest.preprocess.clone());
    let set = thumbnails_as_inputs(dir, &entries, &pre)?;
    let run = runtime.prepare(model, options)?;
    let dim = run.embed_dim();
    let mut emb = embed_images(run.as_ref(), &pre, &set)?;
    if model.manifest.embedding.l2_normalize {
        l2_normalize_rows(&mut emb, dim);
    }
    let old_clusters: std::collections::BTreeSet<u32> =
        entries.iter().map(|e| e.cluster_id).collect();
    let k = old_clusters.len().clamp(1, entries.len().max(1));
    let labels = KMeansParams::new(k)
        .seed(0)
        .n_redo(3)
        .check()?
        .fit(MatRef::new(&emb, dim)?)?
        .labels;

    let fresh = sibling(dir, "rebind-tmp");
    remove_dir(&fresh)?;
    {
        let (mut bank, _) = MemoryBank::open(&fresh, config.clone())?;
        for ((e, row), label) in entries.iter().zip(emb.chunks(dim)).zip(&labels) {
            // New ids above every old one, so an old id never names a new cluster.
            bank.insert(row, e.meta.clone(), next_cluster_id + label)?;
        }
        bank.reserve_cluster_ids(next_cluster_id + k as u32)?;
        bank.set_seen_at_least(seen)?;
        bank.snapshot()?;
        identity::bind(&fresh, &new_id)?;
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let previous = sibling(dir, &format!("before-rebind-{ms}"));
    std::fs::rename(dir, &previous).map_err(|e| io(dir, e))?;
    std::fs::rename(&fresh, dir).map_err(|e| io(&fresh, e))?;
    Ok(Rebound {
        entries: entries.len(),
        clusters: k,
        previous,
        previous_model: old_id.map_or_else(|| "not recorded".into(), |id| id.describe()),
        model: new_id.describe(),
    })
}

/// Every entry (oldest first), the frames seen and the next cluster id, read with capacities
/// that evict nothing; the bank is closed again on return.
fn read_all(dir: &Path) -> Result<(Vec<BankEntry>, u64, u32), EdgeError> {
    let (bank, _) = MemoryBank::open(dir, BankConfig::unbounded())?;
    let mut entries = bank.entries().to_vec();
    entries.sort_unstable_by_key(|e| e.seq);
    Ok((entries, bank.seen(), bank.next_cluster_id()))
}

/// The entries' thumbnails as the new model's input images (resized and converted in colour
/// as the manifest says).
fn thumbnails_as_inputs(
    dir: &Path,
    entries: &[BankEntry],
    pre: &Preprocessor,
) -> Result<ImageSet, EdgeError> {
    let spec = pre.spec();
    let thumbs: Vec<&Thumbnail> = entries
        .iter()
        .filter_map(|e| e.meta.detail.as_ref()?.thumbnail.as_ref())
        .collect();
    if thumbs.len() < entries.len() || entries.is_empty() {
        return Err(EdgeError::RebindWithoutThumbnails {
            path: dir.to_path_buf(),
            missing: entries.len() - thumbs.len(),
            entries: entries.len(),
        });
    }
    let mut pixels = Vec::with_capacity(thumbs.len() * spec.image_len());
    for t in thumbs {
        let p = pre
            .thumbnail_input(t)
            .map_err(|source| EdgeError::Thumbnail {
                path: dir.to_path_buf(),
                source,
            })?;
        pixels.extend(p);
    }
    Ok(ImageSet {
        pixels,
        channels: spec.channels(),
        height: spec.height as usize,
        width: spec.width as usize,
        labels: None,
        class_names: Vec::new(),
        paths: Vec::new(),
        skipped: Vec::new(),
    })
}

/// `dir` with `.suffix` added to its last component.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn remove_dir(dir: &Path) -> Result<(), EdgeError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir, e)),
        _ => Ok(()),
    }
}

fn io(path: &Path, source: std::io::Error) -> EdgeError {
    EdgeError::Io {
        path: path.to_path_buf(),
        source,
    }
}
