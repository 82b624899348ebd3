//! SCAN's clustering step with the encoder trained too (Van Gansbeke et al. 2020 update the
//! backbone with the head on small data sets): after the head has been chosen on the frozen
//! embedding, the encoder and that head train together on augmented images, each anchor
//! beside one of its mined neighbours, with the same loss. The neighbours stay those of the
//! pretrained embedding, so what the encoder learns is to pull together what pretraining
//! found alike, into the clusters the head draws.

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW};
use models::rng::Rng;

use crate::augment::AugmentConfig;
use crate::cluster_head::{scan_loss, ClusterHead};
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::methods::npid::l2_normalize;
use crate::TrainError;

/// The fine-tuning's settings; SCAN's rate and weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneConfig {
    pub steps: usize,
    /// Anchors per step (each brings one neighbour, so twice this many images go through).
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: 128,
            lr: 1e-4,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// The loss over the first and the last tenth of the steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinetuneStats {
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Trains `encoder` (through `encoder_vars`) and `head` together for `cfg.steps` steps of the
/// SCAN loss on views of `train` made by `augment`, pairing each image with one of its
/// `neighbours` (the same number per image). `head` comes back with the trained weights; its
/// centroids are left for the caller to recompute on the new embedding.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    encoder: &dyn Encoder,
    encoder_vars: Vec<Var>,
    head: &mut ClusterHead,
    neighbours: &[u32],
    train: &TrainSet,
    augment: &AugmentConfig,
    cfg: &FinetuneConfig,
    device: &Device,
) -> Result<FinetuneStats, TrainError> {
    let n = train.len();
    if cfg.steps == 0 || cfg.batch_size < 2 || n < 2 || cfg.lr.is_nan() || cfg.lr <= 0.0 {
        return Err(TrainError::Config(format!(
            "fine-tuning needs steps, a positive rate and batches of two or more anchors (got {} steps, rate {}, batch {})",
            cfg.steps, cfg.lr, cfg.batch_size
        )));
    }
    if neighbours.is_empty() || !neighbours.len().is_multiple_of(n) {
        return Err(TrainError::Config(
            "fine-tuning: every image needs the same number of neighbours".into(),
        ));
    }
    let (k, dim) = (head.config.clusters, head.dim);
    let weight = Var::from_tensor(&Tensor::from_vec(head.weight.clone(), (k, dim), device)?)?;
    let bias = Var::from_tensor(&Tensor::from_vec(head.bias.clone(), k, device)?)?;
    let linear = candle_nn::Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
    let mut vars = encoder_vars;
    vars.extend([weight.clone(), bias.clone()]);
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let per_image = neighbours.len() / n;
    let batch = cfg.batch_size.min(n);
    let mut rng = Rng::new(cfg.seed ^ 0xF17E);
    let mut losses = Vec::with_capacity(cfg.steps);
    for _ in 0..cfg.steps {
        let anchors: Vec<usize> = (0..batch).map(|_| rng.below(n)).collect();
        let pairs: Vec<usize> = anchors
            .iter()
            .copied()
            .chain(
                anchors
                    .iter()
                    .map(|&i| neighbours[i * per_image + rng.below(per_image)] as usize),
            )
            .collect();
        // Anchors and neighbours in one batch, so batch-norm sees both.
        let x = train.batch(&pairs, augment, rng.next_u64(), device)?;
        let emb = encoder.embed(&x, true)?;
        let logits = linear.forward(&l2_normalize(&emb)?)?;
        let (loss, _, _) = scan_loss(
            &logits.narrow(0, 0, batch)?,
            &logits.narrow(0, batch, batch)?,
            head.config.entropy_weight,
        )?;
        opt.backward_step(&loss)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::FinetuneDiverged {
                step: losses.len() + 1,
                loss: value,
            });
        }
        losses.push(value);
    }
    head.weight = weight.as_tensor().flatten_all()?.to_vec1()?;
    head.bias = bias.as_tensor().to_vec1()?;
    let tenth = (cfg.steps / 10).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    Ok(FinetuneStats {
        first_loss: mean(&losses[..tenth]),
        last_loss: mean(&losses[cfg.steps - tenth..]),
    })
}
