//! Training-mode BatchNorm2d followed by ReLU, fused: one pass for the per-channel batch
//! statistics, one to normalise, scale, shift and clamp. The backward pass applies the ReLU
//! mask and the standard batch-norm gradient
//!
//! ```text
//! dx = gamma / sqrt(var + eps) * (dz - mean(dz) - xhat * mean(dz * xhat))
//! ```
//!
//! candle-nn's BatchNorm builds this from a transpose, a copy and a dozen broadcast ops.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Batch statistics of one forward pass: per-channel mean and biased variance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// relu(gamma * (x - mean) / sqrt(var + eps) + beta) with the batch's own statistics, for
/// NCHW f32 CPU tensors, and those statistics.
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(BatchStats::default()));
    let op = BnReluForward {
        eps,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = stats
        .lock()
        .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))?
        .clone();
    Ok((y, stats))
}

/// (batch, channels, pixels per plane) of an NCHW layout.
pub(super) fn nchw(l: &Layout) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [b, c, h, w] => Ok((b, c, h * w)),
        ref d => bail!("batch_norm_relu: expected (b, c, h, w), got {d:?}"),
    }
}

/// Lanes of partial sums: a single running f32 sum is a chain of dependent adds that the
/// compiler may not reorder, so it runs at one add per latency; eight independent lanes
/// vectorise and pipeline.
const LANES: usize = 8;

/// (sum f(a, b).0, sum f(a, b).1) over paired elements, in `LANES` partial sums.
#[inline]
pub(super) fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    lane_sums3(a, b, b, |x, y, _| f(x, y))
}

/// As [`lane_sums`] over three paired slices.
#[inline]
pub(super) fn lane_sums3(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f32, f32) {
    let n = a.len().min(b.len()).min(c.len());
    let (mut s0, mut s1) = ([0f32; LANES], [0f32; LANES]);
    let body = n - n % LANES;
    for ((ca, cb), cc) in a[..body]
        .chunks_exact(LANES)
        .zip(b[..body].chunks_exact(LANES))
        .zip(c[..body].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let (u, v) = f(ca[l], cb[l], cc[l]);
            s0[l] += u;
            s1[l] += v;
        }
    }
    for i in body..n {
        let (u, v) = f(a[i], b[i], c[i]);
        s0[0] += u;
        s1[0] += v;
    }
    (s0.iter().sum(), s1.iter().sum())
}

/// Per-channel sum and sum of squares over the batch, in f64.
fn channel_moments(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut s2) = (0f64, 0f64);
            for bi in 0..b {
                let plane = &x[(bi * c + ch) * hw..(bi * c + ch + 1) * hw];
                let (ps, ps2) = lane_sums(plane, plane, |v, _| (v, v * v));
                s += ps as f64;
                s2 += ps2 as f64;
            }
            (s, s2)
        })
        .collect()
}

/// Per-channel batch mean, biased variance and 1 / sqrt(var + eps).
pub(super) fn mean_and_inv_std(
    x: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = (b * hw) as f64;
    let moments = channel_moments(x, b, c, hw);
    let mean: Vec<f32> = moments.iter().map(|m| (m.0 / n) as f32).collect();
    let var: Vec<f32> = moments
        .iter()
        .map(|m| ((m.1 / n) - (m.0 / n).powi(2)).max(0.0) as f32)
        .collect();
    let inv_std = inv_std(&var, eps);
    (mean, var, inv_std)
}

/// 1 / sqrt(var + eps) per channel, the same bits in the forward and the backward pass.
pub(super) fn inv_std(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect()
}

struct BnReluForward {
    eps: f64,
    stats: Arc<Mutex<BatchStats>>,
}

impl CustomOp3 for BnReluForward {
    fn name(&self) -> &'static str {
        "batch-norm-relu"
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
        let gamma = contiguous_f32(s2, l2, "weight")?;
        let beta = contiguous_f32(s3, l3, "bias")?;
        let (b, c, hw) = nchw(l1)?;
        if gamma.len() != c || beta.len() != c {
            bail!(
                "batch_norm_relu: {c} channels but {} weights and {} biases",
                gamma.len(),
                beta.len()
            );
        }
        if b * hw < 2 {
            bail!("batch_norm_relu: batch statistics need more than one value per channel");
        }
        let (mean, var, inv_std) = mean_and_inv_std(x, b, c, hw, self.eps);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw).enumerate().for_each(|(p, yp)| {
            let ch = p % c;
            let scale = gamma[ch] * inv_std[ch];
            let shift = beta[ch] - mean[ch] * scale;
            for (o, &v) in yp.iter_mut().zip(&x[p * hw..(p + 1) * hw]) {
                *o = (v * scale + shift).max(0.0);
            }
        });
        if let Ok(mut s) = self.stats.lock() {
            *s = BatchStats { mean, var };
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.dim(0)?;
        let op = BnReluBackward {
            eps: self.eps,
            gamma: gamma.to_vec1()?,
        };
        // One op computes all three gradients: dx, then dgamma and dbeta appended.
        let packed = x.apply_op3_no_bwd(y, &grad.contiguous()?, &op)?;
        let n = x.elem_count();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, c)?;
        let dbeta = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

struct BnReluBackward {
    eps: f64,
    gamma: Vec<f32>,
}

impl CustomOp3 for BnReluBackward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-backward"
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
        let y = contiguous_f32(s2, l2, "output")?;
        let gy = contiguous_f32(s3, l3, "gradient")?;
        let (b, c, hw) = nchw(l1)?;
        if y.len() != x.len() || gy.len() != x.len() || self.gamma.len() != c {
            bail!("batch_norm_relu backward: shapes do not match the forward pass");
        }
        let (mean, _, inv_std) = mean_and_inv_std(x, b, c, hw, self.eps);
        // Per channel: sum(dz) and sum(dz * xhat), with dz = gy where the ReLU was open.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sd, mut sdx) = (0f64, 0f64);
                for bi in 0..b {
                    let r = (bi * c + ch) * hw..(bi * c + ch + 1) * hw;
                    let m = mean[ch];
                    let (a, a2) = lane_sums3(&x[r.clone()], &y[r.clone()], &gy[r], |xv, yv, g| {
                        let dz = if yv > 0.0 { g } else { 0.0 };
                        (dz, dz * (xv - m))
                    });
                    sd += a as f64;
                    sdx += a2 as f64 * inv_std[ch] as f64;
                }
                (sd, sdx)
            })
            .collect();
        let n = (b * hw) as f64;
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, dparams) = out.split_at_mut(x.len());
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| {
            let ch = p % c;
            let k = self.gamma[ch] * inv_std[ch];
            let mean_dz = (sums[ch].0 / n) as f32;
            let mean_dz_xhat = (sums[ch].1 / n) as f32;
            let r = p * hw..(p + 1) * hw;
            for ((o, (&xv, &yv)), &g) in dxp
                .iter_mut()
                .zip(x[r.clone()].iter().zip(&y[r.clone()]))
                .zip(&gy[r])
            {
                let dz = if yv > 0.0 { g } else { 0.0 };
                let xhat = (xv - mean[ch]) * inv_std[ch];
                *o = k * (dz - mean_dz - xhat * mean_dz_xhat);
            }
        });
        for ch in 0..c {
            dparams[ch] = sums[ch].1 as f32;
            dparams[c + ch] = sums[ch].0 as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, ModuleT, Var};
    use candle_nn::{batch_norm, BatchNormConfig, VarBuilder, VarMap};

    use super::*;
    use crate::ops::max_abs_diff;

    #[test]
    fn output_gradients_and_statistics_match_candle_nn() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (4, 3, 5, 6);
        let x = (Tensor::randn(0f32, 2.0, (b, c, h, w), &dev).unwrap() + 0.5).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let gamma0 = Tensor::new(&[1.5f32, 0.7, -0.4], &dev).unwrap();
        let beta0 = Tensor::new(&[0.1f32, -0.2, 0.3], &dev).unwrap();

        // Reference: candle-nn's BatchNorm, then relu.
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let bn = batch_norm(c, BatchNormConfig::default(), vb).unwrap();
        let vars = vm.data().lock().unwrap().clone();
        vars["weight"].set(&gamma0).unwrap();
        vars["bias"].set(&beta0).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let yc = bn.forward_t(xv.as_tensor(), true).unwrap().relu().unwrap();
        let gc = (&yc * &r).unwrap().sum_all().unwrap().backward().unwrap();

        // Ours.
        let (xo, go, bo) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&gamma0).unwrap(),
            Var::from_tensor(&beta0).unwrap(),
        );
        let (yo, stats) =
            batch_norm_relu_train(xo.as_tensor(), go.as_tensor(), bo.as_tensor(), 1e-5).unwrap();
        let g = (&yo * &r).unwrap().sum_all().unwrap().backward().unwrap();

        assert!(max_abs_diff(&yo, &yc) < 1e-5, "forward");
        assert!(
            max_abs_diff(g.get(&xo).unwrap(), gc.get(&xv).unwrap()) < 1e-4,
            "dx"
        );
        assert!(
            max_abs_diff(g.get(&go).unwrap(), gc.get(&vars["weight"]).unwrap()) < 1e-3,
            "dgamma"
        );
        assert!(
            max_abs_diff(g.get(&bo).unwrap(), gc.get(&vars["bias"]).unwrap()) < 1e-3,
            "dbeta"
        );
        // candle-nn moved its running mean by momentum 0.1 towards the batch mean.
        let rm: Vec<f32> = vars["running_mean"].as_tensor().to_vec1().unwrap();
        for (r, m) in rm.iter().zip(&stats.mean) {
            assert!((r - 0.1 * m).abs() < 1e-5);
        }
    }

    #[test]
    fn lane_sums_add_every_element_including_the_tail() {
        for n in [0, 1, 7, 8, 9, 31] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 3) as f32).collect();
            let (s, sp) = lane_sums(&a, &b, |x, y| (x, x * y));
            let want: f32 = a.iter().sum();
            let want_p: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (s - want).abs() < 1e-4 && (sp - want_p).abs() < 1e-4,
                "n = {n}"
            );
        }
    }

    #[test]
    fn wrong_parameter_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 2, 2), DType::F32, &dev).unwrap();
        let p2 = Tensor::ones(2, DType::F32, &dev).unwrap();
        assert!(batch_norm_relu_train(&x, &p2, &p2, 1e-5).is_err());
        let one = Tensor::zeros((1, 3, 1, 1), DType::F32, &dev).unwrap();
        let p3 = Tensor::ones(3, DType::F32, &dev).unwrap();
        assert!(batch_norm_relu_train(&one, &p3, &p3, 1e-5).is_err());
    }
}
