//! `edge-runtime report`: a static HTML page of what a memory bank holds, for a person to look
//! at. It opens from disk, with no server and no network: every picture is a PNG in the
//! report's folder.
//!
//! - [`summary`]: the clusters (size, medoid, members), the novel frames and the sizes over
//!   time, computed from the bank's entries.
//! - [`sizes_chart`]: the cluster sizes over time as a PNG.
//! - [`adaptation`]: what the board's adapter holds beside the bank.
//! - [`html`]: the page itself.

mod adaptation;
mod html;
pub mod sizes_chart;
pub mod summary;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bank::identity::BankIdentity;
use crate::bank::MemoryBank;
use crate::EdgeError;

pub use summary::{BankSummary, ClusterSummary, NovelFrame};

/// How much the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportConfig {
    /// Member thumbnails per cluster (spread evenly over its arrivals).
    pub per_cluster: usize,
    /// Novel frames listed (the most recent).
    pub novel: usize,
    /// Clusters drawn in the sizes-over-time chart (the largest).
    pub chart_clusters: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            per_cluster: 24,
            novel: 48,
            chart_clusters: 10,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportWritten {
    pub index: PathBuf,
    pub clusters: usize,
    pub entries: usize,
    /// Thumbnails written, and pictures shown as "no thumbnail" (entries stored without one).
    pub thumbnails: usize,
    pub missing_thumbnails: usize,
    pub novel_frames: usize,
}

/// The page's folder layout.
pub const INDEX_FILE: &str = "index.html";
pub const SIZES_FILE: &str = "cluster-sizes.png";
pub const THUMBS_DIR: &str = "thumbs";

/// Writes `out/index.html`, `out/cluster-sizes.png` and `out/thumbs/*.png` for `bank`.
pub fn write_report(
    bank: &MemoryBank,
    identity: Option<&BankIdentity>,
    out: &Path,
    cfg: &ReportConfig,
) -> Result<ReportWritten, EdgeError> {
    let summary = BankSummary::of(bank, cfg);
    let thumbs = out.join(THUMBS_DIR);
    std::fs::create_dir_all(&thumbs).map_err(|e| io(&thumbs, e))?;
    let shown = summary.shown_seqs();
    let mut written = std::collections::BTreeSet::new();
    for &seq in &shown {
        // An entry without a thumbnail (or with a damaged one) is shown as a placeholder.
        if let Some(img) = bank.get(seq).and_then(thumbnail_image) {
            let path = thumbs.join(thumb_file(seq));
            img.save(&path)
                .map_err(|source| EdgeError::ImageWrite { path, source })?;
            written.insert(seq);
        }
    }
    sizes_chart::write(&summary, cfg.chart_clusters, &out.join(SIZES_FILE))?;
    let adapter = crate::adapt::store::read(bank.dir());
    let page = html::page(
        &summary,
        identity,
        bank,
        &adaptation::section(&adapter),
        |seq| written.contains(&seq),
    );
    let index = out.join(INDEX_FILE);
    std::fs::write(&index, page).map_err(|e| io(&index, e))?;
    Ok(ReportWritten {
        index,
        clusters: summary.clusters.len(),
        entries: bank.len(),
        thumbnails: written.len(),
        missing_thumbnails: shown.len() - written.len(),
        novel_frames: summary.novel.len(),
    })
}

/// The thumbnail's file name inside [`THUMBS_DIR`].
pub fn thumb_file(seq: u64) -> String {
    format!("{seq}.png")
}

/// The entry's thumbnail as an image; `None` when it has none or its pixels do not fit.
fn thumbnail_image(e: &crate::bank::BankEntry) -> Option<image::RgbImage> {
    e.meta.detail.as_ref()?.thumbnail.as_ref()?.to_image()
}

fn io(path: &Path, source: std::io::Error) -> EdgeError {
    EdgeError::Io {
        path: path.to_path_buf(),
        source,
    }
}
