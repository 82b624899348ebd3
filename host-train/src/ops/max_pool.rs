//! 2x2 max-pooling with stride 2, NCHW f32, as a custom op whose backward sends each output
//! gradient to the first maximum of its window (PyTorch's rule) in one pass. candle's own
//! backward builds six full-size tensors (upsample, compare, average, divide) to do this.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// 2x2 max-pooling; height and width must be even.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        bail!("max_pool_2x2 needs even height and width, got {h}x{w}");
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(MaxPool2x2)
    } else {
        x.max_pool2d(2)
    }
}

fn plane_dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [b, c, h, w] if h % 2 == 0 && w % 2 == 0 => Ok((b * c, h, w)),
        ref d => bail!("max_pool_2x2: expected (b, c, even h, even w), got {d:?}"),
    }
}

/// Offset in its plane and value of the first maximum (PyTorch's rule) of 2x2 window (oy, ox)
/// after `f`. Without branches: on real activations which element wins is a coin toss the
/// branch predictor loses.
#[inline]
pub(super) fn first_max_2x2(
    plane: &[f32],
    w: usize,
    oy: usize,
    ox: usize,
    f: impl Fn(f32) -> f32,
) -> (usize, f32) {
    let i = 2 * oy * w + 2 * ox;
    let v = [plane[i], plane[i + 1], plane[i + w], plane[i + w + 1]].map(f);
    let m = v[0].max(v[1]).max(v[2].max(v[3]));
    // The first k with v[k] == m: 0, 1, 2 or 3.
    let k = (v[0] != m) as usize * (1 + (v[1] != m) as usize * (1 + (v[2] != m) as usize));
    (i + (k >> 1) * w + (k & 1), m)
}

struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "max_pool_2x2 input")?;
        let (planes, h, w) = plane_dims(l)?;
        let (oh, ow) = (h / 2, w / 2);
        let mut y = vec![0f32; planes * oh * ow];
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
            let xp = &x[p * h * w..(p + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    yp[oy * ow + ox] = first_max_2x2(xp, w, oy, ox, |v| v).1;
                }
            }
        });
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPool2x2Backward,
        )?))
    }
}

/// The backward of a max pool over `[planes, h, w]` input (`x`: storage 1) to `[planes, oh, ow]`
/// output (gradient: storage 2): each output's gradient is added at the input offset in its
/// plane that `argmax(plane, oy, ox)` picks, planes in parallel. Shared by both pool ops.
pub(super) fn route_to_argmax(
    op: &str,
    (s1, l1, s2, l2): (&CpuStorage, &Layout, &CpuStorage, &Layout),
    [planes, h, w, oh, ow]: [usize; 5],
    argmax: impl Fn(&[f32], usize, usize) -> usize + Sync,
) -> Result<Vec<f32>> {
    let x = contiguous_f32(s1, l1, &format!("{op} input"))?;
    let g = contiguous_f32(s2, l2, &format!("{op} gradient"))?;
    if g.len() != planes * oh * ow {
        bail!(
            "{op} backward: gradient {:?} does not match input {:?}",
            l2.dims(),
            l1.dims()
        );
    }
    let mut gx = vec![0f32; planes * h * w];
    gx.par_chunks_mut(h * w).enumerate().for_each(|(p, gp)| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        let gy = &g[p * oh * ow..(p + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                gp[argmax(xp, oy, ox)] += gy[oy * ow + ox];
            }
        }
    });
    Ok(gx)
}

struct MaxPool2x2Backward;

impl CustomOp2 for MaxPool2x2Backward {
    fn name(&self) -> &'static str {
        "max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w) = plane_dims(l1)?;
        let gx = route_to_argmax(
            "max_pool_2x2",
            (s1, l1, s2, l2),
            [planes, h, w, h / 2, w / 2],
            |plane, oy, ox| first_max_2x2(plane, w, oy, ox, |v| v).0,
        )?;
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn forward_matches_candle_and_backward_routes_to_each_window_maximum() {
        let (b, c, h, w) = (2, 3, 6, 8);
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, c, h / 2, w / 2), &Device::Cpu).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let y = max_pool_2x2(v.as_tensor()).unwrap();
        let yc = x.max_pool2d(2).unwrap();
        let same: Vec<f32> = (&y - &yc)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(same.iter().all(|&d| d == 0.0));
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(&v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // By hand: the gradient of each window's largest entry is that window's r.
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let rs: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        let mut want = vec![0f32; xs.len()];
        for p in 0..b * c {
            for oy in 0..h / 2 {
                for ox in 0..w / 2 {
                    let idx = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .map(|(dy, dx)| p * h * w + (2 * oy + dy) * w + 2 * ox + dx);
                    let best = idx
                        .iter()
                        .copied()
                        .fold(idx[0], |a, i| if xs[i] > xs[a] { i } else { a });
                    want[best] = rs[p * (h / 2) * (w / 2) + oy * (w / 2) + ox];
                }
            }
        }
        assert_eq!(gx, want);
    }

    #[test]
    fn ties_send_the_gradient_to_the_first_maximum_only() {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let y = max_pool_2x2(x.as_tensor()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn odd_sizes_are_errors() {
        let x = Tensor::zeros((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool_2x2(&x).is_err());
    }
}
