//! A scalar loss whose value and gradient were computed outside candle's graph, as one
//! node: forward returns the value, backward the stored gradient times the upstream one.
//! For losses whose cheapest evaluation gives both at once (NPID's and Local
//! Aggregation's softmax over the memory bank, `methods::bank_loss`), so that no large
//! intermediate tensor enters the autograd graph.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `loss` as a function of `x`, with d loss / d x = `grad` (x's shape, row-major).
pub fn precomputed_loss(x: &Tensor, loss: f32, grad: Vec<f32>) -> Result<Tensor> {
    if grad.len() != x.elem_count() {
        bail!(
            "precomputed_loss: gradient of {} values for an input of shape {:?}",
            grad.len(),
            x.dims()
        );
    }
    x.apply_op1(PrecomputedLoss { loss, grad })
}

struct PrecomputedLoss {
    loss: f32,
    grad: Vec<f32>,
}

impl CustomOp1 for PrecomputedLoss {
    fn name(&self) -> &'static str {
        "precomputed-loss"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = Tensor::from_slice(&self.grad, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(Some(g.broadcast_mul(&grad_res.to_dtype(x.dtype())?)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn value_and_gradient_are_the_given_ones_scaled_by_the_upstream_gradient() {
        let v = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let l = precomputed_loss(v.as_tensor(), 2.5, vec![0.1, -0.2, 0.3, -0.4]).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 2.5);
        let grads = (l * 2.0).unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> = grads.get(&v).unwrap().to_vec2().unwrap();
        assert_eq!(g, vec![vec![0.2, -0.4], vec![0.6, -0.8]]);
        let bad = precomputed_loss(v.as_tensor(), 1.0, vec![0.0; 3]).unwrap_err();
        assert!(bad.to_string().contains("3 values"), "{bad}");
    }
}
