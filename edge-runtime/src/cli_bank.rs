//! `edge-runtime bank inspect|export|compact`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use edge_runtime::bank::{BankConfig, MemoryBank};

#[derive(Debug, Subcommand)]
pub enum BankCommand {
    /// Summary as JSON: entries, bytes, clusters, what recovery found.
    Inspect {
        #[arg(long)]
        bank: PathBuf,
    },
    /// Every entry as JSON Lines (seq, cluster, capture metadata, embedding as f32).
    Export {
        #[arg(long)]
        bank: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fold the segments into one fresh snapshot.
    Compact {
        #[arg(long)]
        bank: PathBuf,
    },
    /// Insert synthetic embeddings, printing `acked SEQ` once each insert has been written
    /// (the crash tests kill this at random moments).
    #[command(hide = true)]
    Fill {
        #[arg(long)]
        bank: PathBuf,
        #[arg(long, default_value_t = 128)]
        dim: usize,
        #[arg(long, default_value_t = u64::MAX)]
        count: u64,
        #[arg(long, default_value_t = 500)]
        snapshot_every: u64,
    },
}

/// Opening with the largest capacities evicts nothing that is stored.
pub fn open(dir: &Path) -> Result<(MemoryBank, edge_runtime::bank::Recovery)> {
    Ok(MemoryBank::open(dir, BankConfig::unbounded())?)
}

pub fn bank(cmd: &BankCommand) -> Result<()> {
    match cmd {
        BankCommand::Inspect { bank } => {
            let (b, rec) = open(bank)?;
            let mut clusters: BTreeMap<u32, usize> = BTreeMap::new();
            for e in b.entries() {
                *clusters.entry(e.cluster_id).or_default() += 1;
            }
            let summary = serde_json::json!({
                "entries": b.len(),
                "bytes": b.bytes(),
                "seen": b.seen(),
                "next_cluster_id": b.next_cluster_id(),
                "clusters": clusters,
                "recovery": rec,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        BankCommand::Export { bank, out } => {
            let (b, _) = open(bank)?;
            let f = std::fs::File::create(out).with_context(|| format!("{}", out.display()))?;
            let mut w = std::io::BufWriter::new(f);
            for e in b.entries() {
                let row = serde_json::json!({
                    "seq": e.seq,
                    "cluster_id": e.cluster_id,
                    "meta": e.meta,
                    "embedding": e.embedding.to_f32(),
                });
                writeln!(w, "{row}")?;
            }
            w.flush()?;
            eprintln!("{} entries -> {}", b.len(), out.display());
        }
        BankCommand::Fill {
            bank,
            dim,
            count,
            snapshot_every,
        } => {
            let cfg = BankConfig {
                max_entries: 1 << 24,
                max_bytes: usize::MAX,
                snapshot_every: *snapshot_every,
                ..Default::default()
            };
            let (mut b, _) = MemoryBank::open(bank, cfg)?;
            let mut rng = models::rng::Rng::new(b.seen());
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for i in 0..*count {
                let e: Vec<f32> = (0..*dim).map(|_| rng.next_f64() as f32 - 0.5).collect();
                let meta = edge_runtime::bank::CaptureMeta {
                    frame_id: i,
                    source: "fill".into(),
                    ..Default::default()
                };
                let seq = b.insert(&e, meta, (i % 10) as u32)?.seq;
                writeln!(out, "acked {}", seq.unwrap_or(u64::MAX))?;
                out.flush()?;
            }
        }
        BankCommand::Compact { bank } => {
            let (mut b, _) = open(bank)?;
            let snap = b.snapshot()?;
            eprintln!("{} entries in {}", b.len(), snap.display());
        }
    }
    Ok(())
}
