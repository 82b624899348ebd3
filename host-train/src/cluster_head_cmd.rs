//! `host-train cluster-head`: a SCAN-style cluster head on a run's encoder.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use host_train::cluster_head::{
    fit_cluster_head, mine_neighbours, ClusterHead, ClusterHeadConfig, MiningSpace, HEAD_FILE,
};
use host_train::dataset::{load_images, TrainSet};
use host_train::features::extract;
use host_train::pretrain::load_encoder;
use host_train::run_dir::RunDir;
use models::metrics::{adjusted_rand_index, clustering_accuracy, normalized_mutual_info};

#[derive(Debug, Args)]
pub struct ClusterHeadArgs {
    /// A run directory written by `host-train pretrain`; the head is saved in it.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Clusters (default: the number of classes of a labeled set, else 10).
    #[arg(long)]
    k: Option<usize>,
    /// Nearest neighbours mined per image.
    #[arg(long, default_value_t = ClusterHeadConfig::default().neighbours)]
    neighbours: usize,
    /// Augmented views embedded per image for the head to train on.
    #[arg(long, default_value_t = 4)]
    views: usize,
    /// Heads trained from different seeds; the lowest loss is kept (no labels used).
    #[arg(long, default_value_t = ClusterHeadConfig::default().heads)]
    heads: usize,
    /// Optimiser steps per head.
    #[arg(long, default_value_t = ClusterHeadConfig::default().steps)]
    steps: usize,
    /// Weight of the entropy term that keeps every cluster in use.
    #[arg(long, default_value_t = ClusterHeadConfig::default().entropy_weight)]
    entropy_weight: f64,
    /// Where neighbours are mined: on the embedding as it is, or PCA-whitened (fitted on it,
    /// no labels).
    #[arg(long, value_enum, default_value = "raw")]
    mine_on: MineArg,
    /// SCAN's self-labelling after the head: steps of cross-entropy on augmented views
    /// towards the head's confident predictions (0: none).
    #[arg(long, default_value_t = ClusterHeadConfig::default().self_label_steps)]
    self_label_steps: usize,
    /// A prediction above this probability is confident enough to be a self-label.
    #[arg(long, default_value_t = ClusterHeadConfig::default().self_label_threshold)]
    self_label_threshold: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MineArg {
    Raw,
    Whitened,
}

pub fn cluster_head(args: &ClusterHeadArgs) -> Result<()> {
    let dev = crate::pretrain_cmd::device(&args.device)?;
    let run = RunDir::open(&args.checkpoint)?;
    let (cfg, encoder) = load_encoder(&run, &dev)?;
    let (train, val) = load_images(&cfg.data)?;
    let classes = train.class_names.len();
    let train = TrainSet::new(train, cfg.normalization.clone())?;
    let hcfg = ClusterHeadConfig {
        clusters: args.k.unwrap_or(if classes > 1 { classes } else { 10 }),
        neighbours: args.neighbours,
        heads: args.heads,
        steps: args.steps,
        entropy_weight: args.entropy_weight,
        seed: cfg.seed,
        self_label_steps: args.self_label_steps,
        self_label_threshold: args.self_label_threshold,
        mine_on: match args.mine_on {
            MineArg::Whitened => MiningSpace::Whitened,
            MineArg::Raw => MiningSpace::Raw,
        },
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (head, clean) = fit_cluster_head(
        encoder.as_ref(),
        &train,
        &cfg.augment,
        args.views,
        &hcfg,
        &dev,
    )?;
    head.save(&run)?;
    println!(
        "cluster head: {} clusters, {} neighbours, {} views, best of {} heads: loss {:.4} (consistency {:.4}, entropy {:.4}); {:.0} s; saved {}",
        hcfg.clusters,
        hcfg.neighbours,
        args.views,
        hcfg.heads,
        head.loss,
        head.consistency,
        head.entropy,
        t0.elapsed().as_secs_f64(),
        run.path(HEAD_FILE).display()
    );
    if let Some(labels) = train.images.labels.as_deref() {
        let dim = head.dim;
        let nb = mine_neighbours(&clean, dim, &hcfg)?;
        let k = hcfg.neighbours.min(labels.len() - 1);
        let same = nb
            .iter()
            .enumerate()
            .filter(|(i, &j)| labels[i / k] == labels[j as usize])
            .count();
        println!(
            "neighbour purity: {:.4} of the {k} nearest neighbours share the image's class",
            same as f64 / nb.len() as f64
        );
    }
    report("train", &head, &clean, train.images.labels.as_deref())?;
    if let Some(val) = val {
        let val = TrainSet::new(val, cfg.normalization.clone())?;
        let emb = extract(encoder.as_ref(), &val, 512, &Device::Cpu, "validation")?;
        report("validation", &head, &emb, val.images.labels.as_deref())?;
    }
    Ok(())
}

/// The head's clusters and the board's nearest-centroid clusters, against labels if any.
fn report(what: &str, head: &ClusterHead, emb: &[f32], labels: Option<&[u32]>) -> Result<()> {
    let found = head.assign(emb);
    let board = head.nearest_centroid(emb);
    let agree =
        found.iter().zip(&board).filter(|(a, b)| a == b).count() as f64 / found.len() as f64;
    let mut sizes = vec![0usize; head.config.clusters];
    found.iter().for_each(|&c| sizes[c as usize] += 1);
    println!(
        "{what}: {} images, cluster sizes {sizes:?}, nearest-centroid agreement {agree:.4}",
        found.len()
    );
    if let Some(labels) = labels {
        for (name, l) in [("head", &found), ("nearest centroid", &board)] {
            println!(
                "  {name}: NMI {:.4}, ARI {:.4}, accuracy {:.4}",
                normalized_mutual_info(labels, l)?,
                adjusted_rand_index(labels, l)?,
                clustering_accuracy(labels, l)?
            );
        }
    }
    Ok(())
}
