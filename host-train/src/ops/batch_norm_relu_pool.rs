//! Training-mode BatchNorm2d, ReLU and 2x2/stride-2 max-pooling as one op, for the blocks of
//! `small-cnn` that pool. The forward pass reads the input twice (statistics, then normalise,
//! clamp and pool) and writes only the pooled quarter; the normalised map is never stored.
//! The backward pass recomputes each window's winner from the input and applies the
//! batch-norm gradient of [`super::batch_norm_relu`] to the sparse result, so neither pass
//! materialises a full-size intermediate or its gradient (which candle's autograd would
//! allocate, zero and add into once per op).

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::batch_norm_relu::{
    checked_params, lock, packed_gradients, run_train_op, BatchStats, Normalizer,
};
use super::contiguous_f32;
use super::max_pool::first_max_2x2;

/// max_pool_2x2(relu(gamma * (x - mean) / sqrt(var + eps) + beta)) with the batch's own
/// statistics, for NCHW f32 CPU tensors of even height and width, and those statistics.
/// The output equals `batch_norm_relu_train` followed by `max_pool_2x2` bit for bit.
pub fn batch_norm_relu_pool_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!("batch_norm_relu_pool runs on CPU f32 tensors");
    }
    run_train_op(x, gamma, beta, |stats| BnReluPoolForward { eps, stats })
}

/// (batch, channels, height, width) of an NCHW layout with even sides.
fn even_dims(l: &Layout) -> Result<[usize; 4]> {
    match *l.dims() {
        [b, c, h, w] if h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0 => Ok([b, c, h, w]),
        ref d => bail!("batch_norm_relu_pool: expected (b, c, even h, even w), got {d:?}"),
    }
}

struct BnReluPoolForward {
    eps: f64,
    stats: Arc<Mutex<BatchStats>>,
}

impl CustomOp3 for BnReluPoolForward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-max-pool-2x2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let [b, c, h, w] = even_dims(l1)?;
        let dims = (b, c, h * w);
        let (gamma, beta) = checked_params("batch_norm_relu_pool", (s2, l2, s3, l3), dims)?;
        let (norm, stats) = Normalizer::fit(x, dims, gamma, beta, self.eps);
        let (oh, ow) = (h / 2, w / 2);
        let mut y = vec![0f32; b * c * oh * ow];
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
            let (scale, shift) = norm.scale_shift(p % c);
            let xp = &x[p * h * w..(p + 1) * h * w];
            for (rows, out) in xp.chunks_exact(2 * w).zip(yp.chunks_exact_mut(ow)) {
                let (r0, r1) = rows.split_at(w);
                for ((a, b), o) in r0.chunks_exact(2).zip(r1.chunks_exact(2)).zip(out) {
                    let top = (a[0] * scale + shift).max(a[1] * scale + shift);
                    let bottom = (b[0] * scale + shift).max(b[1] * scale + shift);
                    *o = top.max(bottom).max(0.0);
                }
            }
        });
        *lock(&self.stats)? = stats;
        Ok((CpuStorage::F32(y), Shape::from((b, c, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let norm = Normalizer::for_backward(&self.stats, gamma, beta, self.eps)?;
        let c = norm.channels();
        packed_gradients(x, grad, &BnReluPoolBackward(norm), c)
    }
}

/// One op for all three gradients: dx, then dgamma and dbeta appended.
struct BnReluPoolBackward(Normalizer);

impl CustomOp2 for BnReluPoolBackward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let gy = contiguous_f32(s2, l2, "gradient")?;
        let [b, c, h, w] = even_dims(l1)?;
        let (hw, oh, ow) = (h * w, h / 2, w / 2);
        let norm = &self.0;
        if gy.len() != b * c * oh * ow || norm.channels() != c {
            bail!(
                "batch_norm_relu_pool backward: gradient {:?} does not match input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        // dz, the gradient after the pool and the ReLU, is non-zero only at each window's
        // winner (recomputed from x as the forward pass chose it), and only if positive.
        Ok(norm.backward(x, hw, |p, dzp, (scale, shift)| {
            let xp = &x[p * hw..(p + 1) * hw];
            let gp = &gy[p * oh * ow..(p + 1) * oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (j, v) = first_max_2x2(xp, w, oy, ox, |x| x * scale + shift);
                    dzp[j] = if v > 0.0 { gp[oy * ow + ox] } else { 0.0 };
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::{batch_norm_relu_train, max_abs_diff, max_pool_2x2};

    /// The fused op against the two ops it replaces, with a negative gamma (the pool's winner
    /// is then the smallest input) and ties from the ReLU.
    #[test]
    fn matches_batch_norm_relu_then_max_pool_in_value_gradients_and_statistics() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (3, 4, 6, 8);
        let x = (Tensor::randn(0f32, 2.0, (b, c, h, w), &dev).unwrap() + 0.5).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, c, h / 2, w / 2), &dev).unwrap();
        let gamma = Tensor::new(&[1.5f32, -0.7, 0.4, 1.0], &dev).unwrap();
        let beta = Tensor::new(&[0.1f32, -0.2, 0.3, -1.5], &dev).unwrap();
        let vars = |t: &Tensor| Var::from_tensor(t).unwrap();
        let (x1, g1, b1) = (vars(&x), vars(&gamma), vars(&beta));
        let (x2, g2, b2) = (vars(&x), vars(&gamma), vars(&beta));

        let (y1, s1) =
            batch_norm_relu_train(x1.as_tensor(), g1.as_tensor(), b1.as_tensor(), 1e-5).unwrap();
        let y1 = max_pool_2x2(&y1).unwrap();
        let (y2, s2) =
            batch_norm_relu_pool_train(x2.as_tensor(), g2.as_tensor(), b2.as_tensor(), 1e-5)
                .unwrap();
        assert_eq!(y2.dims(), &[b, c, h / 2, w / 2]);
        assert_eq!(max_abs_diff(&y1, &y2), 0.0, "forward is bit-identical");
        assert_eq!(s1, s2);
        // Channel 3 (beta -1.5) has windows where every value is clamped to 0.
        let zeros = y2.eq(0f32).unwrap().to_dtype(DType::F32).unwrap();
        assert!(zeros.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);

        let grads1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let grads2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (v1, v2, what, tol) in [
            (&x1, &x2, "dx", 1e-5),
            (&g1, &g2, "dgamma", 1e-4),
            (&b1, &b2, "dbeta", 1e-4),
        ] {
            let d = max_abs_diff(grads1.get(v1).unwrap(), grads2.get(v2).unwrap());
            assert!(d < tol, "{what} differs by {d}");
        }
    }

    /// Central differences of sum(r * f(x)) in a few coordinates of x.
    #[test]
    fn input_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (2, 2, 4, 4);
        let x0: Vec<f32> = Tensor::randn(0f32, 1.0, b * c * h * w, &dev)
            .unwrap()
            .to_vec1()
            .unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, c, h / 2, w / 2), &dev).unwrap();
        let gamma = Tensor::new(&[1.2f32, -0.8], &dev).unwrap();
        let beta = Tensor::new(&[0.2f32, 0.1], &dev).unwrap();
        let loss = |xs: &[f32]| -> f64 {
            let x = Tensor::from_slice(xs, (b, c, h, w), &dev).unwrap();
            let (y, _) = batch_norm_relu_pool_train(&x, &gamma, &beta, 1e-5).unwrap();
            (&y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let xv = Var::from_tensor(&Tensor::from_slice(&x0, (b, c, h, w), &dev).unwrap()).unwrap();
        let (y, _) = batch_norm_relu_pool_train(xv.as_tensor(), &gamma, &beta, 1e-5).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = grads
            .get(&xv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eps = 1e-3f32;
        for i in [0, 5, 17, 31, 42, 63] {
            let numeric = super::super::central_difference(loss, &x0, i, eps);
            assert!(
                (numeric - gx[i] as f64).abs() < 2e-2,
                "x[{i}]: analytic {}, numeric {numeric}",
                gx[i]
            );
        }
    }

    #[test]
    fn odd_sizes_and_wrong_parameter_shapes_are_errors() {
        let dev = Device::Cpu;
        let p = |n| Tensor::ones(n, DType::F32, &dev).unwrap();
        let odd = Tensor::zeros((2, 3, 3, 4), DType::F32, &dev).unwrap();
        assert!(batch_norm_relu_pool_train(&odd, &p(3), &p(3), 1e-5).is_err());
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
        assert!(batch_norm_relu_pool_train(&x, &p(2), &p(3), 1e-5).is_err());
    }
}
