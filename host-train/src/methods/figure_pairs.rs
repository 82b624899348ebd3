//! Figure pairs: contrastive pretraining on generated figures, in the spirit of
//! formula-driven pretraining (Kataoka et al. 2020; Baradad et al. 2021: a network can learn
//! useful features from images no camera took). Each pair is two renders of one random
//! outline (`models::data::render_figure_pair`) that share nothing else: colour, size,
//! place, rotation, mirroring, background texture, marks and lighting are all redrawn. The
//! loss is SimCLR's NT-Xent (Chen et al. 2020): through a projection head, each render must
//! pick out its partner among the other 2b - 2 renders of the batch.
//!
//! Why: instance discrimination on a user's own images learns whatever tells one image from
//! another, and on camera scenes that is the background and the colour, which no crop or
//! jitter changes. Here the pair differs in exactly those, so the only thing left to match
//! is the figure's outline. The user's images are not needed to train; they give the input
//! size and normalisation, the evaluation, and the neighbours of the cluster head.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use models::data::{image_pixels, render_figure_pair, ColorMode, ImageFolderOptions, SceneParams};
use models::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::deepcluster::EpochStats;
use super::npid::l2_normalize;
use super::swav::ProjectionHead;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::optim::{SgdMomentum, SgdParams, WarmupCosine};
use crate::progress::Progress;
use crate::TrainError;

/// Figure-pair pretraining's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigurePairsConfig {
    /// Pairs per epoch (an epoch here is a number of steps, not a pass over the data).
    pub pairs_per_epoch: usize,
    /// NT-Xent temperature.
    pub temperature: f64,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Linear warm-up epochs before the cosine decay.
    pub warmup_epochs: f64,
}

impl Default for FigurePairsConfig {
    fn default() -> Self {
        Self {
            pairs_per_epoch: 12_800,
            temperature: 0.2,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_epochs: 1.0,
        }
    }
}

impl FigurePairsConfig {
    pub fn sgd(&self) -> SgdParams {
        SgdParams {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }

    pub fn check(&self) -> Result<(), TrainError> {
        if self.pairs_per_epoch == 0 || self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(TrainError::Config(
                "figure pairs: pairs per epoch and the temperature must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The projection head of this method, registered in `vm` as `figures.head.*`.
pub fn projection_head(
    vm: &VarMap,
    dim: usize,
    seed: u64,
    device: &Device,
) -> Result<ProjectionHead, TrainError> {
    ProjectionHead::in_varmap(vm, "figures", dim, seed, device)
}

/// NT-Xent over `z`: (2b, d) L2-normalised rows, renders `i` and `i + b` a pair. Each row's
/// similarities to the other rows, over `temperature`, are a softmax whose target is its
/// partner; the loss is the mean cross-entropy.
pub fn nt_xent(z: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let n = z.dim(0)?;
    let b = n / 2;
    let sim = (z.matmul(&z.t()?)? / temperature)?;
    // A row must not pick itself: its own similarity is pushed far below the others.
    let self_mask = (Tensor::eye(n, DType::F32, z.device())? * -1e9)?;
    let logits = (sim + self_mask)?;
    let partners: Vec<u32> = (0..n).map(|i| ((i + b) % n) as u32).collect();
    let target = Tensor::new(partners, z.device())?;
    candle_nn::loss::cross_entropy(&logits, &target)
}

/// `pairs` figure pairs rendered at the set's size and channels: the first renders of
/// every pair, then the second ones, as one normalised (2 * pairs, c, h, w) tensor.
pub fn pair_batch(
    set: &TrainSet,
    pairs: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let (c, h, w) = set.image_dims();
    if h != w {
        return Err(TrainError::Config(format!(
            "figure pairs render square images; the data is {h}x{w}"
        )));
    }
    let params = SceneParams {
        size: h,
        ..Default::default()
    };
    let rendered: Vec<[Vec<u8>; 2]> = (0..pairs)
        .into_par_iter()
        .map(|i| {
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let [a, b] = render_figure_pair(&params, &mut rng);
            Ok([to_channels(a, c, h)?, to_channels(b, c, h)?])
        })
        .collect::<Result<_, TrainError>>()?;
    let mut pixels = Vec::with_capacity(2 * pairs * c * h * w);
    for side in 0..2 {
        rendered
            .iter()
            .for_each(|p| pixels.extend_from_slice(&p[side]));
    }
    set.tensor_from_pixels(&pixels, device)
}

/// Planar RGB as `c` channels: itself for 3, for 1 the gray that the folder reader makes of
/// an RGB file (`models::data::image_pixels`), so gray runs see figures as they see images.
fn to_channels(rgb: Vec<u8>, c: usize, size: usize) -> Result<Vec<u8>, TrainError> {
    if c == 3 {
        return Ok(rgb);
    }
    let side = size as u32;
    let plane = size * size;
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let p = y as usize * size + x as usize;
        image::Rgb([rgb[p], rgb[plane + p], rgb[2 * plane + p]])
    });
    let gray = ImageFolderOptions {
        width: side,
        height: side,
        color: ColorMode::Gray,
        ..Default::default()
    };
    image_pixels(image::DynamicImage::ImageRgb8(img), &gray).map_err(TrainError::Figure)
}

/// Everything one epoch needs besides the encoder.
#[derive(Debug)]
pub struct FigurePairsEpoch<'a> {
    pub cfg: &'a FigurePairsConfig,
    pub head: &'a ProjectionHead,
    /// 0-based epoch and the run's length, for the schedule.
    pub epoch: usize,
    pub epochs: usize,
    /// Multiplies the schedule's rate (lowered when the loss keeps rising).
    pub lr_scale: f64,
}

/// One epoch: `pairs_per_epoch` new pairs in batches of `batch_size` pairs.
pub fn train_epoch(
    encoder: &dyn Encoder,
    opt: &mut SgdMomentum,
    set: &TrainSet,
    batch_size: usize,
    e: FigurePairsEpoch<'_>,
    seed: u64,
    device: &Device,
) -> Result<EpochStats, TrainError> {
    e.cfg.check()?;
    let t0 = std::time::Instant::now();
    let batch_size = batch_size.max(2);
    let steps = e.cfg.pairs_per_epoch.div_ceil(batch_size);
    let schedule = WarmupCosine::new(e.cfg.lr, e.cfg.warmup_epochs);
    let mut losses = Vec::with_capacity(steps);
    let bar = Progress::new(steps as u64, "pairs");
    for step in 0..steps {
        let progress = e.epoch as f64 + step as f64 / steps as f64;
        opt.set_learning_rate(e.lr_scale * schedule.lr_at(progress, e.epochs));
        let x = pair_batch(set, batch_size, seed ^ ((step as u64) << 24), device)?;
        let z = l2_normalize(&e.head.forward_t(&encoder.embed(&x, true)?, true)?)?;
        let loss = nt_xent(&z, e.cfg.temperature)?;
        opt.step(&loss.backward()?)?;
        losses.push(loss.to_scalar::<f32>()? as f64);
        bar.inc(1);
    }
    bar.finish();
    Ok(EpochStats::from_batch_losses(
        &losses,
        2 * steps * batch_size,
        t0.elapsed().as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded_init::seeded_var_builder;
    use models::data::ImageSet;

    #[test]
    fn nt_xent_matches_a_hand_computed_case() {
        // Two pairs on the unit circle: rows 0 and 2 at angles 0 and 0.1, rows 1 and 3 at
        // pi/2 and pi/2 + 0.1. Row i's logits are cos(a_i - a_j) / t over the rows j != i,
        // its target the partner (i + 2) % 4; the loss is the mean cross-entropy.
        let half_pi = std::f64::consts::FRAC_PI_2;
        let angles = [0.0, half_pi, 0.1, half_pi + 0.1];
        let rows: Vec<f32> = angles
            .iter()
            .flat_map(|t: &f64| [t.cos() as f32, t.sin() as f32])
            .collect();
        let z = Tensor::from_vec(rows, (4, 2), &Device::Cpu).unwrap();
        let loss = nt_xent(&z, 0.5).unwrap().to_scalar::<f32>().unwrap() as f64;
        let expected = (0..4)
            .map(|i| {
                let logit = |j: usize| (angles[i] - angles[j]).cos() / 0.5;
                let lse = (0..4)
                    .filter(|&j| j != i)
                    .map(|j| logit(j).exp())
                    .sum::<f64>()
                    .ln();
                lse - logit((i + 2) % 4)
            })
            .sum::<f64>()
            / 4.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }

    /// The gradient reaches every part: trained on one fixed batch of pairs, small-cnn-in
    /// and the head learn to tell each render's partner from the others.
    #[test]
    fn on_a_fixed_batch_the_loss_falls_well_below_chance() {
        use crate::encoders::Arch;
        let set = gray_set(3, 16);
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu);
        let enc = Arch::SmallCnnIn
            .build((3, 16, 16), 16, false, vb.pp("encoder"))
            .unwrap();
        let head = projection_head(&vm, 16, 3, &Device::Cpu).unwrap();
        let vars = vm.all_vars();
        let cfg = FigurePairsConfig::default();
        let mut opt = SgdMomentum::new(vars, cfg.sgd()).unwrap();
        let x = pair_batch(&set, 16, 11, &Device::Cpu).unwrap();
        let mut losses = Vec::new();
        for _ in 0..40 {
            let z = l2_normalize(&head.forward_t(&enc.embed(&x, true).unwrap(), true).unwrap())
                .unwrap();
            let loss = nt_xent(&z, cfg.temperature).unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
        }
        let chance = (31f32).ln();
        assert!(
            losses[39] < chance - 1.0,
            "chance {chance}, losses {losses:?}"
        );
    }

    fn gray_set(channels: usize, size: usize) -> TrainSet {
        let images = ImageSet {
            pixels: vec![128; 2 * channels * size * size],
            channels,
            height: size,
            width: size,
            ..Default::default()
        };
        let norm = crate::dataset::Normalization {
            mean: vec![0.5; channels],
            std: vec![0.25; channels],
        };
        TrainSet::new(images, norm).unwrap()
    }

    #[test]
    fn a_pair_batch_has_both_renders_in_the_data_channels() {
        for channels in [1, 3] {
            let set = gray_set(channels, 16);
            let x = pair_batch(&set, 3, 7, &Device::Cpu).unwrap();
            assert_eq!(x.dims(), &[6, channels, 16, 16]);
            let again = pair_batch(&set, 3, 7, &Device::Cpu).unwrap();
            let diff = (x - again).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "a seed fixes the batch"
            );
        }
    }
}
