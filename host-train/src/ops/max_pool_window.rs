//! Max-pooling with any window and stride (AlexNet's overlapping 3x3, stride 2), NCHW f32,
//! no padding, floor mode. candle's own max-pool has no backward when the window differs
//! from the stride; this op's backward sends each output gradient to the first maximum of
//! its window and adds where windows overlap (PyTorch's rule). The 2x2 pool of `max_pool`
//! stays its own op: its fixed window made forward + backward 33 ms against this op's 44 ms
//! at (256, 32, 28, 28), on small-cnn's training path.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;
use super::max_pool::route_to_argmax;

/// Max over `kernel x kernel` windows every `stride` pixels. CPU only (alexnet-bn is the
/// only user, and it trains on the CPU).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        bail!("max_pool2d with kernel {kernel} and stride {stride} runs on f32 CPU tensors only");
    }
    x.contiguous()?.apply_op1(MaxPoolWindow { kernel, stride })
}

#[derive(Debug, Clone, Copy)]
struct MaxPoolWindow {
    kernel: usize,
    stride: usize,
}

/// `(planes, h, w, out_h, out_w)` of an NCHW input.
fn geometry(p: MaxPoolWindow, l: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
    let &[b, c, h, w] = l.dims() else {
        bail!("max_pool2d: expected (b, c, h, w), got {:?}", l.dims());
    };
    if p.kernel == 0 || p.stride == 0 || h < p.kernel || w < p.kernel {
        bail!(
            "max_pool2d: a {0}x{0} window (stride {1}) does not fit a {h}x{w} input",
            p.kernel,
            p.stride
        );
    }
    let out = |n: usize| (n - p.kernel) / p.stride + 1;
    Ok((b * c, h, w, out(h), out(w)))
}

impl MaxPoolWindow {
    /// Offset in the plane, and value, of the first maximum of window (oy, ox).
    #[inline]
    fn argmax(self, plane: &[f32], w: usize, oy: usize, ox: usize) -> (usize, f32) {
        let (y0, x0) = (oy * self.stride, ox * self.stride);
        let mut best = (y0 * w + x0, plane[y0 * w + x0]);
        for y in y0..y0 + self.kernel {
            for x in x0..x0 + self.kernel {
                let v = plane[y * w + x];
                if v > best.1 {
                    best = (y * w + x, v);
                }
            }
        }
        best
    }
}

impl CustomOp1 for MaxPoolWindow {
    fn name(&self) -> &'static str {
        "max-pool-window"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "max_pool2d input")?;
        let (planes, h, w, oh, ow) = geometry(*self, l)?;
        let mut y = vec![0f32; planes * oh * ow];
        y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
            let xp = &x[p * h * w..(p + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    yp[oy * ow + ox] = self.argmax(xp, w, oy, ox).1;
                }
            }
        });
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &MaxPoolWindowBackward(*self),
        )?))
    }
}

struct MaxPoolWindowBackward(MaxPoolWindow);

impl CustomOp2 for MaxPoolWindowBackward {
    fn name(&self) -> &'static str {
        "max-pool-window-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, oh, ow) = geometry(self.0, l1)?;
        let gx = route_to_argmax(
            "max_pool2d",
            (s1, l1, s2, l2),
            [planes, h, w, oh, ow],
            |plane, oy, ox| self.0.argmax(plane, w, oy, ox).0,
        )?;
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn forward_matches_candle_and_backward_matches_finite_differences() {
        let (b, c, h, w) = (2, 2, 7, 9);
        let dev = Device::Cpu;
        // Distinct values 0.1 apart in shuffled order: no window has a near-tie that the
        // finite differences below could flip.
        let n = b * c * h * w;
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = models::rng::Rng::new(5);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let values: Vec<f32> = order.iter().map(|&k| k as f32 * 0.1 - 5.0).collect();
        let x = Tensor::from_vec(values, (b, c, h, w), &dev).unwrap();
        let y = max_pool2d(&x, 3, 2).unwrap();
        assert_eq!(y.dims(), &[b, c, 3, 4]);
        let yc = x.max_pool2d_with_stride(3, 2).unwrap();
        let d = (&y - &yc).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);

        // loss = sum(y * r): its gradient against central differences, entry by entry.
        let r = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        // Summed in f64: the pooled values are copies of inputs, so the differences are exact.
        let rs: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        let loss = |t: &Tensor| -> f64 {
            let y: Vec<f32> = max_pool2d(t, 3, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            y.iter()
                .zip(&rs)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };
        let grads = (max_pool2d(v.as_tensor(), 3, 2).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx: Vec<f32> = grads
            .get(&v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-2f32;
        for i in 0..xs.len() {
            let at = |v: &[f32]| loss(&Tensor::from_slice(v, x.dims(), &dev).unwrap());
            let fd = super::super::central_difference(at, &xs, i, eps);
            assert!(
                (fd - f64::from(gx[i])).abs() < 1e-3,
                "entry {i}: {fd} vs {}",
                gx[i]
            );
        }
        // Inputs that won two or more windows carry a sum of r values, not one of them: the
        // overlap the backward must add up.
        let overlapping = gx.iter().filter(|&&g| g != 0.0 && !rs.contains(&g)).count();
        assert!(
            overlapping > 0,
            "no input won two windows; the test lost its point"
        );
    }

    #[test]
    fn too_small_inputs_are_errors() {
        let x = Tensor::zeros((1, 1, 2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2d(&x, 3, 2).is_err());
    }
}
