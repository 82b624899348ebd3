//! The pretraining loop shared by the methods: run directory, checkpoints and resume,
//! per-epoch evaluation, metrics.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use models::metrics::normalized_mutual_info;
use models::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::dataset::{DataSpec, Normalization, TrainSet};
use crate::encoders::{Arch, Encoder};
use crate::eval::{evaluate, EvalReport};
use crate::features::extract;
use crate::gallery::{write_gallery, GalleryConfig};
use crate::methods::deepcluster::{self, DeepClusterConfig};
use crate::methods::local_aggregation::{self, LaConfig};
use crate::methods::npid::{self, MemoryBank, NpidConfig};
use crate::methods::Method;
use crate::optim::SgdMomentum;
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
    /// Evaluate every this many epochs (and after the last); each evaluation extracts the
    /// test features and runs kNN and k-means, about 20 s on 60k images on 2 cores.
    #[serde(default = "every_epoch")]
    pub eval_every: usize,
}

fn every_epoch() -> usize {
    1
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum MetricsRow {
    /// Training epoch `epoch` (1-based) finished.
    Train {
        epoch: usize,
        loss: f64,
        /// Mean loss of the first and last quarter of the epoch's batches.
        #[serde(default)]
        loss_start: f64,
        #[serde(default)]
        loss_end: f64,
        images_per_s: f64,
        /// DeepCluster only: the k-means objective and non-empty clusters of this epoch.
        kmeans_objective: Option<f64>,
        non_empty_clusters: Option<usize>,
        /// NMI between this epoch's pseudo-labels and the previous epoch's.
        nmi_vs_previous: Option<f64>,
        seconds: f64,
    },
    /// The model after `epoch` epochs (0: at initialisation), against held-out labels.
    Eval {
        epoch: usize,
        knn_top1: f64,
        /// kNN of the PCA-whitened features (see `eval`); absent in runs from before it.
        #[serde(default)]
        knn_top1_whitened: Option<f64>,
        nmi: f64,
        ari: f64,
        accuracy: f64,
    },
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
    let mut vm = VarMap::new();
    let encoder = build_encoder(cfg, &vm, device)?;
    let (names, vars) = sorted_vars(&vm);
    let sgd = match cfg.method {
        Method::Deepcluster => cfg.deepcluster.sgd(),
        Method::Npid | Method::La => cfg.npid.sgd(),
    };
    let mut opt = SgdMomentum::new(vars, sgd)?;
    let mut bank = matches!(cfg.method, Method::Npid | Method::La)
        .then(|| MemoryBank::new(train.len(), encoder.embed_dim(), cfg.seed));
    let (mut start, mut previous): (usize, Option<Vec<u32>>) = (0, None);
    if resume {
        run.load_model(&mut vm)?;
        let state = run.load_state(device)?;
        restore_momentum(&mut opt, &names, &state)?;
        start = state
            .get("epoch")
            .map(|t| t.to_dtype(DType::U32).and_then(|t| t.to_vec1::<u32>()))
            .transpose()?
            .and_then(|v| v.first().copied())
            .unwrap_or(0) as usize;
        previous = state.get("assignments").map(tensor_to_labels).transpose()?;
        if let (Some(bank), Some(saved)) = (bank.as_mut(), state.get("memory_bank")) {
            if saved.dims() != [bank.len(), bank.dim] {
                return Err(TrainError::Checkpoint {
                    path: run.path("state.safetensors"),
                    reason: format!(
                        "memory bank {:?} does not fit {} images x {}",
                        saved.dims(),
                        bank.len(),
                        bank.dim
                    ),
                });
            }
            bank.rows = saved.flatten_all()?.to_vec1()?;
        }
        tracing::info!(epoch = start, run = %run.path("").display(), "resumed");
    } else {
        run.write_json("config.json", cfg)?;
    }
    let mut emit = |row: MetricsRow| -> Result<(), TrainError> {
        run.append_metrics(&row)?;
        log(&row);
        // Redrawn from the file, so a resumed run's plot holds its earlier epochs too.
        crate::plot::write_metrics_plot(&run.read_metrics()?, &run.path("plots/metrics.png"))
    };

    let mut last_eval = None;
    for epoch in start..cfg.epochs {
        // A resumed run's first epoch was evaluated at the end of the run it continues.
        let eval_now =
            test.is_some() && epoch % cfg.eval_every.max(1) == 0 && !(resume && epoch == start);
        let needs_features = cfg.method == Method::Deepcluster || eval_now;
        let feats = if needs_features {
            Some(extract(encoder.as_ref(), train, 512, device, "features")?)
        } else {
            None
        };
        if let Some(f) = feats.as_ref().filter(|_| eval_now) {
            if let Some((row, r)) = eval_row(encoder.as_ref(), f, train, test, epoch, cfg, device)?
            {
                emit(row)?;
                last_eval = Some(r);
            }
        }
        let t0 = std::time::Instant::now();
        let seed = cfg.seed.wrapping_add(epoch as u64 * 7919);
        let epoch_tensor = Tensor::new(&[epoch as u32 + 1], &Device::Cpu)?;
        let row = match (&cfg.method, &mut bank) {
            (Method::Npid | Method::La, Some(bank)) => {
                let close = if cfg.method == Method::La && epoch >= cfg.la.warmup_epochs {
                    Some(local_aggregation::close_neighbours(bank, &cfg.la, seed)?)
                } else {
                    None
                };
                opt.set_learning_rate(cfg.npid.lr_for_epoch(epoch, cfg.epochs));
                let stats = npid::train_epoch(
                    encoder.as_ref(),
                    &mut opt,
                    train,
                    bank,
                    &cfg.npid,
                    cfg.batch_size,
                    &cfg.augment,
                    seed,
                    device,
                    close.as_ref(),
                )?;
                check_finite(epoch + 1, stats.loss)?;
                let saved = Tensor::from_slice(&bank.rows, (bank.len(), bank.dim), &Device::Cpu)?;
                run.save_checkpoint(
                    &vm,
                    &opt,
                    &names,
                    &[("epoch", epoch_tensor), ("memory_bank", saved)],
                )?;
                MetricsRow::Train {
                    epoch: epoch + 1,
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
            _ => {
                let feats = feats
                    .as_deref()
                    .ok_or_else(|| TrainError::Config("DeepCluster needs features".into()))?;
                let clustering = deepcluster::cluster(
                    feats,
                    encoder.embed_dim(),
                    &cfg.deepcluster,
                    seed,
                    device,
                )?;
                write_gallery(
                    &train.images,
                    &clustering.labels,
                    &GalleryConfig::default(),
                    &run.path("plots/gallery.png"),
                )?;
                let nmi_vs_previous = previous
                    .as_ref()
                    .map(|p| normalized_mutual_info(p, &clustering.labels))
                    .transpose()?;
                let n = cfg.deepcluster.samples_per_epoch.unwrap_or(train.len());
                let order = deepcluster::sample_uniform_over_clusters(
                    &clustering.labels,
                    cfg.deepcluster.k,
                    n,
                    &mut Rng::new(seed),
                );
                let stats = deepcluster::train_epoch(
                    encoder.as_ref(),
                    &mut opt,
                    train,
                    &clustering.labels,
                    &order,
                    &cfg.deepcluster,
                    cfg.batch_size,
                    &cfg.augment,
                    seed,
                    device,
                )?;
                check_finite(epoch + 1, stats.loss)?;
                run.save_checkpoint(
                    &vm,
                    &opt,
                    &names,
                    &[
                        ("epoch", epoch_tensor),
                        ("assignments", labels_to_tensor(&clustering.labels)?),
                    ],
                )?;
                let row = MetricsRow::Train {
                    epoch: epoch + 1,
                    loss: stats.loss,
                    loss_start: stats.loss_start,
                    loss_end: stats.loss_end,
                    images_per_s: stats.images as f64 / stats.seconds,
                    kmeans_objective: Some(clustering.objective),
                    non_empty_clusters: Some(clustering.non_empty),
                    nmi_vs_previous,
                    seconds: t0.elapsed().as_secs_f64(),
                };
                previous = Some(clustering.labels);
                row
            }
        };
        emit(row)?;
    }
    if test.is_some() {
        let feats = extract(encoder.as_ref(), train, 512, device, "features")?;
        if let Some((row, r)) = eval_row(
            encoder.as_ref(),
            &feats,
            train,
            test,
            cfg.epochs,
            cfg,
            device,
        )? {
            emit(row)?;
            last_eval = Some(r);
        }
    }
    Ok(Pretrained { encoder, last_eval })
}

/// Loads a finished run's encoder for evaluation or export.
pub fn load_encoder(
    run: &RunDir,
    device: &Device,
) -> Result<(RunConfig, Box<dyn Encoder>), TrainError> {
    let cfg: RunConfig = run.read_json("config.json")?;
    let mut vm = VarMap::new();
    let encoder = build_encoder(&cfg, &vm, device)?;
    run.load_model(&mut vm)?;
    Ok((cfg, encoder))
}

#[cfg(test)]
mod tests {
    use super::*;

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
