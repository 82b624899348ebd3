//! Raw camera buffers to images, for the pixel formats UVC and CSI cameras commonly deliver.
//! Plain Rust and always built, so it is tested without a camera; `v4l2` only captures.

use image::{DynamicImage, GrayImage, RgbImage};

/// The pixel formats we decode, by their V4L2 four-character codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// YUV 4:2:2 interleaved (Y0 U Y1 V): what most UVC webcams send uncompressed.
    Yuyv,
    /// 8-bit luma only.
    Grey,
    /// Packed 8-bit RGB.
    Rgb24,
    /// Packed 8-bit BGR.
    Bgr24,
    /// Motion JPEG: each frame a JPEG.
    Mjpeg,
}

impl PixelFormat {
    /// Preferred first: uncompressed formats need no decoder and keep the frame exact.
    pub const PREFERENCE: [PixelFormat; 5] = [
        PixelFormat::Grey,
        PixelFormat::Yuyv,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Mjpeg,
    ];

    pub fn fourcc(self) -> [u8; 4] {
        *match self {
            PixelFormat::Yuyv => b"YUYV",
            PixelFormat::Grey => b"GREY",
            PixelFormat::Rgb24 => b"RGB3",
            PixelFormat::Bgr24 => b"BGR3",
            PixelFormat::Mjpeg => b"MJPG",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        Self::PREFERENCE
            .into_iter()
            .find(|f| f.fourcc() == code)
            .or_else(|| (&code == b"JPEG").then_some(PixelFormat::Mjpeg))
    }

    /// Bytes per pixel of a packed format (`None` for MJPEG).
    fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            PixelFormat::Grey => Some(1),
            PixelFormat::Yuyv => Some(2),
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => Some(3),
            PixelFormat::Mjpeg => None,
        }
    }
}

/// The layout of every buffer of a stream, as the driver settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per line, padding included (the driver's `bytesperline`; 0 means packed).
    pub stride: u32,
}

/// Why a camera buffer is not an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame size {width}x{height} has no pixels")]
    NoPixels { width: usize, height: usize },
    #[error("{format:?} frame {width}x{height} (stride {stride}) needs {need} bytes, got {got}")]
    Short {
        format: PixelFormat,
        width: usize,
        height: usize,
        stride: usize,
        need: usize,
        got: usize,
    },
    #[error("YUYV frame width {0} is odd")]
    OddYuyvWidth(usize),
    #[error("MJPEG frame of {bytes} bytes: {source}")]
    Jpeg {
        bytes: usize,
        source: image::ImageError,
    },
}

/// One buffer as an image; a short or undecodable buffer is an error naming what is wrong.
pub fn decode_frame(layout: &FrameLayout, bytes: &[u8]) -> Result<DynamicImage, FrameError> {
    let (w, h) = (layout.width as usize, layout.height as usize);
    if w == 0 || h == 0 {
        return Err(FrameError::NoPixels {
            width: w,
            height: h,
        });
    }
    let Some(bpp) = layout.format.bytes_per_pixel() else {
        return image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).map_err(
            |source| FrameError::Jpeg {
                bytes: bytes.len(),
                source,
            },
        );
    };
    let stride = if layout.stride == 0 {
        w * bpp
    } else {
        layout.stride as usize
    };
    let need = stride * (h - 1) + w * bpp;
    if stride < w * bpp || bytes.len() < need {
        return Err(FrameError::Short {
            format: layout.format,
            width: w,
            height: h,
            stride,
            need,
            got: bytes.len(),
        });
    }
    let rows = (0..h).map(|y| &bytes[y * stride..y * stride + w * bpp]);
    Ok(match layout.format {
        PixelFormat::Grey => DynamicImage::ImageLuma8(
            GrayImage::from_raw(w as u32, h as u32, rows.flatten().copied().collect())
                .expect("w*h bytes"),
        ),
        PixelFormat::Rgb24 | PixelFormat::Bgr24 => {
            let mut data: Vec<u8> = rows.flatten().copied().collect();
            if layout.format == PixelFormat::Bgr24 {
                data.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
            }
            DynamicImage::ImageRgb8(RgbImage::from_raw(w as u32, h as u32, data).expect("w*h*3"))
        }
        PixelFormat::Yuyv => {
            if w % 2 != 0 {
                return Err(FrameError::OddYuyvWidth(w));
            }
            let mut data = Vec::with_capacity(w * h * 3);
            for row in rows {
                for q in row.chunks_exact(4) {
                    let (u, v) = (q[1], q[3]);
                    data.extend_from_slice(&yuv_to_rgb(q[0], u, v));
                    data.extend_from_slice(&yuv_to_rgb(q[2], u, v));
                }
            }
            DynamicImage::ImageRgb8(RgbImage::from_raw(w as u32, h as u32, data).expect("w*h*3"))
        }
        PixelFormat::Mjpeg => unreachable!("handled above"),
    })
}

/// BT.601 limited range (what UVC YUYV is), integer arithmetic as in libyuv.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (i32::from(y) - 16).max(0) * 298;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(format: PixelFormat, width: u32, height: u32, stride: u32) -> FrameLayout {
        FrameLayout {
            format,
            width,
            height,
            stride,
        }
    }

    #[test]
    fn fourccs_round_trip() {
        for f in PixelFormat::PREFERENCE {
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(*b"JPEG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::from_fourcc(*b"NV12"), None);
    }

    #[test]
    fn yuyv_black_white_and_primaries() {
        // Limited range: Y 16 is black, Y 235 white; U/V 128 carry no colour.
        let px = |y, u, v| yuv_to_rgb(y, u, v);
        assert_eq!(px(16, 128, 128), [0, 0, 0]);
        assert_eq!(px(235, 128, 128), [255, 255, 255]);
        // BT.601 red (255, 0, 0) is Y 81, U 90, V 240.
        let [r, g, b] = px(81, 90, 240);
        assert!(r >= 250 && g <= 3 && b <= 3, "{r} {g} {b}");
        // Two pixels share one U/V pair: a 2x1 frame, black then white.
        let img = decode_frame(&layout(PixelFormat::Yuyv, 2, 1, 0), &[16, 128, 235, 128]).unwrap();
        assert_eq!(img.to_rgb8().into_raw(), vec![0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn stride_padding_is_skipped() {
        // 2x2 grey with 2 bytes of padding per line.
        let bytes = [1, 2, 99, 99, 3, 4];
        let img = decode_frame(&layout(PixelFormat::Grey, 2, 2, 4), &bytes).unwrap();
        assert_eq!(img.to_luma8().into_raw(), vec![1, 2, 3, 4]);
        let img = decode_frame(&layout(PixelFormat::Bgr24, 1, 1, 0), &[1, 2, 3]).unwrap();
        assert_eq!(img.to_rgb8().into_raw(), vec![3, 2, 1]);
    }

    #[test]
    fn mjpeg_frames_decode() {
        let src = GrayImage::from_fn(16, 8, |x, _| image::Luma([(x * 16) as u8]));
        let mut jpeg = Vec::new();
        DynamicImage::ImageLuma8(src)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let img = decode_frame(&layout(PixelFormat::Mjpeg, 16, 8, 0), &jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (16, 8));
        let gray = img.to_luma8();
        assert!((i32::from(gray.get_pixel(15, 4)[0]) - 240).abs() < 12);
    }

    #[test]
    fn bad_buffers_are_errors() {
        let e = decode_frame(&layout(PixelFormat::Yuyv, 4, 2, 0), &[0; 15]).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::Short {
                    need: 16,
                    got: 15,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("needs 16 bytes, got 15"), "{e}");
        let e = decode_frame(&layout(PixelFormat::Yuyv, 3, 1, 0), &[0; 6]).unwrap_err();
        assert!(matches!(e, FrameError::OddYuyvWidth(3)), "{e}");
        let e =
            decode_frame(&layout(PixelFormat::Mjpeg, 4, 4, 0), b"\xff\xd8 not a jpeg").unwrap_err();
        assert!(matches!(e, FrameError::Jpeg { bytes: 13, .. }), "{e}");
        // The decoder's own error stays reachable as the source.
        assert!(std::error::Error::source(&e).is_some());
        assert!(decode_frame(&layout(PixelFormat::Grey, 0, 4, 0), &[]).is_err());
    }
}
