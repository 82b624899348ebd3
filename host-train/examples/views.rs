//! Writes a PNG grid of training views: each row is one image of a folder, first as read, then
//! eight strong augmented views (`AugmentConfig::strong()`), to look at what training sees.
//!
//! cargo run --release -p host-train --example views -- DIR SIZE OUT.png

use anyhow::{Context, Result};
use host_train::augment::AugmentConfig;
use host_train::dataset::{load_images, DataSpec, Normalization, TrainSet};
use image::{Rgb, RgbImage};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, size, out] = args.as_slice() else {
        anyhow::bail!("usage: views DIR SIZE OUT.png");
    };
    let size: u32 = size.parse().context("SIZE")?;
    let spec = DataSpec {
        rgb: true,
        val_fraction: 0.0,
        ..DataSpec::new(dir.clone(), size)
    };
    let (images, _) = load_images(&spec)?;
    let identity = Normalization {
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let set = TrainSet::new(images, identity)?;
    let (rows, cols, s) = (8usize, 9usize, size as usize);
    let mut grid = RgbImage::new((cols * s) as u32, (rows * s) as u32);
    let step = (set.len() / rows).max(1);
    for r in 0..rows {
        let idx = [r * step];
        for c in 0..cols {
            let aug = if c == 0 {
                AugmentConfig::none()
            } else {
                AugmentConfig::strong()
            };
            let x: Vec<f32> = set
                .batch(
                    &idx,
                    &aug,
                    c as u64 * 31 + r as u64,
                    &candle_core::Device::Cpu,
                )?
                .flatten_all()?
                .to_vec1()?;
            for y in 0..s {
                for xx in 0..s {
                    let px = |ch: usize| (x[ch * s * s + y * s + xx].clamp(0.0, 1.0) * 255.0) as u8;
                    grid.put_pixel(
                        (c * s + xx) as u32,
                        (r * s + y) as u32,
                        Rgb([px(0), px(1), px(2)]),
                    );
                }
            }
        }
    }
    let big = image::imageops::resize(
        &grid,
        grid.width() * 3,
        grid.height() * 3,
        image::imageops::FilterType::Nearest,
    );
    big.save(out).with_context(|| out.clone())?;
    Ok(())
}
