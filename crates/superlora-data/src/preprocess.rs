//! Images → model input: bilinear resize to `size`x`size`, grey replicated to 3 channels, scaled
//! to [0, 1], normalised with the ImageNet mean and std, as a `[B, 3, size, size]` f32 tensor.
//! [`to_tensor_rgb`] does the same for colour images of any size, each channel resized alike, with
//! a given mean and std; a grey image given as RGB (its value in all three channels) gives the
//! very same numbers as [`to_tensor`].
//!
//! The resize matches PyTorch `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`:
//! output pixel `o` samples the input at `src = (o + 0.5) * in/out - 0.5`, clamped below at 0,
//! between `i0 = floor(src)` and `i1 = min(i0 + 1, in - 1)` with weights `1 - λ`, `λ = src - i0`.

use candle_core::{Device, Tensor};

use crate::decode::RgbImage;
use crate::error::{Error, Result};
use crate::image::{ImageSet, out_of_range};

/// ImageNet per-channel mean (R, G, B) of pixels in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (R, G, B).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Input sides must be multiples of the ViT patch size.
pub const PATCH: usize = 14;
/// The largest DINOv2 input side: 37 patches, the position grid DINOv2 was trained with.
pub const MAX_SIZE: usize = 37 * PATCH;
/// The largest image side any model input may have (memory: a batch of 32 is 400 MB at 1024 px).
pub const MAX_SIDE: usize = 1024;

/// One axis of a bilinear resize: for each output position, the two source positions and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisWeights {
    /// Lower source index, per output position.
    pub i0: Vec<usize>,
    /// Upper source index (`min(i0 + 1, in - 1)`).
    pub i1: Vec<usize>,
    /// Weight of `i1` (λ); `i0` gets `1 - λ`.
    pub lambda: Vec<f32>,
}

/// The bilinear weights from `input` to `output` samples (half-pixel centres). Both must be ≥ 1.
pub fn axis_weights(input: usize, output: usize) -> AxisWeights {
    let scale = input as f64 / output.max(1) as f64;
    let last = input.saturating_sub(1);
    let mut w = AxisWeights { i0: Vec::with_capacity(output), i1: Vec::with_capacity(output), lambda: Vec::new() };
    for o in 0..output {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(last);
        w.i0.push(i0);
        w.i1.push((i0 + 1).min(last));
        w.lambda.push((src - i0 as f64) as f32);
    }
    w
}

/// Resizes one `h`x`w` u8 image (`pixels.len() == h * w`, both ≥ 1) to `size`x`size` f32 values
/// in [0, 255].
pub fn resize_bilinear(pixels: &[u8], h: usize, w: usize, size: usize) -> Result<Vec<f32>> {
    check_image(pixels.len(), h, w)?;
    let (ry, rx) = (axis_weights(h, size), axis_weights(w, size));
    let mut out = Vec::with_capacity(size * size);
    resize_into(pixels, w, 1, 0, &ry, &rx, &mut out);
    Ok(out)
}

fn check_image(len: usize, h: usize, w: usize) -> Result<()> {
    if h == 0 || w == 0 || h.checked_mul(w) != Some(len) {
        return Err(Error::invalid("image", format!("{len} pixels"), format!("must be {h}x{w} with both sides ≥ 1")));
    }
    Ok(())
}

/// Resizes channel `channel` of an interleaved image with `channels` samples per pixel.
fn resize_into(
    pixels: &[u8],
    w: usize,
    channels: usize,
    channel: usize,
    ry: &AxisWeights,
    rx: &AxisWeights,
    out: &mut Vec<f32>,
) {
    let px = |y: usize, x: usize| f32::from(pixels[(y * w + x) * channels + channel]);
    for ((&y0, &y1), &ly) in ry.i0.iter().zip(&ry.i1).zip(&ry.lambda) {
        for ((&x0, &x1), &lx) in rx.i0.iter().zip(&rx.i1).zip(&rx.lambda) {
            let top = (1.0 - lx) * px(y0, x0) + lx * px(y0, x1);
            let bottom = (1.0 - lx) * px(y1, x0) + lx * px(y1, x1);
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
}

/// Checks a model input side: 1 to [`MAX_SIDE`] pixels. Whether it fits the model's patches is the
/// model's check (`ImageEncoder::check_size`): 14-px patches for DINOv2, 16 for ViT.
pub fn check_size(size: usize) -> Result<()> {
    if size == 0 || size > MAX_SIDE {
        return Err(Error::invalid("image size", size, format!("must be 1 to {MAX_SIDE} pixels")));
    }
    Ok(())
}

/// The images at `indices` as a normalised `[B, 3, size, size]` f32 tensor on `device`
/// (ImageNet mean and std).
pub fn to_tensor(set: &ImageSet, indices: &[usize], size: usize, device: &Device) -> Result<Tensor> {
    to_tensor_normalized(set, indices, size, IMAGENET_MEAN, IMAGENET_STD, device)
}

/// Checks a per-channel mean and std: finite, std > 0.
pub fn check_normalization(mean: [f32; 3], std: [f32; 3]) -> Result<()> {
    if mean.iter().any(|m| !m.is_finite()) || std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::invalid(
            "normalization",
            format!("mean {mean:?}, std {std:?}"),
            "means must be finite and standard deviations finite and positive",
        ));
    }
    Ok(())
}

/// Like [`to_tensor`] with a given per-channel `mean` and `std` (of pixels in [0, 1]).
pub fn to_tensor_normalized(
    set: &ImageSet,
    indices: &[usize],
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Result<Tensor> {
    check_size(size)?;
    check_normalization(mean, std)?;
    let (ry, rx) = (axis_weights(set.h, size), axis_weights(set.w, size));
    let plane = size * size;
    let mut grey = Vec::with_capacity(plane);
    let mut data = Vec::with_capacity(indices.len() * 3 * plane);
    for &i in indices {
        let img = set.image(i).ok_or_else(|| out_of_range(i, set.n))?;
        check_image(img.len(), set.h, set.w)?;
        grey.clear();
        resize_into(img, set.w, 1, 0, &ry, &rx, &mut grey);
        for c in 0..3 {
            let (mean, inv_std) = (mean[c], 1.0 / std[c]);
            data.extend(grey.iter().map(|v| (v / 255.0 - mean) * inv_std));
        }
    }
    Ok(Tensor::from_vec(data, (indices.len(), 3, size, size), device)?)
}

/// Appends one RGB image, resized per channel and normalised, as 3 planes of `size*size`.
pub(crate) fn push_rgb(
    image: &RgbImage,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    plane: &mut Vec<f32>,
    data: &mut Vec<f32>,
) -> Result<()> {
    let pixels = image.w.checked_mul(image.h).and_then(|p| p.checked_mul(3));
    if image.w == 0 || image.h == 0 || pixels != Some(image.pixels.len()) {
        return Err(Error::invalid(
            "image",
            format!("{} bytes", image.pixels.len()),
            format!("must be {}x{}x3 with both sides ≥ 1", image.w, image.h),
        ));
    }
    let (ry, rx) = (axis_weights(image.h, size), axis_weights(image.w, size));
    for c in 0..3 {
        plane.clear();
        resize_into(&image.pixels, image.w, 3, c, &ry, &rx, plane);
        let (mean, inv_std) = (mean[c], 1.0 / std[c]);
        data.extend(plane.iter().map(|v| (v / 255.0 - mean) * inv_std));
    }
    Ok(())
}

/// Colour images of any sizes as a normalised `[B, 3, size, size]` f32 tensor on `device`: each
/// channel resized bilinearly as [`resize_bilinear`], scaled to [0, 1], then `(x - mean) / std`.
pub fn to_tensor_rgb(
    images: &[&RgbImage],
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Result<Tensor> {
    check_size(size)?;
    check_normalization(mean, std)?;
    let mut plane = Vec::with_capacity(size * size);
    let mut data = Vec::with_capacity(images.len() * 3 * size * size);
    for image in images {
        push_rgb(image, size, mean, std, &mut plane, &mut data)?;
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, size, size), device)?)
}

/// The labels at `indices` as a `[B]` u32 tensor on `device`.
pub fn labels_tensor(set: &ImageSet, indices: &[usize], device: &Device) -> Result<Tensor> {
    let labels = indices
        .iter()
        .map(|&i| set.labels.get(i).map(|&l| u32::from(l)).ok_or_else(|| out_of_range(i, set.n)))
        .collect::<Result<Vec<u32>>>()?;
    Ok(Tensor::from_vec(labels, indices.len(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_upscale_matches_pytorch() {
        let img: Vec<u8> = (0..16).map(|i| i * 10).collect();
        let same = resize_bilinear(&img, 4, 4, 4).unwrap();
        assert_eq!(same, img.iter().map(|&v| f32::from(v)).collect::<Vec<_>>());
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 10.], [20., 30.]]]]), size=4,
        // mode="bilinear", align_corners=False) row 0: [0, 2.5, 7.5, 10].
        let up = resize_bilinear(&[0, 10, 20, 30], 2, 2, 4).unwrap();
        assert!(resize_bilinear(&[0, 10, 20], 2, 2, 4).is_err() && resize_bilinear(&[], 0, 0, 4).is_err());
        assert_eq!(up[..4], [0.0, 2.5, 7.5, 10.0]);
        assert_eq!(up[12..], [20.0, 22.5, 27.5, 30.0]);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(0).is_err() && check_size(MAX_SIDE + 1).is_err() && check_size(14_000_000).is_err());
        assert!(
            check_size(1).is_ok() && check_size(30).is_ok() && check_size(64).is_ok() && check_size(MAX_SIDE).is_ok()
        );
    }
}
