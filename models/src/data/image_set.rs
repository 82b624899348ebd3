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
}
