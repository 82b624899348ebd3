//! im2col and col2im for one NCHW image, f32.

/// Shape of one 2-D convolution on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvShape {
    /// Rows of the column matrix: one per (channel, kernel row, kernel column).
    pub fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of the column matrix: one per output pixel.
    pub fn ohw(&self) -> usize {
        self.oh * self.ow
    }
}

/// For kernel column `kx`: the output columns `lo..hi` whose input column
/// `ox * stride + kx - pad` lies inside the image.
#[inline]
fn valid_span(kx: usize, s: &ConvShape) -> (usize, usize) {
    // ox * stride + kx >= pad  and  ox * stride + kx < w + pad
    let lo = s.pad.saturating_sub(kx).div_ceil(s.stride).min(s.ow);
    let hi = (s.w + s.pad)
        .saturating_sub(kx)
        .div_ceil(s.stride)
        .min(s.ow)
        .max(lo);
    (lo, hi)
}

/// `cols[(ci*kh + ky)*kw + kx][oy*ow + ox] = x[ci][oy*s + ky - pad][ox*s + kx - pad]`, zero
/// outside the image. (The ops place several images side by side with [`im2col_at`].)
#[cfg(test)]
pub(crate) fn im2col(x: &[f32], s: &ConvShape, cols: &mut [f32]) {
    im2col_at(x, s, cols, s.ohw(), 0)
}

/// [`im2col`] into columns `offset..offset + ohw` of a column matrix whose rows are `stride`
/// long, so several images can sit side by side in one GEMM operand.
pub(crate) fn im2col_at(x: &[f32], s: &ConvShape, cols: &mut [f32], stride: usize, offset: usize) {
    let ohw = s.ohw();
    for ci in 0..s.c {
        let plane = &x[ci * s.h * s.w..(ci + 1) * s.h * s.w];
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = ((ci * s.kh + ky) * s.kw + kx) * stride + offset;
                let dst = &mut cols[row..row + ohw];
                let (lo, hi) = valid_span(kx, s);
                for oy in 0..s.oh {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    let out = &mut dst[oy * s.ow..(oy + 1) * s.ow];
                    if iy < 0 || iy >= s.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                    // Zero the padded ends; copy the valid span (in one go for stride 1).
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if lo < hi {
                        let ix0 = lo * s.stride + kx - s.pad;
                        if s.stride == 1 {
                            out[lo..hi].copy_from_slice(&src[ix0..ix0 + hi - lo]);
                        } else {
                            for (j, o) in out[lo..hi].iter_mut().enumerate() {
                                *o = src[ix0 + j * s.stride];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back to the pixel it came from.
#[cfg(test)]
pub(crate) fn col2im_add(cols: &[f32], s: &ConvShape, x: &mut [f32]) {
    col2im_add_at(cols, s, x, s.ohw(), 0)
}

/// The adjoint of [`im2col_at`].
pub(crate) fn col2im_add_at(
    cols: &[f32],
    s: &ConvShape,
    x: &mut [f32],
    stride: usize,
    offset: usize,
) {
    let ohw = s.ohw();
    for ci in 0..s.c {
        let plane = &mut x[ci * s.h * s.w..(ci + 1) * s.h * s.w];
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = ((ci * s.kh + ky) * s.kw + kx) * stride + offset;
                let src = &cols[row..row + ohw];
                let (lo, hi) = valid_span(kx, s);
                if lo >= hi {
                    continue;
                }
                let ix0 = lo * s.stride + kx - s.pad;
                for oy in 0..s.oh {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                    let from = &src[oy * s.ow + lo..oy * s.ow + hi];
                    if s.stride == 1 {
                        for (d, &v) in dst[ix0..ix0 + hi - lo].iter_mut().zip(from) {
                            *d += v;
                        }
                    } else {
                        for (j, &v) in from.iter().enumerate() {
                            dst[ix0 + j * s.stride] += v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> ConvShape {
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        ConvShape {
            c,
            h,
            w,
            kh: k,
            kw: k,
            stride,
            pad,
            oh,
            ow,
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), y> == <x, col2im(y)> for all x, y.
        for s in [
            shape(2, 5, 6, 3, 1, 1),
            shape(3, 7, 7, 3, 2, 1),
            shape(1, 4, 4, 2, 2, 0),
            shape(2, 4, 5, 3, 1, 0),
            shape(1, 3, 3, 5, 1, 3),
            shape(1, 2, 6, 1, 1, 0),
            shape(2, 9, 8, 3, 3, 2),
        ] {
            let x: Vec<f32> = (0..s.c * s.h * s.w)
                .map(|i| (i as f32 * 0.7).sin())
                .collect();
            let y: Vec<f32> = (0..s.ckk() * s.ohw())
                .map(|i| (i as f32 * 0.3).cos())
                .collect();
            let mut cols = vec![0.0; s.ckk() * s.ohw()];
            im2col(&x, &s, &mut cols);
            let mut back = vec![0.0; x.len()];
            col2im_add(&y, &s, &mut back);
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
            assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs} for {s:?}");
        }
    }

    #[test]
    fn strided_placement_matches_the_plain_layout() {
        let s = shape(2, 5, 5, 3, 1, 1);
        let x: Vec<f32> = (0..s.c * s.h * s.w).map(|i| i as f32).collect();
        let mut plain = vec![0.0; s.ckk() * s.ohw()];
        im2col(&x, &s, &mut plain);
        // Second of three images side by side.
        let stride = 3 * s.ohw();
        let mut wide = vec![f32::NAN; s.ckk() * stride];
        im2col_at(&x, &s, &mut wide, stride, s.ohw());
        for r in 0..s.ckk() {
            assert_eq!(
                &wide[r * stride + s.ohw()..r * stride + 2 * s.ohw()],
                &plain[r * s.ohw()..(r + 1) * s.ohw()]
            );
        }
        let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        col2im_add(&plain, &s, &mut a);
        col2im_add_at(&wide, &s, &mut b, stride, s.ohw());
        assert_eq!(a, b);
    }

    #[test]
    fn im2col_pads_with_zeros() {
        let s = shape(1, 2, 2, 3, 1, 1);
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut cols = vec![f32::NAN; 9 * 4];
        im2col(&x, &s, &mut cols);
        // Kernel centre (ky = kx = 1) sees the image itself.
        assert_eq!(&cols[4 * 4..5 * 4], &[1.0, 2.0, 3.0, 4.0]);
        // Top-left tap sees only x[0][0], at output (1, 1).
        assert_eq!(&cols[0..4], &[0.0, 0.0, 0.0, 1.0]);
    }
}
