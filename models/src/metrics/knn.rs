//! Weighted k-nearest-neighbour classification, the evaluation of Wu et al. 2018: cosine
//! similarity, the k most similar reference features vote for their label with weight
//! exp(s / tau).
//!
//! Queries go in blocks; each block is multiplied against the references chunk by chunk,
//! so the whole similarity matrix (10k x 60k = 2.4 GB in f32) is never held at once.

use rayon::prelude::*;

use super::MetricsError;
use crate::linalg::{l2_normalize_rows, matmul, Operand};
use crate::MatRef;

/// Unchecked kNN parameters; the defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedKnnParams {
    pub k: usize,
    pub temperature: f32,
}

impl Default for WeightedKnnParams {
    fn default() -> Self {
        Self {
            k: 200,
            temperature: 0.07,
        }
    }
}

impl WeightedKnnParams {
    pub fn check(self) -> Result<WeightedKnn, MetricsError> {
        if self.k == 0 {
            return Err(MetricsError::ZeroK);
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(MetricsError::BadTemperature);
        }
        Ok(WeightedKnn(self))
    }
}

/// Checked kNN parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedKnn(WeightedKnnParams);

const QUERY_BLOCK: usize = 64;
const REF_CHUNK: usize = 4096;

impl WeightedKnn {
    /// The predicted label of each query.
    pub fn predict(
        &self,
        reference: MatRef<'_>,
        reference_labels: &[u32],
        queries: MatRef<'_>,
    ) -> Result<Vec<u32>, MetricsError> {
        let (n_ref, d) = (reference.rows(), reference.cols());
        if reference_labels.len() != n_ref {
            return Err(MetricsError::LengthMismatch {
                left: n_ref,
                right: reference_labels.len(),
            });
        }
        if queries.cols() != d {
            return Err(MetricsError::DimMismatch {
                reference: d,
                query: queries.cols(),
            });
        }
        if n_ref == 0 {
            return Err(MetricsError::Empty);
        }
        let k = self.0.k.min(n_ref);
        let inv_t = 1.0 / self.0.temperature;
        let n_classes = *reference_labels.iter().max().expect("non-empty") as usize + 1;
        let top = top_k_cosine(reference, queries, k);
        let mut votes = vec![0f64; n_classes];
        Ok(top
            .iter()
            .map(|cand| {
                votes.fill(0.0);
                for &(s, j) in cand {
                    votes[reference_labels[j as usize] as usize] += ((s * inv_t) as f64).exp();
                }
                (1..n_classes).fold(0, |best, c| if votes[c] > votes[best] { c } else { best })
                    as u32
            })
            .collect())
    }

    /// Top-1 accuracy of [`Self::predict`] against the queries' labels.
    pub fn top1(
        &self,
        reference: MatRef<'_>,
        reference_labels: &[u32],
        queries: MatRef<'_>,
        query_labels: &[u32],
    ) -> Result<f64, MetricsError> {
        if query_labels.len() != queries.rows() {
            return Err(MetricsError::LengthMismatch {
                left: queries.rows(),
                right: query_labels.len(),
            });
        }
        if query_labels.is_empty() {
            return Err(MetricsError::Empty);
        }
        let pred = self.predict(reference, reference_labels, queries)?;
        let hits = pred
            .iter()
            .zip(query_labels)
            .filter(|(a, b)| a == b)
            .count();
        Ok(hits as f64 / query_labels.len() as f64)
    }
}

/// The `k` nearest rows of `reference` (by cosine similarity) of each row of `data`, itself
/// left out: `data.rows() x k` indices, nearest first. Used to mine neighbours (SCAN).
pub fn nearest_neighbours(data: MatRef<'_>, k: usize) -> Result<Vec<u32>, MetricsError> {
    let n = data.rows();
    if n < 2 || k == 0 {
        return Err(MetricsError::Empty);
    }
    let k = k.min(n - 1);
    let top = top_k_cosine(data, data, k + 1);
    Ok(top
        .iter()
        .enumerate()
        .flat_map(|(i, cand)| {
            // Itself is normally first; with duplicates it may be elsewhere, or cut off.
            let mut others: Vec<u32> = cand
                .iter()
                .map(|&(_, j)| j)
                .filter(|&j| j as usize != i)
                .collect();
            others.truncate(k);
            others
        })
        .collect())
}

/// For each query, the `k` most cosine-similar reference rows as (similarity, index),
/// most similar first. Queries go in blocks against reference chunks, so the whole
/// similarity matrix is never held.
fn top_k_cosine(reference: MatRef<'_>, queries: MatRef<'_>, k: usize) -> Vec<Vec<(f32, u32)>> {
    let (n_ref, d) = (reference.rows(), reference.cols());
    // Cosine similarity is the dot product of unit vectors.
    let mut r = reference.as_slice().to_vec();
    l2_normalize_rows(&mut r, d);
    let mut q = queries.as_slice().to_vec();
    l2_normalize_rows(&mut q, d);
    let mut out: Vec<Vec<(f32, u32)>> = vec![Vec::new(); queries.rows()];
    out.par_chunks_mut(QUERY_BLOCK)
        .enumerate()
        .for_each(|(bi, out_block)| {
            let rows = out_block.len();
            let qb = &q[bi * QUERY_BLOCK * d..(bi * QUERY_BLOCK + rows) * d];
            let mut sims = vec![0f32; rows * REF_CHUNK];
            // Per query: candidates above the running threshold, pruned to the top k
            // whenever the buffer doubles.
            let mut floor = vec![f32::NEG_INFINITY; rows];
            out_block.iter_mut().for_each(|c| c.reserve(2 * k));
            for c0 in (0..n_ref).step_by(REF_CHUNK) {
                let cn = REF_CHUNK.min(n_ref - c0);
                matmul(
                    &mut sims[..rows * cn],
                    Operand::new(qb, rows, d),
                    Operand::new(&r[c0 * d..(c0 + cn) * d], cn, d).t(),
                    1.0,
                    gemm::Parallelism::None,
                );
                for (qi, cand) in out_block.iter_mut().enumerate() {
                    for (j, &s) in sims[qi * cn..(qi + 1) * cn].iter().enumerate() {
                        if s > floor[qi] {
                            cand.push((s, (c0 + j) as u32));
                            if cand.len() == 2 * k {
                                keep_top(cand, k);
                                floor[qi] = cand[k - 1].0;
                            }
                        }
                    }
                }
            }
            out_block.iter_mut().for_each(|c| keep_top(c, k));
        });
    out
}

/// Keeps the k largest similarities, sorted in decreasing order.
fn keep_top(c: &mut Vec<(f32, u32)>, k: usize) {
    let by_sim = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
    if c.len() > k {
        c.select_nth_unstable_by(k - 1, by_sim);
        c.truncate(k);
    }
    c.sort_unstable_by(by_sim);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The direct computation: every similarity, a full sort, the vote.
    fn brute(r: &[f32], rl: &[u32], q: &[f32], d: usize, k: usize, t: f32) -> Vec<u32> {
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        q.chunks(d)
            .map(|qv| {
                let mut s: Vec<(f32, u32)> = r
                    .chunks(d)
                    .zip(rl)
                    .map(|(rv, &l)| {
                        let dot: f32 = rv.iter().zip(qv).map(|(a, b)| a * b).sum();
                        (dot / (norm(rv) * norm(qv)), l)
                    })
                    .collect();
                s.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut votes = [0f64; 4];
                for &(sim, l) in &s[..k] {
                    votes[l as usize] += ((sim / t) as f64).exp();
                }
                (0..4).fold(0, |b, c| if votes[c] > votes[b] { c } else { b }) as u32
            })
            .collect()
    }

    #[test]
    fn blocked_prediction_equals_brute_force() {
        let (n, m, d) = (5000, 150, 8);
        let mut rng = Rng::new(4);
        let r: Vec<f32> = (0..n * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let rl: Vec<u32> = r
            .chunks(d)
            .map(|v| u32::from(v[0] > 0.0) * 2 + u32::from(v[1] > 0.0))
            .collect();
        let q: Vec<f32> = (0..m * d).map(|_| rng.next_f64() as f32 - 0.5).collect();
        for k in [1, 10, 200] {
            let knn = WeightedKnnParams {
                k,
                temperature: 0.07,
            }
            .check()
            .unwrap();
            let got = knn
                .predict(
                    MatRef::new(&r, d).unwrap(),
                    &rl,
                    MatRef::new(&q, d).unwrap(),
                )
                .unwrap();
            assert_eq!(got, brute(&r, &rl, &q, d, k, 0.07), "k = {k}");
        }
    }

    #[test]
    fn nearest_neighbours_leave_out_the_point_itself() {
        // Points on a line of angles: each one's nearest are its angular neighbours.
        let x: Vec<f32> = (0..20)
            .flat_map(|i| {
                let a = i as f32 * 0.1;
                [a.cos(), a.sin()]
            })
            .collect();
        let nn = nearest_neighbours(MatRef::new(&x, 2).unwrap(), 2).unwrap();
        assert_eq!(nn.len(), 40);
        let mut five = nn[10..12].to_vec();
        five.sort_unstable();
        assert_eq!(five, vec![4, 6]);
        assert_eq!(nn[0], 1);
        assert!(nn
            .chunks(2)
            .enumerate()
            .all(|(i, c)| !c.contains(&(i as u32))));
        assert!(nearest_neighbours(MatRef::new(&x[..2], 2).unwrap(), 1).is_err());
    }

    #[test]
    fn bad_parameters_and_shapes_are_errors() {
        assert_eq!(
            WeightedKnnParams {
                k: 0,
                temperature: 0.1
            }
            .check(),
            Err(MetricsError::ZeroK)
        );
        assert_eq!(
            WeightedKnnParams {
                k: 1,
                temperature: 0.0
            }
            .check(),
            Err(MetricsError::BadTemperature)
        );
        let knn = WeightedKnnParams::default().check().unwrap();
        let r = [1.0f32, 0.0, 0.0, 1.0];
        let q = [1.0f32, 0.0, 0.0];
        assert_eq!(
            knn.predict(
                MatRef::new(&r, 2).unwrap(),
                &[0, 1],
                MatRef::new(&q, 3).unwrap()
            ),
            Err(MetricsError::DimMismatch {
                reference: 2,
                query: 3
            })
        );
        assert_eq!(
            knn.predict(
                MatRef::new(&r, 2).unwrap(),
                &[0],
                MatRef::new(&r, 2).unwrap()
            ),
            Err(MetricsError::LengthMismatch { left: 2, right: 1 })
        );
        let acc = knn
            .top1(
                MatRef::new(&r, 2).unwrap(),
                &[0, 1],
                MatRef::new(&r, 2).unwrap(),
                &[0, 1],
            )
            .unwrap();
        assert_eq!(acc, 1.0);
    }
}
