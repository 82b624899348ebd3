//! `host-train pretrain` and `host-train eval`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use host_train::augment::AugmentConfig;
use host_train::dataset::{load_images, DataDefaults, DataSpec, Normalization, TrainSet};
use host_train::encoders::Arch;
use host_train::eval::evaluate;
use host_train::features::{extract_layer, Layer};
use host_train::methods::deepcluster::DeepClusterConfig;
use host_train::methods::figure_pairs::FigurePairsConfig;
use host_train::methods::local_aggregation::LaConfig;
use host_train::methods::npid::NpidConfig;
use host_train::methods::swav::SwavConfig;
use host_train::methods::Method;
use host_train::pretrain::{load_encoder, pretrain as run_pretrain, MetricsRow, RunConfig};
use host_train::run_dir::RunDir;

#[derive(Debug, Args)]
pub struct DataArgs {
    /// `fashion-mnist`, a folder of Fashion-MNIST IDX files, or a folder of JPEG/PNG images.
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Side of the square images read from a folder; Fashion-MNIST's 28x28 images are
    /// zero-padded to it (32 for CIFAR-style networks such as resnet18). Default: 28 for
    /// Fashion-MNIST, else the folder's median shorter side (a multiple of 4, 16-64; at
    /// most 32 for figure-pairs).
    #[arg(long)]
    size: Option<u32>,
    /// Read folders of images as RGB instead of grayscale.
    #[arg(long)]
    rgb: bool,
    /// Skip unreadable images (counted) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Use only the first N training images (and N/6 test images).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    split: SplitArgs,
}

/// Where the labeled validation images of a folder come from.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// A labeled folder of validation images (class sub-folders named as in --data).
    #[arg(long)]
    pub val: Option<String>,
    /// Without --val: the fraction of each class of a labeled --data folder held out for
    /// validation (seeded by --seed; 0 keeps every image for training).
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
}

impl DataArgs {
    fn spec(&self, size: u32, seed: u64) -> DataSpec {
        DataSpec {
            source: self.data.clone(),
            size,
            rgb: self.rgb,
            skip_bad: self.skip_bad,
            limit: self.limit,
            val: self.split.val.clone(),
            val_fraction: self.split.val_fraction,
            split_seed: seed,
        }
    }
}

#[derive(Debug, Args)]
pub struct PretrainArgs {
    #[arg(long, value_enum, default_value = "deepcluster")]
    method: Method,
    #[command(flatten)]
    data: DataArgs,
    /// The network (default: small-cnn-in for figure-pairs, small-cnn otherwise).
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Epochs (default: about 300k images seen, 10-200 epochs; figure-pairs: 40 epochs of
    /// 12,800 pairs, about 18 minutes on 2 cores).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch (default: up to 256, at least 8 batches per epoch).
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long, default_value_t = 128)]
    embed_dim: usize,
    /// DeepCluster's fixed grayscale + Sobel input filter.
    #[arg(long)]
    sobel: bool,
    /// Clusters (DeepCluster, and each of Local Aggregation's k-means runs: default 10x the
    /// number of classes, or 100) or SwAV's prototypes (default 3x, or 30).
    #[arg(long)]
    k: Option<usize>,
    /// Learning rate (default: the method's, 0.05 for DeepCluster (0.01 with small-cnn-flat),
    /// 0.03 for NPID, 0.1 for figure-pairs).
    #[arg(long)]
    lr: Option<f64>,
    /// Softmax temperature: NPID's (default 0.07, or 0.1 for at most 10k images), SwAV's
    /// (0.3) or figure-pairs' (0.2).
    #[arg(long)]
    temperature: Option<f64>,
    /// DeepCluster: weight of a penalty that keeps each batch's embeddings isotropic (the
    /// covariance near a multiple of the identity), so that cosine similarity on the
    /// embedding weighs every direction alike (0: off, the paper's DeepCluster).
    #[arg(long, default_value_t = 0.0)]
    isotropy: f64,
    /// NPID with NCE and this many noise samples per batch (the paper's 4096) instead of the
    /// full softmax over the whole memory bank.
    #[arg(long, default_value_t = 0)]
    nce_noise: usize,
    /// With --nce-noise: estimate NCE's normalising constant Z on every batch instead of
    /// once on the first (the reference code's way, which collapsed on Fashion-MNIST).
    #[arg(long, requires = "nce_noise")]
    nce_z_every_batch: bool,
    /// Evaluate (kNN, k-means NMI/ARI/accuracy on the test set) every N epochs and after the
    /// last; each evaluation of 60k + 10k images takes about 20 s on 2 cores.
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    /// NPID and Local Aggregation: keep the learning rate constant instead of dropping it
    /// tenfold at 60% and 80% of the run (the reference code's schedule, made for 200 epochs).
    #[arg(long)]
    constant_lr: bool,
    /// Local Aggregation: NPID epochs before the LA loss (the warm start).
    #[arg(long, default_value_t = LaConfig::default().warmup_epochs)]
    la_warmup: usize,
    /// Local Aggregation: k-means runs per epoch whose clusters make the close neighbours (H).
    #[arg(long, default_value_t = LaConfig::default().kmeans_runs)]
    la_runs: usize,
    /// Local Aggregation: background neighbours per image (default 4096, or a tenth of the
    /// set when smaller).
    #[arg(long)]
    la_background: Option<usize>,
    /// Training views: `default` (mild crops, flips, jitter) or `strong` (SimCLR/SwAV-level
    /// crops, colour jitter, grayscale and blur). Default: strong for SwAV, default otherwise.
    #[arg(long, value_enum)]
    augment: Option<Views>,
    /// Hue jitter of the training views, as a fraction of the colour circle (strong views:
    /// 0.5, a whole turn; lower it where colour tells the classes apart).
    #[arg(long)]
    hue: Option<f32>,
    /// SwAV: small crops per image beside the two large ones (multi-crop).
    #[arg(long, default_value_t = SwavConfig::default().small_crops)]
    small_crops: usize,
    /// SwAV: embeddings queued from earlier batches for the Sinkhorn codes (default: none
    /// when a batch's two views outnumber the prototypes threefold, otherwise about three
    /// per prototype).
    #[arg(long)]
    queue: Option<usize>,
    /// SwAV: epochs of linear learning-rate warm-up before the cosine decay.
    #[arg(long, default_value_t = SwavConfig::default().warmup_epochs)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// `cpu` or `cuda:N` (CUDA needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The run directory to create (or continue with --resume).
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
}

/// The training views `--augment` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Views {
    Default,
    Strong,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run directory written by `host-train pretrain`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Which output to evaluate.
    #[arg(long, value_enum, default_value = "embedding")]
    layer: Layer,
    /// Evaluate on this labeled folder (class sub-folders) instead of the run's data: read
    /// at the run's size and colour, split by its --val-fraction and seed, normalised as
    /// the run was. For encoders that did not train on their data (figure-pairs), or to see
    /// how a model transfers.
    #[arg(long)]
    data: Option<String>,
}

pub fn device(spec: &str) -> Result<Device> {
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = spec.strip_prefix("cuda:") {
        let n: usize = n.parse().with_context(|| format!("bad device {spec}"))?;
        return host_train::device::cuda(n)
            .with_context(|| format!("{spec}: is host-train built with --features cuda?"));
    }
    bail!("unknown device {spec}: use cpu or cuda:N")
}

pub fn pretrain(args: &PretrainArgs) -> Result<()> {
    let dev = device(&args.device)?;
    if let Some(h) = args.hue.filter(|h| !(0.0..=0.5).contains(h)) {
        bail!("--hue must be between 0 and 0.5 (a whole turn), got {h}");
    }
    if !(args.isotropy.is_finite() && args.isotropy >= 0.0) {
        bail!(
            "--isotropy must be a finite weight of 0 or more, got {}",
            args.isotropy
        );
    }
    if args.isotropy > 0.0 && args.method != Method::Deepcluster {
        bail!(
            "--isotropy is a DeepCluster option; --method {:?} does not use it",
            args.method
        );
    }
    let run = open_run(args)?;
    let cfg = if args.resume {
        let mut cfg: RunConfig = run.read_json("config.json")?;
        cfg.epochs = args.epochs.unwrap_or(cfg.epochs);
        cfg
    } else {
        new_config(args)?
    };
    let (train, test) = load_images(&cfg.data)?;
    for s in &train.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    println!("{}", describe(&cfg, train.len(), &args.out));
    let train = TrainSet::new(train, cfg.normalization.clone())?;
    let test = test
        .map(|t| TrainSet::new(t, cfg.normalization.clone()))
        .transpose()?;
    let t0 = std::time::Instant::now();
    let done = run_pretrain(
        &cfg,
        &train,
        test.as_ref(),
        &run,
        &dev,
        args.resume,
        &mut |row| print_row(row, t0),
    )?;
    if let Some(r) = done.last_eval {
        println!(
            "final: kNN top-1 {:.4}{}, k-means NMI {:.4}, ARI {:.4}, accuracy {:.4} ({:.0} s)",
            r.knn_top1,
            whitened(r.knn_top1_whitened),
            r.nmi,
            r.ari,
            r.accuracy,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The run directory: the existing one with `--resume`, else a new one (never over a run).
fn open_run(args: &PretrainArgs) -> Result<RunDir> {
    if args.resume {
        return Ok(RunDir::open(&args.out)?);
    }
    if args.out.join("config.json").exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            args.out.display()
        );
    }
    Ok(RunDir::create(&args.out)?)
}

/// A new run's configuration: the flags, and for those not given, values chosen from the
/// data (printed).
fn new_config(args: &PretrainArgs) -> Result<RunConfig> {
    let mut auto = DataDefaults::survey(&args.data.data)?.limited(args.data.limit);
    if args.method == Method::FigurePairs {
        // Rendering and training cost grow with the square of the side; 32 px holds a
        // figure's outline.
        auto.size = auto.size.min(32);
    }
    let spec = args
        .data
        .spec(args.data.size.unwrap_or(auto.size), args.seed);
    let (train, _) = load_images(&spec)?;
    let arch = args.arch.unwrap_or(match args.method {
        Method::FigurePairs => Arch::SmallCnnIn,
        _ => Arch::SmallCnn,
    });
    let epochs = args.epochs.unwrap_or(match args.method {
        Method::FigurePairs => 40,
        _ => auto.epochs,
    });
    let batch_size = args.batch_size.unwrap_or(auto.batch_size);
    let classes = train.class_names.len().max(10);
    let k = args.k.unwrap_or(default_k(args.method, classes));
    let chosen: Vec<String> = [
        (
            args.data.size.is_none(),
            format!(
                "--size {} (median image side {})",
                spec.size,
                auto.median_side.map_or("unknown".into(), |s| s.to_string())
            ),
        ),
        (args.epochs.is_none(), format!("--epochs {epochs}")),
        (
            args.batch_size.is_none(),
            format!("--batch-size {batch_size}"),
        ),
        (args.k.is_none(), format!("--k {k}")),
    ]
    .into_iter()
    .filter_map(|(auto, text)| auto.then_some(text))
    .collect();
    if !chosen.is_empty() {
        println!(
            "chosen from the data ({} images): {}",
            auto.images,
            chosen.join(", ")
        );
    }
    Ok(RunConfig {
        method: args.method,
        arch,
        epochs,
        batch_size,
        embed_dim: args.embed_dim,
        sobel: args.sobel,
        seed: args.seed,
        normalization: Normalization::measure(&train),
        input: (train.channels, train.height, train.width),
        augment: views(args),
        deepcluster: {
            let d = DeepClusterConfig::for_arch(arch);
            DeepClusterConfig {
                k,
                lr: args.lr.unwrap_or(d.lr),
                isotropy: args.isotropy,
                ..d
            }
        },
        npid: {
            let d = NpidConfig::default();
            NpidConfig {
                lr: args.lr.unwrap_or(d.lr),
                temperature: args.temperature,
                nce_noise: args.nce_noise,
                nce_z_every_batch: args.nce_z_every_batch,
                lr_steps: if args.constant_lr { vec![] } else { d.lr_steps },
                ..d
            }
        },
        la: LaConfig {
            warmup_epochs: args.la_warmup,
            background_k: args.la_background,
            kmeans_k: k,
            kmeans_runs: args.la_runs,
        },
        swav: {
            let d = SwavConfig::default();
            SwavConfig {
                prototypes: k,
                temperature: args.temperature.unwrap_or(d.temperature),
                small_crops: args.small_crops,
                queue_length: args.queue.unwrap_or(SwavConfig::queue_for(
                    batch_size,
                    k,
                    train.len(),
                )),
                lr: args.lr.unwrap_or(d.lr),
                warmup_epochs: args.warmup_epochs,
                ..d
            }
        },
        figure_pairs: {
            let d = FigurePairsConfig::default();
            FigurePairsConfig {
                temperature: args.temperature.unwrap_or(d.temperature),
                lr: args.lr.unwrap_or(d.lr),
                ..d
            }
        },
        data: spec,
        eval_every: args.eval_every.max(1),
    })
}

/// The clusters or prototypes a method gets without `--k`: 10x the classes for DeepCluster
/// and Local Aggregation (DeepCluster's 10,000 for ImageNet's 1,000 classes), 3x for SwAV
/// (the paper's 3,000); on a few thousand images 100 prototypes learned slower than 30.
fn default_k(method: Method, classes: usize) -> usize {
    match method {
        Method::Swav => 3 * classes,
        _ => 10 * classes,
    }
}

/// `--augment` (strong by default for SwAV) with `--hue` applied.
fn views(args: &PretrainArgs) -> AugmentConfig {
    let views = match args.augment {
        Some(Views::Strong) => AugmentConfig::strong(),
        Some(Views::Default) => AugmentConfig::default(),
        None if args.method == Method::Swav => AugmentConfig::strong(),
        None => AugmentConfig::default(),
    };
    AugmentConfig {
        hue: args.hue.unwrap_or(views.hue),
        ..views
    }
}

/// One line saying what the run does.
fn describe(cfg: &RunConfig, images: usize, out: &std::path::Path) -> String {
    let method = match cfg.method {
        Method::Deepcluster if cfg.deepcluster.isotropy > 0.0 => format!(
            "k = {}, isotropy weight {}",
            cfg.deepcluster.k, cfg.deepcluster.isotropy
        ),
        Method::Deepcluster => format!("k = {}", cfg.deepcluster.k),
        Method::Npid => format!("tau = {}", cfg.npid.temperature_for(images)),
        Method::La => format!(
            "tau = {}, LA after {} NPID epoch(s), k = {} x {} runs, {} background neighbours",
            cfg.npid.temperature_for(images),
            cfg.la.warmup_epochs,
            cfg.la.kmeans_k,
            cfg.la.kmeans_runs,
            cfg.la.background_for(images)
        ),
        Method::Swav => format!(
            "{} prototypes, tau = {}, 2 + {} crops, queue {}, lr {} (warm-up {} epochs, then cosine)",
            cfg.swav.prototypes,
            cfg.swav.temperature,
            cfg.swav.small_crops,
            cfg.swav.queue_length,
            cfg.swav.lr,
            cfg.swav.warmup_epochs
        ),
        Method::FigurePairs => format!(
            "{} generated pairs per epoch, tau = {}, lr {} (warm-up {} epoch, then cosine)",
            cfg.figure_pairs.pairs_per_epoch,
            cfg.figure_pairs.temperature,
            cfg.figure_pairs.lr,
            cfg.figure_pairs.warmup_epochs
        ),
    };
    format!(
        "{:?} on {} ({images} images of {}x{}x{}), {:?}, {} epochs, {method}, run in {}",
        cfg.method,
        cfg.data.source,
        cfg.input.0,
        cfg.input.1,
        cfg.input.2,
        cfg.arch,
        cfg.epochs,
        out.display()
    )
}

fn print_row(row: &MetricsRow, t0: std::time::Instant) {
    let t = t0.elapsed().as_secs_f64();
    match row {
        MetricsRow::Train { epoch, loss, images_per_s, non_empty_clusters, nmi_vs_previous, .. } => {
            let clusters = non_empty_clusters.map_or(String::new(), |c| format!(", {c} clusters"));
            let nmi = nmi_vs_previous.map_or(String::new(), |v| format!(", NMI vs previous {v:.4}"));
            println!("[{t:6.0} s] epoch {epoch}: loss {loss:.4}, {images_per_s:.0} img/s{clusters}{nmi}")
        }
        MetricsRow::Eval { epoch, knn_top1, knn_top1_whitened, nmi, ari, accuracy } => println!(
            "[{t:6.0} s] after {epoch} epochs: kNN {knn_top1:.4}{}, NMI {nmi:.4}, ARI {ari:.4}, accuracy {accuracy:.4}",
            whitened(*knn_top1_whitened)
        ),
        MetricsRow::LabelFree { epoch, k, kmeans_objective, cluster_entropy, nmi_vs_previous } => println!(
            "[{t:6.0} s] after {epoch} epochs (no labels): k-means k = {k} objective {kmeans_objective:.1}, size entropy {cluster_entropy:.3}{}",
            nmi_vs_previous.map_or(String::new(), |v| format!(", NMI vs previous {v:.4}"))
        ),
    }
}

fn whitened(knn: Option<f64>) -> String {
    knn.map_or(String::new(), |v| format!(" (whitened {v:.4})"))
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A run directory written by `host-train pretrain` (only its metrics.jsonl is read).
    #[arg(long)]
    checkpoint: PathBuf,
}

pub fn plot(args: &PlotArgs) -> Result<()> {
    let run = RunDir::open(&args.checkpoint)?;
    let rows: Vec<MetricsRow> = run.read_metrics()?;
    let out = run.path("plots/metrics.png");
    host_train::plot::write_metrics_plot(&rows, &out)?;
    println!("{} ({} rows)", out.display(), rows.len());
    Ok(())
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let dev = device(&args.device)?;
    let run = RunDir::open(&args.checkpoint)?;
    let (cfg, encoder) = load_encoder(&run, &dev)?;
    let spec = match &args.data {
        // Another folder splits itself: the run's --val folder belongs to the run's data.
        Some(source) => DataSpec {
            source: source.clone(),
            val: None,
            ..cfg.data.clone()
        },
        None => cfg.data.clone(),
    };
    let (train, test) = load_images(&spec)?;
    let (Some(test), Some(_)) = (test, train.labels.as_ref()) else {
        bail!(
            "{}: evaluation needs labels: Fashion-MNIST, or a folder with one sub-folder per \
             class (split by --val-fraction at pretraining, or given a --val folder)",
            spec.source
        );
    };
    let train = TrainSet::new(train, cfg.normalization.clone())?;
    let test = TrainSet::new(test, cfg.normalization.clone())?;
    let e = encoder.as_ref();
    let tf = extract_layer(e, args.layer, &train, 512, &dev, "train features")?;
    let qf = extract_layer(e, args.layer, &test, 512, &dev, "test features")?;
    let r = evaluate(
        &tf,
        train.images.labels.as_deref().unwrap_or_default(),
        &qf,
        test.images.labels.as_deref().unwrap_or_default(),
        args.layer.dim(e),
        cfg.seed,
    )?;
    println!(
        "{:?}: kNN top-1 {:.4}{}, k-means (k = classes) NMI {:.4}, ARI {:.4}, accuracy {:.4}",
        args.layer,
        r.knn_top1,
        whitened(r.knn_top1_whitened),
        r.nmi,
        r.ari,
        r.accuracy
    );
    Ok(())
}
