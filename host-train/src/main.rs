//! `host-train`: unsupervised pretraining on the host.
//!
//! - `baseline`: PCA-whitened pixels + k-means, the floor every learned encoder must beat.
//! - `pretrain`: learn an encoder without labels (DeepCluster, NPID, Local Aggregation, SwAV).
//! - `cluster-head`: a SCAN-style cluster head on a run's encoder.
//! - `eval`: score a run's encoder with weighted kNN and k-means against labels.
//! - `make-scenes`: a labeled folder of generated RGB scenes for testing.
//! - `export`: fold BatchNorm, write ONNX fp32 + int8 and the manifest; `--verify` checks parity.

mod baseline;
mod cluster_head_cmd;
mod export_cmd;
mod pretrain_cmd;
mod scenes_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "host-train", version, about)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster raw pixels: PCA-whiten, L2-normalise, k-means; report NMI, ARI, accuracy and
    /// weighted kNN when labels exist.
    Baseline(baseline::Args),
    /// Pretrain an encoder without labels and write a run directory.
    Pretrain(pretrain_cmd::PretrainArgs),
    /// Evaluate the encoder of a run directory.
    Eval(pretrain_cmd::EvalArgs),
    /// Train a SCAN-style cluster head on a run's encoder (saved in the run; export sends
    /// its clusters to the board as centroids).
    ClusterHead(cluster_head_cmd::ClusterHeadArgs),
    /// Export a run's encoder for the board: ONNX fp32 and QDQ int8, and a manifest.
    Export(export_cmd::ExportArgs),
    /// Redraw a run's plots/metrics.png from its metrics.jsonl.
    Plot(pretrain_cmd::PlotArgs),
    /// Write a labeled folder of generated RGB scenes (object shape as the class; colour,
    /// background and lighting random).
    MakeScenes(scenes_cmd::MakeScenesArgs),
}

fn main() -> Result<()> {
    // Diagnostics go to stderr (RUST_LOG overrides the default `info`); results to stdout.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if !host_train::malloc::keep_freed_memory() {
        tracing::debug!("allocator settings not applied (not glibc)");
    }
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Baseline(args) => baseline::run(&args),
        Command::Pretrain(args) => pretrain_cmd::pretrain(&args),
        Command::Eval(args) => pretrain_cmd::eval(&args),
        Command::ClusterHead(args) => cluster_head_cmd::cluster_head(&args),
        Command::Export(args) => export_cmd::export(&args),
        Command::Plot(args) => pretrain_cmd::plot(&args),
        Command::MakeScenes(args) => scenes_cmd::make_scenes(&args),
    }
}
