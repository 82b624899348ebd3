use std::path::PathBuf;

/// A file left out because it could not be read, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// Images of one size, `u8`, planar: image `i` is `pixels[i * c*h*w .. (i+1) * c*h*w]`
/// laid out channel by channel, row by row.
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// One class index per image, or `None` for unlabeled data.
    pub labels: Option<Vec<u32>>,
    /// Names of the class indices.
    pub class_names: Vec<String>,
    /// Where each image came from (empty for IDX data).
    pub paths: Vec<PathBuf>,
    /// Files left out because the caller asked to skip bad files.
    pub skipped: Vec<SkippedFile>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.pixels.len().checked_div(self.image_len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per image: channels x height x width.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.pixels[i * l..(i + 1) * l]
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            paths: self.paths.iter().take(n).cloned().collect(),
            class_names: self.class_names.clone(),
            skipped: Vec::new(),
            ..*self
        }
    }

    /// Every image zero-padded, centred, to `side` x `side` (Fashion-MNIST's 28x28 to the
    /// 32x32 of CIFAR-style networks). Images already that size are returned as they are.
    pub fn pad_to(&self, side: usize) -> Option<ImageSet> {
        if side < self.height || side < self.width {
            return None;
        }
        let (top, left) = ((side - self.height) / 2, (side - self.width) / 2);
        let mut pixels = vec![0u8; self.len() * self.channels * side * side];
        for (dst, src) in pixels
            .chunks_exact_mut(self.channels * side * side)
            .zip(self.pixels.chunks_exact(self.image_len().max(1)))
        {
            for (dc, sc) in dst
                .chunks_exact_mut(side * side)
                .zip(src.chunks_exact(self.height * self.width))
            {
                for (y, row) in sc.chunks_exact(self.width).enumerate() {
                    let at = (top + y) * side + left;
                    dc[at..at + self.width].copy_from_slice(row);
                }
            }
        }
        Some(ImageSet {
            pixels,
            height: side,
            width: side,
            labels: self.labels.clone(),
            class_names: self.class_names.clone(),
            paths: self.paths.clone(),
            skipped: self.skipped.clone(),
            ..*self
        })
    }

    /// The images `indices`, in that order, with their labels and paths.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            pixels,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            paths: if self.paths.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| self.paths[i].clone()).collect()
            },
            class_names: self.class_names.clone(),
            skipped: Vec::new(),
            ..*self
        }
    }

    /// A deterministic (train, validation) split of a labeled set: within each class, a
    /// seeded shuffle puts `fraction` of its images (rounded, at least one of any class with
    /// two or more) in validation. Unlabeled sets and `fraction <= 0` keep every image in
    /// train. The two parts are disjoint and keep the original order.
    pub fn split_stratified(&self, fraction: f64, seed: u64) -> (ImageSet, ImageSet) {
        let mut val = vec![false; self.len()];
        if let (Some(labels), true) = (self.labels.as_ref(), fraction > 0.0) {
            let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
            let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
            labels
                .iter()
                .enumerate()
                .for_each(|(i, &l)| members[l as usize].push(i));
            for (class, m) in members.iter().enumerate() {
                if m.len() < 2 {
                    continue;
                }
                let take = ((m.len() as f64 * fraction).round() as usize).clamp(1, m.len() - 1);
                let mut rng = crate::rng::Rng::new(
                    seed ^ (class as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
                );
                for j in rng.sample_indices(m.len(), take) {
                    val[m[j]] = true;
                }
            }
        }
        let (v, t): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| val[i]);
        // The files skipped while reading stay reported, with the training part.
        let train = ImageSet {
            skipped: self.skipped.clone(),
            ..self.select(&t)
        };
        (train, self.select(&v))
    }

    /// Pixels as `f32` in `[0, 1]`, one row per image.
    pub fn to_f32(&self) -> Vec<f32> {
        self.pixels
            .iter()
            .map(|&p| p as f32 * (1.0 / 255.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_views_agree() {
        let set = ImageSet {
            pixels: (0..12).collect(),
            channels: 1,
            height: 2,
            width: 2,
            labels: Some(vec![0, 1, 2]),
            ..Default::default()
        };
        assert_eq!(set.len(), 3);
        assert_eq!(set.image(1), &[4, 5, 6, 7]);
        let two = set.take(2);
        assert_eq!(
            (two.len(), two.labels.as_deref()),
            (2, Some(&[0u32, 1][..]))
        );
        assert_eq!(set.to_f32()[11], 11.0 / 255.0);
        assert_eq!(ImageSet::default().len(), 0);
    }

    #[test]
    fn stratified_split_is_deterministic_disjoint_and_per_class() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let set = ImageSet {
            pixels: (0..100u8).collect(),
            channels: 1,
            height: 1,
            width: 1,
            labels: Some(labels),
            ..Default::default()
        };
        let (train, val) = set.split_stratified(0.2, 7);
        assert_eq!((train.len(), val.len()), (80, 20));
        // Each image (its pixel is its index) lands in exactly one part.
        let mut seen: Vec<u8> = train.pixels.iter().chain(&val.pixels).copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100u8).collect::<Vec<_>>());
        let per_class = |s: &ImageSet, c: u32| {
            s.labels
                .as_ref()
                .unwrap()
                .iter()
                .filter(|&&l| l == c)
                .count()
        };
        assert!((0..4).all(|c| per_class(&val, c) == 5));
        let (train2, val2) = set.split_stratified(0.2, 7);
        assert_eq!(
            (train2.pixels, val2.pixels.clone()),
            (train.pixels, val.pixels.clone())
        );
        let (_, other) = set.split_stratified(0.2, 8);
        assert_ne!(other.pixels, val.pixels, "another seed, another split");
        let unlabeled = ImageSet {
            labels: None,
            ..set.clone()
        };
        assert_eq!(unlabeled.split_stratified(0.2, 7).1.len(), 0);
    }

    #[test]
    fn pad_to_centres_each_channel() {
        let set = ImageSet {
            pixels: vec![1, 2, 3, 4, 5, 6, 7, 8],
            channels: 2,
            height: 2,
            width: 2,
            ..Default::default()
        };
        let p = set.pad_to(4).unwrap();
        assert_eq!((p.len(), p.height, p.width), (1, 4, 4));
        #[rustfmt::skip]
        let want = [
            0, 0, 0, 0,  0, 1, 2, 0,  0, 3, 4, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  0, 5, 6, 0,  0, 7, 8, 0,  0, 0, 0, 0,
        ];
        assert_eq!(p.pixels, want);
        assert!(set.pad_to(1).is_none());
        assert_eq!(set.pad_to(2).unwrap().pixels, set.pixels);
    }
}
