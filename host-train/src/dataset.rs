//! Training data: the images, their normalisation (measured on the data and recorded in the
//! run config), and batches as candle tensors.

use candle_core::{Device, Tensor};
use models::data::ImageSet;
use models::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::TrainError;

/// Per-channel mean and std of the pixels in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn measure(set: &ImageSet) -> Self {
        let (c, hw) = (set.channels, set.height * set.width);
        let mut sums = vec![(0f64, 0f64); c];
        for i in 0..set.len() {
            for (ch, s) in sums.iter_mut().enumerate() {
                for &p in &set.image(i)[ch * hw..(ch + 1) * hw] {
                    let v = p as f64 / 255.0;
                    s.0 += v;
                    s.1 += v * v;
                }
            }
        }
        let n = (set.len() * hw).max(1) as f64;
        let mean: Vec<f32> = sums.iter().map(|s| (s.0 / n) as f32).collect();
        let std = sums
            .iter()
            .zip(&mean)
            .map(|(s, &m)| ((s.1 / n - (m as f64).powi(2)).max(1e-12).sqrt()) as f32)
            .collect();
        Self { mean, std }
    }
}

/// Images ready to batch.
#[derive(Debug, Clone)]
pub struct TrainSet {
    pub images: ImageSet,
    pub norm: Normalization,
}

impl TrainSet {
    pub fn new(images: ImageSet, norm: Normalization) -> Result<Self, TrainError> {
        if images.is_empty() {
            return Err(TrainError::Config("the data set has no images".into()));
        }
        if norm.mean.len() != images.channels || norm.std.len() != images.channels {
            return Err(TrainError::Config(format!(
                "normalisation has {} channels, images have {}",
                norm.mean.len(),
                images.channels
            )));
        }
        Ok(Self { images, norm })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// (c, h, w) of one image.
    pub fn image_dims(&self) -> (usize, usize, usize) {
        (self.images.channels, self.images.height, self.images.width)
    }

    /// Image `i` as pixels in [0, 1].
    fn pixels(&self, i: usize, out: &mut [f32]) {
        for (o, &p) in out.iter_mut().zip(self.images.image(i)) {
            *o = p as f32 * (1.0 / 255.0);
        }
    }

    /// (x - mean) / std per channel, in place.
    fn normalize(&self, x: &mut [f32]) {
        let (c, h, w) = self.image_dims();
        let hw = h * w;
        for ch in 0..c {
            let (m, s) = (self.norm.mean[ch], 1.0 / self.norm.std[ch]);
            x[ch * hw..(ch + 1) * hw]
                .iter_mut()
                .for_each(|v| *v = (*v - m) * s);
        }
    }

    /// Images from outside the set (planar `u8`, this set's channels and size, one after
    /// another) as a normalised (b, c, h, w) tensor.
    pub fn tensor_from_pixels(&self, pixels: &[u8], device: &Device) -> Result<Tensor, TrainError> {
        let (c, h, w) = self.image_dims();
        let len = c * h * w;
        if pixels.is_empty() || !pixels.len().is_multiple_of(len) {
            return Err(TrainError::Config(format!(
                "{} pixel values are not whole {c}x{h}x{w} images",
                pixels.len()
            )));
        }
        let mut data: Vec<f32> = pixels.iter().map(|&p| p as f32 * (1.0 / 255.0)).collect();
        data.par_chunks_mut(len).for_each(|x| self.normalize(x));
        Ok(Tensor::from_vec(
            data,
            (pixels.len() / len, c, h, w),
            device,
        )?)
    }

    /// The images `indices` as a (b, c, h, w) tensor: pixels augmented (with a per-sample
    /// seed derived from `seed` and the position in the batch), then normalised.
    pub fn batch(
        &self,
        indices: &[usize],
        augment: &AugmentConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Tensor, TrainError> {
        let (c, h, w) = self.image_dims();
        let len = c * h * w;
        let mut data = vec![0f32; indices.len() * len];
        data.par_chunks_mut(len)
            .zip(indices.par_iter())
            .enumerate()
            .for_each_init(
                || vec![0f32; len],
                |clean, (j, (out, &i))| {
                    self.pixels(i, clean);
                    let mut rng = Rng::new(seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    augment.apply(clean, c, h, w, &mut rng, out);
                    self.normalize(out);
                },
            );
        Ok(Tensor::from_vec(data, (indices.len(), c, h, w), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_scale_with_the_data() {
        let small = DataDefaults::for_images(1_800, Some(64));
        assert_eq!((small.size, small.batch_size, small.epochs), (64, 128, 166));
        let tiny = DataDefaults::for_images(100, Some(250));
        assert_eq!((tiny.size, tiny.batch_size, tiny.epochs), (64, 16, 200));
        let big = DataDefaults::for_images(60_000, Some(30));
        assert_eq!((big.size, big.batch_size, big.epochs), (28, 256, 10));
        assert_eq!(DataDefaults::for_images(500, None).size, 32);
    }

    #[test]
    fn a_limit_scales_the_defaults_to_the_images_used() {
        let fashion = DataDefaults {
            size: 28,
            ..DataDefaults::for_images(60_000, Some(28))
        };
        let two_k = fashion.limited(Some(2_000));
        assert_eq!((two_k.images, two_k.size), (2_000, 28));
        assert_eq!((two_k.batch_size, two_k.epochs), (128, 150));
        assert_eq!(fashion.limited(Some(90_000)), fashion);
        assert_eq!(fashion.limited(None), fashion);
    }

    #[test]
    fn normalization_is_measured_and_applied() {
        let set = ImageSet {
            pixels: vec![0, 255, 0, 255],
            channels: 1,
            height: 1,
            width: 2,
            ..Default::default()
        };
        let norm = Normalization::measure(&set);
        assert!((norm.mean[0] - 0.5).abs() < 1e-6 && (norm.std[0] - 0.5).abs() < 1e-6);
        let ts = TrainSet::new(set, norm).unwrap();
        let b = ts
            .batch(&[1, 0], &AugmentConfig::none(), 0, &Device::Cpu)
            .unwrap();
        assert_eq!(b.dims(), &[2, 1, 1, 2]);
        let v: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![-1.0, 1.0, -1.0, 1.0]);
        let bad = Normalization {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        assert!(TrainSet::new(ts.images.clone(), bad).is_err());
    }
}

/// How `--data` is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// `fashion-mnist`, a folder of IDX files, or a folder of images.
    pub source: String,
    /// Side of the square images read from a folder; Fashion-MNIST is zero-padded to it.
    pub size: u32,
    pub rgb: bool,
    pub skip_bad: bool,
    /// Use only the first N training (and N/6 test) images.
    pub limit: Option<usize>,
    /// A labeled folder of validation images, read like the training folder.
    #[serde(default)]
    pub val: Option<String>,
    /// Without `val`: the fraction of a labeled training folder held out for validation,
    /// per class (0: none).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seeds the validation split.
    #[serde(default)]
    pub split_seed: u64,
}

fn default_val_fraction() -> f64 {
    0.2
}

impl DataSpec {
    /// `source` read with the defaults: images of `size`, grayscale, a 20% validation split.
    pub fn new(source: impl Into<String>, size: u32) -> Self {
        Self {
            source: source.into(),
            size,
            rgb: false,
            skip_bad: false,
            limit: None,
            val: None,
            val_fraction: default_val_fraction(),
            split_seed: 0,
        }
    }

    /// Refuses settings that cannot be read: a validation fraction outside [0, 1).
    pub fn check(&self) -> Result<(), TrainError> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(TrainError::Config(format!(
                "--val-fraction must be at least 0 and below 1, got {}",
                self.val_fraction
            )));
        }
        Ok(())
    }
}

/// Settings chosen from the data when the user gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDefaults {
    /// Images in the source (before any validation split).
    pub images: usize,
    /// The median shorter side of a folder's images (28 for Fashion-MNIST).
    pub median_side: Option<u32>,
    /// Input side: the median shorter side, a multiple of 4 between 16 and 64 (the small
    /// networks pool twice; larger inputs cost more than they give on 2 cores).
    pub size: u32,
    /// The largest power of two up to 256 that gives at least 8 batches, but at least 16.
    pub batch_size: usize,
    /// About 300k images seen in all, between 10 and 200 epochs.
    pub epochs: usize,
}

impl DataDefaults {
    fn for_images(images: usize, median_side: Option<u32>) -> Self {
        let size = median_side.map_or(32, |s| (s / 4 * 4).clamp(16, 64));
        let per_batch = (images / 8).clamp(16, 256);
        Self {
            images,
            median_side,
            size,
            batch_size: 1 << per_batch.ilog2(),
            epochs: (300_000 / images.max(1)).clamp(10, 200),
        }
    }

    /// Surveys `source` (file headers only, for a folder).
    pub fn survey(source: &str) -> Result<Self, TrainError> {
        use models::data::{survey_image_folder, DataSource};
        Ok(match DataSource::resolve(source)? {
            DataSource::FashionMnist(_) => Self {
                size: 28,
                ..Self::for_images(60_000, Some(28))
            },
            DataSource::ImageFolder(dir) => {
                let (n, side) = survey_image_folder(&dir, 64)?;
                Self::for_images(n, side)
            }
        })
    }

    /// The defaults for the first `limit` images only (`--limit`), the size kept.
    pub fn limited(self, limit: Option<usize>) -> Self {
        match limit {
            Some(n) if n < self.images => Self {
                size: self.size,
                ..Self::for_images(n, self.median_side)
            },
            _ => self,
        }
    }
}

/// `set`'s labels renumbered to the class indices of `classes` (the training folder's), so a
/// separate validation folder's sub-folder `shirt` gets the training `shirt`'s index.
fn relabel(
    mut set: ImageSet,
    classes: &[String],
    dir: &std::path::Path,
) -> Result<ImageSet, TrainError> {
    let Some(labels) = set.labels.as_mut() else {
        return Err(TrainError::Config(format!(
            "{}: a validation folder needs one sub-folder per class",
            dir.display()
        )));
    };
    let map = set
        .class_names
        .iter()
        .map(|name| {
            classes.iter().position(|c| c == name).ok_or_else(|| {
                models::data::DataError::UnknownClass {
                    path: dir.to_path_buf(),
                    class: name.clone(),
                    known: classes.join(", "),
                }
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    labels.iter_mut().for_each(|l| *l = map[*l as usize] as u32);
    set.class_names = classes.to_vec();
    Ok(set)
}

/// The training images and the labeled held-out images: Fashion-MNIST's test split, the
/// `val` folder, or a split of a labeled training folder.
pub fn load_images(spec: &DataSpec) -> Result<(ImageSet, Option<ImageSet>), TrainError> {
    spec.check()?;
    use models::data::{
        load_fashion_mnist, read_image_folder, ColorMode, DataSource, ImageFolderOptions, Split,
    };
    let (mut train, mut test) = match DataSource::resolve(&spec.source)? {
        DataSource::FashionMnist(dir) => {
            let pad = |set: ImageSet| {
                set.pad_to(spec.size as usize).ok_or_else(|| {
                    TrainError::Config(format!(
                        "--size {} is smaller than Fashion-MNIST's 28x28 images",
                        spec.size
                    ))
                })
            };
            (
                pad(load_fashion_mnist(&dir, Split::Train)?)?,
                Some(pad(load_fashion_mnist(&dir, Split::Test)?)?),
            )
        }
        DataSource::ImageFolder(dir) => {
            let opts = ImageFolderOptions {
                width: spec.size,
                height: spec.size,
                color: if spec.rgb {
                    ColorMode::Rgb
                } else {
                    ColorMode::Gray
                },
                skip_bad: spec.skip_bad,
                ..Default::default()
            };
            let all = read_image_folder(&dir, &opts)?;
            match &spec.val {
                Some(val_dir) => {
                    let val_dir = std::path::Path::new(val_dir);
                    let val = read_image_folder(val_dir, &opts)?;
                    let val = relabel(val, &all.class_names, val_dir)?;
                    (all, Some(val))
                }
                None if all.labels.is_some() && spec.val_fraction > 0.0 => {
                    let (train, val) = all.split_stratified(spec.val_fraction, spec.split_seed);
                    (train, Some(val))
                }
                None => (all, None),
            }
        }
    };
    if let Some(n) = spec.limit {
        train = train.take(n);
        test = test.map(|t| t.take((n / 6).max(1)));
    }
    Ok((train, test))
}
