//! Convolution geometry, shared by the CPU convolution op and the cuDNN one: stride and
//! padding, and the output shape they give.

use candle_core::{bail, Result};

use super::im2col::ConvShape;

/// Stride and zero padding, the same on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    pub stride: usize,
    pub padding: usize,
}

impl Default for Conv2dGeometry {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
        }
    }
}

/// Batch, output channels and the per-image shape for input (b, c, h, w) and weight
/// (oc, c, kh, kw).
pub(crate) fn conv_shape(
    x: [usize; 4],
    w: [usize; 4],
    g: Conv2dGeometry,
) -> Result<(usize, usize, ConvShape)> {
    let [b, c, h, wd] = x;
    let [oc, wc, kh, kw] = w;
    if wc != c {
        bail!("conv2d: input has {c} channels, weight expects {wc}");
    }
    if g.stride == 0 {
        bail!("conv2d: stride must be at least 1");
    }
    if h + 2 * g.padding < kh || wd + 2 * g.padding < kw {
        bail!("conv2d: kernel {kh}x{kw} is larger than the padded {h}x{wd} input");
    }
    let oh = (h + 2 * g.padding - kh) / g.stride + 1;
    let ow = (wd + 2 * g.padding - kw) / g.stride + 1;
    let s = ConvShape {
        c,
        h,
        w: wd,
        kh,
        kw,
        stride: g.stride,
        pad: g.padding,
        oh,
        ow,
    };
    Ok((b, oc, s))
}
