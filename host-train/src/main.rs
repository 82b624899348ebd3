//! `host-train`: unsupervised pretraining on the host. For now it runs the pixel baseline
//! that every learned encoder must beat: PCA-whitening, L2 normalisation, k-means.

mod baseline;

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Baseline(args) => baseline::run(&args),
    }
}
