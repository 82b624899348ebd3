//! `plots/metrics.png`: a run's curves, redrawn after every epoch. Left, the training loss;
//! right, the held-out scores (kNN top-1 as is and whitened, k-means NMI, ARI, clustering
//! accuracy) on a fixed
//! 0-1 scale, so two runs' plots compare at a glance. Drawn with [`models::chart`].

use std::path::Path;

use image::{Rgb, RgbImage};
use models::chart::{Labels, Panel, WHITE};

use crate::run_dir::MetricsRow;
use crate::TrainError;

const WIDTH: u32 = 760;
const HEIGHT: u32 = 320;
const PANEL_W: u32 = 320;
const PANEL_H: u32 = 220;
const TOP: u32 = 50;
const LEFT: [u32; 2] = [50, 420];
const LOSS: Rgb<u8> = Rgb([200, 40, 40]);
/// kNN, kNN whitened, NMI, ARI, accuracy.
const SCORES: [(&str, Rgb<u8>); 5] = [
    ("KNN", Rgb([30, 90, 200])),
    ("KNN-W", Rgb([150, 60, 190])),
    ("NMI", Rgb([230, 130, 0])),
    ("ARI", Rgb([40, 150, 60])),
    ("ACC", Rgb([130, 130, 130])),
];

/// One of the two charts: epochs across, 0..=y_max up.
fn panel(left: u32, x_max: f64, y_max: f64) -> Panel {
    Panel {
        left,
        top: TOP,
        width: PANEL_W,
        height: PANEL_H,
        x_max,
        y_max,
    }
}

fn labels<'a>(title: &'a str, legend: &'a [(&'a str, Rgb<u8>)], y_decimals: usize) -> Labels<'a> {
    Labels {
        title,
        x_axis: "epoch",
        legend,
        y_decimals,
    }
}

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

    let left = panel(LEFT[0], last_epoch, loss_max);
    left.axes(&mut img, &labels("LOSS", &[("LOSS", LOSS)], 2));
    left.series(&mut img, &loss, LOSS, true);
    let right = panel(LEFT[1], last_epoch, 1.0);
    right.axes(&mut img, &labels("SCORES", &SCORES, 2));
    for (i, &(_, colour)) in SCORES.iter().enumerate() {
        let pts: Vec<(f64, f64)> = scores
            .iter()
            .filter_map(|(e, s)| s[i].map(|v| (*e, v)))
            .collect();
        right.series(&mut img, &pts, colour, true);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    img.save(path).map_err(|source| TrainError::Image {
        path: path.into(),
        source,
    })
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
        let right = panel(LEFT[1], 5.0, 1.0);
        let (x, y) = right.px(2.5, 0.4);
        assert_eq!(*img.get_pixel(x as u32, y as u32), SCORES[2].1);
        // The loss starts at the top of the left panel (3.0 is the maximum, plus 5%).
        let (x, y) = panel(LEFT[0], 5.0, 3.15).px(1.0, 3.0);
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
