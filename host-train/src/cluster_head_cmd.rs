//! `host-train cluster-head`: a SCAN-style cluster head on a run's encoder.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use candle_nn::VarMap;
use clap::Args;
use host_train::augment::AugmentConfig;
use host_train::cluster_head::{
    fit_cluster_head, ClusterHead, ClusterHeadConfig, MiningSpace, HEAD_FILE,
};
use host_train::dataset::{load_images, TrainSet};
use host_train::encoders::{EmbeddingWhitening, Encoder, WhitenedEncoder};
use host_train::eval::assign_to_centroids;
use host_train::export::CentroidChoice;
use host_train::features::extract;
use host_train::pretrain::{load_pretrained_encoder, FINETUNED_FILE, WHITENING_FILE};
use host_train::run_dir::RunDir;
use host_train::scan_finetune::{finetune, FinetuneConfig};
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
    /// Heads trained together from different random starts; the lowest loss is kept (no
    /// labels used).
    #[arg(long, default_value_t = ClusterHeadConfig::default().heads)]
    heads: usize,
    /// Optimiser steps per head.
    #[arg(long, default_value_t = ClusterHeadConfig::default().steps)]
    steps: usize,
    /// Weight of the entropy term that keeps every cluster in use.
    #[arg(long, default_value_t = ClusterHeadConfig::default().entropy_weight)]
    entropy_weight: f64,
    /// Where neighbours are mined: on the embedding as it is, PCA-whitened (fitted on it, no
    /// labels), or part on the embedding and part (`--pixel-share`) on the images' PCA-whitened
    /// pixels.
    #[arg(long, value_enum, default_value = "raw")]
    mine_on: MineArg,
    /// With `--mine-on raw-and-pixels`: the share of the neighbours mined on the pixels.
    #[arg(long, default_value_t = ClusterHeadConfig::default().pixel_share)]
    pixel_share: f64,
    /// SCAN's self-labelling after the head: steps of cross-entropy on augmented views
    /// towards the head's confident predictions (0: none).
    #[arg(long, default_value_t = ClusterHeadConfig::default().self_label_steps)]
    self_label_steps: usize,
    /// A prediction above this probability is confident enough to be a self-label.
    #[arg(long, default_value_t = ClusterHeadConfig::default().self_label_threshold)]
    self_label_threshold: f64,
    /// PCA-whiten the embedding to this many directions (fitted on the training images, no
    /// labels) before the head: saved in the run, so that eval, export and the board use it
    /// too. Helps DeepCluster's embeddings, whose variance sits in a few directions, on small
    /// sets (docs/RESULTS.md); 0 keeps the embedding as trained (and drops an earlier one).
    #[arg(long, default_value_t = 0)]
    whiten: usize,
    /// SCAN's clustering step with the encoder trained too: after the head is chosen, this
    /// many steps train the encoder and the head together on augmented images and their
    /// neighbours. The encoder is saved beside the pretrained one (finetuned.safetensors),
    /// and eval and export use it. 0 keeps the encoder frozen (and drops an earlier one).
    #[arg(long, default_value_t = 0)]
    finetune_steps: usize,
    /// The fine-tuning's learning rate (AdamW).
    #[arg(long, default_value_t = FinetuneConfig::default().lr)]
    finetune_lr: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MineArg {
    Raw,
    Whitened,
    RawAndPixels,
}

pub fn cluster_head(args: &ClusterHeadArgs) -> Result<()> {
    let dev = crate::pretrain_cmd::device(&args.device)?;
    let run = RunDir::open(&args.checkpoint)?;
    if args.finetune_steps > 0 && args.whiten > 0 {
        bail!("--finetune-steps trains the encoder itself; it cannot be combined with --whiten");
    }
    if args.finetune_steps > 0 && !(args.finetune_lr.is_finite() && args.finetune_lr > 0.0) {
        bail!(
            "--finetune-lr must be a positive number, got {}",
            args.finetune_lr
        );
    }
    // A head starts from the pretrained encoder, even where an earlier head fine-tuned it.
    let (cfg, vm, trained) = load_pretrained_encoder(&run, &dev)?;
    let (train, val) = load_images(&cfg.data)?;
    let classes = train.class_names.len();
    let train = TrainSet::new(train, cfg.normalization.clone())?;
    let encoder = whiten(&run, trained, &train, args.whiten, &dev)?;
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
            MineArg::RawAndPixels => MiningSpace::RawAndPixels,
        },
        pixel_share: args.pixel_share,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (mut head, clean, nb) = fit_cluster_head(
        encoder.as_ref(),
        &train,
        &cfg.augment,
        args.views,
        &hcfg,
        &dev,
    )?;
    println!(
        "cluster head: {} clusters, {} neighbours, {} views, best of {} heads: loss {:.4} (consistency {:.4}, entropy {:.4}); {:.0} s",
        hcfg.clusters,
        hcfg.neighbours,
        args.views,
        hcfg.heads,
        head.loss,
        head.consistency,
        head.entropy,
        t0.elapsed().as_secs_f64(),
    );
    let clean = if args.finetune_steps > 0 {
        let fcfg = FinetuneConfig {
            steps: args.finetune_steps,
            lr: args.finetune_lr,
            seed: cfg.seed,
            ..Default::default()
        };
        let tuning = Tuning {
            run: &run,
            vm: &vm,
            train: &train,
            augment: &cfg.augment,
            dev: &dev,
        };
        finetune_encoder(&tuning, encoder.as_ref(), &mut head, &nb, &fcfg)?
    } else {
        drop_finetuned(&run)?;
        clean
    };
    head.save(&run)?;
    println!("saved {}", run.path(HEAD_FILE).display());
    if let Some(labels) = train.images.labels.as_deref() {
        let k = nb.len() / labels.len();
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
    // What `export --centroids-from best` weighs against the head's centroids: k-means
    // centroids of the same embeddings, shipped when their clusters have the higher silhouette.
    let choice = CentroidChoice::measure(&head.board_centroids(), &clean, head.dim, cfg.seed)?;
    println!(
        "silhouette of the training images' clusters: head centroids {:.4}, k-means centroids {:.4}; `export --centroids-from best` ships the {}",
        choice.head_silhouette,
        choice.kmeans_silhouette,
        if choice.kmeans_wins() { "k-means centroids" } else { "head's centroids" }
    );
    let kmeans = &choice.kmeans.values;
    report(
        "train",
        &head,
        kmeans,
        &clean,
        train.images.labels.as_deref(),
    )?;
    if let Some(val) = val {
        let val = TrainSet::new(val, cfg.normalization.clone())?;
        let emb = extract(encoder.as_ref(), &val, 512, &Device::Cpu, "validation")?;
        report(
            "validation",
            &head,
            kmeans,
            &emb,
            val.images.labels.as_deref(),
        )?;
    }
    Ok(())
}

/// What fine-tuning the encoder needs besides the encoder, the head and its settings.
struct Tuning<'a> {
    run: &'a RunDir,
    /// The encoder's variables.
    vm: &'a VarMap,
    train: &'a TrainSet,
    augment: &'a AugmentConfig,
    dev: &'a Device,
}

/// Trains `encoder` with `head` (SCAN's step with the backbone), saves the encoder in the run
/// beside the pretrained one, moves the head's centroids to the new embedding and returns
/// the training images' new embeddings.
fn finetune_encoder(
    t: &Tuning<'_>,
    encoder: &dyn Encoder,
    head: &mut ClusterHead,
    neighbours: &[u32],
    cfg: &FinetuneConfig,
) -> Result<Vec<f32>> {
    let t0 = std::time::Instant::now();
    let stats = finetune(
        encoder,
        t.vm.all_vars(),
        head,
        neighbours,
        t.train,
        t.augment,
        cfg,
        t.dev,
    )?;
    t.run.save_weights(FINETUNED_FILE, t.vm)?;
    let clean = extract(encoder, t.train, 512, t.dev, "embeddings")?;
    head.recentre(&clean);
    println!(
        "fine-tuned the encoder with the head: {} steps, loss {:.4} -> {:.4}; {:.0} s; saved {}",
        cfg.steps,
        stats.first_loss,
        stats.last_loss,
        t0.elapsed().as_secs_f64(),
        t.run.path(FINETUNED_FILE).display()
    );
    Ok(clean)
}

/// Removes an earlier fine-tuned encoder: a head on the frozen encoder belongs to the
/// pretrained one.
fn drop_finetuned(run: &RunDir) -> Result<()> {
    let path = run.path(FINETUNED_FILE);
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        println!(
            "removed {}: the head sees the pretrained encoder",
            path.display()
        );
    }
    Ok(())
}

/// `trained` followed by a whitening to `dims` directions fitted on `train` and saved in the
/// run; with `dims` 0, `trained` as it is, and any earlier whitening removed (a head belongs
/// to the space it was trained in).
fn whiten(
    run: &RunDir,
    trained: Box<dyn Encoder>,
    train: &TrainSet,
    dims: usize,
    dev: &Device,
) -> Result<Box<dyn Encoder>> {
    let path = run.path(WHITENING_FILE);
    if dims == 0 {
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!(
                "removed {}: the head sees the embedding as trained",
                path.display()
            );
        }
        return Ok(trained);
    }
    let dim = trained.embed_dim();
    let n = train.len();
    if dims > dim || dims >= n {
        bail!("--whiten must be at most the embedding's {dim} dimensions and below the {n} images, got {dims}");
    }
    let raw = extract(trained.as_ref(), train, 512, dev, "embeddings")?;
    let whitening = EmbeddingWhitening::fit(&raw, dim, dims)?;
    run.write_json(WHITENING_FILE, &whitening)?;
    println!(
        "whitened the {dim}-d embedding to {dims} directions; saved {}",
        path.display()
    );
    Ok(Box::new(WhitenedEncoder::new(trained, whitening, dev)?))
}

/// The head's clusters and the board's nearest-centroid clusters (from the head's centroids
/// and from the training images' k-means centroids), against labels if any.
fn report(
    what: &str,
    head: &ClusterHead,
    kmeans: &[f32],
    emb: &[f32],
    labels: Option<&[u32]>,
) -> Result<()> {
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
        let nearest_kmeans = assign_to_centroids(emb, head.dim, kmeans);
        for (name, l) in [
            ("head", &found),
            ("nearest head centroid", &board),
            ("nearest k-means centroid", &nearest_kmeans),
        ] {
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
