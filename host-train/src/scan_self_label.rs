//! SCAN's self-labelling step with the encoder trained too (Van Gansbeke et al. 2020, the
//! third step): each batch's images are embedded as they are, those the head assigns with a
//! probability above a threshold keep that cluster as their label, and the encoder and the
//! head train with cross-entropy towards it on augmented views of the same images. Clusters
//! are weighted by the inverse of their share of the batch's labels, so that a large cluster
//! does not grow by swallowing a small one. The labels are drawn again each step from the
//! network being trained, so the confident set can grow as the network improves.

use candle_core::{Device, D};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW};
use models::rng::Rng;

use crate::augment::AugmentConfig;
use crate::cluster_head::{inverse_frequency_weights, weighted_cross_entropy, ClusterHead};
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::methods::npid::l2_normalize;
use crate::scan_finetune::{store_head, trainable_head};
use crate::TrainError;

/// The self-labelling's settings; SCAN's threshold, rate and weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfLabelConfig {
    pub steps: usize,
    /// Images drawn per step (only the confident ones train).
    pub batch_size: usize,
    /// The probability above which the head's prediction becomes a label.
    pub threshold: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for SelfLabelConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            batch_size: 256,
            threshold: 0.99,
            lr: 1e-4,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// The loss and the confident share of the batches over the first and the last tenth of the
/// steps that trained (a step with fewer than two confident images does not).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfLabelStats {
    pub trained_steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    pub first_confident: f64,
    pub last_confident: f64,
}

/// Trains `encoder` (through `encoder_vars`) and `head` for `cfg.steps` steps of
/// self-labelling on `train`, the views made by `augment`.
pub fn self_label(
    encoder: &dyn Encoder,
    encoder_vars: Vec<candle_core::Var>,
    head: &mut ClusterHead,
    train: &TrainSet,
    augment: &AugmentConfig,
    cfg: &SelfLabelConfig,
    device: &Device,
) -> Result<SelfLabelStats, TrainError> {
    let n = train.len();
    if cfg.steps == 0 || cfg.batch_size < 2 || n < 2 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(TrainError::Config(format!(
            "self-labelling needs steps, a positive rate and batches of two or more images (got {} steps, rate {}, batch {})",
            cfg.steps, cfg.lr, cfg.batch_size
        )));
    }
    if !(cfg.threshold > 0.0 && cfg.threshold < 1.0) {
        return Err(TrainError::Config(format!(
            "self-labelling: the threshold must be between 0 and 1, got {}",
            cfg.threshold
        )));
    }
    let (weight, bias, linear) = trainable_head(head, device)?;
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
    let k = head.config.clusters;
    let batch = cfg.batch_size.min(n);
    let mut rng = Rng::new(cfg.seed ^ 0x5E1F_1ABE);
    let (mut losses, mut shares) = (Vec::new(), Vec::new());
    for step in 0..cfg.steps {
        let drawn: Vec<usize> = (0..batch).map(|_| rng.below(n)).collect();
        let clean = train.batch(&drawn, &AugmentConfig::none(), 0, device)?;
        let probs = candle_nn::ops::softmax(
            &linear.forward(&l2_normalize(&encoder.embed(&clean, false)?)?)?,
            D::Minus1,
        )?;
        let (images, targets) = confident(&drawn, &probs.to_vec2::<f32>()?, cfg.threshold);
        shares.push(images.len() as f64 / batch as f64);
        if images.len() < 2 {
            continue;
        }
        let weights_of = inverse_frequency_weights(&targets, k);
        let weights = targets.iter().map(|&c| weights_of[c as usize]).collect();
        let views = train.batch(&images, augment, rng.next_u64(), device)?;
        let logits = linear.forward(&l2_normalize(&encoder.embed(&views, true)?)?)?;
        let loss = weighted_cross_entropy(&logits, targets, weights)?;
        opt.backward_step(&loss)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::FinetuneDiverged {
                step: step + 1,
                loss: value,
            });
        }
        losses.push(value);
    }
    store_head(head, &weight, &bias)?;
    Ok(stats(&losses, &shares))
}

/// The images of `drawn` whose row of `probs` has its largest value above `threshold`, and
/// that value's cluster.
fn confident(drawn: &[usize], probs: &[Vec<f32>], threshold: f64) -> (Vec<usize>, Vec<u32>) {
    drawn
        .iter()
        .zip(probs)
        .filter_map(|(&i, p)| {
            let (c, &best) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
            (f64::from(best) > threshold).then_some((i, c as u32))
        })
        .unzip()
}

fn stats(losses: &[f64], shares: &[f64]) -> SelfLabelStats {
    let ends = |s: &[f64]| -> (f64, f64) {
        if s.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        let tenth = (s.len() / 10).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        (mean(&s[..tenth]), mean(&s[s.len() - tenth..]))
    };
    let (first_loss, last_loss) = ends(losses);
    let (first_confident, last_confident) = ends(shares);
    SelfLabelStats {
        trained_steps: losses.len(),
        first_loss,
        last_loss,
        first_confident,
        last_confident,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_predictions_above_the_threshold_become_labels() {
        let probs = vec![
            vec![0.995, 0.005],
            vec![0.6, 0.4],
            vec![0.001, 0.999],
            vec![0.985, 0.015],
        ];
        let (images, targets) = confident(&[7, 8, 9, 10], &probs, 0.99);
        assert_eq!(images, vec![7, 9]);
        assert_eq!(targets, vec![0, 1]);
    }

    #[test]
    fn stats_average_the_first_and_last_tenth() {
        let losses: Vec<f64> = (0..20).map(f64::from).collect();
        let s = stats(&losses, &[0.5; 20]);
        assert_eq!(s.trained_steps, 20);
        assert_eq!((s.first_loss, s.last_loss), (0.5, 18.5));
        assert_eq!((s.first_confident, s.last_confident), (0.5, 0.5));
        assert!(stats(&[], &[]).first_loss.is_nan());
    }
}
