//! Dense linear algebra for the batch algorithms: a safe GEMM wrapper, PCA-whitening and
//! L2 normalisation.

mod gemm;
mod norm;
mod pca;

pub use gemm::{matmul, matmul_add, Operand, Parallelism, Scalar};
pub use norm::{l2_normalize_rows, squared_norms};
pub use pca::{Pca, PcaError, PcaParams};
