//! A borrowed row-major matrix view, validated once so the algorithms need not re-check.

use thiserror::Error;

/// The data does not have the shape the caller claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ShapeError {
    #[error("dimension must be at least 1")]
    ZeroDim,
    #[error("buffer of {len} values is not a whole number of rows of {cols}")]
    Ragged { len: usize, cols: usize },
    #[error("expected {expected} columns, got {got}")]
    Cols { expected: usize, got: usize },
    #[error("expected {expected} rows, got {got}")]
    Rows { expected: usize, got: usize },
}

/// `rows x cols` values of type `T`, row-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T = f32> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Views `data` as rows of `cols` values.
    pub fn new(data: &'a [T], cols: usize) -> Result<Self, ShapeError> {
        if cols == 0 {
            return Err(ShapeError::ZeroDim);
        }
        if !data.len().is_multiple_of(cols) {
            return Err(ShapeError::Ragged {
                len: data.len(),
                cols,
            });
        }
        Ok(Self {
            data,
            rows: data.len() / cols,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn as_slice(&self) -> &'a [T] {
        self.data
    }

    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Rows `start..end` as a matrix of their own.
    pub fn slice_rows(&self, start: usize, end: usize) -> MatRef<'a, T> {
        MatRef {
            data: &self.data[start * self.cols..end * self.cols],
            rows: end - start,
            cols: self.cols,
        }
    }

    pub fn expect_cols(&self, cols: usize) -> Result<(), ShapeError> {
        if self.cols != cols {
            return Err(ShapeError::Cols {
                expected: cols,
                got: self.cols,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_ragged_and_zero_dim() {
        let v = [0.0f32; 10];
        assert_eq!(
            MatRef::new(&v, 3).unwrap_err(),
            ShapeError::Ragged { len: 10, cols: 3 }
        );
        assert_eq!(MatRef::new(&v, 0).unwrap_err(), ShapeError::ZeroDim);
        let m = MatRef::new(&v, 5).unwrap();
        assert_eq!((m.rows(), m.cols()), (2, 5));
        assert_eq!(m.slice_rows(1, 2).rows(), 1);
        assert!(m.expect_cols(4).is_err());
    }
}
