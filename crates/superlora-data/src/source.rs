//! [`ImageSource`]: one interface over in-memory grey images ([`ImageSet`], today's datasets) and
//! image files ([`ImageFiles`]), so a training task can take either.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::image::{ImageSet, out_of_range};
use crate::image_files::ImageFiles;
use crate::preprocess::to_tensor_normalized;

/// Labelled images that can be turned into model input batch by batch.
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One label per image, `< classes().len()`.
    fn labels(&self) -> &[u8];

    /// Class names, indexed by label.
    fn classes(&self) -> &[String];

    /// The images at `indices` as a `[B, 3, size, size]` f32 tensor on `device`: bilinear resize,
    /// scaled to [0, 1], normalised per channel with `mean` and `std`.
    fn batch(&self, indices: &[usize], size: usize, mean: [f32; 3], std: [f32; 3], device: &Device) -> Result<Tensor>;

    /// The labels at `indices` as a `[B]` u32 tensor on `device`.
    fn labels_tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let labels = self.labels();
        let picked = indices
            .iter()
            .map(|&i| labels.get(i).map(|&l| u32::from(l)).ok_or_else(|| out_of_range(i, labels.len())))
            .collect::<Result<Vec<u32>>>()?;
        Ok(Tensor::from_vec(picked, indices.len(), device)?)
    }
}

impl ImageSource for ImageSet {
    fn len(&self) -> usize {
        self.n
    }

    fn labels(&self) -> &[u8] {
        &self.labels
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Grey replicated to the three channels; with the ImageNet mean and std this is exactly
    /// [`to_tensor`](crate::preprocess::to_tensor).
    fn batch(&self, indices: &[usize], size: usize, mean: [f32; 3], std: [f32; 3], device: &Device) -> Result<Tensor> {
        to_tensor_normalized(self, indices, size, mean, std, device)
    }
}

impl ImageSource for ImageFiles {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn labels(&self) -> &[u8] {
        &self.labels
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn batch(&self, indices: &[usize], size: usize, mean: [f32; 3], std: [f32; 3], device: &Device) -> Result<Tensor> {
        ImageFiles::batch(self, indices, size, mean, std, device)
    }
}
