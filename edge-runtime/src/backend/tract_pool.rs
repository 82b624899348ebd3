//! A faster 2x2, stride-2 max pool for tract, swapped in for its generic `MaxPool`.
//!
//! tract 0.23 pools through a general patch walker: on the default model its two pools took
//! 83 of 346 us per frame (`examples/tract_profile.rs`), about as long as a 64-channel 3x3
//! convolution. The common case in small CNNs (2x2 windows, stride 2, no padding, NCHW, f32)
//! is two passes the compiler vectorises: the max of each pair of rows, then of each pair of
//! columns. A ReLU feeding only the pool is folded in (max commutes with it), on a quarter of
//! the values; and when the pool feeds only a zero-padded convolution, the pool writes the
//! zero border itself and the convolution's own Pad op goes (11 us a frame on the default
//! model). The result is bit-identical; anything else keeps tract's own ops.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::DataFormat;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(super) struct MaxPool2x2 {
    /// Clamp the pooled values at 0: the ReLU that fed the pool.
    pub relu: bool,
    /// Zeros written around each output plane: the padding of the convolution it feeds.
    pub pad: usize,
}

impl MaxPool2x2 {
    /// Output plane side for an input side (odd edges dropped, as ONNX's floor mode does).
    pub fn out_side(&self, side: usize) -> usize {
        side / 2 + 2 * self.pad
    }
}

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        if self.relu {
            "MaxPool2x2Relu"
        } else {
            "MaxPool2x2"
        }
        .into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[n, c, h, w] = input.shape() else {
            bail!("MaxPool2x2 takes NCHW, got shape {:?}", input.shape());
        };
        let (hp, wp) = (self.out_side(h), self.out_side(w));
        let mut out = Tensor::zero::<f32>(&[n, c, hp, wp])?;
        {
            let plain = input.try_as_plain_ram()?;
            let x = plain.as_slice::<f32>()?;
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            // Planes split over tract's threads when a run installed some (one image on two
            // threads); inline otherwise. Work is counted in values read.
            tract_linalg::multithread::par_chunks_mut(out, hp * wp, x.len(), |first, out| {
                let mut rows = Vec::new();
                let planes = x[first * h * w..].chunks_exact(h * w);
                for (plane, o) in planes.zip(out.chunks_exact_mut(hp * wp)) {
                    self.pool_plane(plane, w, [h, w], o, &mut rows);
                }
                Ok(())
            })?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        let (h, w) = (s[2].to_usize()?, s[3].to_usize()?);
        Ok(tvec!(f32::fact([
            s[0].clone(),
            s[1].clone(),
            self.out_side(h).into(),
            self.out_side(w).into()
        ])))
    }

    as_op!();
}

impl MaxPool2x2 {
    /// One `h x w` plane, its rows `stride` apart in `plane`, into one bordered output plane
    /// `out` (whose border is left as it is: zero). `rows` is scratch.
    pub fn pool_plane(
        &self,
        plane: &[f32],
        stride: usize,
        [h, w]: [usize; 2],
        out: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        let (ho, wo) = (h / 2, w / 2);
        let (p, wp) = (self.pad, self.out_side(w));
        rows.resize(2 * wo, 0.0);
        for i in 0..ho {
            let r0 = &plane[2 * i * stride..][..2 * wo];
            let r1 = &plane[(2 * i + 1) * stride..][..2 * wo];
            // `if a > b` rather than f32::max: a plain maxps, no NaN fix-ups.
            for ((m, &a), &b) in rows.iter_mut().zip(r0).zip(r1) {
                *m = if a > b { a } else { b };
            }
            let o_row = &mut out[(i + p) * wp + p..][..wo];
            for (o, pair) in o_row.iter_mut().zip(rows.chunks_exact(2)) {
                let m = if pair[0] > pair[1] { pair[0] } else { pair[1] };
                *o = if !self.relu || m > 0.0 { m } else { 0.0 };
            }
        }
    }
}

/// Whether tract's `pool` on `input` is the case [`MaxPool2x2`] computes.
fn is_plain_2x2(pool: &MaxPool, input: &TypedFact) -> bool {
    let spec = &pool.pool_spec;
    let zero_pads = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(a, b) => a.iter().chain(b).all(|&p| p == 0),
        PaddingSpec::ExplicitOnnxPool(a, b, ceil) => !ceil && a.iter().chain(b).all(|&p| p == 0),
        _ => false,
    };
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&d| d == 1));
    spec.data_format == DataFormat::NCHW
        && spec.kernel_shape.as_slice() == [2, 2]
        && spec.strides.as_deref() == Some(&[2, 2][..])
        && ones(&spec.dilations)
        && zero_pads
        && pool.with_index_outputs.is_none()
        && input.datum_type == f32::datum_type()
        && input.rank() == 4
        && input.shape[2].to_usize().is_ok()
        && input.shape[3].to_usize().is_ok()
}

/// The ReLU (`max(x, 0)` against a zero constant) that produces `outlet` and feeds nothing
/// else: its input, to pool instead.
fn relu_input(model: &TypedModel, outlet: OutletId) -> Option<OutletId> {
    let node = model.node(outlet.node);
    let bin = node.op_as::<TypedBinOp>()?;
    if bin.0.name() != "Max" || model.outlet_successors(outlet).len() != 1 {
        return None;
    }
    let is_zero = |o: &OutletId| {
        model.node(o.node).op_as::<Const>().is_some_and(|k| {
            let t = k.val();
            t.len() == 1 && t.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0)
        })
    };
    match node.inputs.as_slice() {
        [x, zero] | [zero, x] if is_zero(zero) && !is_zero(x) => Some(*x),
        _ => None,
    }
}

/// The convolution that alone reads `outlet`, with the same zero padding `p` on every side:
/// its node, `p`, and the convolution without the padding.
fn padded_conv(model: &TypedModel, outlet: OutletId) -> Option<(usize, usize, Conv)> {
    let [succ] = model.outlet_successors(outlet) else {
        return None;
    };
    let node = model.node(succ.node);
    let conv = node.op_as::<Conv>()?;
    let p = match &conv.pool_spec.padding {
        PaddingSpec::Explicit(a, b) if a == b && a.len() == 2 && a[0] == a[1] && a[0] > 0 => a[0],
        _ => return None,
    };
    if succ.slot != 0 || conv.pool_spec.data_format != DataFormat::NCHW {
        return None;
    }
    let mut valid = conv.clone();
    valid.pool_spec.padding = PaddingSpec::Valid;
    Some((node.id, p, valid))
}

/// Replaces every plain 2x2 max pool of `model` with [`MaxPool2x2`], taking in the ReLU
/// before it and the padding of the convolution after it where there are; returns how many.
pub(super) fn use_fast_max_pools(model: &mut TypedModel) -> TractResult<usize> {
    let candidates: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|node| {
            node.op_as::<MaxPool>().is_some_and(|pool| {
                model
                    .outlet_fact(node.inputs[0])
                    .is_ok_and(|fact| is_plain_2x2(pool, fact))
            })
        })
        .map(|node| node.id)
        .collect();
    for &id in &candidates {
        let node = &model.nodes()[id];
        let (input, relu) = match relu_input(model, node.inputs[0]) {
            Some(x) => (x, true),
            None => (node.inputs[0], false),
        };
        let conv = padded_conv(model, OutletId::new(id, 0));
        let pad = conv.as_ref().map_or(0, |(_, p, _)| *p);
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, input)?;
        let pooled = patch.wire_node(&node.name, MaxPool2x2 { relu, pad }, &[tap])?;
        match conv {
            Some((conv_id, _, valid)) => {
                let conv_node = model.node(conv_id);
                let mut inputs = tvec!(pooled[0]);
                for &i in &conv_node.inputs[1..] {
                    inputs.push(patch.tap_model(model, i)?);
                }
                let out = patch.wire_node(&conv_node.name, valid, &inputs)?;
                patch.shunt_outside(model, OutletId::new(conv_id, 0), out[0])?;
            }
            None => patch.shunt_outside(model, OutletId::new(id, 0), pooled[0])?,
        }
        patch.apply(model)?;
    }
    Ok(candidates.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plane of `x` (`h x w`) through `pool`, as the op's eval does on one thread.
    fn pool_planes(pool: MaxPool2x2, x: &[f32], [h, w]: [usize; 2]) -> Vec<f32> {
        let side = pool.out_side(h) * pool.out_side(w);
        let mut out = vec![f32::NAN; x.len() / (h * w) * side];
        for (plane, o) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(side)) {
            pool.pool_plane(plane, w, [h, w], o, &mut Vec::new());
        }
        out
    }

    #[test]
    fn pools_rows_then_columns_with_odd_edges_dropped() {
        let plain = MaxPool2x2 {
            relu: false,
            pad: 0,
        };
        // One 3x5 plane: the last row and column fall outside every window.
        let x: Vec<f32> = vec![
            1., 9., 2., 3., 50., //
            4., 0., 8., -1., 50., //
            70., 70., 70., 70., 70.,
        ];
        assert_eq!(pool_planes(plain, &x, [3, 5]), [9., 8.]);
        // Two planes of 2x2, negative values.
        let x = [-1., -2., -3., -4., -8., -7., -6., -5.];
        assert_eq!(pool_planes(plain, &x, [2, 2]), [-1., -5.]);
        // The same inside a border of 1, clamped at 0: each pooled value at the centre of a
        // 3x3 plane, the border left alone.
        let x = [-1., -2., -3., -4., 8., 7., 6., 5.];
        let border = MaxPool2x2 { relu: true, pad: 1 };
        let out = pool_planes(border, &x, [2, 2]);
        for (plane, want) in out.chunks_exact(9).zip([0., 8.]) {
            assert_eq!(plane[4], want);
            assert!(plane.iter().enumerate().all(|(i, v)| i == 4 || v.is_nan()));
        }
        // Rows further apart than the width (a wider buffer, as the fused convolution has).
        let wide = [1., 2., 99., 3., 4., 99.];
        let mut out = [0.];
        plain.pool_plane(&wide, 3, [2, 2], &mut out, &mut Vec::new());
        assert_eq!(out, [4.]);
    }
}
