//! 2-D convolution, NCHW, f32, as three candle custom ops: forward, backward-data and
//! backward-filter. Each image's GEMM runs on one thread; the batch is spread over rayon.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use models::linalg::{matmul, matmul_add, Operand, Parallelism};
use rayon::prelude::*;

use super::conv_geometry::{conv_shape, Conv2dGeometry};
use super::im2col::{col2im_add_at, im2col_at};
use super::{contiguous_f32, dims4};

/// `x` (b, c, h, w) convolved with `weight` (oc, c, kh, kw): the fast op on CPU f32 tensors,
/// cuDNN on CUDA f32 tensors with the `cudnn` feature, candle's own `conv2d` elsewhere.
pub fn conv2d(x: &Tensor, weight: &Tensor, geometry: Conv2dGeometry) -> Result<Tensor> {
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    #[cfg(feature = "cudnn")]
    if x.device().is_cuda() && f32s {
        return super::cudnn_conv::conv2d(x, weight, geometry);
    }
    if x.device().is_cpu() && f32s {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, Conv2dForward(geometry))
    } else {
        x.conv2d(weight, geometry.padding, geometry.stride, 1, 1)
    }
}

/// Images per GEMM: small feature maps (7x7 gives 49 columns per image) make thin, memory-bound
/// products, so several images share one product of about 512 columns.
fn group_size(ohw: usize) -> usize {
    (512 / ohw.max(1)).clamp(1, 16)
}

/// `n` images of `(rows, ohw)` each, image-major, into one `(rows, n*ohw)` matrix.
fn pack_images(src: &[f32], dst: &mut [f32], rows: usize, ohw: usize, n: usize) {
    for j in 0..n {
        for r in 0..rows {
            let from = &src[(j * rows + r) * ohw..(j * rows + r + 1) * ohw];
            dst[r * n * ohw + j * ohw..r * n * ohw + (j + 1) * ohw].copy_from_slice(from);
        }
    }
}

/// `src` in [`pack_images`] order: itself for one image, else packed into `scratch`.
fn packed<'a>(
    src: &'a [f32],
    scratch: &'a mut [f32],
    rows: usize,
    ohw: usize,
    n: usize,
) -> &'a [f32] {
    if n == 1 {
        return src;
    }
    let dst = &mut scratch[..rows * n * ohw];
    pack_images(src, dst, rows, ohw, n);
    dst
}

/// The inverse of [`pack_images`].
fn unpack_images(src: &[f32], dst: &mut [f32], rows: usize, ohw: usize, n: usize) {
    for j in 0..n {
        for r in 0..rows {
            let from = &src[r * n * ohw + j * ohw..r * n * ohw + (j + 1) * ohw];
            dst[(j * rows + r) * ohw..(j * rows + r + 1) * ohw].copy_from_slice(from);
        }
    }
}

struct Conv2dForward(Conv2dGeometry);

impl CustomOp2 for Conv2dForward {
    fn name(&self) -> &'static str {
        "im2col-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let (b, oc, s) = conv_shape(
            dims4(l1, "conv2d input")?,
            dims4(l2, "conv2d weight")?,
            self.0,
        )?;
        let (ckk, ohw, img) = (s.ckk(), s.ohw(), s.c * s.h * s.w);
        let g = group_size(ohw);
        let mut out = vec![0f32; b * oc * ohw];
        out.par_chunks_mut(g * oc * ohw).enumerate().for_each_init(
            || (vec![0f32; ckk * g * ohw], vec![0f32; oc * g * ohw]),
            |(cols, wide), (gi, o)| {
                let n = o.len() / (oc * ohw);
                let width = n * ohw;
                for j in 0..n {
                    let i = gi * g + j;
                    im2col_at(&x[i * img..(i + 1) * img], &s, cols, width, j * ohw);
                }
                // wide = W (oc x ckk) * cols (ckk x n*ohw), then back to image-major order;
                // one image's product already is in that order.
                let dst = if n == 1 {
                    &mut o[..]
                } else {
                    &mut wide[..oc * width]
                };
                matmul(
                    dst,
                    Operand::new(w, oc, ckk),
                    Operand::new(&cols[..ckk * width], ckk, width),
                    1.0,
                    Parallelism::None,
                );
                if n > 1 {
                    unpack_images(&wide[..oc * width], o, oc, ohw, n);
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, oc, s.oh, s.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        let gx = grad.apply_op2_no_bwd(
            w,
            &Conv2dBackwardData {
                g: self.0,
                h,
                w: wd,
            },
        )?;
        let (_, _, kh, kw) = w.dims4()?;
        let gw = x.apply_op2_no_bwd(&grad, &Conv2dBackwardFilter { g: self.0, kh, kw })?;
        Ok((Some(gx), Some(gw)))
    }
}

/// d(loss)/d(input) from d(loss)/d(output) (b, oc, oh, ow) and the weight.
struct Conv2dBackwardData {
    g: Conv2dGeometry,
    h: usize,
    w: usize,
}

impl CustomOp2 for Conv2dBackwardData {
    fn name(&self) -> &'static str {
        "im2col-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gy = contiguous_f32(s1, l1, "output gradient")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let [b, oc, oh, ow] = dims4(l1, "conv2d output gradient")?;
        let wdims = dims4(l2, "conv2d weight")?;
        let (_, _, s) = conv_shape([b, wdims[1], self.h, self.w], wdims, self.g)?;
        if (s.oh, s.ow, wdims[0]) != (oh, ow, oc) {
            bail!(
                "conv2d backward: output gradient {:?} does not match the forward shape",
                l1.dims()
            );
        }
        let (ckk, ohw, img) = (s.ckk(), s.ohw(), s.c * s.h * s.w);
        let g = group_size(ohw);
        let mut gx = vec![0f32; b * img];
        gx.par_chunks_mut(g * img).enumerate().for_each_init(
            || (vec![0f32; oc * g * ohw], vec![0f32; ckk * g * ohw]),
            |(wide_gy, gcols), (gi, gxg)| {
                let n = gxg.len() / img;
                let width = n * ohw;
                let first = gi * g;
                let gy_wide = packed(
                    &gy[first * oc * ohw..(first + n) * oc * ohw],
                    wide_gy,
                    oc,
                    ohw,
                    n,
                );
                // gcols = W^T (ckk x oc) * gy (oc x n*ohw)
                matmul(
                    &mut gcols[..ckk * width],
                    Operand::new(w, oc, ckk).t(),
                    Operand::new(gy_wide, oc, width),
                    1.0,
                    Parallelism::None,
                );
                for j in 0..n {
                    col2im_add_at(gcols, &s, &mut gxg[j * img..(j + 1) * img], width, j * ohw);
                }
            },
        );
        Ok((CpuStorage::F32(gx), Shape::from((b, s.c, s.h, s.w))))
    }
}

/// d(loss)/d(weight) from the input and d(loss)/d(output).
struct Conv2dBackwardFilter {
    g: Conv2dGeometry,
    kh: usize,
    kw: usize,
}

impl CustomOp2 for Conv2dBackwardFilter {
    fn name(&self) -> &'static str {
        "im2col-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let gy = contiguous_f32(s2, l2, "output gradient")?;
        let xd = dims4(l1, "conv2d input")?;
        let [gb, oc, oh, ow] = dims4(l2, "conv2d output gradient")?;
        let (b, _, s) = conv_shape(xd, [oc, xd[1], self.kh, self.kw], self.g)?;
        if (gb, s.oh, s.ow) != (b, oh, ow) {
            bail!(
                "conv2d backward: output gradient {:?} does not match the forward shape",
                l2.dims()
            );
        }
        let (ckk, ohw, img) = (s.ckk(), s.ohw(), s.c * s.h * s.w);
        let g = group_size(ohw);
        let gw = (0..b.div_ceil(g))
            .into_par_iter()
            .fold(
                || {
                    (
                        vec![0f32; oc * ckk],
                        vec![0f32; ckk * g * ohw],
                        vec![0f32; oc * g * ohw],
                    )
                },
                |(mut acc, mut cols, mut wide_gy), gi| {
                    let first = gi * g;
                    let n = g.min(b - first);
                    let width = n * ohw;
                    for j in 0..n {
                        let i = first + j;
                        im2col_at(&x[i * img..(i + 1) * img], &s, &mut cols, width, j * ohw);
                    }
                    let gy_wide = packed(
                        &gy[first * oc * ohw..(first + n) * oc * ohw],
                        &mut wide_gy,
                        oc,
                        ohw,
                        n,
                    );
                    // gW += gy (oc x n*ohw) * cols^T (n*ohw x ckk)
                    matmul_add(
                        &mut acc,
                        Operand::new(gy_wide, oc, width),
                        Operand::new(&cols[..ckk * width], ckk, width).t(),
                        1.0,
                        Parallelism::None,
                    );
                    (acc, cols, wide_gy)
                },
            )
            .map(|(acc, _, _)| acc)
            .reduce(
                || vec![0f32; oc * ckk],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok((
            CpuStorage::F32(gw),
            Shape::from((oc, s.c, self.kh, self.kw)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::max_abs_diff;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut r = models::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.next_f64() as f32 * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Output, input gradient and weight gradient of sum(conv(x, w) * r).
    fn run(
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
        g: Conv2dGeometry,
        fast: bool,
    ) -> (Tensor, Tensor, Tensor) {
        let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let y = if fast {
            conv2d(xv.as_tensor(), wv.as_tensor(), g).unwrap()
        } else {
            xv.as_tensor()
                .conv2d(wv.as_tensor(), g.padding, g.stride, 1, 1)
                .unwrap()
        };
        let loss = (&y * r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        (
            y,
            grads.get(&xv).unwrap().clone(),
            grads.get(&wv).unwrap().clone(),
        )
    }

    #[test]
    fn forward_and_gradients_match_candle() {
        for (xs, ws, g) in [
            (
                [4, 3, 9, 9],
                [5, 3, 3, 3],
                Conv2dGeometry {
                    stride: 1,
                    padding: 1,
                },
            ),
            // Several image groups per GEMM with a partial last one (81 pixels: 6 per group).
            (
                [20, 2, 9, 9],
                [3, 2, 3, 3],
                Conv2dGeometry {
                    stride: 1,
                    padding: 1,
                },
            ),
            // Even sizes only: with stride 2 and an odd width candle's own backward returns a
            // gradient of the wrong width; finite differences cover odd sizes below.
            (
                [2, 2, 8, 8],
                [4, 2, 3, 3],
                Conv2dGeometry {
                    stride: 2,
                    padding: 1,
                },
            ),
            (
                [3, 4, 6, 6],
                [2, 4, 1, 1],
                Conv2dGeometry {
                    stride: 1,
                    padding: 0,
                },
            ),
            // Planes of 576 pixels: one image per GEMM, written in place (no packing).
            (
                [3, 2, 24, 24],
                [4, 2, 3, 3],
                Conv2dGeometry {
                    stride: 1,
                    padding: 1,
                },
            ),
            (
                [1, 1, 5, 5],
                [3, 1, 5, 5],
                Conv2dGeometry {
                    stride: 1,
                    padding: 2,
                },
            ),
        ] {
            let (x, w) = (rand(&xs, 1), rand(&ws, 2));
            let y = conv2d(&x, &w, g).unwrap();
            let r = rand(y.dims(), 3);
            let (yf, gxf, gwf) = run(&x, &w, &r, g, true);
            let (yc, gxc, gwc) = run(&x, &w, &r, g, false);
            assert_eq!(yf.dims(), yc.dims());
            assert!(max_abs_diff(&yf, &yc) < 1e-5, "forward {xs:?} {g:?}");
            assert!(
                max_abs_diff(&gxf, &gxc) < 1e-4,
                "input gradient {xs:?} {g:?}"
            );
            assert!(
                max_abs_diff(&gwf, &gwc) < 1e-4,
                "weight gradient {xs:?} {g:?}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let g = Conv2dGeometry {
            stride: 2,
            padding: 1,
        };
        let (x, w) = (rand(&[2, 2, 5, 6], 4), rand(&[3, 2, 3, 3], 5));
        let r = rand(conv2d(&x, &w, g).unwrap().dims(), 6);
        let (_, gx, gw) = run(&x, &w, &r, g, true);
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            let y = conv2d(x, w, g).unwrap();
            (&y * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let eps = 1e-2f32;
        for (t, grad, is_x) in [(&x, &gx, true), (&w, &gw, false)] {
            let base: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let analytic: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
            for i in (0..base.len()).step_by(3) {
                let at = |v: &[f32]| {
                    let v = Tensor::from_slice(v, t.dims(), &Device::Cpu).unwrap();
                    if is_x {
                        loss(&v, &w)
                    } else {
                        loss(&x, &v)
                    }
                };
                let numeric = super::super::central_difference(at, &base, i, eps);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 2e-2,
                    "element {i}: {numeric} vs {}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let x = rand(&[1, 3, 4, 4], 1);
        assert!(conv2d(&x, &rand(&[2, 2, 3, 3], 2), Conv2dGeometry::default()).is_err());
        assert!(conv2d(&x, &rand(&[2, 3, 7, 7], 2), Conv2dGeometry::default()).is_err());
        assert!(conv2d(
            &rand(&[3, 4, 4], 1),
            &rand(&[2, 3, 3, 3], 2),
            Conv2dGeometry::default()
        )
        .is_err());
        let zero_stride = Conv2dGeometry {
            stride: 0,
            padding: 0,
        };
        assert!(conv2d(&x, &rand(&[2, 3, 3, 3], 2), zero_stride).is_err());
    }
}
