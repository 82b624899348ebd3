//! Folders of JPEG and PNG images, the input users bring.
//!
//! Files are found recursively and sorted by path so runs are reproducible. When every
//! image sits in a sub-folder, the first sub-folder level names its class; when any image
//! sits directly in the root, the whole set is unlabeled.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageReader};
use rayon::prelude::*;

use super::{DataError, DecodeError, ImageSet, SkippedFile};
pub use crate::preprocess::{ColorMode, ResizeMode};

/// How to read a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolderOptions {
    pub width: u32,
    pub height: u32,
    pub color: ColorMode,
    pub resize: ResizeMode,
    /// Skip and count unreadable files instead of failing on the first one.
    pub skip_bad: bool,
}

impl Default for ImageFolderOptions {
    fn default() -> Self {
        Self {
            width: 28,
            height: 28,
            color: ColorMode::Gray,
            resize: ResizeMode::ShorterSideCenterCrop,
            skip_bad: false,
        }
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// One image file, brought to the options' size and colour: planar u8 pixels.
pub fn read_image(path: &Path, opts: &ImageFolderOptions) -> Result<Vec<u8>, DataError> {
    load_one(path, opts).map_err(|source| DataError::Decode {
        path: path.into(),
        source,
    })
}

fn load_one(path: &Path, opts: &ImageFolderOptions) -> Result<Vec<u8>, DecodeError> {
    let img = ImageReader::open(path)?.with_guessed_format()?.decode()?;
    image_pixels(img, opts)
}

/// A decoded image (a file, or a camera frame) brought to the options' size and colour:
/// planar u8 pixels, exactly as the folder reader gives them.
pub fn image_pixels(img: DynamicImage, opts: &ImageFolderOptions) -> Result<Vec<u8>, DecodeError> {
    if img.width() == 0 || img.height() == 0 {
        return Err(DecodeError::Empty);
    }
    let img = fit(img, opts);
    Ok(match opts.color {
        ColorMode::Gray => img.to_luma8().into_raw(),
        ColorMode::Rgb => {
            // Interleaved RGB to planar.
            let rgb = img.to_rgb8();
            let plane = (opts.width * opts.height) as usize;
            let mut out = vec![0u8; 3 * plane];
            for (i, px) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = px.0[c];
                }
            }
            out
        }
    })
}

fn fit(img: DynamicImage, opts: &ImageFolderOptions) -> DynamicImage {
    let (w, h) = (opts.width, opts.height);
    if img.width() == w && img.height() == h {
        return img;
    }
    match opts.resize {
        ResizeMode::Stretch => img.resize_exact(w, h, FilterType::Triangle),
        ResizeMode::ShorterSideCenterCrop => {
            let scale = f64::max(
                w as f64 / img.width() as f64,
                h as f64 / img.height() as f64,
            );
            let nw = ((img.width() as f64 * scale).round() as u32).max(w);
            let nh = ((img.height() as f64 * scale).round() as u32).max(h);
            let resized = DynamicImage::from(imageops::resize(
                &img.to_rgba8(),
                nw,
                nh,
                FilterType::Triangle,
            ));
            resized.crop_imm((nw - w) / 2, (nh - h) / 2, w, h)
        }
    }
}

/// What a folder holds, from file headers only: the number of images and the median shorter
/// side of up to `sample` of them, spread evenly over the sorted list (unreadable headers are
/// left out of the median).
pub fn survey_image_folder(root: &Path, sample: usize) -> Result<(usize, Option<u32>), DataError> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DataError::NoImages { path: root.into() });
    }
    let step = files.len().div_ceil(sample.max(1));
    let mut sides: Vec<u32> = files
        .iter()
        .step_by(step)
        .filter_map(|p| image::image_dimensions(p).ok())
        .map(|(w, h)| w.min(h))
        .collect();
    sides.sort_unstable();
    Ok((files.len(), sides.get(sides.len() / 2).copied()))
}

/// Reads every JPEG and PNG under `root`, resized to one size.
pub fn read_image_folder(root: &Path, opts: &ImageFolderOptions) -> Result<ImageSet, DataError> {
    if opts.width == 0 || opts.height == 0 {
        return Err(DataError::BadShape {
            path: root.into(),
            detail: "target size must be at least 1x1".into(),
        });
    }
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DataError::NoImages { path: root.into() });
    }

    let decoded: Vec<Result<Vec<u8>, DecodeError>> =
        files.par_iter().map(|p| load_one(p, opts)).collect();
    let mut kept = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    let mut pixels = Vec::new();
    for (path, result) in files.into_iter().zip(decoded) {
        match result {
            Ok(px) => {
                pixels.extend_from_slice(&px);
                kept.push(path);
            }
            Err(e) if opts.skip_bad => skipped.push(SkippedFile {
                path,
                reason: e.to_string(),
            }),
            Err(source) => return Err(DataError::Decode { path, source }),
        }
    }
    if kept.is_empty() {
        return Err(DataError::AllSkipped {
            path: root.into(),
            skipped: skipped.len(),
        });
    }

    let classes_of: Vec<Option<String>> = kept
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(root).ok()?;
            let mut parts = rel.components();
            let first = parts.next()?;
            parts.next()?; // a file directly in root has no class folder
            Some(first.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    let (labels, class_names) = if classes_of.iter().all(Option::is_some) {
        let mut names: Vec<String> = classes_of.iter().flatten().cloned().collect();
        names.sort();
        names.dedup();
        let labels = classes_of
            .iter()
            .flatten()
            .map(|c| names.binary_search(c).expect("name is in the list") as u32)
            .collect();
        (Some(labels), names)
    } else {
        (None, Vec::new())
    };

    Ok(ImageSet {
        pixels,
        channels: opts.color.channels(),
        height: opts.height as usize,
        width: opts.width as usize,
        labels,
        class_names,
        paths: kept,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn opts(w: u32, h: u32, color: ColorMode) -> ImageFolderOptions {
        ImageFolderOptions {
            width: w,
            height: h,
            color,
            ..Default::default()
        }
    }

    #[test]
    fn class_folders_give_labels_and_files_are_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for (class, shade) in [("cats", 10u8), ("dogs", 200u8)] {
            let sub = dir.path().join(class).join("nested");
            std::fs::create_dir_all(&sub).unwrap();
            for i in 0..2 {
                GrayImage::from_pixel(8, 8, Luma([shade]))
                    .save(sub.join(format!("{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(dir.path().join("cats/notes.txt"), "not an image").unwrap();
        let set = read_image_folder(dir.path(), &opts(4, 4, ColorMode::Gray)).unwrap();
        assert_eq!(set.len(), 4);
        assert_eq!(set.class_names, vec!["cats", "dogs"]);
        assert_eq!(set.labels.as_deref(), Some(&[0u32, 0, 1, 1][..]));
        assert!(set.image(0).iter().all(|&p| p == 10));
        assert!(set.image(3).iter().all(|&p| p == 200));
    }

    #[test]
    fn images_in_the_root_are_unlabeled_and_rgb_is_planar() {
        let dir = tempfile::tempdir().unwrap();
        RgbImage::from_pixel(6, 3, Rgb([255, 0, 7]))
            .save(dir.path().join("a.PNG"))
            .unwrap();
        RgbImage::from_pixel(3, 6, Rgb([1, 2, 3]))
            .save(dir.path().join("b.jpg"))
            .unwrap();
        let set = read_image_folder(dir.path(), &opts(2, 2, ColorMode::Rgb)).unwrap();
        assert!(set.labels.is_none());
        assert_eq!((set.len(), set.channels), (2, 3));
        assert_eq!(set.image(0), &[255, 255, 255, 255, 0, 0, 0, 0, 7, 7, 7, 7]);
        let gray = read_image_folder(dir.path(), &opts(5, 5, ColorMode::Gray)).unwrap();
        assert_eq!(gray.image_len(), 25);
    }

    #[test]
    fn stretch_and_centre_crop_both_reach_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        // Left half black, right half white, 20x10.
        let img = GrayImage::from_fn(20, 10, |x, _| Luma([if x < 10 { 0 } else { 255 }]));
        img.save(dir.path().join("x.png")).unwrap();
        for resize in [ResizeMode::Stretch, ResizeMode::ShorterSideCenterCrop] {
            let o = ImageFolderOptions {
                resize,
                ..opts(4, 4, ColorMode::Gray)
            };
            let set = read_image_folder(dir.path(), &o).unwrap();
            let row = &set.image(0)[..4];
            assert!(row[0] < 60 && row[3] > 195, "{resize:?}: {row:?}");
        }
    }

    #[test]
    fn corrupt_files_fail_by_name_or_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        GrayImage::from_pixel(4, 4, Luma([9]))
            .save(dir.path().join("good.png"))
            .unwrap();
        std::fs::write(dir.path().join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
        let err = read_image_folder(dir.path(), &opts(4, 4, ColorMode::Gray)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("broken.jpg"), "{msg}");
        // The cause stays typed: the image crate's decoding error, reachable as a source.
        assert!(
            matches!(
                &err,
                DataError::Decode {
                    source: DecodeError::Image(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let empty = image_pixels(DynamicImage::new_luma8(0, 0), &opts(4, 4, ColorMode::Gray));
        assert!(matches!(empty, Err(DecodeError::Empty)));
        let o = ImageFolderOptions {
            skip_bad: true,
            ..opts(4, 4, ColorMode::Gray)
        };
        let set = read_image_folder(dir.path(), &o).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped.len(), 1);
        assert!(set.skipped[0].path.ends_with("broken.jpg"));
    }

    #[test]
    fn empty_or_missing_folders_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let msg = read_image_folder(dir.path(), &ImageFolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no JPEG or PNG"), "{msg}");
        let missing = dir.path().join("nope");
        let msg = read_image_folder(&missing, &ImageFolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nope"), "{msg}");
        std::fs::write(dir.path().join("x.png"), b"not a png").unwrap();
        let o = ImageFolderOptions {
            skip_bad: true,
            ..Default::default()
        };
        let msg = read_image_folder(dir.path(), &o).unwrap_err().to_string();
        assert!(msg.contains("every image failed"), "{msg}");
    }
}
