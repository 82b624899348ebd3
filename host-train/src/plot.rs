//! `plots/metrics.png`: a run's curves, redrawn after every epoch. Left, the training loss;
//! right, the held-out scores (kNN top-1 as is and whitened, k-means NMI, ARI, clustering
//! accuracy) on a fixed
//! 0-1 scale, so two runs' plots compare at a glance. Drawn with `image` and a 3x5 pixel
//! font: no font files, no plotting stack.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::run_dir::MetricsRow;
use crate::TrainError;

const WIDTH: u32 = 760;
const HEIGHT: u32 = 320;
const PANEL_W: u32 = 320;
const PANEL_H: u32 = 220;
const TOP: u32 = 50;
const LEFT: [u32; 2] = [50, 420];
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const LOSS: Rgb<u8> = Rgb([200, 40, 40]);
/// kNN, kNN whitened, NMI, ARI, accuracy.
const SCORES: [(&str, Rgb<u8>); 5] = [
    ("KNN", Rgb([30, 90, 200])),
    ("KNN-W", Rgb([150, 60, 190])),
    ("NMI", Rgb([230, 130, 0])),
    ("ARI", Rgb([40, 150, 60])),
    ("ACC", Rgb([130, 130, 130])),
];

/// Draws the curves of `rows` (a run's `metrics.jsonl`) into the PNG `path`.
pub fn write_metrics_plot(rows: &[MetricsRow], path: &Path) -> Result<(), TrainError> {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let loss: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| match r {
            MetricsRow::Train { epoch, loss, .. } => Some((*epoch as f64, *loss)),
            _ => None,
        })
        .collect();
    // Rows from before the whitened kNN existed leave that series without points.
    let scores: Vec<(f64, [Option<f64>; 5])> = rows
        .iter()
        .filter_map(|r| match r {
            MetricsRow::Eval {
                epoch,
                knn_top1,
                knn_top1_whitened,
                nmi,
                ari,
                accuracy,
            } => Some((
                *epoch as f64,
                [
                    Some(*knn_top1),
                    *knn_top1_whitened,
                    Some(*nmi),
                    Some(*ari),
                    Some(*accuracy),
                ],
            )),
            _ => None,
        })
        .collect();
    let last_epoch = rows
        .iter()
        .map(|r| match r {
            MetricsRow::Train { epoch, .. }
            | MetricsRow::Eval { epoch, .. }
            | MetricsRow::LabelFree { epoch, .. } => *epoch,
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let loss_max = loss
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let loss_max = if loss_max > 0.0 { loss_max * 1.05 } else { 1.0 };

    let left = Panel {
        x0: LEFT[0],
        x_max: last_epoch,
        y_max: loss_max,
    };
    left.axes(&mut img, "LOSS", &[("LOSS", LOSS)]);
    left.series(&mut img, &loss, LOSS);
    let right = Panel {
        x0: LEFT[1],
        x_max: last_epoch,
        y_max: 1.0,
    };
    right.axes(&mut img, "SCORES", &SCORES);
    for (i, &(_, colour)) in SCORES.iter().enumerate() {
        let pts: Vec<(f64, f64)> = scores
            .iter()
            .filter_map(|(e, s)| s[i].map(|v| (*e, v)))
            .collect();
        right.series(&mut img, &pts, colour);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    img.save(path).map_err(|e| TrainError::Checkpoint {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// One chart: epochs 0..=x_max across, 0..=y_max up.
struct Panel {
    x0: u32,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn px(&self, epoch: f64, value: f64) -> (i64, i64) {
        let x = self.x0 as f64 + epoch / self.x_max * PANEL_W as f64;
        let v = (value / self.y_max).clamp(0.0, 1.0);
        let y = (TOP + PANEL_H) as f64 - v * PANEL_H as f64;
        (x.round() as i64, y.round() as i64)
    }

    fn axes(&self, img: &mut RgbImage, title: &str, legend: &[(&str, Rgb<u8>)]) {
        for i in 0..=4 {
            let y = TOP + PANEL_H * i / 4;
            line(
                img,
                (self.x0 as i64, y as i64),
                ((self.x0 + PANEL_W) as i64, y as i64),
                GRID,
            );
            let value = self.y_max * (4 - i) as f64 / 4.0;
            let label = format!("{value:.2}");
            text(
                img,
                self.x0 as i64 - 6 - 8 * label.len() as i64,
                y as i64 - 5,
                &label,
                INK,
            );
        }
        let bottom = (TOP + PANEL_H) as i64;
        line(
            img,
            (self.x0 as i64, TOP as i64),
            (self.x0 as i64, bottom),
            INK,
        );
        line(
            img,
            (self.x0 as i64, bottom),
            ((self.x0 + PANEL_W) as i64, bottom),
            INK,
        );
        text(img, self.x0 as i64 - 2, bottom + 8, "0", INK);
        let last = format!("{}", self.x_max as usize);
        let right = (self.x0 + PANEL_W) as i64;
        text(
            img,
            right - 8 * last.len() as i64 + 2,
            bottom + 8,
            &last,
            INK,
        );
        text(
            img,
            self.x0 as i64 + PANEL_W as i64 / 2 - 20,
            bottom + 8,
            "EPOCH",
            INK,
        );
        text(img, self.x0 as i64, 12, title, INK);
        let mut x = self.x0 as i64;
        for &(name, colour) in legend {
            for dy in 0..8 {
                line(img, (x, 32 + dy), (x + 10, 32 + dy), colour);
            }
            text(img, x + 14, 31, name, INK);
            x += 14 + 8 * name.len() as i64 + 16;
        }
    }

    fn series(&self, img: &mut RgbImage, pts: &[(f64, f64)], colour: Rgb<u8>) {
        let pts: Vec<(i64, i64)> = pts
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(e, v)| self.px(e, v))
            .collect();
        for w in pts.windows(2) {
            line(img, w[0], w[1], colour);
            line(img, (w[0].0, w[0].1 + 1), (w[1].0, w[1].1 + 1), colour);
        }
        for &(x, y) in &pts {
            for dx in -2..=2 {
                for dy in -2..=2 {
                    put(img, x + dx, y + dy, colour);
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Bresenham's line.
fn line(img: &mut RgbImage, (mut x, mut y): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
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

/// A 3x5 glyph, one row per entry, the high bit of three on the left.
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
        'C' => [7, 4, 4, 4, 7],
        'E' => [7, 4, 7, 4, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'T' => [7, 2, 2, 2, 2],
        'W' => [5, 5, 5, 7, 5],
        _ => [0; 5],
    }
}

/// Text at (x, y), each font pixel a 2x2 block: 8 pixels per character.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
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

    fn rows() -> Vec<MetricsRow> {
        let mut rows = vec![MetricsRow::Eval {
            epoch: 0,
            knn_top1: 0.7,
            knn_top1_whitened: Some(0.75),
            nmi: 0.4,
            ari: 0.3,
            accuracy: 0.5,
        }];
        for epoch in 1..=5 {
            rows.push(MetricsRow::Train {
                epoch,
                loss: 3.0 / epoch as f64,
                loss_start: 0.0,
                loss_end: 0.0,
                images_per_s: 1.0,
                kmeans_objective: None,
                non_empty_clusters: None,
                nmi_vs_previous: None,
                seconds: 1.0,
            });
            rows.push(MetricsRow::Eval {
                epoch,
                knn_top1: 0.7 + 0.02 * epoch as f64,
                knn_top1_whitened: Some(0.75 + 0.02 * epoch as f64),
                nmi: 0.4,
                ari: 0.3,
                accuracy: 0.5,
            });
        }
        rows
    }

    #[test]
    fn draws_every_series_where_its_values_put_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plots/metrics.png");
        write_metrics_plot(&rows(), &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let count = |c: Rgb<u8>| img.pixels().filter(|&&p| p == c).count();
        assert!(count(LOSS) > 100);
        for (name, colour) in SCORES {
            assert!(count(colour) > 100, "{name} is missing");
        }
        // NMI is 0.4 throughout: its line sits 40% up the right panel.
        let right = Panel {
            x0: LEFT[1],
            x_max: 5.0,
            y_max: 1.0,
        };
        let (x, y) = right.px(2.5, 0.4);
        assert_eq!(*img.get_pixel(x as u32, y as u32), SCORES[2].1);
        // The loss starts at the top of the left panel (3.0 is the maximum, plus 5%).
        let (x, y) = Panel {
            x0: LEFT[0],
            x_max: 5.0,
            y_max: 3.15,
        }
        .px(1.0, 3.0);
        assert_eq!(*img.get_pixel(x as u32, y as u32), LOSS);
    }

    #[test]
    fn an_empty_run_still_draws_axes_and_a_bad_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        write_metrics_plot(&[], &path).unwrap();
        assert!(path.exists());
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"x").unwrap();
        let err = write_metrics_plot(&rows(), &blocked.join("m.png")).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }
}
