//! SwAV (Caron et al. 2020): swapping assignments between views. Each image is seen through
//! several augmented crops; each crop's L2-normalised embedding z is scored against K
//! learnable prototypes on the unit sphere. The two large crops get codes q from the
//! Sinkhorn-Knopp algorithm (equal-partition soft assignments of the batch to the
//! prototypes, epsilon 0.05, 3 iterations), and every other crop must predict them:
//! loss = - sum over (v, w != v) of q_v . log softmax(z_w C^T / tau), averaged.
//!
//! As in the paper, a projection head (linear, BatchNorm, ReLU, linear) lies between the
//! encoder's embedding and the prototypes; it belongs to the method, not to the exported
//! encoder. Without its BatchNorm, the embeddings of a freshly initialised network all point
//! nearly the same way, the prototype scores hardly differ between images, and the codes
//! carry no signal to learn from. Prototypes are renormalised onto the sphere before every step and frozen
//! for the first epoch; small batches score their codes together with a queue of earlier
//! embeddings, so that the equal partition is taken over more samples than there are
//! prototypes. Multi-crop here draws the small crops at the network's input size (the
//! encoders of this crate are built for one size), so they cost as much as large ones.

use candle_core::{DType, Device, ModuleT, Tensor, Var, D};
use candle_nn::{BatchNorm, Init, Linear, Module, Optimizer, VarBuilder, VarMap};
pub use models::cluster::sinkhorn;
use models::rng::Rng;
use serde::{Deserialize, Serialize};

use super::deepcluster::EpochStats;
use super::npid::l2_normalize;
use crate::augment::AugmentConfig;
use crate::dataset::TrainSet;
use crate::encoders::Encoder;
use crate::optim::{SgdMomentum, SgdParams, WarmupCosine};
use crate::progress::Progress;
use crate::seeded_init::seeded_var_builder;
use crate::TrainError;

/// SwAV's hyper-parameters; defaults from the paper scaled to small data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwavConfig {
    /// Number of prototypes K (the paper: 3000 for ImageNet; default 3x the classes).
    pub prototypes: usize,
    /// Softmax temperature of the predictions. The paper's 0.1 (ImageNet, batch 4,096) lets
    /// a run on a few thousand images collapse: within a few epochs every prediction turns
    /// uniform and the loss sits at log K. 0.3 trains on the small sets (docs/RESULTS.md).
    pub temperature: f64,
    /// Sinkhorn-Knopp's entropic regularisation.
    pub epsilon: f64,
    pub sinkhorn_iters: usize,
    /// Small crops per image beside the two large ones.
    pub small_crops: usize,
    /// Embeddings kept from earlier batches for the codes (0: none).
    pub queue_length: usize,
    /// First epoch (0-based) whose codes use the queue.
    pub queue_start_epoch: usize,
    /// Epochs during which the prototypes do not move.
    pub freeze_prototypes_epochs: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Linear warm-up epochs before the cosine decay.
    pub warmup_epochs: f64,
}

impl Default for SwavConfig {
    fn default() -> Self {
        Self {
            prototypes: 30,
            temperature: 0.3,
            epsilon: 0.05,
            sinkhorn_iters: 3,
            small_crops: 2,
            queue_length: 0,
            queue_start_epoch: 1,
            freeze_prototypes_epochs: 1,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_epochs: 1.0,
        }
    }
}

impl SwavConfig {
    pub fn sgd(&self) -> SgdParams {
        SgdParams {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        }
    }

    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine::new(self.lr, self.warmup_epochs)
    }

    /// Crops per image: two large, then the small ones.
    pub fn crops(&self) -> usize {
        2 + self.small_crops
    }

    /// The queue this batch size needs: none when the two large views of a batch already
    /// outnumber the prototypes, otherwise enough rows for about three per prototype.
    pub fn queue_for(batch_size: usize, prototypes: usize, n: usize) -> usize {
        if 2 * batch_size >= 3 * prototypes {
            0
        } else {
            (3 * prototypes).min(n).next_multiple_of(batch_size.max(1))
        }
    }

    pub fn check(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::Config(format!("SwAV: {what}")));
        if self.prototypes < 2 {
            return bad("needs at least 2 prototypes");
        }
        if !(self.epsilon > 0.0 && self.temperature > 0.0) {
            return bad("epsilon and temperature must be positive");
        }
        if self.sinkhorn_iters == 0 {
            return bad("needs at least one Sinkhorn iteration");
        }
        Ok(())
    }
}

/// SwAV's projection head: linear (d -> hidden), BatchNorm, ReLU, linear (hidden -> d).
#[derive(Debug, Clone)]
pub struct ProjectionHead {
    hidden: Linear,
    norm: BatchNorm,
    out: Linear,
}

impl ProjectionHead {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            hidden: candle_nn::linear(dim, hidden, vb.pp("hidden"))?,
            norm: candle_nn::batch_norm(hidden, 1e-5, vb.pp("norm"))?,
            out: candle_nn::linear(hidden, dim, vb.pp("out"))?,
        })
    }

    /// Registered in `vm` as `{method}.head.*` (hidden width 4 x `dim`), seeded like the
    /// encoder.
    pub fn in_varmap(
        vm: &VarMap,
        method: &str,
        dim: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let vb = seeded_var_builder(vm, seed, DType::F32, device);
        Ok(Self::new(dim, 4 * dim, vb.pp(method).pp("head"))?)
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.hidden.forward(x)?;
        self.out.forward(&self.norm.forward_t(&h, train)?.relu()?)
    }
}

/// The prototypes: a (K, d) variable whose rows are kept on the unit sphere.
#[derive(Debug, Clone)]
pub struct Prototypes {
    pub var: Var,
}

impl Prototypes {
    /// Seeded Gaussian rows, normalised; registered in `vm` as `swav.prototypes`, so
    /// checkpoints save them with the encoder.
    pub fn new(
        vm: &VarMap,
        k: usize,
        dim: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let vb = seeded_var_builder(vm, seed, DType::F32, device);
        vb.pp("swav").get_with_hints(
            (k, dim),
            "prototypes",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let var = vm
            .data()
            .lock()
            .map_err(|_| TrainError::Config("variable map poisoned".into()))?
            .get("swav.prototypes")
            .cloned()
            .ok_or_else(|| TrainError::Config("SwAV prototypes were not created".into()))?;
        let p = Self { var };
        p.normalize()?;
        Ok(p)
    }

    /// Puts each row back on the unit sphere (outside the graph, as the paper does).
    pub fn normalize(&self) -> candle_core::Result<()> {
        self.var.set(&l2_normalize(self.var.as_tensor())?.detach())
    }
}

/// The swapped-prediction loss. `z`: (crops * b, d) normalised embeddings, crop by crop;
/// `prototypes`: (k, d); `codes`: the Sinkhorn codes (b, k) of crops 0 and 1.
pub fn swapped_prediction_loss(
    z: &Tensor,
    prototypes: &Tensor,
    codes: &[Tensor; 2],
    crops: usize,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let b = z.dim(0)? / crops;
    let scores = z.matmul(&prototypes.t()?)?;
    let log_p = candle_nn::ops::log_softmax(&(scores / temperature)?, D::Minus1)?;
    let mut terms = Vec::with_capacity(2 * (crops - 1));
    for (v, q) in codes.iter().enumerate() {
        for w in (0..crops).filter(|&w| w != v) {
            let lp = log_p.narrow(0, w * b, b)?;
            terms.push((q * lp)?.sum(D::Minus1)?.mean_all()?);
        }
    }
    let n = terms.len() as f64;
    Tensor::stack(&terms, 0)?.sum_all()?.affine(-1.0 / n, 0.0)
}

/// Earlier large-crop embeddings, oldest first; at most `capacity` rows of `dim`.
#[derive(Debug, Clone, Default)]
pub struct FeatureQueue {
    rows: Vec<f32>,
    capacity: usize,
    dim: usize,
}

impl FeatureQueue {
    pub fn new(capacity: usize, dim: usize) -> Self {
        Self {
            rows: Vec::with_capacity(capacity * dim),
            capacity,
            dim,
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.capacity > 0 && self.len() == self.capacity
    }

    /// Appends `z` (rows of `dim`), dropping the oldest rows beyond the capacity.
    pub fn push(&mut self, z: &[f32]) {
        if self.capacity == 0 {
            return;
        }
        self.rows.extend_from_slice(z);
        let excess = self.len().saturating_sub(self.capacity);
        self.rows.drain(..excess * self.dim);
    }

    pub fn rows(&self) -> &[f32] {
        &self.rows
    }
}

/// Codes for crop `v` of the batch: Sinkhorn over the queue's rows and the batch's, keeping
/// the batch's.
fn codes_for(
    z_view: &Tensor,
    prototypes: &Tensor,
    queue: Option<&FeatureQueue>,
    cfg: &SwavConfig,
) -> Result<Tensor, TrainError> {
    let device = z_view.device().clone();
    let b = z_view.dim(0)?;
    let k = prototypes.dim(0)?;
    let mut z = z_view.detach();
    if let Some(q) = queue.filter(|q| !q.is_empty()) {
        let old = Tensor::from_slice(q.rows(), (q.len(), z.dim(1)?), &device)?;
        z = Tensor::cat(&[&old, &z], 0)?;
    }
    let scores: Vec<f32> = z
        .matmul(&prototypes.detach().t()?)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let q = sinkhorn(&scores, k, cfg.epsilon, cfg.sinkhorn_iters);
    let rows = q.len() / k;
    Ok(Tensor::from_slice(&q[(rows - b) * k..], (b, k), &device)?)
}

/// Everything one SwAV epoch needs besides the encoder.
#[derive(Debug)]
pub struct SwavEpoch<'a> {
    pub cfg: &'a SwavConfig,
    pub head: &'a ProjectionHead,
    pub prototypes: &'a Prototypes,
    pub queue: &'a mut FeatureQueue,
    pub large: &'a AugmentConfig,
    pub small: &'a AugmentConfig,
    /// 0-based epoch and the run's length, for the schedule, the freeze and the queue.
    pub epoch: usize,
    pub epochs: usize,
    /// Multiplies the schedule's rate (lowered when the loss keeps rising).
    pub lr_scale: f64,
}

/// One epoch over a random permutation of the data set.
pub fn train_epoch(
    encoder: &dyn Encoder,
    opt: &mut SgdMomentum,
    set: &TrainSet,
    batch_size: usize,
    e: SwavEpoch<'_>,
    seed: u64,
    device: &Device,
) -> Result<EpochStats, TrainError> {
    e.cfg.check()?;
    let t0 = std::time::Instant::now();
    let n = set.len();
    let crops = e.cfg.crops();
    let order = Rng::new(seed).sample_indices(n, n);
    let batches = order.chunks(batch_size).filter(|c| c.len() >= 2).count();
    let schedule = e.cfg.schedule();
    let frozen = e.epoch < e.cfg.freeze_prototypes_epochs;
    let use_queue = e.epoch >= e.cfg.queue_start_epoch;
    let mut losses = Vec::with_capacity(batches);
    let bar = Progress::new(n as u64, "train");
    for (bi, idx) in order
        .chunks(batch_size)
        .filter(|c| c.len() >= 2)
        .enumerate()
    {
        opt.set_learning_rate(
            e.lr_scale * schedule.lr_at(e.epoch as f64 + bi as f64 / batches as f64, e.epochs),
        );
        let views = (0..crops)
            .map(|v| {
                let aug = if v < 2 { e.large } else { e.small };
                set.batch(
                    idx,
                    aug,
                    seed ^ ((bi as u64) << 20) ^ ((v as u64) << 44),
                    device,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let embedded = encoder.embed(&Tensor::cat(&views, 0)?, true)?;
        let z = l2_normalize(&e.head.forward_t(&embedded, true)?)?;
        let c = e.prototypes.var.as_tensor();
        let b = idx.len();
        let queue = (use_queue && e.queue.is_full()).then_some(&*e.queue);
        let codes = [
            codes_for(&z.narrow(0, 0, b)?, c, queue, e.cfg)?,
            codes_for(&z.narrow(0, b, b)?, c, queue, e.cfg)?,
        ];
        let loss = swapped_prediction_loss(&z, c, &codes, crops, e.cfg.temperature)?;
        let mut grads = loss.backward()?;
        if frozen {
            grads.remove(e.prototypes.var.as_tensor());
        }
        opt.step(&grads)?;
        e.prototypes.normalize()?;
        let large: Vec<f32> = z
            .narrow(0, 0, 2 * b)?
            .detach()
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        e.queue.push(&large);
        losses.push(loss.to_scalar::<f32>()? as f64);
        bar.inc(b as u64);
    }
    bar.finish();
    Ok(EpochStats::from_batch_losses(
        &losses,
        n,
        t0.elapsed().as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::central_difference_rows;

    #[test]
    fn sinkhorn_codes_are_an_equal_partition() {
        let (b, k) = (12, 4);
        let mut rng = Rng::new(3);
        // Scores biased towards prototype 0, which Sinkhorn must spread out.
        let scores: Vec<f32> = (0..b * k)
            .map(|i| (rng.next_f64() as f32 - 0.5) * 0.4 + if i % k == 0 { 0.3 } else { 0.0 })
            .collect();
        let q = sinkhorn(&scores, k, 0.05, 3);
        for row in q.chunks(k) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
            assert!(row.iter().all(|&v| v >= 0.0));
        }
        for j in 0..k {
            let s: f32 = q.chunks(k).map(|r| r[j]).sum();
            assert!(
                (s - b as f32 / k as f32).abs() < 0.3,
                "prototype {j} gets {s}"
            );
        }
        // Without the iterations, prototype 0 would take most of the mass.
        let raw = sinkhorn(&scores, k, 0.05, 0);
        let first: f32 = raw.chunks(k).map(|r| r[0]).sum::<f32>() / raw.iter().sum::<f32>();
        assert!(first > 0.5, "{first}");
    }

    #[test]
    fn sinkhorn_matches_a_hand_computed_case() {
        // b = 2, k = 2, scores [[1, 0], [0, 0]], epsilon 1, one iteration; by hand:
        // Q = exp(S - 1) / sum = [[1, e^-1], [e^-1, e^-1]] / (1 + 3/e).
        let e1 = (-1f64).exp();
        let q0 = [1.0, e1, e1, e1];
        let z: f64 = q0.iter().sum();
        let q: Vec<f64> = q0.iter().map(|v| v / z).collect();
        // columns to 1/2 each, then rows to 1/2 each, times b = 2.
        let cols = [q[0] + q[2], q[1] + q[3]];
        let c: Vec<f64> = (0..4).map(|i| q[i] / (cols[i % 2] * 2.0)).collect();
        let rows = [c[0] + c[1], c[2] + c[3]];
        let want: Vec<f64> = (0..4).map(|i| c[i] / (rows[i / 2] * 2.0) * 2.0).collect();
        let got = sinkhorn(&[1.0, 0.0, 0.0, 0.0], 2, 1.0, 1);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// The loss by hand in f64 for one configuration.
    fn loss_by_hand(
        z: &[Vec<f64>],
        c: &[Vec<f64>],
        q: &[Vec<Vec<f64>>; 2],
        crops: usize,
        t: f64,
    ) -> f64 {
        let b = z.len() / crops;
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut total = 0.0;
        let mut terms = 0.0;
        for (v, qv) in q.iter().enumerate() {
            for w in (0..crops).filter(|&w| w != v) {
                let mut term = 0.0;
                for i in 0..b {
                    let s: Vec<f64> = c.iter().map(|ck| dot(&z[w * b + i], ck) / t).collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let lse = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                    term -= (0..c.len()).map(|k| qv[i][k] * (s[k] - lse)).sum::<f64>();
                }
                total += term / b as f64;
                terms += 1.0;
            }
        }
        total / terms
    }

    #[test]
    fn swapped_loss_matches_the_formula_and_its_gradient_finite_differences() {
        let dev = Device::Cpu;
        let (crops, b, k, d, t) = (3, 2, 3, 4, 0.5);
        let mut rng = Rng::new(11);
        let mut rand = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.next_f64() - 0.5).collect() };
        let z: Vec<Vec<f64>> = (0..crops * b).map(|_| rand(d)).collect();
        let c: Vec<Vec<f64>> = (0..k).map(|_| rand(d)).collect();
        let codes: [Vec<Vec<f64>>; 2] = std::array::from_fn(|_| {
            (0..b)
                .map(|_| {
                    let r: Vec<f64> = rand(k).iter().map(|v| v + 1.0).collect();
                    let s: f64 = r.iter().sum();
                    r.iter().map(|v| v / s).collect()
                })
                .collect()
        });
        let to_t = |rows: &[Vec<f64>]| {
            let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
            Tensor::from_vec(flat, (rows.len(), rows[0].len()), &dev).unwrap()
        };
        let zv = Var::from_tensor(&to_t(&z)).unwrap();
        let cv = Var::from_tensor(&to_t(&c)).unwrap();
        let qt = [to_t(&codes[0]), to_t(&codes[1])];
        let loss = swapped_prediction_loss(zv.as_tensor(), cv.as_tensor(), &qt, crops, t).unwrap();
        let want = loss_by_hand(&z, &c, &codes, crops, t);
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Gradients against central differences of the hand formula.
        let grads = loss.backward().unwrap();
        let gz: Vec<Vec<f32>> = grads.get(zv.as_tensor()).unwrap().to_vec2().unwrap();
        let gc: Vec<Vec<f32>> = grads.get(cv.as_tensor()).unwrap().to_vec2().unwrap();
        let h = 1e-5;
        for (i, j) in [(0, 0), (2, 3), (5, 1)] {
            let fd =
                central_difference_rows(|z| loss_by_hand(z, &c, &codes, crops, t), &z, (i, j), h);
            assert!(
                (gz[i][j] as f64 - fd).abs() < 1e-4,
                "dz[{i}][{j}] {} vs {fd}",
                gz[i][j]
            );
        }
        for (i, j) in [(0, 1), (2, 2)] {
            let fd =
                central_difference_rows(|c| loss_by_hand(&z, c, &codes, crops, t), &c, (i, j), h);
            assert!(
                (gc[i][j] as f64 - fd).abs() < 1e-4,
                "dc[{i}][{j}] {} vs {fd}",
                gc[i][j]
            );
        }
    }

    #[test]
    fn the_queue_keeps_the_newest_rows() {
        let mut q = FeatureQueue::new(3, 2);
        q.push(&[1.0, 1.0, 2.0, 2.0]);
        assert!(!q.is_full());
        q.push(&[3.0, 3.0, 4.0, 4.0]);
        assert!(q.is_full());
        assert_eq!(q.rows(), &[2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
        let mut off = FeatureQueue::new(0, 2);
        off.push(&[1.0, 1.0]);
        assert!(off.is_empty() && !off.is_full());
        assert_eq!(SwavConfig::queue_for(256, 100, 60_000), 0);
        assert_eq!(SwavConfig::queue_for(64, 100, 60_000), 320);
    }
}
