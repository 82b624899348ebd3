//! Export layers from trained parts, shared by every encoder's `folded_graph`.

use candle_core::{Result, Tensor};

use super::BnRelu;
use crate::graph::{Conv, Layer, Linear};

/// Conv weight `w` (no bias) with `bn`'s eval statistics folded in.
pub(super) fn folded_conv(
    name: String,
    w: &Tensor,
    bn: &BnRelu,
    stride: usize,
    padding: usize,
) -> Result<Layer> {
    let conv = Conv {
        name,
        weight: w.flatten_all()?.to_vec1()?,
        shape: w.dims4()?.into(),
        bias: None,
        stride,
        padding,
    };
    Ok(Layer::Conv(conv.fold_batch_norm(&bn.batch_norm_params()?)))
}

/// A candle linear layer (a missing bias is zeros).
pub(super) fn linear_layer(name: &str, l: &candle_nn::Linear) -> Result<Layer> {
    let (out_features, in_features) = l.weight().dims2()?;
    Ok(Layer::Linear(Linear {
        name: name.into(),
        weight: l.weight().flatten_all()?.to_vec1()?,
        out_features,
        in_features,
        bias: match l.bias() {
            Some(b) => b.to_vec1()?,
            None => vec![0.0; out_features],
        },
    }))
}
