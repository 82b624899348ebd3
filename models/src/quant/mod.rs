//! int8 quantisation maths shared by the exporter (calibration, weight quantisation) and the
//! board (reading int8 bank entries): symmetric scales, ONNX's rounding, and the three
//! activation calibrators.
//!
//! Everything is symmetric with zero point 0, as TensorRT requires of QDQ models:
//! `q = saturate(round_half_even(x / scale))`, `x ~= q * scale`, `scale = amax / 127`.

mod calibrate;
mod histogram;

pub use calibrate::{Calibrator, CalibratorParseError};
pub use histogram::AbsHistogram;

use alloc::vec::Vec;

/// The largest magnitude of a symmetric int8 code.
pub const QMAX: f32 = 127.0;

/// The scale that maps `amax` to 127. A zero range gets scale 1 so dequantising stays finite.
pub fn symmetric_scale(amax: f32) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        amax / QMAX
    } else {
        1.0
    }
}

/// ONNX `QuantizeLinear` to int8 with zero point 0: round half to even, saturate.
pub fn quantize(x: f32, scale: f32) -> i8 {
    let q = round_half_even(x / scale);
    q.clamp(-128.0, 127.0) as i8
}

pub fn dequantize(q: i8, scale: f32) -> f32 {
    q as f32 * scale
}

fn round_half_even(v: f32) -> f32 {
    let r = libm::roundf(v);
    // `roundf` rounds halves away from zero; pull exact halves back to the even neighbour.
    if (v - libm::truncf(v)).abs() == 0.5 && libm::fmodf(r, 2.0) != 0.0 {
        r - libm::copysignf(1.0, v)
    } else {
        r
    }
}

/// Per-output-channel symmetric int8 weights: `weights` is `channels` rows of equal length
/// (for a conv, `[out, in, kh, kw]` flattened). Returns the codes and one scale per channel.
pub fn quantize_per_channel(weights: &[f32], channels: usize) -> (Vec<i8>, Vec<f32>) {
    assert!(channels > 0 && weights.len().is_multiple_of(channels));
    let per = weights.len() / channels;
    let mut codes = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(channels);
    for row in weights.chunks(per) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = symmetric_scale(amax);
        codes.extend(row.iter().map(|&w| quantize(w, scale)));
        scales.push(scale);
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even_like_onnx() {
        for (v, want) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (1.4, 1.0),
        ] {
            assert_eq!(round_half_even(v), want, "{v}");
        }
        assert_eq!(quantize(1000.0, 1.0), 127);
        assert_eq!(quantize(-1000.0, 1.0), -128);
    }

    #[test]
    fn per_channel_codes_reach_127_and_round_trip_within_half_a_step() {
        let w = [0.1f32, -0.4, 0.2, 3.0, -1.5, 0.0];
        let (q, s) = quantize_per_channel(&w, 2);
        assert_eq!(q[1], -127);
        assert_eq!(q[3], 127);
        assert!((s[0] - 0.4 / 127.0).abs() < 1e-9 && (s[1] - 3.0 / 127.0).abs() < 1e-9);
        for (i, (&w, &q)) in w.iter().zip(&q).enumerate() {
            assert!((dequantize(q, s[i / 3]) - w).abs() <= s[i / 3] / 2.0 + 1e-7);
        }
        let (_, zero) = quantize_per_channel(&[0.0; 4], 1);
        assert_eq!(zero, [1.0]);
    }
}
