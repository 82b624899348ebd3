//! The trained adapter: one affine layer `z = W x + b` after the frozen encoder (and after
//! the statistics adaptation), initialised to the identity so that a fresh adapter changes
//! nothing. It is small (d x d + d floats: 66 KB at d = 128) and its gradient is written by
//! hand in [`super::swapped`], so the board trains it without an autograd crate.

use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearAdapter {
    dim: usize,
    /// Row-major, out x in.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A gradient (or any update) of a [`LinearAdapter`]'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrad {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LinearAdapter {
    /// The identity map.
    pub fn identity(dim: usize) -> Self {
        let mut weight = vec![0.0; dim * dim];
        (0..dim).for_each(|i| weight[i * dim + i] = 1.0);
        Self {
            dim,
            weight,
            bias: vec![0.0; dim],
        }
    }

    /// From stored parameters; `None` when the lengths do not make a dim x dim layer.
    pub fn from_parts(dim: usize, weight: Vec<f32>, bias: Vec<f32>) -> Option<Self> {
        (weight.len() == dim * dim && bias.len() == dim).then_some(Self { dim, weight, bias })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes of parameters.
    pub fn bytes(&self) -> usize {
        4 * (self.weight.len() + self.bias.len())
    }

    /// Frobenius distance from the identity (how far the adapter has moved).
    pub fn distance_from_identity(&self) -> f32 {
        let d = self.dim;
        let w: f32 = self
            .weight
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let id = if i / d == i % d { 1.0 } else { 0.0 };
                (v - id) * (v - id)
            })
            .sum();
        let b: f32 = self.bias.iter().map(|v| v * v).sum();
        libm::sqrtf(w + b)
    }

    /// `W x + b` for one row.
    pub fn apply_row(&self, x: &[f32], out: &mut [f32]) {
        let d = self.dim;
        for (o, (w, b)) in out
            .iter_mut()
            .zip(self.weight.chunks_exact(d).zip(&self.bias))
        {
            *o = b + dot(w, x);
        }
    }

    /// Maps each row of `rows` (rows of dim) in place.
    pub fn apply_rows(&self, rows: &mut [f32]) {
        let mut x = vec![0.0; self.dim];
        for row in rows.chunks_exact_mut(self.dim) {
            x.copy_from_slice(row);
            self.apply_row(&x, row);
        }
    }

    /// One plain gradient step.
    pub fn descend(&mut self, grad: &LinearGrad, lr: f32) {
        self.weight
            .iter_mut()
            .zip(&grad.weight)
            .for_each(|(w, g)| *w -= lr * g);
        self.bias
            .iter_mut()
            .zip(&grad.bias)
            .for_each(|(b, g)| *b -= lr * g);
    }
}

/// Dot product with eight partial sums (vectorises).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
