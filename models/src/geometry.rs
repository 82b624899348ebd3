//! Geometric maps and filters of image planes, shared by the shift benchmark (a tilted or
//! defocused camera) and the device's input corrections (`adapt::roll`, `adapt::smoothing`),
//! so that both turn and blur images the same way.

/// What a turned plane takes where its source point falls outside the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Border {
    /// A fixed value (the shift benchmark's black fill).
    Constant(f32),
    /// The nearest edge pixel: a camera's view continues past the frame, so repeating the
    /// edge guesses better than any constant.
    Edge,
}

/// `src`, one `h x w` plane, turned by `radians` about its centre into `dst` (bilinear).
/// Turning by `a` and then by `-a` gives the plane back, up to interpolation.
///
/// Panics if `src` or `dst` does not hold `h * w` values; callers check shapes first.
pub fn rotate_plane(
    src: &[f32],
    dst: &mut [f32],
    h: usize,
    w: usize,
    radians: f32,
    border: Border,
) {
    assert!(src.len() == h * w && dst.len() == h * w);
    let (s, c) = libm::sincosf(radians);
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let px = |y: isize, x: isize| -> f32 {
        let inside = y >= 0 && x >= 0 && y < h as isize && x < w as isize;
        match border {
            _ if inside => src[y as usize * w + x as usize],
            Border::Constant(v) => v,
            Border::Edge => {
                let y = y.clamp(0, h as isize - 1) as usize;
                let x = x.clamp(0, w as isize - 1) as usize;
                src[y * w + x]
            }
        }
    };
    for y in 0..h {
        for x in 0..w {
            // The source point that lands on (x, y).
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let (sx, sy) = (c * dx + s * dy + cx, -s * dx + c * dy + cy);
            let (x0, y0) = (libm::floorf(sx), libm::floorf(sy));
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            dst[y * w + x] = (1.0 - fy) * ((1.0 - fx) * px(y0, x0) + fx * px(y0, x0 + 1))
                + fy * ((1.0 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1));
        }
    }
}

/// Every plane of a planar image (`planes` planes of `h x w`) turned by `radians`, in place.
pub fn rotate_planes(image: &mut [f32], h: usize, w: usize, radians: f32, border: Border) {
    if h * w == 0 {
        return;
    }
    let mut src = alloc::vec![0f32; h * w];
    for plane in image.chunks_exact_mut(h * w) {
        src.copy_from_slice(plane);
        rotate_plane(&src, plane, h, w, radians, border);
    }
}

/// Every plane of a planar u8 image turned by `radians`, in place (rounded back to u8).
pub fn rotate_planes_u8(image: &mut [u8], h: usize, w: usize, radians: f32, border: Border) {
    map_as_f32(image, |planes| rotate_planes(planes, h, w, radians, border));
}

/// Every plane of a planar image (`h x w` planes) blurred in place by a separable Gaussian
/// of `sigma` pixels (taps to 3 sigma), edges repeated. `sigma <= 0` leaves it as it is.
pub fn gaussian_blur_planes(image: &mut [f32], h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 || h * w == 0 {
        return;
    }
    let r = libm::ceilf(3.0 * sigma) as isize;
    let kernel: alloc::vec::Vec<f32> = (-r..=r)
        .map(|t| libm::expf(-((t * t) as f32) / (2.0 * sigma * sigma)))
        .collect();
    let norm: f32 = kernel.iter().sum();
    let at = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let mut tmp = alloc::vec![0f32; h * w];
    for plane in image.chunks_exact_mut(h * w) {
        for y in 0..h {
            for x in 0..w {
                let row = &plane[y * w..(y + 1) * w];
                let v: f32 = (-r..=r)
                    .zip(&kernel)
                    .map(|(d, k)| k * row[at(x as isize + d, w)])
                    .sum();
                tmp[y * w + x] = v / norm;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let v: f32 = (-r..=r)
                    .zip(&kernel)
                    .map(|(d, k)| k * tmp[at(y as isize + d, h) * w + x])
                    .sum();
                plane[y * w + x] = v / norm;
            }
        }
    }
}

/// Every plane of a planar u8 image blurred by a Gaussian of `sigma` pixels, in place
/// (rounded back to u8).
pub fn gaussian_blur_planes_u8(image: &mut [u8], h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    map_as_f32(image, |planes| gaussian_blur_planes(planes, h, w, sigma));
}

/// Runs `f` on `image`'s pixels as `f32`, then rounds them back into `u8`.
pub fn map_as_f32(image: &mut [u8], f: impl FnOnce(&mut [f32])) {
    let mut planes: alloc::vec::Vec<f32> = image.iter().map(|&v| v as f32).collect();
    f(&mut planes);
    for (p, v) in image.iter_mut().zip(planes) {
        *p = libm::roundf(v).clamp(0.0, 255.0) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn the_blur_keeps_flat_planes_and_spreads_a_point_evenly() {
        let mut flat = alloc::vec![0.5f32; 2 * 49];
        gaussian_blur_planes(&mut flat, 7, 7, 1.0);
        assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-6));
        // A point in the middle of an 11 x 11 plane: its mass stays, spread symmetrically,
        // and a wider sigma lowers the peak.
        let point = |sigma: f32| {
            let mut p = alloc::vec![0f32; 121];
            p[60] = 1.0;
            gaussian_blur_planes(&mut p, 11, 11, sigma);
            p
        };
        let (narrow, wide) = (point(0.6), point(1.2));
        for p in [&narrow, &wide] {
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!((p[59] - p[61]).abs() < 1e-7 && (p[49] - p[71]).abs() < 1e-7);
            assert!((p[59] - p[49]).abs() < 1e-7);
        }
        assert!(wide[60] < narrow[60] && narrow[60] < 1.0);
        let untouched = {
            let mut p = alloc::vec![0f32; 121];
            p[60] = 1.0;
            gaussian_blur_planes(&mut p, 11, 11, 0.0);
            p
        };
        assert_eq!(untouched[60], 1.0);
    }

    /// A bright bar along the first row of a 9 x 9 plane.
    fn bar() -> Vec<f32> {
        (0..81).map(|i| if i < 9 { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn a_quarter_turn_moves_the_top_row_to_a_side_column() {
        let src = bar();
        let mut dst = alloc::vec![0f32; 81];
        rotate_plane(
            &src,
            &mut dst,
            9,
            9,
            core::f32::consts::FRAC_PI_2,
            Border::Constant(0.0),
        );
        let column = |x: usize| (0..9).map(|y| dst[y * 9 + x]).sum::<f32>();
        let (left, right) = (column(0), column(8));
        assert!(
            (left - 9.0).abs() < 1e-3 || (right - 9.0).abs() < 1e-3,
            "{left} {right}"
        );
        assert!((dst.iter().sum::<f32>() - 9.0).abs() < 1e-3);
    }

    #[test]
    fn turning_back_restores_the_inside_of_the_plane() {
        // A smooth plane: interpolation error is small and the border barely matters.
        let src: Vec<f32> = (0..32 * 32)
            .map(|i| libm::sinf((i % 32) as f32 * 0.2) + libm::cosf((i / 32) as f32 * 0.15))
            .collect();
        let mut image = src.clone();
        rotate_planes(&mut image, 32, 32, 0.3, Border::Edge);
        assert!(image.iter().zip(&src).any(|(a, b)| (a - b).abs() > 0.1));
        rotate_planes(&mut image, 32, 32, -0.3, Border::Edge);
        let centre = |v: &[f32]| {
            (8..24)
                .flat_map(|y| (8..24).map(move |x| y * 32 + x))
                .map(|i| v[i])
                .collect::<Vec<_>>()
        };
        let worst = centre(&image)
            .iter()
            .zip(centre(&src))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.05, "{worst}");
    }

    #[test]
    fn the_edge_border_repeats_the_edge_and_the_constant_fills() {
        let src = alloc::vec![2.0f32; 25];
        let mut dst = alloc::vec![0f32; 25];
        rotate_plane(&src, &mut dst, 5, 5, 0.5, Border::Edge);
        assert!(dst.iter().all(|&v| (v - 2.0).abs() < 1e-5));
        rotate_plane(&src, &mut dst, 5, 5, 0.5, Border::Constant(0.0));
        assert!(dst[0] < 2.0 && (dst[12] - 2.0).abs() < 1e-5);
    }
}
