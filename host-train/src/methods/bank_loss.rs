//! NPID's full softmax and Local Aggregation's loss on the CPU, computed against the memory
//! bank in place. Both are functions of the (b, n) logits v . bank^T / tau. Through candle's
//! autograd that matrix (256 x 60k for Fashion-MNIST) is copied in, scaled, reduced, and its
//! gradient zero-filled and summed: several full passes per step, which cost more than the
//! encoder's own step. Here one product gives the logits, one pass over each row gives its
//! loss and the row's gradient together (one exp per entry), and one more product with the
//! bank turns that into the gradient with respect to v, handed to candle through
//! `ops::precomputed_loss`. On other devices the methods use candle's ops.

use candle_core::{Result, Tensor};
use models::linalg::{matmul, Operand, Parallelism};
use rayon::prelude::*;

use super::feature_bank::FeatureBank;
use super::local_aggregation::CloseNeighbours;

/// Which loss over the bank's non-parametric softmax P(j | v) = exp(v . m_j / tau) / Z.
#[derive(Debug, Clone, Copy)]
pub enum BankObjective<'a> {
    /// -log P(i | v): image i against every bank row (NPID).
    Instance,
    /// -log(P(C_i and B_i | v) / P(B_i | v)) (Local Aggregation).
    LocalAggregation(&'a CloseNeighbours),
}

/// The mean loss over a batch: `v` (b, d) L2-normalised embeddings on the CPU, `idx` their
/// images' bank rows, `inv_t` 1 / tau. `scratch` holds the (b, n) logits and is kept by the
/// caller from batch to batch: a fresh 61 MB buffer per step (256 x 60k) would be mapped,
/// zero-filled and page-faulted in every time.
pub fn bank_loss(
    v: &Tensor,
    bank: &FeatureBank,
    idx: &[usize],
    inv_t: f64,
    objective: BankObjective<'_>,
    scratch: &mut Vec<f32>,
) -> Result<Tensor> {
    let (b, d) = v.dims2()?;
    let n = bank.len();
    if idx.len() != b || d != bank.dim || idx.iter().any(|&i| i >= n) {
        candle_core::bail!(
            "bank_loss: {b}x{d} embeddings, {} indices, bank of {n}x{}",
            idx.len(),
            bank.dim
        );
    }
    if let BankObjective::LocalAggregation(close) = objective {
        if close.labels.iter().any(|l| l.len() != n) {
            candle_core::bail!("bank_loss: close-neighbour labels do not cover the bank of {n}");
        }
    }
    let vs: Vec<f32> = v.detach().flatten_all()?.to_vec1()?;
    let threads = Parallelism::Rayon(rayon::current_num_threads());
    let bank_op = Operand::new(&bank.rows, n, d);
    // Each row of `g` holds the logits, then d loss_r / d logit. The product overwrites it.
    scratch.resize(b * n, 0.0);
    let g = &mut scratch[..];
    matmul(
        g,
        Operand::new(&vs, b, d),
        bank_op.t(),
        inv_t as f32,
        threads,
    );
    let total: f64 = g
        .par_chunks_mut(n)
        .zip(idx.par_iter())
        .map(|(row, &i)| match objective {
            BankObjective::Instance => instance_row(row, i),
            BankObjective::LocalAggregation(close) => local_aggregation_row(row, i, close),
        })
        .sum();
    // d loss / d v = (1 / b) sum_r (d loss_r / d logits_r) . bank / tau.
    let mut grad = vec![0f32; b * d];
    let scale = (inv_t / b as f64) as f32;
    matmul(&mut grad, Operand::new(g, b, n), bank_op, scale, threads);
    crate::ops::precomputed_loss(v, (total / b as f64) as f32, grad)
}

/// -log softmax(row)[i]; leaves softmax(row) - onehot(i) in `row`.
fn instance_row(row: &mut [f32], i: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let target = row[i];
    let mut sum = 0f64;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += f64::from(*x);
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|x| *x *= inv);
    row[i] -= 1.0;
    f64::from(max) + sum.ln() - f64::from(target)
}

/// Local Aggregation's loss of one row, log P(B) - log P(C and B), where B holds the
/// `background_k` largest logits (ties included) and image i, C the images that share a
/// cluster with i in some k-means run. Leaves its gradient in `row`: softmax over B minus
/// softmax over C and B, zero outside B.
fn local_aggregation_row(row: &mut [f32], i: usize, close: &CloseNeighbours) -> f64 {
    let n = row.len();
    let k = close.background_k.clamp(1, n);
    let mut scratch = row.to_vec();
    let kth = *scratch
        .select_nth_unstable_by(n - k, |a, b| a.total_cmp(b))
        .1;
    // The row's maximum is among the k largest, so it shifts both sums safely.
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut members = Vec::with_capacity(k + 1);
    let (mut sum_b, mut sum_cb) = (0f64, 0f64);
    for (j, &x) in row.iter().enumerate() {
        if x >= kth || j == i {
            let e = (x - max).exp();
            let close_to_i = j == i || close.labels.iter().any(|l| l[j] == l[i]);
            sum_b += f64::from(e);
            if close_to_i {
                sum_cb += f64::from(e);
            }
            members.push((j, e, close_to_i));
        }
    }
    row.fill(0.0);
    let (inv_b, inv_cb) = ((1.0 / sum_b) as f32, (1.0 / sum_cb) as f32);
    for (j, e, close_to_i) in members {
        row[j] = e * inv_b - if close_to_i { e * inv_cb } else { 0.0 };
    }
    sum_b.ln() - sum_cb.ln()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use models::rng::Rng;

    use super::*;
    use crate::methods::local_aggregation::la_loss;
    use crate::ops::{max_abs, max_abs_diff};

    /// A bank of `n` rows initialised as NPID's, and a batch of `b` unit embeddings.
    fn bank_and_batch(n: usize, b: usize, d: usize) -> (FeatureBank, Var) {
        let bank = FeatureBank::new(n, d, 7);
        let mut rng = Rng::new(11);
        let mut v: Vec<f32> = (0..b * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        models::linalg::l2_normalize_rows(&mut v, d);
        let v = Var::from_tensor(&Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()).unwrap();
        (bank, v)
    }

    /// The same loss through candle's ops: the logits, then `reference` on them.
    fn through_candle(
        bank: &FeatureBank,
        v: &Var,
        inv_t: f64,
        reference: impl Fn(&Tensor) -> Tensor,
    ) -> (f32, Tensor) {
        let m = Tensor::from_slice(&bank.rows, (bank.len(), bank.dim), &Device::Cpu).unwrap();
        let logits = (v.as_tensor() * inv_t)
            .unwrap()
            .matmul(&m.t().unwrap())
            .unwrap();
        let l = reference(&logits);
        let g = l.backward().unwrap().get(v).unwrap().clone();
        (l.to_scalar().unwrap(), g)
    }

    fn fused(
        bank: &FeatureBank,
        v: &Var,
        idx: &[usize],
        inv_t: f64,
        o: BankObjective,
    ) -> (f32, Tensor) {
        let l = bank_loss(v.as_tensor(), bank, idx, inv_t, o, &mut Vec::new()).unwrap();
        let g = l.backward().unwrap().get(v).unwrap().clone();
        (l.to_scalar().unwrap(), g)
    }

    /// Loss and gradient agree to 1e-4, relative to the loss and the largest gradient entry.
    fn assert_same((got, got_g): (f32, Tensor), (want, want_g): (f32, Tensor)) {
        assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
        assert!(max_abs_diff(&got_g, &want_g) < 1e-4 * max_abs(&want_g));
    }

    #[test]
    fn instance_loss_and_gradient_match_candle_cross_entropy() {
        let (bank, v) = bank_and_batch(300, 6, 16);
        let idx = [0usize, 299, 17, 17, 150, 3];
        let inv_t = 1.0 / 0.07;
        let (want, want_g) = through_candle(&bank, &v, inv_t, |logits| {
            let t = Tensor::from_iter(idx.iter().map(|&i| i as u32), &Device::Cpu).unwrap();
            candle_nn::loss::cross_entropy(logits, &t).unwrap()
        });
        let (got, got_g) = fused(&bank, &v, &idx, inv_t, BankObjective::Instance);
        assert_same((got, got_g), (want, want_g));
    }

    #[test]
    fn local_aggregation_loss_and_gradient_match_the_masked_reference() {
        let (bank, v) = bank_and_batch(400, 5, 8);
        let mut rng = Rng::new(5);
        let close = CloseNeighbours {
            labels: (0..3)
                .map(|_| (0..400).map(|_| rng.below(12) as u32).collect())
                .collect(),
            background_k: 60,
        };
        let idx = [4usize, 399, 0, 200, 4];
        let inv_t = 1.0 / 0.07;
        let (want, want_g) =
            through_candle(&bank, &v, inv_t, |l| la_loss(l, &idx, &close).unwrap());
        let objective = BankObjective::LocalAggregation(&close);
        let (got, got_g) = fused(&bank, &v, &idx, inv_t, objective);
        assert!(
            want > 0.1,
            "the test must exercise a non-trivial loss: {want}"
        );
        assert_same((got, got_g), (want, want_g));
    }

    #[test]
    fn ties_at_the_kth_logit_all_count_as_background() {
        // Row 0 of a bank where rows 1-3 tie: with background_k = 2, B = {0, 1, 2, 3}.
        let close = CloseNeighbours {
            labels: vec![vec![0, 0, 1, 1, 1]],
            background_k: 2,
        };
        let mut row = vec![3.0f32, 1.0, 1.0, 1.0, 0.0];
        let loss = local_aggregation_row(&mut row, 0, &close);
        let e = |x: f64| x.exp();
        let want = ((e(3.0) + 3.0 * e(1.0)) / (e(3.0) + e(1.0))).ln();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        assert_eq!(row[4], 0.0, "outside the background set");
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let (bank, v) = bank_and_batch(10, 2, 4);
        let bad_index = bank_loss(
            v.as_tensor(),
            &bank,
            &[0, 10],
            1.0,
            BankObjective::Instance,
            &mut Vec::new(),
        );
        assert!(bad_index.is_err());
        let short = CloseNeighbours {
            labels: vec![vec![0; 9]],
            background_k: 3,
        };
        let o = BankObjective::LocalAggregation(&short);
        assert!(bank_loss(v.as_tensor(), &bank, &[0, 1], 1.0, o, &mut Vec::new()).is_err());
    }
}
