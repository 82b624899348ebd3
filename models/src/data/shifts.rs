//! Domain shifts for measuring adaptation, in the manner of CIFAR-10-C: what a camera's
//! lighting, focus, sensor, compression, mounting or polarity does to images the encoder was
//! trained on. Each shift has two severities and is deterministic given its seed.

use std::io::Cursor;

use image::{codecs::jpeg::JpegEncoder, ExtendedColorType, ImageDecoder};

use crate::data::ImageSet;
use crate::geometry::{gaussian_blur_planes_u8, rotate_planes_u8, Border};
use crate::rng::Rng;

/// One kind of shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// Everything brighter (added light): +0.25 or +0.45 of full scale.
    Brightness,
    /// Contrast around each image's mean cut to 0.5 or 0.3.
    Contrast,
    /// Gaussian blur, sigma 0.8 or 1.4 pixels (defocus).
    Blur,
    /// Gaussian sensor noise, sigma 0.08 or 0.16 of full scale.
    Noise,
    /// JPEG compression at quality 20 or 8.
    Jpeg,
    /// Rotation by 10 or 20 degrees about the centre (a tilted mount), zero fill.
    Rotation,
    /// Inverted polarity (dark objects on a light ground): at half contrast, or in full.
    Invert,
}

impl Shift {
    pub const ALL: [Shift; 7] = [
        Shift::Brightness,
        Shift::Contrast,
        Shift::Blur,
        Shift::Noise,
        Shift::Jpeg,
        Shift::Rotation,
        Shift::Invert,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shift::Brightness => "brightness",
            Shift::Contrast => "contrast",
            Shift::Blur => "blur",
            Shift::Noise => "noise",
            Shift::Jpeg => "jpeg",
            Shift::Rotation => "rotation",
            Shift::Invert => "invert",
        }
    }
}

/// `set` with `shift` applied to every image at `severity` (1 or 2; other values clamp),
/// deterministically for a given `seed`. Labels, names and paths are kept.
pub fn shifted(set: &ImageSet, shift: Shift, severity: u8, seed: u64) -> ImageSet {
    let hard = severity >= 2;
    let (c, h, w) = (set.channels, set.height, set.width);
    let mut out = set.clone();
    let len = set.image_len();
    for (i, img) in out.pixels.chunks_exact_mut(len).enumerate() {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for plane in img.chunks_exact_mut(h * w) {
            apply(plane, h, w, shift, hard, &mut rng);
        }
        if shift == Shift::Jpeg {
            jpeg(img, c, h, w, if hard { 8 } else { 20 });
        }
    }
    out
}

/// One plane (h x w) in place; JPEG is applied to the whole image afterwards.
fn apply(plane: &mut [u8], h: usize, w: usize, shift: Shift, hard: bool, rng: &mut Rng) {
    let pick = |a: f32, b: f32| if hard { b } else { a };
    match shift {
        Shift::Brightness => {
            let add = 255.0 * pick(0.25, 0.45);
            map(plane, |v| v + add);
        }
        Shift::Contrast => {
            let mean = plane.iter().map(|&v| v as f32).sum::<f32>() / plane.len() as f32;
            let k = pick(0.5, 0.3);
            map(plane, |v| mean + k * (v - mean));
        }
        Shift::Blur => gaussian_blur_planes_u8(plane, h, w, pick(0.8, 1.4)),
        Shift::Noise => {
            let sigma = 255.0 * pick(0.08, 0.16);
            map(plane, |v| v + sigma * rng.next_gaussian() as f32);
        }
        Shift::Jpeg => {}
        Shift::Rotation => {
            let angle = pick(10.0, 20.0).to_radians();
            rotate_planes_u8(plane, h, w, angle, Border::Constant(0.0));
        }
        Shift::Invert => {
            map(plane, |v| 255.0 - v);
            if !hard {
                let mean = plane.iter().map(|&v| v as f32).sum::<f32>() / plane.len() as f32;
                map(plane, |v| mean + 0.5 * (v - mean));
            }
        }
    }
}

fn map(plane: &mut [u8], mut f: impl FnMut(f32) -> f32) {
    for v in plane {
        *v = f(*v as f32).round().clamp(0.0, 255.0) as u8;
    }
}

/// JPEG round trip at `quality` of one planar image (1 or 3 channels), in place.
fn jpeg(img: &mut [u8], c: usize, h: usize, w: usize, quality: u8) {
    let plane = h * w;
    let (interleaved, colour) = if c == 3 {
        let rgb: Vec<u8> = (0..plane)
            .flat_map(|i| [img[i], img[plane + i], img[2 * plane + i]])
            .collect();
        (rgb, ExtendedColorType::Rgb8)
    } else {
        (img[..plane].to_vec(), ExtendedColorType::L8)
    };
    let mut bytes = Vec::new();
    let encoded = JpegEncoder::new_with_quality(&mut bytes, quality).encode(
        &interleaved,
        w as u32,
        h as u32,
        colour,
    );
    let Ok(decoder) =
        encoded.and_then(|_| image::codecs::jpeg::JpegDecoder::new(Cursor::new(&bytes)))
    else {
        return;
    };
    let mut decoded = vec![0u8; decoder.total_bytes() as usize];
    if decoder.read_image(&mut decoded).is_err() || decoded.len() != c * plane {
        return;
    }
    if c == 3 {
        for i in 0..plane {
            for ch in 0..3 {
                img[ch * plane + i] = decoded[i * 3 + ch];
            }
        }
    } else {
        img[..plane].copy_from_slice(&decoded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square() -> ImageSet {
        // One 16x16 gray image: a bright square on black.
        let mut pixels = vec![0u8; 256];
        for y in 4..12 {
            for x in 4..12 {
                pixels[y * 16 + x] = 200;
            }
        }
        ImageSet {
            pixels,
            channels: 1,
            height: 16,
            width: 16,
            labels: Some(vec![3]),
            class_names: Vec::new(),
            paths: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn mean(set: &ImageSet) -> f32 {
        set.pixels.iter().map(|&v| v as f32).sum::<f32>() / set.pixels.len() as f32
    }

    #[test]
    fn each_shift_changes_the_image_more_at_severity_two_and_repeats_with_its_seed() {
        let base = square();
        for shift in Shift::ALL {
            let (a, b) = (shifted(&base, shift, 1, 7), shifted(&base, shift, 2, 7));
            let dist = |s: &ImageSet| -> f32 {
                s.pixels
                    .iter()
                    .zip(&base.pixels)
                    .map(|(&x, &y)| (x as f32 - y as f32).abs())
                    .sum()
            };
            assert!(dist(&a) > 0.0, "{shift:?} changed nothing");
            assert!(
                dist(&b) > dist(&a),
                "{shift:?}: {} vs {}",
                dist(&b),
                dist(&a)
            );
            assert_eq!(shifted(&base, shift, 2, 7).pixels, b.pixels, "{shift:?}");
            assert_eq!(a.labels, base.labels);
        }
    }

    #[test]
    fn shifts_do_what_their_names_say() {
        let base = square();
        assert!(mean(&shifted(&base, Shift::Brightness, 1, 0)) > mean(&base) + 50.0);
        let inv = shifted(&base, Shift::Invert, 2, 0);
        assert_eq!((inv.pixels[0], inv.pixels[5 * 16 + 5]), (255, 55));
        // Contrast keeps the mean and shrinks the spread.
        let low = shifted(&base, Shift::Contrast, 1, 0);
        assert!((mean(&low) - mean(&base)).abs() < 1.0);
        assert!(low.pixels[5 * 16 + 5] < 200 && low.pixels[0] > 0);
        // Blur keeps the mean (edges clamped, the square inside) and softens the edge.
        let soft = shifted(&base, Shift::Blur, 2, 0);
        assert!((mean(&soft) - mean(&base)).abs() < 2.0);
        assert!(soft.pixels[4 * 16 + 4] < 200 && soft.pixels[3 * 16 + 3] > 0);
        // A rotation keeps the centre and moves the square's corners.
        let turned = shifted(&base, Shift::Rotation, 2, 0);
        assert_eq!(turned.pixels[8 * 16 + 8], 200);
        assert!(turned.pixels[4 * 16 + 4] < 200);
    }
}
