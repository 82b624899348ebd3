//! A bounds-checked front to the `gemm` crate, so the rest of the crate has no `unsafe`.

pub use gemm::Parallelism;

/// One input of a product: a row-major `rows x cols` matrix, used as is or transposed.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a, T = f32> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub transpose: bool,
}

impl<'a, T> Operand<'a, T> {
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transpose: false,
        }
    }

    pub fn t(self) -> Self {
        Self {
            transpose: !self.transpose,
            ..self
        }
    }

    /// (rows, cols) after the optional transpose.
    fn shape(&self) -> (usize, usize) {
        if self.transpose {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (row stride, column stride) of the operand as used.
    fn strides(&self) -> (isize, isize) {
        if self.transpose {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// The element types the `gemm` crate multiplies and this crate uses.
pub trait Scalar: Copy + 'static {
    const ZERO: Self;
    const ONE: Self;
}
impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// `out = scale * lhs * rhs`, with `out` row-major `m x n`.
///
/// # Panics
/// If the shapes do not agree or a buffer is too short: callers pass shapes they validated.
pub fn matmul<T: Scalar>(
    out: &mut [T],
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    scale: T,
    parallelism: Parallelism,
) {
    gemm_into(out, false, lhs, rhs, scale, parallelism)
}

/// `out += scale * lhs * rhs`, with `out` row-major `m x n`.
///
/// # Panics
/// As [`matmul`].
pub fn matmul_add<T: Scalar>(
    out: &mut [T],
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    scale: T,
    parallelism: Parallelism,
) {
    gemm_into(out, true, lhs, rhs, scale, parallelism)
}

fn gemm_into<T: Scalar>(
    out: &mut [T],
    accumulate: bool,
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    scale: T,
    parallelism: Parallelism,
) {
    let (m, k) = lhs.shape();
    let (k2, n) = rhs.shape();
    assert_eq!(k, k2, "inner dimensions differ");
    assert!(
        lhs.data.len() >= lhs.rows * lhs.cols,
        "lhs buffer too short"
    );
    assert!(
        rhs.data.len() >= rhs.rows * rhs.cols,
        "rhs buffer too short"
    );
    assert!(out.len() >= m * n, "output buffer too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(T::ZERO);
        }
        return;
    }
    // gemm computes dst = alpha * dst + beta * lhs * rhs; alpha is ignored unless read_dst.
    let alpha = if accumulate { T::ONE } else { T::ZERO };
    let (lrs, lcs) = lhs.strides();
    let (rrs, rcs) = rhs.strides();
    // SAFETY: the assertions above prove that every index the kernel touches,
    // (m-1)*rs + (k-1)*cs and so on, lies inside the three slices, and `out` is borrowed
    // mutably so it cannot alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lcs,
            lrs,
            rhs.data.as_ptr(),
            rcs,
            rrs,
            alpha,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; a.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        t
    }

    #[test]
    fn all_transpose_combinations_match_naive_product() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (lhs, rhs) in [
            (Operand::new(&a, m, k), Operand::new(&b, k, n)),
            (Operand::new(&at, k, m).t(), Operand::new(&b, k, n)),
            (Operand::new(&a, m, k), Operand::new(&bt, n, k).t()),
            (Operand::new(&at, k, m).t(), Operand::new(&bt, n, k).t()),
        ] {
            let mut out = vec![f32::NAN; m * n];
            matmul(&mut out, lhs, rhs, 2.0, Parallelism::None);
            for (o, w) in out.iter().zip(&want) {
                assert!((o - 2.0 * w).abs() < 1e-5, "{o} vs {}", 2.0 * w);
            }
        }
    }

    #[test]
    fn matmul_add_accumulates() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [10.0f32; 4];
        matmul_add(
            &mut out,
            Operand::new(&a, 2, 2),
            Operand::new(&a, 2, 2),
            1.0,
            Parallelism::None,
        );
        assert_eq!(out, [17.0, 20.0, 25.0, 32.0]);
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn mismatched_inner_dimension_panics() {
        let a = [0.0f32; 6];
        let mut out = [0.0f32; 4];
        matmul(
            &mut out,
            Operand::new(&a, 2, 3),
            Operand::new(&a, 2, 3),
            1.0,
            Parallelism::None,
        );
    }
}
