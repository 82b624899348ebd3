//! The pretraining loop shared by the methods: run directory, checkpoints and resume,
//! per-epoch evaluation, metrics.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use models::metrics::normalized_mutual_info;
use models::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::dataset::{DataSpec, Normalization, TrainSet};
use crate::encoders::{Arch, EmbeddingWhitening, Encoder, WhitenedEncoder};
use crate::eval::{evaluate, label_free, EvalReport};
use crate::features::extract;
use crate::gallery::{write_gallery, GalleryConfig};
use crate::methods::deepcluster::{self, DeepClusterConfig, EpochStats};
use crate::methods::feature_bank::FeatureBank;
use crate::methods::figure_pairs::{self, FigurePairsConfig, FigurePairsEpoch};
use crate::methods::local_aggregation::{self, LaConfig};
use crate::methods::npid::{self, NpidConfig};
use crate::methods::swav::{self, FeatureQueue, ProjectionHead, Prototypes, SwavConfig};
use crate::methods::Method;
use crate::optim::SgdMomentum;
pub use crate::run_dir::MetricsRow;
use crate::run_dir::{labels_to_tensor, restore_momentum, sorted_vars, tensor_to_labels, RunDir};
use crate::seeded_init::seeded_var_builder;
use crate::TrainError;
use candle_nn::Optimizer;

/// Everything that defines a run; written to `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub method: Method,
    pub arch: Arch,
    pub data: DataSpec,
    pub epochs: usize,
    pub batch_size: usize,
    pub embed_dim: usize,
    pub sobel: bool,
    pub seed: u64,
    /// Measured on the training images; the manifest of an exported model repeats it.
    pub normalization: Normalization,
    /// (channels, height, width) of the network input.
    pub input: (usize, usize, usize),
    pub augment: AugmentConfig,
    pub deepcluster: DeepClusterConfig,
    #[serde(default)]
    pub npid: NpidConfig,
    #[serde(default)]
    pub la: LaConfig,
    #[serde(default)]
    pub swav: SwavConfig,
    #[serde(default)]
    pub figure_pairs: FigurePairsConfig,
    /// Evaluate every this many epochs (and after the last); each evaluation extracts the
    /// test features and runs kNN and k-means, about 20 s on 60k images on 2 cores.
    #[serde(default = "every_epoch")]
    pub eval_every: usize,
}

fn every_epoch() -> usize {
    1
}

pub fn build_encoder(
    cfg: &RunConfig,
    vm: &VarMap,
    device: &Device,
) -> Result<Box<dyn Encoder>, TrainError> {
    let vb = seeded_var_builder(vm, cfg.seed, DType::F32, device);
    Ok(cfg
        .arch
        .build(cfg.input, cfg.embed_dim, cfg.sobel, vb.pp("encoder"))?)
}

/// Watches epoch losses: when the loss has risen `patience` epochs in a row, the run's
/// learning rate is halved (and the run says so). A non-finite loss stops the run instead.
#[derive(Debug, Clone)]
pub struct LossWatch {
    patience: usize,
    rises: usize,
    last: Option<f64>,
    /// Multiplies every method's learning rate.
    pub lr_scale: f64,
}

impl LossWatch {
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            rises: 0,
            last: None,
            lr_scale: 1.0,
        }
    }

    /// Records an epoch's loss; true when it halved the rate.
    pub fn observe(&mut self, loss: f64) -> bool {
        let rose = self.last.is_some_and(|l| loss > l);
        self.last = Some(loss);
        self.rises = if rose { self.rises + 1 } else { 0 };
        if self.rises < self.patience {
            return false;
        }
        self.rises = 0;
        self.lr_scale *= 0.5;
        true
    }
}

/// A non-finite epoch loss ends the run before that epoch's checkpoint replaces the last one.
fn check_finite(epoch: usize, loss: f64) -> Result<(), TrainError> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Diverged { epoch, loss })
    }
}

fn eval_row(
    encoder: &dyn Encoder,
    train_feats: &[f32],
    train: &TrainSet,
    test: Option<&TrainSet>,
    epoch: usize,
    cfg: &RunConfig,
    device: &Device,
) -> Result<Option<(MetricsRow, EvalReport)>, TrainError> {
    let (Some(test), Some(train_labels)) = (test, train.images.labels.as_ref()) else {
        return Ok(None);
    };
    let Some(test_labels) = test.images.labels.as_ref() else {
        return Ok(None);
    };
    let test_feats = extract(encoder, test, 512, device, "test features")?;
    let r = evaluate(
        train_feats,
        train_labels,
        &test_feats,
        test_labels,
        encoder.embed_dim(),
        cfg.seed,
    )?;
    let row = MetricsRow::Eval {
        epoch,
        knn_top1: r.knn_top1,
        knn_top1_whitened: r.knn_top1_whitened,
        nmi: r.nmi,
        ari: r.ari,
        accuracy: r.accuracy,
    };
    Ok(Some((row, r)))
}

/// What a finished run leaves in memory.
#[derive(Debug)]
pub struct Pretrained {
    pub encoder: Box<dyn Encoder>,
    /// The evaluation after the last epoch, when labels exist.
    pub last_eval: Option<EvalReport>,
}

/// What a method carries from epoch to epoch besides the network.
enum MethodState {
    /// DeepCluster: the previous epoch's pseudo-labels.
    Clusters { previous: Option<Vec<u32>> },
    /// NPID and Local Aggregation: one embedding per image.
    Bank(FeatureBank),
    /// SwAV: the prototypes (also in the variable map) and the queue.
    Swav {
        head: ProjectionHead,
        prototypes: Prototypes,
        queue: FeatureQueue,
    },
    /// Figure pairs: the projection head (also in the variable map).
    FigurePairs { head: ProjectionHead },
}

/// The network, its optimiser and where a run writes: what every epoch uses.
struct Trainer<'a> {
    cfg: &'a RunConfig,
    train: &'a TrainSet,
    run: &'a RunDir,
    device: &'a Device,
    vm: VarMap,
    encoder: Box<dyn Encoder>,
    names: Vec<String>,
    opt: SgdMomentum,
    watch: LossWatch,
}

impl Trainer<'_> {
    fn checkpoint(&self, epoch: usize, extra: Vec<(&str, Tensor)>) -> Result<(), TrainError> {
        let mut tensors = vec![("epoch", Tensor::new(&[epoch as u32], &Device::Cpu)?)];
        tensors.extend(extra);
        self.run
            .save_checkpoint(&self.vm, &self.opt, &self.names, &tensors)
    }

    /// After epoch `epoch` (1-based): refuses a non-finite loss before checkpointing (with
    /// the method's `extra` state), then the epoch's training row.
    fn close_epoch(
        &self,
        epoch: usize,
        stats: &EpochStats,
        extra: Vec<(&str, Tensor)>,
        t0: std::time::Instant,
    ) -> Result<MetricsRow, TrainError> {
        check_finite(epoch, stats.loss)?;
        self.checkpoint(epoch, extra)?;
        Ok(self.train_row(epoch, stats, t0))
    }

    fn train_row(&self, epoch: usize, stats: &EpochStats, t0: std::time::Instant) -> MetricsRow {
        MetricsRow::Train {
            epoch,
            loss: stats.loss,
            loss_start: stats.loss_start,
            loss_end: stats.loss_end,
            images_per_s: stats.images as f64 / stats.seconds,
            kmeans_objective: None,
            non_empty_clusters: None,
            nmi_vs_previous: None,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }

    /// One epoch (0-based `epoch`) of the run's method; `feats` are the current training
    /// embeddings when the epoch began with them.
    fn epoch(
        &mut self,
        state: &mut MethodState,
        epoch: usize,
        feats: Option<&[f32]>,
    ) -> Result<MetricsRow, TrainError> {
        let seed = self.cfg.seed.wrapping_add(epoch as u64 * 7919);
        let row = match state {
            MethodState::Bank(bank) => self.bank_epoch(bank, epoch, seed),
            MethodState::Clusters { previous } => {
                let feats =
                    feats.ok_or_else(|| TrainError::Config("DeepCluster needs features".into()))?;
                self.deepcluster_epoch(previous, feats, epoch, seed)
            }
            MethodState::Swav {
                head,
                prototypes,
                queue,
            } => self.swav_epoch(head, prototypes, queue, epoch, seed),
            MethodState::FigurePairs { head } => self.figure_pairs_epoch(head, epoch, seed),
        }?;
        if let MetricsRow::Train { loss, .. } = &row {
            if self.watch.observe(*loss) {
                tracing::warn!(
                    epoch = epoch + 1,
                    lr_scale = self.watch.lr_scale,
                    "the loss rose {} epochs in a row: learning rate halved",
                    self.watch.patience
                );
            }
        }
        Ok(row)
    }

    fn bank_epoch(
        &mut self,
        bank: &mut FeatureBank,
        epoch: usize,
        seed: u64,
    ) -> Result<MetricsRow, TrainError> {
        let (cfg, t0) = (self.cfg, std::time::Instant::now());
        let close = if cfg.method == Method::La && epoch >= cfg.la.warmup_epochs {
            Some(local_aggregation::close_neighbours(bank, &cfg.la, seed)?)
        } else {
            None
        };
        self.opt
            .set_learning_rate(cfg.npid.lr_for_epoch(epoch, cfg.epochs) * self.watch.lr_scale);
        let stats = npid::train_epoch(
            self.encoder.as_ref(),
            &mut self.opt,
            self.train,
            bank,
            &cfg.npid,
            cfg.batch_size,
            &cfg.augment,
            seed,
            self.device,
            close.as_ref(),
        )?;
        let saved = Tensor::from_slice(&bank.rows, (bank.len(), bank.dim), &Device::Cpu)?;
        self.close_epoch(epoch + 1, &stats, vec![("memory_bank", saved)], t0)
    }

    fn deepcluster_epoch(
        &mut self,
        previous: &mut Option<Vec<u32>>,
        feats: &[f32],
        epoch: usize,
        seed: u64,
    ) -> Result<MetricsRow, TrainError> {
        let (cfg, t0) = (self.cfg, std::time::Instant::now());
        self.opt
            .set_learning_rate(cfg.deepcluster.lr * self.watch.lr_scale);
        let clustering = deepcluster::cluster(
            feats,
            self.encoder.embed_dim(),
            &cfg.deepcluster,
            seed,
            self.device,
        )?;
        write_gallery(
            &self.train.images,
            &clustering.labels,
            &GalleryConfig::default(),
            &self.run.path("plots/gallery.png"),
        )?;
        let nmi_vs_previous = previous
            .as_ref()
            .map(|p| normalized_mutual_info(p, &clustering.labels))
            .transpose()?;
        let n = cfg
            .deepcluster
            .samples_per_epoch
            .unwrap_or(self.train.len());
        let order = deepcluster::sample_uniform_over_clusters(
            &clustering.labels,
            cfg.deepcluster.k,
            n,
            &mut Rng::new(seed),
        );
        let stats = deepcluster::train_epoch(
            self.encoder.as_ref(),
            &mut self.opt,
            self.train,
            &clustering.labels,
            &order,
            &cfg.deepcluster,
            cfg.batch_size,
            &cfg.augment,
            seed,
            self.device,
        )?;
        let assignments = vec![("assignments", labels_to_tensor(&clustering.labels)?)];
        let mut row = self.close_epoch(epoch + 1, &stats, assignments, t0)?;
        if let MetricsRow::Train {
            kmeans_objective,
            non_empty_clusters,
            nmi_vs_previous: nmi,
            ..
        } = &mut row
        {
            *kmeans_objective = Some(clustering.objective);
            *non_empty_clusters = Some(clustering.non_empty);
            *nmi = nmi_vs_previous;
        }
        *previous = Some(clustering.labels);
        Ok(row)
    }

    fn swav_epoch(
        &mut self,
        head: &ProjectionHead,
        prototypes: &Prototypes,
        queue: &mut FeatureQueue,
        epoch: usize,
        seed: u64,
    ) -> Result<MetricsRow, TrainError> {
        let (cfg, t0) = (self.cfg, std::time::Instant::now());
        let small = AugmentConfig {
            resized_crop_scale: AugmentConfig::small_crop().resized_crop_scale,
            ..cfg.augment
        };
        let stats = swav::train_epoch(
            self.encoder.as_ref(),
            &mut self.opt,
            self.train,
            cfg.batch_size,
            swav::SwavEpoch {
                cfg: &cfg.swav,
                head,
                prototypes,
                queue,
                large: &cfg.augment,
                small: &small,
                epoch,
                epochs: cfg.epochs,
                lr_scale: self.watch.lr_scale,
            },
            seed,
            self.device,
        )?;
        self.close_epoch(epoch + 1, &stats, vec![], t0)
    }

    fn figure_pairs_epoch(
        &mut self,
        head: &ProjectionHead,
        epoch: usize,
        seed: u64,
    ) -> Result<MetricsRow, TrainError> {
        let (cfg, t0) = (self.cfg, std::time::Instant::now());
        let stats = figure_pairs::train_epoch(
            self.encoder.as_ref(),
            &mut self.opt,
            self.train,
            cfg.batch_size,
            FigurePairsEpoch {
                cfg: &cfg.figure_pairs,
                head,
                epoch,
                epochs: cfg.epochs,
                lr_scale: self.watch.lr_scale,
            },
            seed,
            self.device,
        )?;
        self.close_epoch(epoch + 1, &stats, vec![], t0)
    }
}

/// The label-free figures of one epoch's embeddings, and its clustering for the next.
fn label_free_row(
    feats: &[f32],
    dim: usize,
    cfg: &RunConfig,
    epoch: usize,
    previous: &mut Option<Vec<u32>>,
) -> Result<MetricsRow, TrainError> {
    let k = cfg.deepcluster.k;
    let r = label_free(feats, dim, k, previous.as_deref(), cfg.seed)?;
    *previous = Some(r.labels);
    Ok(MetricsRow::LabelFree {
        epoch,
        k: r.k,
        kmeans_objective: r.objective,
        cluster_entropy: r.size_entropy,
        nmi_vs_previous: r.nmi_vs_previous,
    })
}

/// Restores the optimiser, the epoch reached and the method's state from the last checkpoint.
fn resume_state(t: &mut Trainer<'_>, state: &mut MethodState) -> Result<usize, TrainError> {
    t.run.load_model(&mut t.vm)?;
    let saved = t.run.load_state(t.device)?;
    restore_momentum(&mut t.opt, &t.names, &saved)?;
    let start = saved
        .get("epoch")
        .map(|t| t.to_dtype(DType::U32).and_then(|t| t.to_vec1::<u32>()))
        .transpose()?
        .and_then(|v| v.first().copied())
        .unwrap_or(0) as usize;
    match state {
        MethodState::Clusters { previous } => {
            *previous = saved.get("assignments").map(tensor_to_labels).transpose()?;
        }
        MethodState::Bank(bank) => {
            if let Some(rows) = saved.get("memory_bank") {
                if rows.dims() != [bank.len(), bank.dim] {
                    return Err(TrainError::Checkpoint {
                        path: t.run.path("state.safetensors"),
                        reason: format!(
                            "memory bank {:?} does not fit {} images x {}",
                            rows.dims(),
                            bank.len(),
                            bank.dim
                        ),
                    });
                }
                bank.rows = rows.flatten_all()?.to_vec1()?;
            }
        }
        MethodState::Swav { prototypes, .. } => prototypes.normalize()?,
        MethodState::FigurePairs { .. } => {}
    }
    tracing::info!(epoch = start, run = %t.run.path("").display(), "resumed");
    Ok(start)
}

/// Runs (or resumes) pretraining in `run`.
pub fn pretrain(
    cfg: &RunConfig,
    train: &TrainSet,
    test: Option<&TrainSet>,
    run: &RunDir,
    device: &Device,
    resume: bool,
    log: &mut dyn FnMut(&MetricsRow),
) -> Result<Pretrained, TrainError> {
    let vm = VarMap::new();
    let encoder = build_encoder(cfg, &vm, device)?;
    let dim = encoder.embed_dim();
    let mut state = match cfg.method {
        Method::Deepcluster => MethodState::Clusters { previous: None },
        Method::Npid | Method::La => {
            MethodState::Bank(FeatureBank::new(train.len(), dim, cfg.seed))
        }
        Method::Swav => MethodState::Swav {
            // Created before the optimiser collects the variables, so that it moves them.
            head: ProjectionHead::in_varmap(&vm, "swav", dim, cfg.seed, device)?,
            prototypes: Prototypes::new(&vm, cfg.swav.prototypes, dim, cfg.seed, device)?,
            queue: FeatureQueue::new(cfg.swav.queue_length, dim),
        },
        Method::FigurePairs => MethodState::FigurePairs {
            head: figure_pairs::projection_head(&vm, dim, cfg.seed, device)?,
        },
    };
    let (names, vars) = sorted_vars(&vm);
    let sgd = match cfg.method {
        Method::Deepcluster => cfg.deepcluster.sgd(),
        Method::Npid | Method::La => cfg.npid.sgd(),
        Method::Swav => cfg.swav.sgd(),
        Method::FigurePairs => cfg.figure_pairs.sgd(),
    };
    let opt = SgdMomentum::new(vars, sgd)?;
    let mut t = Trainer {
        cfg,
        train,
        run,
        device,
        vm,
        encoder,
        names,
        opt,
        watch: LossWatch::new(3),
    };
    let start = if resume {
        resume_state(&mut t, &mut state)?
    } else {
        run.write_json("config.json", cfg)?;
        0
    };
    let mut emit = |row: MetricsRow| -> Result<(), TrainError> {
        run.append_metrics(&row)?;
        log(&row);
        // Redrawn from the file, so a resumed run's plot holds its earlier epochs too.
        crate::plot::write_metrics_plot(&run.read_metrics()?, &run.path("plots/metrics.png"))
    };

    let (mut last_eval, mut label_free_previous) = (None, None);
    for epoch in start..=cfg.epochs {
        let last = epoch == cfg.epochs;
        // A resumed run's first epoch was evaluated at the end of the run it continues.
        let eval_now = (last || epoch % cfg.eval_every.max(1) == 0) && !(resume && epoch == start);
        let needs_features = (!last && cfg.method == Method::Deepcluster) || eval_now;
        let feats = if needs_features {
            Some(extract(t.encoder.as_ref(), train, 512, device, "features")?)
        } else {
            None
        };
        if let Some(f) = feats.as_deref().filter(|_| eval_now) {
            match eval_row(t.encoder.as_ref(), f, train, test, epoch, cfg, device)? {
                Some((row, r)) => {
                    emit(row)?;
                    last_eval = Some(r);
                }
                None => emit(label_free_row(
                    f,
                    dim,
                    cfg,
                    epoch,
                    &mut label_free_previous,
                )?)?,
            }
        }
        if last {
            break;
        }
        let row = t.epoch(&mut state, epoch, feats.as_deref())?;
        emit(row)?;
    }
    Ok(Pretrained {
        encoder: t.encoder,
        last_eval,
    })
}

/// Where a run keeps the whitening of its embedding (`host-train cluster-head --whiten`).
pub const WHITENING_FILE: &str = "whitening.json";

/// Loads a finished run's encoder for evaluation or export, followed by the run's embedding
/// whitening when it has one: the encoder as the board will run it.
pub fn load_encoder(
    run: &RunDir,
    device: &Device,
) -> Result<(RunConfig, Box<dyn Encoder>), TrainError> {
    let (cfg, encoder) = load_trained_encoder(run, device)?;
    if !run.path(WHITENING_FILE).exists() {
        return Ok((cfg, encoder));
    }
    let whitening: EmbeddingWhitening = run.read_json(WHITENING_FILE)?;
    let encoder =
        WhitenedEncoder::new(encoder, whitening, device).map_err(|source| TrainError::Tensors {
            path: run.path(WHITENING_FILE),
            source,
        })?;
    Ok((cfg, Box::new(encoder)))
}

/// Where a run keeps its encoder after `host-train cluster-head --finetune-steps` (SCAN's
/// clustering step, which trains the encoder with the head); evaluation and export use it in
/// place of the pretrained `model.safetensors`, which stays as pretraining left it.
pub const FINETUNED_FILE: &str = "finetuned.safetensors";

/// Loads a finished run's encoder as training left it, without any whitening: the
/// fine-tuned encoder when the run has one, else the pretrained one.
pub fn load_trained_encoder(
    run: &RunDir,
    device: &Device,
) -> Result<(RunConfig, Box<dyn Encoder>), TrainError> {
    let (cfg, mut vm, encoder) = load_pretrained_encoder(run, device)?;
    if run.path(FINETUNED_FILE).exists() {
        run.load_weights(FINETUNED_FILE, &mut vm)?;
    }
    Ok((cfg, encoder))
}

/// Loads a finished run's encoder as pretraining left it, with the variables it trains.
pub fn load_pretrained_encoder(
    run: &RunDir,
    device: &Device,
) -> Result<(RunConfig, VarMap, Box<dyn Encoder>), TrainError> {
    let cfg: RunConfig = run.read_json("config.json")?;
    let mut vm = VarMap::new();
    let encoder = build_encoder(&cfg, &vm, device)?;
    run.load_model(&mut vm)?;
    Ok((cfg, vm, encoder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_rising_epochs_halve_the_rate_and_a_fall_resets_the_count() {
        let mut w = LossWatch::new(3);
        let halved: Vec<bool> = [4.4, 5.0, 6.0, 6.5, 7.0, 6.0, 6.1, 6.2, 6.3]
            .iter()
            .map(|&l| w.observe(l))
            .collect();
        assert_eq!(
            halved,
            [false, false, false, true, false, false, false, false, true]
        );
        assert_eq!(w.lr_scale, 0.25);
    }

    #[test]
    fn a_diverged_epoch_is_an_error_that_keeps_the_last_checkpoint() {
        assert!(check_finite(2, 1.5).is_ok());
        for loss in [f64::NAN, f64::INFINITY] {
            let e = check_finite(3, loss).unwrap_err().to_string();
            assert!(
                e.starts_with("epoch 3: the loss became") && e.contains("--lr"),
                "{e}"
            );
        }
    }
}
