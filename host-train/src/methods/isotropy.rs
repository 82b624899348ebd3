//! A penalty that keeps a batch of embeddings isotropic: every direction of the same
//! variance, none correlated with another (the covariance a multiple of the identity).
//!
//! Why: DeepCluster's classifier is free to grow a few directions of the embedding far
//! above the rest, and cosine similarity on such an embedding (what weighted kNN and the
//! board's k-means use) hears only those. PCA-whitening after training puts every direction
//! on one scale and raises kNN, but then the model the board runs is not the one trained.
//! With this term the trained embedding is near-white itself. It is VICReg's covariance
//! term (Bardes et al. 2022) made scale-free: the covariance is divided by its mean
//! variance, so the penalty shapes the spectrum and leaves the scale to the task's loss.

use candle_core::{Result, Tensor};

/// `||C / (tr C / d) - I||_F^2 / d` for the (d x d) covariance `C` of the rows of `z`
/// (b x d, b >= 2): 0 for an isotropic batch, d - 1 for a batch along one direction.
pub fn isotropy_loss(z: &Tensor) -> Result<Tensor> {
    let (b, d) = z.dims2()?;
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let cov = (centred.t()?.matmul(&centred)? / (b as f64 - 1.0))?;
    // tr C is the sum of the centred squares.
    let mean_var = (centred.sqr()?.sum_all()? / ((b as f64 - 1.0) * d as f64))?;
    // A floor keeps a collapsed batch (all rows equal) from dividing by zero.
    let scaled = cov.broadcast_div(&(mean_var + 1e-12)?)?;
    let eye = Tensor::eye(d, z.dtype(), z.device())?;
    (scaled - eye)?.sqr()?.sum_all()? / d as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use models::rng::Rng;

    fn scalar(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    fn rows(b: usize, scales: &[f32], seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..b)
            .flat_map(|_| {
                scales
                    .iter()
                    .map(|s| s * r.next_gaussian() as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn an_isotropic_batch_scores_near_zero_and_one_loud_direction_high() {
        // Four orthogonal rows and their negatives: covariance exactly a multiple of I.
        let mut v = Vec::new();
        for sign in [1.0f32, -1.0] {
            for i in 0..4 {
                let mut r = [0f32; 4];
                r[i] = 3.0 * sign;
                v.extend_from_slice(&r);
            }
        }
        let iso = Tensor::from_vec(v, (8, 4), &Device::Cpu).unwrap();
        assert!(scalar(&isotropy_loss(&iso).unwrap()) < 1e-6);
        // The same scaled tenfold: the penalty is scale-free.
        let big = (iso * 10.0).unwrap();
        assert!(scalar(&isotropy_loss(&big).unwrap()) < 1e-6);
        // One direction far louder than three others: near its bound d - 1 = 3.
        let loud = Tensor::from_vec(
            rows(4000, &[10.0, 0.1, 0.1, 0.1], 1),
            (4000, 4),
            &Device::Cpu,
        )
        .unwrap();
        let l = scalar(&isotropy_loss(&loud).unwrap());
        assert!((2.9..3.0).contains(&l), "{l}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (b, d) = (6, 3);
        let x = rows(b, &[1.0, 2.0, 0.5], 7);
        let var = Var::from_vec(x.clone(), (b, d), &Device::Cpu).unwrap();
        let loss = isotropy_loss(var.as_tensor()).unwrap();
        let grad = loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap();
        let grad: Vec<f32> = grad.to_vec1().unwrap();
        let at = |v: &[f32]| {
            let t = Tensor::from_vec(v.to_vec(), (b, d), &Device::Cpu).unwrap();
            scalar(&isotropy_loss(&t).unwrap())
        };
        let h = 1e-2f32;
        for i in 0..b * d {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (at(&up) - at(&down)) / (2.0 * f64::from(h));
            let analytic = f64::from(grad[i]);
            assert!(
                (numeric - analytic).abs() < 2e-3 + 2e-2 * analytic.abs(),
                "element {i}: numeric {numeric}, analytic {analytic}"
            );
        }
    }

    #[test]
    fn training_on_the_penalty_alone_whitens_a_skewed_batch() {
        let (b, d) = (64, 4);
        let var = Var::from_vec(rows(b, &[5.0, 1.0, 0.2, 0.05], 3), (b, d), &Device::Cpu).unwrap();
        let first = scalar(&isotropy_loss(var.as_tensor()).unwrap());
        for _ in 0..2000 {
            let l = isotropy_loss(var.as_tensor()).unwrap();
            let g = l.backward().unwrap().get(&var).unwrap().clone();
            var.set(&(var.as_tensor() - (g * 2.0).unwrap()).unwrap())
                .unwrap();
        }
        let last = scalar(&isotropy_loss(var.as_tensor()).unwrap());
        assert!(first > 1.0 && last < 0.05 * first, "{first} -> {last}");
    }
}
