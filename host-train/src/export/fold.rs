//! Folding a board's adapter (`edge-runtime adapt export`) into the encoder's last linear
//! layer, so that the next exported model embeds as the adapted board did: `W' = M W`,
//! `b' = M b + o` for the adapter's composed map `x -> M x + o`.

use std::path::Path;

use models::adapt::AdapterExport;

use crate::error::TrainError;
use crate::graph::{FoldedGraph, Layer};

/// Reads and checks an adapter written by `edge-runtime adapt export`.
pub fn read_adapter(path: &Path) -> Result<AdapterExport, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let a: AdapterExport =
        serde_json::from_slice(&bytes).map_err(|source| TrainError::Adapter {
            path: path.to_path_buf(),
            source,
        })?;
    if !a.is_consistent() || a.matrix.iter().chain(&a.offset).any(|v| !v.is_finite()) {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!(
                "its map is not a finite {0} x {0} matrix and {0} offsets",
                a.dim
            ),
        });
    }
    Ok(a)
}

/// Folds `adapter` into the last layer of `graph`, which must be a linear layer with the
/// adapter's width.
pub fn fold_adapter(graph: &mut FoldedGraph, adapter: &AdapterExport) -> Result<(), TrainError> {
    let d = adapter.dim;
    let Some(Layer::Linear(last)) = graph.layers.last_mut() else {
        return Err(TrainError::Config(
            "the encoder does not end in a linear layer; an adapter cannot be folded into it"
                .into(),
        ));
    };
    if last.out_features != d {
        return Err(TrainError::Config(format!(
            "the adapter is {d}-d, the encoder's embedding {}-d",
            last.out_features
        )));
    }
    let n = last.in_features;
    let mut weight = vec![0f32; d * n];
    let mut bias = adapter.offset.clone();
    for i in 0..d {
        for k in 0..d {
            let m = adapter.matrix[i * d + k];
            bias[i] += m * last.bias[k];
            let (out, row) = (
                &mut weight[i * n..(i + 1) * n],
                &last.weight[k * n..(k + 1) * n],
            );
            out.iter_mut().zip(row).for_each(|(o, w)| *o += m * w);
        }
    }
    last.weight = weight;
    last.bias = bias;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Linear;
    use models::adapt::LinearAdapter;
    use models::rng::Rng;

    #[test]
    fn the_folded_layer_embeds_as_the_adapted_board() {
        let (n, d) = (5, 3);
        let mut rng = Rng::new(4);
        let mut g =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.next_gaussian() as f32).collect() };
        let layer = Linear {
            name: "proj".into(),
            weight: g(d * n),
            out_features: d,
            in_features: n,
            bias: g(d),
        };
        let mut adapter_layer = LinearAdapter::identity(d);
        adapter_layer.weight = g(d * d);
        adapter_layer.bias = g(d);
        let adapter = AdapterExport::compose(1, "sha", 2, 10, &adapter_layer, None, None);
        let x = g(n);
        // The board: the original layer, then the adapter.
        let mut board: Vec<f32> = (0..d)
            .map(|i| layer.bias[i] + (0..n).map(|j| layer.weight[i * n + j] * x[j]).sum::<f32>())
            .collect();
        adapter.apply_rows(&mut board);
        let mut graph = FoldedGraph {
            input_chw: [1, 1, n],
            layers: vec![Layer::Flatten, Layer::Linear(layer)],
            embed_dim: d,
        };
        fold_adapter(&mut graph, &adapter).unwrap();
        let Layer::Linear(f) = &graph.layers[1] else {
            unreachable!()
        };
        for i in 0..d {
            let host = f.bias[i] + (0..n).map(|j| f.weight[i * n + j] * x[j]).sum::<f32>();
            assert!((host - board[i]).abs() < 1e-4, "{host} vs {}", board[i]);
        }
        // A width mismatch is refused.
        let wrong = AdapterExport::compose(1, "sha", 0, 0, &LinearAdapter::identity(4), None, None);
        assert!(fold_adapter(&mut graph, &wrong).is_err());
    }
}
