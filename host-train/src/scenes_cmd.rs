//! `host-train make-scenes`: a labeled folder of generated RGB scenes (see
//! `models::data::render_scene`), for checking that an encoder learns objects rather than
//! colour, background and lighting.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use models::data::{render_scene, SceneParams, SCENE_SHAPES};
use models::rng::Rng;
use rayon::prelude::*;

#[derive(Debug, Args)]
pub struct MakeScenesArgs {
    /// The folder to write: one sub-folder of JPEGs per class (the folder must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Classes: the first N of disc, square, triangle, cross, ring, star, ellipse, ell (2-8).
    #[arg(long, default_value_t = 6)]
    classes: usize,
    /// Images per class.
    #[arg(long, default_value_t = 300)]
    per_class: usize,
    /// Side of the square images, in pixels (at least 8).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn make_scenes(args: &MakeScenesArgs) -> Result<()> {
    let Some(params) = (SceneParams {
        size: args.size,
        classes: args.classes,
        ..Default::default()
    })
    .validate() else {
        bail!(
            "--classes must be 2-{} and --size at least 8 (got {} and {})",
            SCENE_SHAPES.len(),
            args.classes,
            args.size
        );
    };
    if args.per_class == 0 {
        bail!("--per-class must be at least 1");
    }
    if args.out.exists() {
        bail!("{} already exists: choose a new --out", args.out.display());
    }
    for shape in &SCENE_SHAPES[..params.classes] {
        let dir = args.out.join(shape);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let n = params.classes * args.per_class;
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let class = i % params.classes;
        let mut rng = Rng::new(args.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let planar = render_scene(&params, class, &mut rng);
        let path = args
            .out
            .join(SCENE_SHAPES[class])
            .join(format!("{:05}.jpg", i / params.classes));
        write_jpeg(&planar, params.size, &path)
    })?;
    println!(
        "{n} scenes of {} classes, {}x{} RGB, in {}",
        params.classes,
        params.size,
        params.size,
        args.out.display()
    );
    Ok(())
}

fn write_jpeg(planar: &[u8], size: usize, path: &PathBuf) -> Result<()> {
    let plane = size * size;
    let img = RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let i = y as usize * size + x as usize;
        image::Rgb([planar[i], planar[plane + i], planar[2 * plane + i]])
    });
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 92)
        .encode_image(&img)
        .with_context(|| format!("writing {}", path.display()))
}
