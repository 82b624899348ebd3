//! A cluster gallery: one row of sample images per cluster, largest clusters first, so a
//! person can see what the clustering found.

use std::path::Path;

use image::{ImageBuffer, Rgb, RgbImage};
use models::data::ImageSet;

use crate::TrainError;

/// How many clusters and samples the gallery shows, and how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GalleryConfig {
    pub max_clusters: usize,
    pub per_cluster: usize,
    /// Each pixel becomes a scale x scale block.
    pub scale: u32,
}

impl Default for GalleryConfig {
    fn default() -> Self {
        Self {
            max_clusters: 30,
            per_cluster: 16,
            scale: 2,
        }
    }
}

/// Writes the gallery of `labels` over `set` as a PNG. Rows are separated by a 2-pixel band.
pub fn write_gallery(
    set: &ImageSet,
    labels: &[u32],
    cfg: &GalleryConfig,
    path: &Path,
) -> Result<(), TrainError> {
    if labels.len() != set.len() {
        return Err(TrainError::Config(format!(
            "{} labels for {} images",
            labels.len(),
            set.len()
        )));
    }
    let k = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    members.sort_by_key(|m| std::cmp::Reverse(m.len()));
    members.retain(|m| !m.is_empty());
    members.truncate(cfg.max_clusters);

    let (h, w, s) = (set.height as u32, set.width as u32, cfg.scale.max(1));
    let (cell_w, cell_h) = (w * s + 2, h * s + 2);
    let (width, height) = (
        cell_w * cfg.per_cluster as u32,
        cell_h * members.len().max(1) as u32,
    );
    let mut canvas: RgbImage = ImageBuffer::from_pixel(width, height, Rgb([40, 40, 40]));
    let plane = (h * w) as usize;
    for (row, m) in members.iter().enumerate() {
        // Evenly spaced members, not just the first ones.
        let step = (m.len() / cfg.per_cluster).max(1);
        for (col, &i) in m.iter().step_by(step).take(cfg.per_cluster).enumerate() {
            let img = set.image(i);
            for y in 0..h * s {
                for x in 0..w * s {
                    let p = ((y / s) * w + x / s) as usize;
                    let px = if set.channels >= 3 {
                        Rgb([img[p], img[plane + p], img[2 * plane + p]])
                    } else {
                        Rgb([img[p]; 3])
                    };
                    canvas.put_pixel(col as u32 * cell_w + 1 + x, row as u32 * cell_h + 1 + y, px);
                }
            }
        }
    }
    canvas.save(path).map_err(|source| TrainError::Image {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_clusters_largest_first() {
        // Cluster 1 (white images) has 3 members, cluster 0 (black) has 1.
        let set = ImageSet {
            pixels: vec![
                0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            ],
            channels: 1,
            height: 2,
            width: 2,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        let cfg = GalleryConfig {
            max_clusters: 5,
            per_cluster: 3,
            scale: 1,
        };
        write_gallery(&set, &[0, 1, 1, 1], &cfg, &p).unwrap();
        let g = image::open(&p).unwrap().to_rgb8();
        assert_eq!((g.width(), g.height()), (3 * 4, 2 * 4));
        assert_eq!(
            g.get_pixel(1, 1).0,
            [255, 255, 255],
            "first row: the big white cluster"
        );
        assert_eq!(g.get_pixel(1, 5).0, [0, 0, 0], "second row: the black one");
        assert!(write_gallery(&set, &[0, 1], &cfg, &p).is_err());
    }
}
