//! A whitening layer on the embedding, trained with the network: IterNorm (Huang et al.
//! 2019). In training it whitens each batch by its own covariance, with the inverse square
//! root taken by Newton-Schulz iterations (matrix products only, so the gradient flows
//! through the statistics as it does through BatchNorm's); at inference it whitens by the
//! running mean and covariance, an affine map that folds into the exported graph as one
//! `Linear` layer.
//!
//! Why: cosine similarity, which kNN and the board's k-means use, weighs each direction of
//! the embedding by its variance. A network trained to classify pseudo-labels ends with a
//! spread of variances of 100x and more; whitening its output after training evens it but
//! leaves the network trained on the uneven one. With this layer the loss itself sees the
//! whitened embedding.

use std::sync::Mutex;

use candle_core::{DType, Device, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::Encoder;
use crate::graph::{FoldedGraph, Layer, Linear};

/// The layer's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchWhiteningConfig {
    /// Newton-Schulz iterations in training: the paper's 5 whiten the weakest directions
    /// only partly; 10 whiten more; 20 diverged on Fashion-MNIST (the iteration amplifies
    /// the batch covariance's near-null directions).
    pub iterations: usize,
    /// Weight of each batch in the running statistics.
    pub momentum: f64,
    /// Added to the covariance's diagonal, relative to its mean variance: a batch no larger
    /// than the embedding has a singular covariance.
    pub eps: f64,
}

impl Default for BatchWhiteningConfig {
    fn default() -> Self {
        Self {
            iterations: 10,
            momentum: 0.1,
            eps: 1e-3,
        }
    }
}

/// `inner` followed by the whitening layer.
#[derive(Debug)]
pub struct BatchWhitenedEncoder {
    inner: Box<dyn Encoder>,
    config: BatchWhiteningConfig,
    running_mean: Var,
    running_cov: Var,
    /// The inference map, computed on first use after the statistics last changed.
    eval_map: Mutex<Option<(Tensor, Tensor)>>,
}

impl BatchWhitenedEncoder {
    /// The running statistics start at mean 0 and covariance I, and are variables of the
    /// `VarBuilder`'s map (so checkpoints carry them) that never receive gradients.
    pub fn new(
        inner: Box<dyn Encoder>,
        config: BatchWhiteningConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        if config.iterations == 0 || !(0.0..=1.0).contains(&config.momentum) || config.eps <= 0.0 {
            candle_core::bail!(
                "batch whitening needs iterations >= 1, a momentum in [0, 1] and eps > 0: {config:?}"
            );
        }
        let d = inner.embed_dim();
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(d, "running_mean", Init::Const(0.0))?)?;
        let eye = Tensor::eye(d, DType::F32, vb.device())?;
        let running_cov =
            Var::from_tensor(&vb.get_with_hints((d, d), "running_cov", Init::Const(0.0))?)?;
        // Init::Const cannot draw an identity; a fresh (all-zero) map gets one here, a loaded
        // checkpoint overwrites it.
        running_cov.set(&eye)?;
        Ok(Self {
            inner,
            config,
            running_mean,
            running_cov,
            eval_map: Mutex::new(None),
        })
    }

    /// The inference map `(x - mean) W`, as (W (d x d), mean (d)), with W the running
    /// covariance's exact inverse square root (eigenvalues floored as
    /// [`models::adapt::matrix_power`] does). Training's few Newton-Schulz iterations whiten
    /// the weakest directions only partly, which keeps the gradient bounded; at inference
    /// nothing is differentiated, and the full whitening is what cosine similarity wants.
    /// Computed once after each change of the statistics.
    fn eval_map(&self) -> Result<(Tensor, Tensor)> {
        let mut cache = self.eval_map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = cache.as_ref() {
            return Ok(map.clone());
        }
        let d = self.embed_dim();
        let cov: Vec<f64> = self
            .running_cov
            .as_tensor()
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();
        let w: Vec<f32> = models::adapt::matrix_power(&cov, d, -0.5)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let device = self.running_cov.device();
        let map = (
            Tensor::from_vec(w, (d, d), device)?,
            self.running_mean.as_tensor().detach(),
        );
        *cache = Some(map.clone());
        Ok(map)
    }

    fn forward_train(&self, z: &Tensor) -> Result<Tensor> {
        let b = z.dim(0)?;
        if b < 2 {
            candle_core::bail!("batch whitening needs two or more rows in training, got {b}");
        }
        let mean = z.mean_keepdim(0)?;
        let centred = z.broadcast_sub(&mean)?;
        let cov = (centred.t()?.matmul(&centred)? / b as f64)?;
        let w = inverse_sqrt(&cov, &self.config)?;
        let m = self.config.momentum;
        let update = |run: &Var, batch: &Tensor| -> Result<()> {
            run.set(&((run.as_tensor() * (1.0 - m))? + (batch.detach() * m)?)?)
        };
        update(&self.running_mean, &mean.squeeze(0)?)?;
        update(&self.running_cov, &cov)?;
        *self.eval_map.lock().unwrap_or_else(|e| e.into_inner()) = None;
        centred.matmul(&w)
    }
}

/// `(cov + eps I)^(-1/2)` by the coupled Newton-Schulz iteration on the trace-normalised
/// matrix A, whose eigenvalues lie in (0, 1] where it converges: Y -> A^(1/2) and
/// Z -> A^(-1/2) from Y = A, Z = I. The coupled form stays stable in f32 where the
/// single-matrix one (IterNorm's) lets rounding grow.
pub fn inverse_sqrt(cov: &Tensor, config: &BatchWhiteningConfig) -> Result<Tensor> {
    let d = cov.dim(0)?;
    let eye = Tensor::eye(d, cov.dtype(), cov.device())?;
    let mean_var = (cov.mul(&eye)?.sum_all()? / d as f64)?;
    let cov = (cov + eye.broadcast_mul(&(&mean_var * config.eps)?)?)?;
    let trace = cov.mul(&eye)?.sum_all()?;
    let mut y = cov.broadcast_div(&trace)?;
    let mut z = eye.clone();
    for _ in 0..config.iterations {
        let t = (((&eye * 3.0)? - z.matmul(&y)?)? * 0.5)?;
        y = y.matmul(&t)?;
        z = t.matmul(&z)?;
    }
    z.broadcast_div(&trace.sqrt()?)
}

impl ModuleT for BatchWhitenedEncoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let z = self.inner.embed(x, train)?;
        if train {
            return self.forward_train(&z);
        }
        let (w, mean) = self.eval_map()?;
        z.broadcast_sub(&mean)?.matmul(&w)
    }
}

impl Encoder for BatchWhitenedEncoder {
    fn embed_dim(&self) -> usize {
        self.inner.embed_dim()
    }
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.inner.features(x, train)
    }
    fn feature_dim(&self) -> usize {
        self.inner.feature_dim()
    }
    fn folded_graph(&self, input_chw: [usize; 3]) -> Result<FoldedGraph> {
        let mut graph = self.inner.folded_graph(input_chw)?;
        let (w, mean) = self.eval_map()?;
        let d = self.embed_dim();
        // y = W (x - mean): W is symmetric, so it is its own [out, in] weight.
        let bias = w.matmul(&mean.unsqueeze(1)?)?.neg()?.squeeze(1)?;
        graph.layers.push(Layer::Linear(Linear {
            name: "batch_whitening".into(),
            weight: w.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?,
            out_features: d,
            in_features: d,
            bias: bias.to_device(&Device::Cpu)?.to_vec1()?,
        }));
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::{SmallCnn, SmallCnnConfig};
    use candle_nn::VarMap;
    use models::rng::Rng;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Rows of independent Gaussians with these standard deviations, around a mean of 3,
    /// each coordinate mixed with the ones after it so that they are correlated.
    fn correlated(b: usize, scales: &[f32], seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        let d = scales.len();
        let v: Vec<f32> = (0..b * d)
            .map(|i| scales[i % d] * r.next_gaussian() as f32)
            .collect();
        let x = Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap();
        let mix: Vec<f32> = (0..d * d)
            .map(|i| match (i / d, i % d) {
                (r, c) if r == c => 1.0,
                (r, c) if r < c => 0.5,
                _ => 0.0,
            })
            .collect();
        let mix = Tensor::from_vec(mix, (d, d), &Device::Cpu).unwrap();
        (x.matmul(&mix).unwrap() + 3.0).unwrap()
    }

    fn covariance(y: &Tensor) -> Vec<f32> {
        let b = y.dim(0).unwrap();
        let c = y.broadcast_sub(&y.mean_keepdim(0).unwrap()).unwrap();
        values(&(c.t().unwrap().matmul(&c).unwrap() / b as f64).unwrap())
    }

    #[test]
    fn newton_schulz_whitens_a_correlated_batch() {
        let x = correlated(4000, &[4.0, 2.0, 1.0, 0.5], 1);
        let b = x.dim(0).unwrap();
        let c = x.broadcast_sub(&x.mean_keepdim(0).unwrap()).unwrap();
        let cov = (c.t().unwrap().matmul(&c).unwrap() / b as f64).unwrap();
        let cfg = BatchWhiteningConfig {
            iterations: 30,
            eps: 1e-6,
            ..Default::default()
        };
        let y = c.matmul(&inverse_sqrt(&cov, &cfg).unwrap()).unwrap();
        for (i, v) in covariance(&y).iter().enumerate() {
            let want = if i % 5 == 0 { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-2, "covariance entry {i}: {v}");
        }
        // Five iterations (the paper's) even out the variances only partly: the weakest
        // direction stays below 1, but far above its 0.5^2 without the layer.
        let five = BatchWhiteningConfig {
            iterations: 5,
            ..Default::default()
        };
        let y5 = c.matmul(&inverse_sqrt(&cov, &five).unwrap()).unwrap();
        let diag: Vec<f32> = covariance(&y5).into_iter().step_by(5).collect();
        assert!(diag.iter().all(|v| (0.1..1.2).contains(v)), "{diag:?}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (b, d) = (8, 3);
        let x = values(&correlated(b, &[1.0, 2.0, 0.5], 7));
        let cfg = BatchWhiteningConfig::default();
        // A fixed random read-out of the whitened batch, so that the loss is not invariant.
        let probe = Tensor::from_vec(
            (0..b * d)
                .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                .collect::<Vec<_>>(),
            (b, d),
            &Device::Cpu,
        )
        .unwrap();
        let loss = |t: &Tensor| -> Tensor {
            let c = t.broadcast_sub(&t.mean_keepdim(0).unwrap()).unwrap();
            let cov = (c.t().unwrap().matmul(&c).unwrap() / b as f64).unwrap();
            let y = c.matmul(&inverse_sqrt(&cov, &cfg).unwrap()).unwrap();
            (y * &probe).unwrap().sum_all().unwrap()
        };
        let var = Var::from_vec(x.clone(), (b, d), &Device::Cpu).unwrap();
        let grad = values(loss(var.as_tensor()).backward().unwrap().get(&var).unwrap());
        let at = |v: &[f32]| {
            let t = Tensor::from_vec(v.to_vec(), (b, d), &Device::Cpu).unwrap();
            f64::from(loss(&t).to_scalar::<f32>().unwrap())
        };
        let h = 1e-2f32;
        for i in 0..b * d {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (at(&up) - at(&down)) / (2.0 * f64::from(h));
            let analytic = f64::from(grad[i]);
            assert!(
                (numeric - analytic).abs() < 5e-3 + 3e-2 * analytic.abs(),
                "element {i}: numeric {numeric}, analytic {analytic}"
            );
        }
    }

    fn whitened_cnn(vm: &VarMap, iterations: usize) -> BatchWhitenedEncoder {
        let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
        let cnn = SmallCnn::new(
            SmallCnnConfig {
                embed_dim: 8,
                ..Default::default()
            },
            vb.pp("cnn"),
        )
        .unwrap();
        let cfg = BatchWhiteningConfig {
            iterations,
            momentum: 0.5,
            ..Default::default()
        };
        BatchWhitenedEncoder::new(Box::new(cnn), cfg, vb.pp("whiten")).unwrap()
    }

    #[test]
    fn inference_uses_the_running_statistics_and_the_folded_graph_matches_it() {
        let vm = VarMap::new();
        let enc = whitened_cnn(&vm, 12);
        let x = Tensor::randn(0f32, 1.0, (64, 1, 28, 28), &Device::Cpu).unwrap();
        // Before any training step the running statistics are (0, I): the layer passes the
        // embedding through.
        let raw = values(&enc.inner.embed(&x, false).unwrap());
        let fresh = values(&enc.embed(&x, false).unwrap());
        let d = raw
            .iter()
            .zip(&fresh)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-3, "a fresh layer changes the embedding by {d}");
        for _ in 0..20 {
            enc.embed(&x, true).unwrap();
        }
        // After steps on one batch, inference whitens that batch (BatchNorm's running
        // statistics also move it, so the batch is re-embedded in eval mode to compare).
        let y = enc.embed(&x, false).unwrap();
        let cov = covariance(&y);
        let diag: Vec<f32> = cov.iter().copied().step_by(9).collect();
        assert!(diag.iter().all(|v| (0.5..1.5).contains(v)), "{diag:?}");
        let graph = enc.folded_graph([1, 28, 28]).unwrap();
        assert!(
            matches!(graph.layers.last(), Some(Layer::Linear(l)) if l.name == "batch_whitening")
        );
        let folded = values(&graph.forward(&x, |_, _| Ok(())).unwrap());
        let ours = values(&y);
        let d = folded
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-3, "the folded graph differs by {d}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cnn = SmallCnn::new(SmallCnnConfig::default(), vb.pp("cnn")).unwrap();
        let cfg = BatchWhiteningConfig {
            iterations: 0,
            ..Default::default()
        };
        let e = BatchWhitenedEncoder::new(Box::new(cnn), cfg, vb.pp("w")).unwrap_err();
        assert!(e.to_string().contains("iterations"), "{e}");
    }
}
