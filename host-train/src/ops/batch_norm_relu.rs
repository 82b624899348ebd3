//! Training-mode BatchNorm2d followed by ReLU, fused: one pass for the per-channel batch
//! statistics, one to normalise, scale, shift and clamp. The backward pass applies the ReLU
//! mask and the standard batch-norm gradient
//!
//! ```text
//! dx = gamma / sqrt(var + eps) * (dz - mean(dz) - xhat * mean(dz * xhat))
//! ```
//!
//! candle-nn's BatchNorm builds this from a transpose, a copy and a dozen broadcast ops.
//! The pieces both fused ops share (this one and `batch_norm_relu_pool`) live here: the
//! statistics, the wrapper that runs an op and returns them, and the gradient from dz.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
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
    run_train_op(x, gamma, beta, |stats| BnReluForward { eps, stats })
}

/// Applies a fused training op built around a statistics slot, and returns its output and the
/// statistics its forward pass wrote there.
pub(super) fn run_train_op<Op: CustomOp3 + Send + Sync + 'static>(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    op: impl FnOnce(Arc<Mutex<BatchStats>>) -> Op,
) -> Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(BatchStats::default()));
    let y =
        x.contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op(stats.clone()))?;
    let stats = lock(&stats)?.clone();
    Ok((y, stats))
}

pub(super) fn lock(stats: &Mutex<BatchStats>) -> Result<MutexGuard<'_, BatchStats>> {
    stats
        .lock()
        .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))
}

/// (batch, channels, pixels per plane) of an NCHW layout.
pub(super) fn nchw(l: &Layout) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [b, c, h, w] => Ok((b, c, h * w)),
        ref d => bail!("batch_norm_relu: expected (b, c, h, w), got {d:?}"),
    }
}

/// gamma and beta of a forward pass over `(b, c, hw)`, checked: one each per channel, and
/// more than one value per channel to take statistics of.
pub(super) fn checked_params<'a>(
    op: &str,
    params: (&'a CpuStorage, &Layout, &'a CpuStorage, &Layout),
    (b, c, hw): (usize, usize, usize),
) -> Result<(&'a [f32], &'a [f32])> {
    let checked = per_channel_params(op, params, c)?;
    if b * hw < 2 {
        bail!("{op}: batch statistics need more than one value per channel");
    }
    Ok(checked)
}

/// gamma and beta, checked: one each of `c` channels.
pub(super) fn per_channel_params<'a>(
    op: &str,
    (s2, l2, s3, l3): (&'a CpuStorage, &Layout, &'a CpuStorage, &Layout),
    c: usize,
) -> Result<(&'a [f32], &'a [f32])> {
    let gamma = contiguous_f32(s2, l2, "weight")?;
    let beta = contiguous_f32(s3, l3, "bias")?;
    if gamma.len() != c || beta.len() != c {
        bail!(
            "{op}: {c} channels but {} weights and {} biases",
            gamma.len(),
            beta.len()
        );
    }
    Ok((gamma, beta))
}

/// Lanes of partial sums: a single running f32 sum is a chain of dependent adds that the
/// compiler may not reorder, so it runs at one add per latency; eight independent lanes
/// vectorise and pipeline.
const LANES: usize = 8;

/// (sum f(a, b).0, sum f(a, b).1) over paired elements, in `LANES` partial sums.
#[inline]
pub(super) fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    let n = a.len().min(b.len());
    let (mut s0, mut s1) = ([0f32; LANES], [0f32; LANES]);
    let body = n - n % LANES;
    for (ca, cb) in a[..body]
        .chunks_exact(LANES)
        .zip(b[..body].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let (u, v) = f(ca[l], cb[l]);
            s0[l] += u;
            s1[l] += v;
        }
    }
    for i in body..n {
        let (u, v) = f(a[i], b[i]);
        s0[0] += u;
        s1[0] += v;
    }
    (s0.iter().sum(), s1.iter().sum())
}

/// relu(x * scale + shift) of one plane, into `out`.
#[inline]
pub(super) fn scale_shift_relu(out: &mut [f32], x: &[f32], (scale, shift): (f32, f32)) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * scale + shift).max(0.0);
    }
}

/// The gradient `gy` where relu(x * scale + shift) was open, else 0, into `out`: the mask is
/// recomputed from x with the forward pass's very arithmetic.
#[inline]
pub(super) fn relu_open_grad(out: &mut [f32], x: &[f32], gy: &[f32], (scale, shift): (f32, f32)) {
    for ((o, &xv), &g) in out.iter_mut().zip(x).zip(gy) {
        *o = if xv * scale + shift > 0.0 { g } else { 0.0 };
    }
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

/// The per-channel affine map of one training batch: its statistics with gamma and beta.
#[derive(Debug, Clone)]
pub(super) struct Normalizer {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl Normalizer {
    /// The batch's statistics of `x` (b, c, hw), and the normaliser they make.
    pub fn fit(
        x: &[f32],
        (b, c, hw): (usize, usize, usize),
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
    ) -> (Self, BatchStats) {
        let n = (b * hw) as f64;
        let moments = channel_moments(x, b, c, hw);
        let mean: Vec<f32> = moments.iter().map(|m| (m.0 / n) as f32).collect();
        let var: Vec<f32> = moments
            .iter()
            .map(|m| ((m.1 / n) - (m.0 / n).powi(2)).max(0.0) as f32)
            .collect();
        let stats = BatchStats { mean, var };
        (Self::from_stats(&stats, gamma, beta, eps), stats)
    }

    /// The same normaliser, rebuilt in the backward pass from the forward pass's statistics
    /// (bit for bit: the same f32 inputs and arithmetic).
    pub fn from_stats(stats: &BatchStats, gamma: &[f32], beta: &[f32], eps: f64) -> Self {
        let inv_std = stats
            .var
            .iter()
            .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
            .collect();
        Self {
            mean: stats.mean.clone(),
            inv_std,
            gamma: gamma.to_vec(),
            beta: beta.to_vec(),
        }
    }

    /// The backward op's normaliser: the forward pass's statistics (from `slot`) with the
    /// current gamma and beta.
    pub fn for_backward(
        slot: &Mutex<BatchStats>,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Self> {
        let stats = lock(slot)?.clone();
        let c = gamma.dim(0)?;
        if stats.mean.len() != c {
            bail!("batch-norm backward: no statistics from the forward pass");
        }
        Ok(Self::from_stats(
            &stats,
            &gamma.to_vec1()?,
            &beta.to_vec1()?,
            eps,
        ))
    }

    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// y = x * scale + shift for channel `ch`.
    #[inline]
    pub fn scale_shift(&self, ch: usize) -> (f32, f32) {
        let scale = self.gamma[ch] * self.inv_std[ch];
        (scale, self.beta[ch] - self.mean[ch] * scale)
    }

    /// The backward op's output, [dx; dgamma; dbeta] as [`packed_gradients`] splits it, for
    /// input `x` in planes of `hw`. `write_dz(plane, dz, (scale, shift))` fills one zeroed
    /// plane with dz, the gradient after the ReLU (and after the pool where there is one).
    pub fn backward(
        &self,
        x: &[f32],
        hw: usize,
        write_dz: impl Fn(usize, &mut [f32], (f32, f32)) + Sync,
    ) -> (CpuStorage, Shape) {
        let c = self.channels();
        let mut out = vec![0f32; x.len() + 2 * c];
        out[..x.len()]
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(p, dzp)| write_dz(p, dzp, self.scale_shift(p % c)));
        self.backward_in_place(x, &mut out, hw);
        let len = out.len();
        (CpuStorage::F32(out), Shape::from(len))
    }

    /// Turns dz in the first `x.len()` values of `out` into dx in place, and writes dgamma
    /// and dbeta after it.
    fn backward_in_place(&self, x: &[f32], out: &mut [f32], hw: usize) {
        let c = self.channels();
        let (dx, dparams) = out.split_at_mut(x.len());
        // Per plane, then per channel in f64: sum(dz) and sum(dz * xhat).
        let plane_sums: Vec<(f32, f32)> = dx
            .par_chunks(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .map(|(p, (dzp, xp))| {
                let m = self.mean[p % c];
                lane_sums(dzp, xp, |dz, xv| (dz, dz * (xv - m)))
            })
            .collect();
        let mut sums = vec![(0f64, 0f64); c];
        for (p, &(a, a2)) in plane_sums.iter().enumerate() {
            let s = &mut sums[p % c];
            s.0 += a as f64;
            s.1 += a2 as f64 * self.inv_std[p % c] as f64;
        }
        let n = (dx.len() / c) as f64;
        // dx = k * (dz - mean(dz) - xhat * mean(dz * xhat)).
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (dxp, xp))| {
                let ch = p % c;
                let (mean, inv_std) = (self.mean[ch], self.inv_std[ch]);
                let k = self.gamma[ch] * inv_std;
                let mean_dz = (sums[ch].0 / n) as f32;
                let mean_dz_xhat = (sums[ch].1 / n) as f32;
                for (o, &xv) in dxp.iter_mut().zip(xp) {
                    *o = k * (*o - mean_dz - (xv - mean) * inv_std * mean_dz_xhat);
                }
            });
        for (ch, s) in sums.iter().enumerate() {
            dparams[ch] = s.1 as f32;
            dparams[c + ch] = s.0 as f32;
        }
    }
}

/// Runs a backward op that returns [dx; dgamma; dbeta] in one buffer, and splits it.
pub(super) fn packed_gradients(
    x: &Tensor,
    grad: &Tensor,
    op: &impl CustomOp2,
    c: usize,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let packed = x.apply_op2_no_bwd(&grad.contiguous()?, op)?;
    let n = x.elem_count();
    let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
    let dgamma = packed.narrow(0, n, c)?;
    let dbeta = packed.narrow(0, n + c, c)?;
    Ok((Some(dx), Some(dgamma), Some(dbeta)))
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
        let dims = nchw(l1)?;
        let (gamma, beta) = checked_params("batch_norm_relu", (s2, l2, s3, l3), dims)?;
        let (norm, stats) = Normalizer::fit(x, dims, gamma, beta, self.eps);
        let hw = dims.2;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw).enumerate().for_each(|(p, yp)| {
            scale_shift_relu(yp, &x[p * hw..(p + 1) * hw], norm.scale_shift(p % dims.1));
        });
        *lock(&self.stats)? = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let norm = Normalizer::for_backward(&self.stats, gamma, beta, self.eps)?;
        let c = norm.channels();
        packed_gradients(x, grad, &BnReluBackward(norm), c)
    }
}

/// One op for all three gradients: dx, then dgamma and dbeta appended.
struct BnReluBackward(Normalizer);

impl CustomOp2 for BnReluBackward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-backward"
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
        let (_, c, hw) = nchw(l1)?;
        let norm = &self.0;
        if gy.len() != x.len() || norm.channels() != c {
            bail!("batch_norm_relu backward: shapes do not match the forward pass");
        }
        // dz = gy where the ReLU was open: where the normalised value was positive.
        Ok(norm.backward(x, hw, |p, dzp, scale_shift| {
            let r = p * hw..(p + 1) * hw;
            relu_open_grad(dzp, &x[r.clone()], &gy[r], scale_shift);
        }))
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
