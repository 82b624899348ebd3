//! `cluster-sizes.png`: how many stored frames each of the largest clusters held as frames
//! arrived.

use std::path::Path;

use image::RgbImage;
use models::chart::{Labels, Panel, PALETTE, WHITE};

use super::BankSummary;
use crate::EdgeError;

pub const WIDTH: u32 = 760;
pub const HEIGHT: u32 = 340;

/// The plot area inside the image.
pub fn panel(summary: &BankSummary) -> Panel {
    let y_max = summary.clusters.first().map_or(1, |c| c.size).max(1) as f64;
    Panel {
        left: 70,
        top: 70,
        width: 660,
        height: 230,
        x_max: summary.frames.last().copied().unwrap_or(1).max(1) as f64,
        y_max: y_max * 1.05,
    }
}

/// Draws the `clusters` largest clusters' curves (one colour each, named in the legend).
pub fn write(summary: &BankSummary, clusters: usize, path: &Path) -> Result<(), EdgeError> {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let panel = panel(summary);
    let shown: Vec<(String, u32)> = summary
        .clusters
        .iter()
        .take(clusters.min(PALETTE.len()))
        .map(|c| (format!("C{}", c.id), c.id))
        .collect();
    let legend: Vec<(&str, image::Rgb<u8>)> = shown
        .iter()
        .zip(PALETTE)
        .map(|((name, _), colour)| (name.as_str(), colour))
        .collect();
    panel.axes(
        &mut img,
        &Labels {
            title: "cluster sizes in the bank",
            x_axis: "frame",
            legend: &legend,
            y_decimals: 0,
        },
    );
    for ((_, id), colour) in shown.iter().zip(PALETTE) {
        if let Some(sizes) = summary.sizes_over_time.get(id) {
            let points: Vec<(f64, f64)> = summary
                .frames
                .iter()
                .zip(sizes)
                .map(|(&f, &s)| (f as f64, s as f64))
                .collect();
            panel.series(&mut img, &points, colour, false);
        }
    }
    img.save(path).map_err(|source| EdgeError::ImageWrite {
        path: path.to_path_buf(),
        source,
    })
}
