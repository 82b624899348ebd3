//! Mean softmax cross-entropy over rows of logits, fused: forward is one log-sum-exp pass
//! per row, backward writes (softmax - onehot) / batch in one more. NPID's full softmax runs
//! this over (batch x N) logits, N up to the data set size, where candle's chain of
//! log-softmax, gather and mean makes several full-size passes and allocations.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Mean over rows of -log softmax(logits)[target]; logits (b, k) f32, targets (b,) u32.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        logits
            .contiguous()?
            .apply_op2(&targets.to_dtype(DType::U32)?.contiguous()?, CrossEntropy)
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<u32>()?[a..b]),
        None => bail!("cross_entropy: targets are not contiguous"),
    }
}

fn shape(logits: &Layout, t: &[u32]) -> Result<(usize, usize)> {
    let [b, k] = *logits.dims() else {
        bail!(
            "cross_entropy: logits must be (batch, classes), got {:?}",
            logits.dims()
        )
    };
    if t.len() != b {
        bail!("cross_entropy: {b} rows of logits but {} targets", t.len());
    }
    if let Some(&bad) = t.iter().find(|&&c| c as usize >= k) {
        bail!("cross_entropy: target {bad} is not one of {k} classes");
    }
    Ok((b, k))
}

/// Row maximum and log-sum-exp, stable.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
    (m, m + s.ln())
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "cross_entropy logits")?;
        let t = targets(s2, l2)?;
        let (b, k) = shape(l1, t)?;
        let total: f64 = x
            .par_chunks(k)
            .zip(t.par_iter())
            .map(|(row, &c)| (log_sum_exp(row).1 - row[c as usize]) as f64)
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / b as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op2_no_bwd(targets, &CrossEntropyBackward)?;
        Ok((Some(g.broadcast_mul(grad)?), None))
    }
}

struct CrossEntropyBackward;

impl CustomOp2 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "cross_entropy logits")?;
        let t = targets(s2, l2)?;
        let (b, k) = shape(l1, t)?;
        let inv_b = 1.0 / b as f32;
        let mut g = vec![0f32; b * k];
        g.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .zip(t.par_iter())
            .for_each(|((gr, row), &c)| {
                let (_, lse) = log_sum_exp(row);
                for (o, &v) in gr.iter_mut().zip(row) {
                    *o = (v - lse).exp() * inv_b;
                }
                gr[c as usize] -= inv_b;
            });
        Ok((CpuStorage::F32(g), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::max_abs_diff;

    #[test]
    fn loss_and_gradient_match_candle_nn() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (7, 50), &dev).unwrap() + 20.0).unwrap();
        let t = Tensor::new(&[0u32, 49, 3, 3, 17, 8, 22], &dev).unwrap();
        let (a, b) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&x).unwrap());
        let ours = cross_entropy(a.as_tensor(), &t).unwrap();
        let theirs = candle_nn::loss::cross_entropy(b.as_tensor(), &t).unwrap();
        let (lo, lt): (f32, f32) = (ours.to_scalar().unwrap(), theirs.to_scalar().unwrap());
        assert!((lo - lt).abs() < 1e-5, "{lo} vs {lt}");
        let (go, gt) = (ours.backward().unwrap(), theirs.backward().unwrap());
        assert!(max_abs_diff(go.get(&a).unwrap(), gt.get(&b).unwrap()) < 1e-6);
        // Scaled upstream gradients reach the logits scaled.
        let g2 = (cross_entropy(a.as_tensor(), &t).unwrap() * 3.0)
            .unwrap()
            .backward()
            .unwrap();
        let twice = (go.get(&a).unwrap() * 3.0).unwrap();
        assert!(max_abs_diff(g2.get(&a).unwrap(), &twice) < 1e-6);
    }

    #[test]
    fn bad_targets_are_errors() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(cross_entropy(&x, &Tensor::new(&[0u32, 3], &Device::Cpu).unwrap()).is_err());
        assert!(cross_entropy(&x, &Tensor::new(&[0u32], &Device::Cpu).unwrap()).is_err());
    }
}
