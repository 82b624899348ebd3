//! A direct 3x3 convolution for tract, swapped in where the input has very few channels.
//!
//! tract lowers every convolution to im2col + matrix product. For the first layer of a small
//! gray-image CNN (1 input channel, so K = 9) that is mostly packing: 36 us of a 269 us frame
//! on the default model, for 0.23 M multiply-adds. Summed directly over a zero-padded copy of
//! the input, rows at a time, the compiler vectorises it along the width.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::tract_pool::MaxPool2x2;

/// Input channels up to which the direct form wins (the matrix product's K is 9 per channel).
const MAX_INPUT_CHANNELS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirectConv3x3 {
    /// `[out, in, 3, 3]`, f32.
    weight: Arc<Tensor>,
    /// One value per output channel.
    bias: Vec<u32>,
    /// Zeros around each side.
    pad: usize,
    /// The 2x2 max pool that alone reads the convolution, done on each output plane while it
    /// is in cache: the full-size map is never written (on the default model, the first
    /// block's 100 KB map and the pool's separate pass).
    pool: Option<MaxPool2x2>,
}

impl DirectConv3x3 {
    /// Output plane `[height, width]` for an input plane `[h, w]`.
    fn out_plane(&self, h: usize, w: usize) -> [usize; 2] {
        let (ho, wo) = (h + 2 * self.pad - 2, w + 2 * self.pad - 2);
        match self.pool {
            Some(pool) => [pool.out_side(ho), pool.out_side(wo)],
            None => [ho, wo],
        }
    }
}

impl Op for DirectConv3x3 {
    fn name(&self) -> StaticName {
        match self.pool {
            Some(pool) => format!("DirectConv3x3+{}", pool.name()).into(),
            None => "DirectConv3x3".into(),
        }
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let &[n, ci, h, w] = input.shape() else {
            bail!("DirectConv3x3 takes NCHW, got shape {:?}", input.shape());
        };
        let co = self.weight.shape()[0];
        let [ho, wo] = self.out_plane(h, w);
        let mut out = Tensor::zero::<f32>(&[n, co, ho, wo])?;
        {
            let plain = input.try_as_plain_ram()?;
            let x = plain.as_slice::<f32>()?;
            let weight = self.weight.try_as_plain_ram()?;
            let weight = weight.as_slice::<f32>()?;
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let shape = Shape {
                ci,
                h,
                w,
                pad: self.pad,
            };
            for (image, out) in x
                .chunks_exact(ci * h * w)
                .zip(out.chunks_exact_mut(co * ho * wo))
            {
                let padded = pad_image(image, shape);
                // Output planes split over tract's threads when a run installed some (one
                // image on two threads); inline otherwise. Work is counted in
                // multiply-adds, which is what the split pays for.
                let macs = co * h * w * ci * 9;
                tract_linalg::multithread::par_chunks_mut(out, ho * wo, macs, |first, planes| {
                    conv_planes(&padded, weight, &self.bias, shape, self.pool, first, planes);
                    Ok(())
                })?;
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DirectConv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        let [ho, wo] = self.out_plane(s[2].to_usize()?, s[3].to_usize()?);
        let co = self.weight.shape()[0];
        Ok(tvec!(f32::fact([
            s[0].clone(),
            co.into(),
            ho.into(),
            wo.into()
        ])))
    }

    as_op!();
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    ci: usize,
    h: usize,
    w: usize,
    pad: usize,
}

/// `x` (`[ci, h, w]`) inside a zero border of `pad`, plus 2 values of slack for the last
/// tap's run past the final row, so the inner loops have no edge cases.
fn pad_image(x: &[f32], s: Shape) -> Vec<f32> {
    let (hp, wp) = (s.h + 2 * s.pad, s.w + 2 * s.pad);
    let mut padded = vec![0f32; s.ci * hp * wp + 2];
    for (c, plane) in x.chunks_exact(s.h * s.w).enumerate() {
        for (y, row) in plane.chunks_exact(s.w).enumerate() {
            padded[c * hp * wp + (y + s.pad) * wp + s.pad..][..s.w].copy_from_slice(row);
        }
    }
    padded
}

/// Output planes `first..` of one image into `out` (whole planes, pooled by `pool` if
/// any), from the image as [`pad_image`] made it; `bias` holds f32 bits.
///
/// Release builds target baseline x86-64 (SSE2, no FMA), while tract's own kernels pick
/// AVX2 + FMA at run time; so does this, or the direct form is no faster than im2col.
fn conv_planes(
    padded: &[f32],
    weight: &[f32],
    bias: &[u32],
    s: Shape,
    pool: Option<MaxPool2x2>,
    first: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: both features were just detected on this CPU.
        return unsafe { conv_planes_avx2_fma(padded, weight, bias, s, pool, first, out) };
    }
    conv_planes_with::<false>(padded, weight, bias, s, pool, first, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_planes_avx2_fma(
    padded: &[f32],
    weight: &[f32],
    bias: &[u32],
    s: Shape,
    pool: Option<MaxPool2x2>,
    first: usize,
    out: &mut [f32],
) {
    conv_planes_with::<true>(padded, weight, bias, s, pool, first, out)
}

/// Each output plane is summed at the padded width, so every tap is one long contiguous
/// multiply-add over the plane (the two extra columns per row are dropped at the end).
/// Inlined into its callers so each is compiled with their target features; `FMA` fuses
/// the multiply-adds (only where the CPU has FMA: elsewhere `mul_add` is a library call).
#[inline(always)]
fn conv_planes_with<const FMA: bool>(
    padded: &[f32],
    weight: &[f32],
    bias: &[u32],
    s: Shape,
    pool: Option<MaxPool2x2>,
    first: usize,
    out: &mut [f32],
) {
    let (hp, wp) = (s.h + 2 * s.pad, s.w + 2 * s.pad);
    let (ho, wo) = (hp - 2, wp - 2);
    let span = ho * wp;
    let mut acc = vec![0f32; span];
    let mut rows = Vec::new();
    let plane_len = match pool {
        Some(pool) => pool.out_side(ho) * pool.out_side(wo),
        None => ho * wo,
    };
    for (i, plane) in out.chunks_exact_mut(plane_len).enumerate() {
        let o = first + i;
        acc.fill(f32::from_bits(bias[o]));
        let taps = &weight[o * s.ci * 9..][..s.ci * 9];
        // A kernel row (3 taps) per pass over the plane: a third of the accumulator traffic.
        for c in 0..s.ci {
            for ky in 0..3 {
                let t = &taps[(c * 3 + ky) * 3..][..3];
                let src = &padded[c * hp * wp + ky * wp..][..span + 2];
                let shifted = src.iter().zip(&src[1..]).zip(&src[2..]);
                for (a, ((&v0, &v1), &v2)) in acc.iter_mut().zip(shifted) {
                    *a = if FMA {
                        t[2].mul_add(v2, t[1].mul_add(v1, t[0].mul_add(v0, *a)))
                    } else {
                        *a + t[0] * v0 + t[1] * v1 + t[2] * v2
                    };
                }
            }
        }
        match pool {
            Some(pool) => pool.pool_plane(&acc, wp, [ho, wo], plane, &mut rows),
            None => {
                for (dst, row) in plane.chunks_exact_mut(wo).zip(acc.chunks_exact(wp)) {
                    dst.copy_from_slice(&row[..wo]);
                }
            }
        }
    }
}

/// `node`'s op, if it is a convolution [`DirectConv3x3`] computes, built from its constants.
fn direct_form(model: &TypedModel, node: &TypedNode) -> Option<DirectConv3x3> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&d| d == 1));
    let pad = match &spec.padding {
        PaddingSpec::Valid => 0,
        PaddingSpec::Explicit(a, b) if a == b && a.iter().all(|&p| p == a[0]) => a[0],
        _ => return None,
    };
    let input = model.outlet_fact(*node.inputs.first()?).ok()?;
    let plain = conv.q_params.is_none()
        && conv.group == 1
        && conv.kernel_fmt == KernelFormat::OIHW
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape.as_slice() == [3, 3]
        && ones(&spec.strides)
        && ones(&spec.dilations)
        && pad <= 1
        && spec.input_channels <= MAX_INPUT_CHANNELS
        && node.inputs.len() == 3
        && input.datum_type == f32::datum_type()
        && input.rank() == 4
        && input.shape[2].to_usize().is_ok_and(|h| h + 2 * pad >= 3)
        && input.shape[3].to_usize().is_ok_and(|w| w + 2 * pad >= 3);
    if !plain {
        return None;
    }
    let konst = |i: usize| {
        model
            .node(node.inputs[i].node)
            .op_as::<Const>()
            .map(|k| k.val().clone())
    };
    let (weight, bias) = (konst(1)?, konst(2)?);
    let co = spec.output_channels;
    if weight.datum_type() != f32::datum_type()
        || weight.shape() != [co, spec.input_channels, 3, 3]
        || bias.datum_type() != f32::datum_type()
    {
        return None;
    }
    let bias = bias
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()?
        .to_vec();
    let bias: Vec<u32> = match bias.len() {
        1 => vec![bias[0].to_bits(); co],
        l if l == co => bias.iter().map(|b| b.to_bits()).collect(),
        _ => return None,
    };
    Some(DirectConv3x3 {
        weight,
        bias,
        pad,
        pool: None,
    })
}

/// The [`MaxPool2x2`] node that alone reads `node`'s output, if there is one.
fn pool_after(model: &TypedModel, node: &TypedNode) -> Option<(usize, MaxPool2x2)> {
    let [succ] = model.outlet_successors(OutletId::new(node.id, 0)) else {
        return None;
    };
    let pool = model.node(succ.node).op_as::<MaxPool2x2>()?;
    Some((succ.node, *pool))
}

/// Replaces every convolution of `model` that [`direct_form`] accepts, taking in the
/// [`MaxPool2x2`] after it where there is one; returns how many.
pub(super) fn use_direct_convs(model: &mut TypedModel) -> TractResult<usize> {
    let swaps: Vec<(usize, DirectConv3x3)> = model
        .nodes()
        .iter()
        .filter_map(|node| direct_form(model, node).map(|op| (node.id, op)))
        .collect();
    for (id, op) in &swaps {
        let node = &model.nodes()[*id];
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, node.inputs[0])?;
        let mut op = op.clone();
        let mut last = *id;
        if let Some((pool_id, pool)) = pool_after(model, node) {
            op.pool = Some(pool);
            last = pool_id;
        }
        let out = patch.wire_node(&node.name, op, &[tap])?;
        patch.shunt_outside(model, OutletId::new(last, 0), out[0])?;
        patch.apply(model)?;
    }
    Ok(swaps.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition, summed in f64, for one and three channels, pad 1 and 0.
    #[test]
    fn matches_the_definition() {
        let mut rng = models::rng::Rng::new(3);
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect() };
        for (ci, co, h, w, pad) in [(1, 4, 5, 7, 1), (3, 2, 6, 4, 0), (2, 3, 3, 3, 1)] {
            let x = uniform(ci * h * w);
            let weight = uniform(co * ci * 9);
            let bias = uniform(co);
            let bits: Vec<u32> = bias.iter().map(|b| b.to_bits()).collect();
            let (ho, wo) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let mut out = vec![0f32; co * ho * wo];
            let shape = Shape { ci, h, w, pad };
            let padded = pad_image(&x, shape);
            // In two calls, as a split over threads makes them.
            let (head, tail) = out.split_at_mut((co / 2) * ho * wo);
            conv_planes(&padded, &weight, &bits, shape, None, 0, head);
            conv_planes(&padded, &weight, &bits, shape, None, co / 2, tail);
            for o in 0..co {
                for y in 0..ho {
                    for xo in 0..wo {
                        let mut sum = f64::from(bias[o]);
                        for c in 0..ci {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (y + ky, xo + kx);
                                    if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                        continue;
                                    }
                                    let v = x[(c * h + iy - pad) * w + ix - pad];
                                    let t = weight[((o * ci + c) * 3 + ky) * 3 + kx];
                                    sum += f64::from(v) * f64::from(t);
                                }
                            }
                        }
                        let got = out[(o * ho + y) * wo + xo];
                        assert!(
                            (f64::from(got) - sum).abs() < 1e-5,
                            "{ci} {o} {y} {xo}: {got} vs {sum}"
                        );
                    }
                }
            }
        }
    }

    /// With the pool taken in, each plane is exactly the convolution's plane pooled: odd
    /// sizes, a border, the ReLU, and a split over threads.
    #[test]
    fn fused_pool_matches_the_convolution_then_the_pool() {
        let mut rng = models::rng::Rng::new(5);
        let (ci, co, h, w) = (1, 5, 7, 9);
        let x: Vec<f32> = (0..ci * h * w)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        let weight: Vec<f32> = (0..co * ci * 9)
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        let bits: Vec<u32> = (0..co).map(|o| (o as f32 * 0.1 - 0.2).to_bits()).collect();
        let shape = Shape { ci, h, w, pad: 1 };
        let padded = pad_image(&x, shape);
        let mut plain = vec![0f32; co * h * w];
        conv_planes(&padded, &weight, &bits, shape, None, 0, &mut plain);
        for pool in [
            MaxPool2x2 { relu: true, pad: 1 },
            MaxPool2x2 {
                relu: false,
                pad: 0,
            },
        ] {
            let side = pool.out_side(h) * pool.out_side(w);
            let mut want = vec![0f32; co * side];
            for (plane, o) in plain.chunks_exact(h * w).zip(want.chunks_exact_mut(side)) {
                pool.pool_plane(plane, w, [h, w], o, &mut Vec::new());
            }
            let mut got = vec![0f32; co * side];
            let (head, tail) = got.split_at_mut(2 * side);
            conv_planes(&padded, &weight, &bits, shape, Some(pool), 0, head);
            conv_planes(&padded, &weight, &bits, shape, Some(pool), 2, tail);
            assert_eq!(got, want, "{pool:?}");
            assert!(pool.relu == got.iter().all(|&v| v >= 0.0));
        }
    }
}
