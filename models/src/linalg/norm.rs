//! Row norms and L2 normalisation, done in parallel over rows.

use rayon::prelude::*;

/// Squared L2 norm of each row of a `rows x dim` matrix.
pub fn squared_norms(data: &[f32], dim: usize) -> Vec<f32> {
    data.par_chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

/// Scales each row to unit L2 norm in place; rows of norm zero are left as they are.
pub fn l2_normalize_rows(data: &mut [f32], dim: usize) {
    data.par_chunks_exact_mut(dim).for_each(|r| {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            let inv = 1.0 / n;
            r.iter_mut().for_each(|v| *v *= inv);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_unit_and_zero_rows_stay_zero() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0, 1.0, 1.0];
        l2_normalize_rows(&mut x, 2);
        assert_eq!(&x[..2], &[0.6, 0.8]);
        assert_eq!(&x[2..4], &[0.0, 0.0]);
        let n = squared_norms(&x, 2);
        assert!((n[0] - 1.0).abs() < 1e-6 && n[1] == 0.0 && (n[2] - 1.0).abs() < 1e-6);
    }
}
