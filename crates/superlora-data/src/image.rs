//! [`ImageSet`]: grey u8 images stored row-major one after another, with a label per image.

use crate::error::{Error, Result};

/// `n` grey images of `h`x`w` u8 pixels (`images[i*h*w..(i+1)*h*w]` is image `i`, row-major) and
/// their labels, each `< classes.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    /// Pixels, `n*h*w` bytes, 0 = black.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
}

impl ImageSet {
    /// Checks that the sizes agree and every label names a class; `source` labels errors.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        h: usize,
        w: usize,
        classes: Vec<String>,
        source: &str,
    ) -> Result<Self> {
        let n = labels.len();
        let pixels = h.checked_mul(w).filter(|p| *p > 0).ok_or_else(|| Error::format(source, "empty image size"))?;
        if n.checked_mul(pixels) != Some(images.len()) {
            return Err(Error::format(
                source,
                format!("{} pixel bytes for {n} images of {h}x{w} (expected {n}*{pixels})", images.len()),
            ));
        }
        if classes.is_empty() || classes.len() > 256 {
            return Err(Error::format(source, format!("{} classes (expected 1..=256)", classes.len())));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| usize::from(**l) >= classes.len()) {
            return Err(Error::format(source, format!("label {l} of image {i} is not below {}", classes.len())));
        }
        Ok(ImageSet { images, labels, n, h, w, classes })
    }

    /// The pixels of image `i`, if it exists.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let p = self.h * self.w;
        self.images.get(i.checked_mul(p)?..i.checked_add(1)?.checked_mul(p)?)
    }

    /// How many images each class has, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(&self.labels, self.classes.len())
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Result<ImageSet> {
        let p = self.h * self.w;
        let mut images = Vec::with_capacity(indices.len() * p);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (img, label) = self.image(i).zip(self.labels.get(i)).ok_or_else(|| out_of_range(i, self.n))?;
            images.extend_from_slice(img);
            labels.push(*label);
        }
        Ok(ImageSet { images, labels, n: indices.len(), h: self.h, w: self.w, classes: self.classes.clone() })
    }

    /// Mean pixel over all images, in [0, 1].
    pub fn mean_pixel(&self) -> f64 {
        if self.images.is_empty() {
            return 0.0;
        }
        self.images.iter().map(|&b| u64::from(b)).sum::<u64>() as f64 / (255.0 * self.images.len() as f64)
    }
}

/// Counts of each label below `classes` (labels at or above it are not counted).
pub fn class_counts(labels: &[u8], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &l in labels {
        if let Some(c) = counts.get_mut(usize::from(l)) {
            *c += 1;
        }
    }
    counts
}

pub(crate) fn out_of_range(i: usize, n: usize) -> Error {
    Error::invalid("index", i, format!("must be below the set's size {n}"))
}

/// Class names `"0"`..`"9"` of the MNIST digits.
pub(crate) fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_sizes_and_labels() {
        let c = digit_classes();
        assert!(ImageSet::new(vec![0; 8], vec![1, 2], 2, 2, c.clone(), "s").is_ok());
        assert!(ImageSet::new(vec![0; 7], vec![1, 2], 2, 2, c.clone(), "s").is_err());
        assert!(ImageSet::new(vec![0; 8], vec![1, 10], 2, 2, c.clone(), "s").is_err());
        assert!(ImageSet::new(vec![], vec![], 0, 2, c, "s").is_err());
    }

    #[test]
    fn select_and_counts() {
        let set = ImageSet::new((0..12).collect(), vec![0, 1, 1], 2, 2, digit_classes(), "s").unwrap();
        let sub = set.select(&[2, 0]).unwrap();
        assert_eq!(sub.images, vec![8, 9, 10, 11, 0, 1, 2, 3]);
        assert_eq!(sub.labels, vec![1, 0]);
        assert_eq!(set.class_counts()[..3], [1, 2, 0]);
        assert!(set.select(&[3]).is_err());
        assert!(set.image(usize::MAX).is_none());
    }
}
