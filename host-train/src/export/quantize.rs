//! Static post-training quantisation of a [`FoldedGraph`]: calibrate the input range of every
//! conv and linear on real images, then quantise their weights per output channel.

use candle_core::{Result, Tensor};
use models::quant::{quantize_per_channel, symmetric_scale, AbsHistogram, Calibrator};

use crate::graph::{FoldedGraph, Layer};

/// What the QDQ writer needs for one quantised layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerQuant {
    /// Per-tensor scale of the layer's input activation (zero point 0).
    pub input_scale: f32,
    pub weight_codes: Vec<i8>,
    /// One scale per output channel.
    pub weight_scales: Vec<f32>,
}

/// The clipping range `amax` of the input of every conv and linear, in
/// [`FoldedGraph::quantized`] order, measured on `batches` of preprocessed images.
pub fn calibrate(
    graph: &FoldedGraph,
    batches: &[Tensor],
    calibrator: Calibrator,
) -> Result<Vec<f32>> {
    let n = graph.quantized().len();
    let mut max_abs = vec![0f32; n];
    for x in batches {
        graph.forward(x, |i, t| {
            let m = t.abs()?.max_all()?.to_scalar::<f32>()?;
            max_abs[i] = max_abs[i].max(m);
            Ok(())
        })?;
    }
    if !calibrator.needs_histogram() {
        return Ok(max_abs);
    }
    let mut hists: Vec<AbsHistogram> = max_abs
        .iter()
        .map(|&m| AbsHistogram::new(AbsHistogram::DEFAULT_BINS, m))
        .collect();
    for x in batches {
        graph.forward(x, |i, t| {
            hists[i].add(&t.flatten_all()?.to_vec1::<f32>()?);
            Ok(())
        })?;
    }
    Ok(max_abs
        .iter()
        .zip(&hists)
        .map(|(&m, h)| calibrator.amax(m, h))
        .collect())
}

/// Quantises the weights of every conv and linear, in [`FoldedGraph::quantized`] order;
/// `amax` comes from [`calibrate`].
pub fn quantize_graph(graph: &FoldedGraph, amax: &[f32]) -> Vec<LayerQuant> {
    graph
        .quantized()
        .into_iter()
        .zip(amax)
        .filter_map(|(layer, &amax)| {
            let (w, out) = match layer {
                Layer::Conv(c) => (&c.weight, c.shape[0]),
                Layer::Linear(l) => (&l.weight, l.out_features),
                _ => return None,
            };
            let (weight_codes, weight_scales) = quantize_per_channel(w, out);
            Some(LayerQuant {
                input_scale: symmetric_scale(amax),
                weight_codes,
                weight_scales,
            })
        })
        .collect()
}
