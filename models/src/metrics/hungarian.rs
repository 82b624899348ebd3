//! Optimal one-to-one matching (Kuhn-Munkres, from `pathfinding`) and the clustering
//! accuracy built on it.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

use super::{Contingency, MetricsError};

/// For a `rows x cols` matrix of weights, the column matched to each row so that the total
/// weight is largest. With more rows than columns, the extra rows get `None`.
pub fn max_weight_assignment(
    weights: &[i64],
    rows: usize,
    cols: usize,
) -> Result<Vec<Option<usize>>, MetricsError> {
    if weights.len() != rows * cols {
        return Err(MetricsError::BadCostMatrix {
            len: weights.len(),
            rows,
            cols,
        });
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    // The solver wants rows <= columns: pad to a square with zero weights.
    let size = rows.max(cols);
    let mut square = vec![0i64; size * size];
    for r in 0..rows {
        square[r * size..r * size + cols].copy_from_slice(&weights[r * cols..(r + 1) * cols]);
    }
    let m = Matrix::from_vec(size, size, square).expect("square by construction");
    let (_, cols_of_rows) = kuhn_munkres(&m);
    Ok(cols_of_rows[..rows]
        .iter()
        .map(|&c| (c < cols).then_some(c))
        .collect())
}

/// For a `rows x cols` matrix of real costs, the column matched to each row so that the
/// total cost is smallest. Costs are scaled to integers with a relative precision of 1e-9.
pub fn min_cost_assignment(
    costs: &[f64],
    rows: usize,
    cols: usize,
) -> Result<Vec<Option<usize>>, MetricsError> {
    if costs.len() != rows * cols || costs.iter().any(|c| !c.is_finite()) {
        return Err(MetricsError::BadCostMatrix {
            len: costs.len(),
            rows,
            cols,
        });
    }
    let max = costs.iter().fold(0.0f64, |m, c| m.max(c.abs()));
    let scale = if max > 0.0 { 1e9 / max } else { 1.0 };
    let weights: Vec<i64> = costs.iter().map(|c| -(c * scale).round() as i64).collect();
    max_weight_assignment(&weights, rows, cols)
}

/// Clustering accuracy: the fraction of samples whose cluster, mapped one-to-one onto
/// classes by the best matching, is their class. Extra clusters count as wrong.
pub fn clustering_accuracy(labels_true: &[u32], labels_pred: &[u32]) -> Result<f64, MetricsError> {
    let c = Contingency::new(labels_true, labels_pred)?;
    let (k, m) = (c.clusters(), c.classes());
    let weights: Vec<i64> = (0..k)
        .flat_map(|j| (0..m).map(move |i| (i, j)))
        .map(|(i, j)| c.get(i, j) as i64)
        .collect();
    let matched = max_weight_assignment(&weights, k, m)?;
    let hits: u64 = matched
        .iter()
        .enumerate()
        .filter_map(|(j, i)| i.map(|i| c.get(i, j)))
        .sum();
    Ok(hits as f64 / c.n() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuted_labels_have_full_accuracy() {
        let t = [0, 0, 1, 1, 2, 2];
        let p = [2, 2, 0, 0, 1, 1];
        assert_eq!(clustering_accuracy(&t, &p).unwrap(), 1.0);
    }

    #[test]
    fn more_clusters_than_classes_count_extras_as_wrong() {
        let t = [0, 0, 0, 1, 1, 1];
        let p = [0, 0, 1, 2, 2, 3];
        assert!((clustering_accuracy(&t, &p).unwrap() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn min_cost_matches_the_obvious_permutation() {
        // Row i is cheapest at column (i + 1) % 3.
        let costs = [5.0, 0.1, 7.0, 6.0, 8.0, 0.2, 0.3, 9.0, 4.0];
        let m = min_cost_assignment(&costs, 3, 3).unwrap();
        assert_eq!(m, vec![Some(1), Some(2), Some(0)]);
        let wide = min_cost_assignment(&[1.0, 0.0, 3.0], 1, 3).unwrap();
        assert_eq!(wide, vec![Some(1)]);
        let tall = min_cost_assignment(&[1.0, 0.0], 2, 1).unwrap();
        assert_eq!(tall, vec![None, Some(0)]);
        assert!(min_cost_assignment(&[1.0], 2, 2).is_err());
        assert!(min_cost_assignment(&[f64::NAN], 1, 1).is_err());
    }
}
