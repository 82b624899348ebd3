//! InstanceNorm2d followed by ReLU, fused (`encoders::InRelu` on the CPU): one pass for each
//! plane's mean and variance, one to normalise, scale, shift and clamp. The backward pass is
//! batch norm's, per plane instead of per channel:
//!
//! ```text
//! dx = gamma / sqrt(var_p + eps) * (dz - mean_p(dz) - xhat * mean_p(dz * xhat))
//! ```
//!
//! with dz the gradient where the ReLU was open, and dgamma, dbeta summed over each
//! channel's planes. As candle ops ([`instance_norm`], which other devices and the export's
//! reference run) the same layer takes a dozen broadcast passes forward and more backward.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::batch_norm_relu::{
    lane_sums, nchw, packed_gradients, per_channel_params, relu_open_grad, scale_shift_relu,
};
use super::contiguous_f32;

/// InstanceNorm of `x` (b, c, h, w): each image's channels less their spatial mean, over
/// their spatial std (`+ eps` under the root), then `scale * x + bias` per channel. The
/// training layer off the CPU (`encoders::InRelu`) and the export reference (`graph`) run this.
pub fn instance_norm(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(3)?.mean_keepdim(2)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(3)?.mean_keepdim(2)?;
    let per_channel = |t: &Tensor| t.reshape((1, (), 1, 1));
    let gain = (var + eps)?
        .sqrt()?
        .recip()?
        .broadcast_mul(&per_channel(scale)?)?;
    centred
        .broadcast_mul(&gain)?
        .broadcast_add(&per_channel(bias)?)
}

/// relu(gamma * (x - mean_p) / sqrt(var_p + eps) + beta), each (image, channel) plane p
/// normalised by its own statistics, for NCHW f32 CPU tensors.
pub fn instance_norm_relu(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        InReluForward { eps },
    )
}

/// Each plane's mean and 1 / sqrt(var + eps), from the same f32 arithmetic forward and
/// backward.
fn plane_stats(x: &[f32], hw: usize, eps: f64) -> Vec<(f32, f32)> {
    x.par_chunks(hw)
        .map(|p| {
            let (s, s2) = lane_sums(p, p, |v, _| (v, v * v));
            let n = hw as f64;
            let mean = s as f64 / n;
            let var = (s2 as f64 / n - mean * mean).max(0.0);
            (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
        })
        .collect()
}

struct InReluForward {
    eps: f64,
}

impl CustomOp3 for InReluForward {
    fn name(&self) -> &'static str {
        "instance-norm-relu"
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
        let (_, c, hw) = nchw(l1)?;
        let (gamma, beta) = per_channel_params("instance_norm_relu", (s2, l2, s3, l3), c)?;
        let stats = plane_stats(x, hw, self.eps);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw).enumerate().for_each(|(p, yp)| {
            let (mean, inv_std) = stats[p];
            let scale = gamma[p % c] * inv_std;
            let shift = beta[p % c] - mean * scale;
            scale_shift_relu(yp, &x[p * hw..(p + 1) * hw], (scale, shift));
        });
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
        let op = InReluBackward {
            eps: self.eps,
            gamma: gamma.to_vec1()?,
            beta: beta.to_vec1()?,
        };
        packed_gradients(x, grad, &op, op.gamma.len())
    }
}

/// dx, then dgamma and dbeta appended, in one op.
struct InReluBackward {
    eps: f64,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl CustomOp2 for InReluBackward {
    fn name(&self) -> &'static str {
        "instance-norm-relu-backward"
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
        if gy.len() != x.len() || self.gamma.len() != c {
            bail!("instance_norm_relu backward: shapes do not match the forward pass");
        }
        let stats = plane_stats(x, hw, self.eps);
        let n = hw as f32;
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, dparams) = out.split_at_mut(x.len());
        // Per plane: dx, and its share of dgamma (sum dz * xhat) and dbeta (sum dz).
        let shares: Vec<(f32, f32)> = dx
            .par_chunks_mut(hw)
            .enumerate()
            .map(|(p, dxp)| {
                let (mean, inv_std) = stats[p];
                let (g, b) = (self.gamma[p % c], self.beta[p % c]);
                let scale = g * inv_std;
                let shift = b - mean * scale;
                let r = p * hw..(p + 1) * hw;
                relu_open_grad(dxp, &x[r.clone()], &gy[r.clone()], (scale, shift));
                let (sum_dz, sum_dz_xc) =
                    lane_sums(dxp, &x[r.clone()], |dz, xv| (dz, dz * (xv - mean)));
                let sum_dz_xhat = sum_dz_xc * inv_std;
                let (mean_dz, mean_dz_xhat) = (sum_dz / n, sum_dz_xhat / n);
                for (o, &xv) in dxp.iter_mut().zip(&x[r]) {
                    *o = scale * (*o - mean_dz - (xv - mean) * inv_std * mean_dz_xhat);
                }
                (sum_dz_xhat, sum_dz)
            })
            .collect();
        for (p, (dg, db)) in shares.into_iter().enumerate() {
            dparams[p % c] += dg;
            dparams[c + p % c] += db;
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::max_abs_diff;

    #[test]
    fn output_and_gradients_match_the_candle_ops() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (3, 4, 5, 7);
        let x = (Tensor::randn(0f32, 2.0, (b, c, h, w), &dev).unwrap() + 0.5).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let gamma = Tensor::new(&[1.5f32, 0.7, -0.4, 1.0], &dev).unwrap();
        let beta = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev).unwrap();
        let vars = |_: ()| {
            (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&gamma).unwrap(),
                Var::from_tensor(&beta).unwrap(),
            )
        };
        // Reference: the layer as candle ops, then relu.
        let (xr, gr, br) = vars(());
        let yr = instance_norm(xr.as_tensor(), gr.as_tensor(), br.as_tensor(), 1e-5)
            .unwrap()
            .relu()
            .unwrap();
        let gref = (&yr * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // Ours.
        let (xo, go, bo) = vars(());
        let yo = instance_norm_relu(xo.as_tensor(), go.as_tensor(), bo.as_tensor(), 1e-5).unwrap();
        let g = (&yo * &r).unwrap().sum_all().unwrap().backward().unwrap();

        assert!(max_abs_diff(&yo, &yr) < 1e-5, "forward");
        let diff = |a: &Var, b: &Var| max_abs_diff(g.get(a).unwrap(), gref.get(b).unwrap());
        assert!(diff(&xo, &xr) < 1e-4, "dx {}", diff(&xo, &xr));
        assert!(diff(&go, &gr) < 1e-3, "dgamma {}", diff(&go, &gr));
        assert!(diff(&bo, &br) < 1e-3, "dbeta {}", diff(&bo, &br));
    }

    #[test]
    fn a_constant_plane_comes_out_as_its_bias() {
        let dev = Device::Cpu;
        let x = Tensor::full(3f32, (2, 1, 4, 4), &dev).unwrap();
        let gamma = Tensor::new(&[2f32], &dev).unwrap();
        let beta = Tensor::new(&[0.25f32], &dev).unwrap();
        let y = instance_norm_relu(&x, &gamma, &beta, 1e-5).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&y| (y - 0.25).abs() < 1e-6), "{v:?}");
    }
}
