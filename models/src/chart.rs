//! Line charts drawn straight into an RGB image with a built-in 3x5 pixel font: no font files,
//! no plotting stack, the same look on the host and on the board. `host-train` draws its
//! training curves with it, `edge-runtime` its cluster sizes over time.

use image::{Rgb, RgbImage};

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const INK: Rgb<u8> = Rgb([40, 40, 40]);
pub const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// Series colours that stay apart on white, for charts with many lines.
pub const PALETTE: [Rgb<u8>; 10] = [
    Rgb([30, 90, 200]),
    Rgb([230, 130, 0]),
    Rgb([40, 150, 60]),
    Rgb([200, 40, 40]),
    Rgb([150, 60, 190]),
    Rgb([140, 90, 50]),
    Rgb([220, 90, 170]),
    Rgb([110, 110, 110]),
    Rgb([170, 170, 20]),
    Rgb([20, 170, 190]),
];

/// One chart: x from 0 to `x_max` across `width` pixels, y from 0 to `y_max` up `height`
/// pixels, the plot area's top-left corner at (`left`, `top`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Panel {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    pub x_max: f64,
    pub y_max: f64,
}

/// What the axes are labelled with. Text is drawn upper-case (the font has no lower case).
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    pub title: &'a str,
    pub x_axis: &'a str,
    /// Each series' name and colour, drawn as a legend above the plot area.
    pub legend: &'a [(&'a str, Rgb<u8>)],
    /// Decimals of the y-axis values.
    pub y_decimals: usize,
}

impl Panel {
    /// The pixel of data point (x, y); values outside the axes are clamped to them.
    pub fn px(&self, x: f64, y: f64) -> (i64, i64) {
        let u = (x / self.x_max).clamp(0.0, 1.0);
        let v = (y / self.y_max).clamp(0.0, 1.0);
        let px = self.left as f64 + u * self.width as f64;
        let py = (self.top + self.height) as f64 - v * self.height as f64;
        (px.round() as i64, py.round() as i64)
    }

    /// Grid, axes, tick values, title and legend.
    pub fn axes(&self, img: &mut RgbImage, labels: &Labels) {
        let (left, top) = (self.left as i64, self.top as i64);
        let (right, bottom) = (left + self.width as i64, top + self.height as i64);
        for i in 0..=4 {
            let y = top + self.height as i64 * i / 4;
            line(img, (left, y), (right, y), GRID);
            let value = self.y_max * (4 - i) as f64 / 4.0;
            let label = format!("{value:.*}", labels.y_decimals);
            text(img, left - 6 - 8 * label.len() as i64, y - 5, &label, INK);
        }
        line(img, (left, top), (left, bottom), INK);
        line(img, (left, bottom), (right, bottom), INK);
        text(img, left - 2, bottom + 8, "0", INK);
        let last = format!("{}", self.x_max.round() as u64);
        text(
            img,
            right - 8 * last.len() as i64 + 2,
            bottom + 8,
            &last,
            INK,
        );
        let x_axis = labels.x_axis.to_uppercase();
        let centre = left + self.width as i64 / 2 - 4 * x_axis.len() as i64;
        text(img, centre, bottom + 8, &x_axis, INK);
        text(img, left, top - 38, &labels.title.to_uppercase(), INK);
        let mut x = left;
        for &(name, colour) in labels.legend {
            let name = name.to_uppercase();
            for dy in 0..8 {
                line(img, (x, top - 18 + dy), (x + 10, top - 18 + dy), colour);
            }
            text(img, x + 14, top - 19, &name, INK);
            x += 14 + 8 * name.len() as i64 + 16;
        }
    }

    /// A polyline through `points` (non-finite values skipped), each point marked when
    /// `marks` is set.
    pub fn series(&self, img: &mut RgbImage, points: &[(f64, f64)], colour: Rgb<u8>, marks: bool) {
        let pts: Vec<(i64, i64)> = points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| self.px(x, y))
            .collect();
        for w in pts.windows(2) {
            line(img, w[0], w[1], colour);
            line(img, (w[0].0, w[0].1 + 1), (w[1].0, w[1].1 + 1), colour);
        }
        if marks {
            for &(x, y) in &pts {
                for dx in -2..=2 {
                    for dy in -2..=2 {
                        put(img, x + dx, y + dy, colour);
                    }
                }
            }
        }
    }
}

/// Sets one pixel; points outside the image are ignored.
pub fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Bresenham's line.
pub fn line(img: &mut RgbImage, (mut x, mut y): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A 3x5 glyph, one row per entry, the high bit of three on the left; blank for characters
/// the font lacks.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' | 'O' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' | 'S' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 7, 4, 7],
        'F' => [7, 4, 7, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'P' => [7, 5, 7, 4, 4],
        'Q' => [7, 5, 5, 7, 1],
        'R' => [6, 5, 6, 5, 5],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 5, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        _ => [0; 5],
    }
}

/// Text with its top-left corner at (x, y), each font pixel a 2x2 block: 8 pixels per
/// character.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        put(
                            img,
                            x + 8 * i as i64 + 2 * col + dx,
                            y + 2 * row as i64 + dy,
                            c,
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_lands_where_its_values_say_and_clamps_outside_the_axes() {
        let panel = Panel {
            left: 40,
            top: 50,
            width: 200,
            height: 100,
            x_max: 10.0,
            y_max: 2.0,
        };
        let mut img = RgbImage::from_pixel(300, 200, WHITE);
        panel.axes(
            &mut img,
            &Labels {
                title: "t",
                x_axis: "x",
                legend: &[("a", PALETTE[0])],
                y_decimals: 1,
            },
        );
        panel.series(&mut img, &[(0.0, 1.0), (10.0, 1.0)], PALETTE[3], false);
        // y = 1 of 2 is half-way up the plot area.
        assert_eq!(panel.px(5.0, 1.0), (140, 100));
        assert_eq!(*img.get_pixel(140, 100), PALETTE[3]);
        assert_eq!(panel.px(20.0, -1.0), (240, 150));
        // The legend swatch is drawn in its colour.
        assert!(img.pixels().any(|&p| p == PALETTE[0]));
    }

    #[test]
    fn text_draws_known_glyphs_and_skips_unknown_ones() {
        let mut img = RgbImage::from_pixel(40, 12, WHITE);
        text(&mut img, 0, 0, "1", INK);
        let inked = img.pixels().filter(|&&p| p == INK).count();
        // "1" has 8 font pixels (1 + 2 + 1 + 1 + 3 by row), each a 2x2 block.
        assert_eq!(inked, 32);
        let mut blank = RgbImage::from_pixel(40, 12, WHITE);
        text(&mut blank, 0, 0, "~", INK);
        assert!(blank.pixels().all(|&p| p == WHITE));
    }
}
