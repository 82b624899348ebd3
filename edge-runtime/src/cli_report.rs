//! `edge-runtime report`: the bank as a static HTML page.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edge_runtime::bank::identity;
use edge_runtime::report::{write_report, ReportConfig};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The memory bank's directory (as given to `run --bank`).
    #[arg(long)]
    bank: PathBuf,
    /// Where to write index.html, cluster-sizes.png and thumbs/ (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Member thumbnails shown per cluster (spread evenly over its arrivals).
    #[arg(long, default_value_t = 24)]
    per_cluster: usize,
    /// Novel frames listed (the newest).
    #[arg(long, default_value_t = 48)]
    novel: usize,
}

pub fn report(args: &ReportArgs) -> Result<()> {
    if !args.bank.is_dir() {
        anyhow::bail!(
            "{}: no memory bank here (not a directory)",
            args.bank.display()
        );
    }
    let (bank, _) = crate::cli_bank::open(&args.bank)?;
    let id = identity::read(&args.bank)?;
    let cfg = ReportConfig {
        per_cluster: args.per_cluster,
        novel: args.novel,
        ..Default::default()
    };
    let written = write_report(&bank, id.as_ref(), &args.out, &cfg)
        .with_context(|| format!("writing the report into {}", args.out.display()))?;
    eprintln!(
        "{} clusters, {} entries, {} thumbnails ({} shown without one), {} novel frames",
        written.clusters,
        written.entries,
        written.thumbnails,
        written.missing_thumbnails,
        written.novel_frames
    );
    println!("open {}", written.index.display());
    Ok(())
}
