//! Fashion-MNIST from its idx files (asset `fashion-mnist`): 60,000 train and 10,000 test 28x28
//! grey images in 10 classes.
//!
//! idx layout: a big-endian u32 magic (`0x00000803` images, `0x00000801` labels), then one
//! big-endian u32 per dimension (n, rows, cols for images; n for labels), then u8 data.

use std::path::Path;

use crate::assets::asset_file;
use crate::error::{Error, Result};
use crate::files::read_gz;
use crate::image::ImageSet;

/// The asset name of Fashion-MNIST in the cache.
pub const ASSET: &str = "fashion-mnist";

/// Class names, indexed by label.
pub const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Bag", "Sneaker", "Ankle boot"];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Which of the two official parts to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FashionSplit {
    /// 60,000 images.
    Train,
    /// 10,000 images.
    Test,
}

impl FashionSplit {
    /// The (images, labels) file names.
    pub fn files(self) -> (&'static str, &'static str) {
        match self {
            FashionSplit::Train => ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            FashionSplit::Test => ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        }
    }
}

/// Loads `split` from the asset cache.
pub fn load_fashion_mnist(split: FashionSplit) -> Result<ImageSet> {
    let (images, labels) = split.files();
    load_fashion_mnist_files(&asset_file(ASSET, images)?, &asset_file(ASSET, labels)?)
}

/// Loads Fashion-MNIST from a gzip-compressed idx images file and its labels file.
pub fn load_fashion_mnist_files(images: &Path, labels: &Path) -> Result<ImageSet> {
    let images_name = images.display().to_string();
    let labels_name = labels.display().to_string();
    let (pixels, n, h, w) = parse_idx_images(&read_gz(images)?, &images_name)?;
    let labels = parse_idx_labels(&read_gz(labels)?, &labels_name)?;
    if labels.len() != n {
        return Err(Error::format(&labels_name, format!("{} labels for {n} images in {images_name}", labels.len())));
    }
    ImageSet::new(pixels, labels, h, w, CLASSES.iter().map(|c| c.to_string()).collect(), &labels_name)
}

/// Parses an uncompressed idx3 images file: (pixels, n, rows, cols).
pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<(Vec<u8>, usize, usize, usize)> {
    let dims = header(bytes, name, IMAGES_MAGIC, 3)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    let len = n.checked_mul(h).and_then(|x| x.checked_mul(w)).ok_or_else(|| Error::format(name, "dims overflow"))?;
    let data = body(bytes, name, 16, len, &format!("{n}x{h}x{w}"))?;
    if h == 0 || w == 0 {
        return Err(Error::format(name, format!("empty image size {h}x{w}")));
    }
    Ok((data.to_vec(), n, h, w))
}

/// Parses an uncompressed idx1 labels file.
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let dims = header(bytes, name, LABELS_MAGIC, 1)?;
    Ok(body(bytes, name, 8, dims[0], &dims[0].to_string())?.to_vec())
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn header(bytes: &[u8], name: &str, magic: u32, ndim: usize) -> Result<Vec<usize>> {
    let size = 4 + 4 * ndim;
    if bytes.len() < size {
        return Err(Error::format(name, format!("truncated idx header ({} of {size} bytes)", bytes.len())));
    }
    let got = be_u32(bytes, 0).unwrap_or_default();
    if got != magic {
        return Err(Error::format(name, format!("wrong idx magic {got:#010x} (expected {magic:#010x})")));
    }
    Ok((0..ndim).map(|d| be_u32(bytes, 4 + 4 * d).unwrap_or_default() as usize).collect())
}

fn body<'a>(bytes: &'a [u8], name: &str, start: usize, len: usize, dims: &str) -> Result<&'a [u8]> {
    let have = bytes.len() - start;
    if have != len {
        let what = if have < len { "truncated" } else { "trailing bytes" };
        return Err(Error::format(name, format!("{what}: dims {dims} need {len} data bytes, file has {have}")));
    }
    Ok(&bytes[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_small_files() {
        let (px, n, h, w) = parse_idx_images(&idx(IMAGES_MAGIC, &[2, 2, 3], &[7; 12]), "i").unwrap();
        assert_eq!((px.len(), n, h, w), (12, 2, 2, 3));
        assert_eq!(parse_idx_labels(&idx(LABELS_MAGIC, &[3], &[1, 2, 3]), "l").unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (idx(LABELS_MAGIC, &[1, 2, 2], &[0; 4]), "wrong idx magic"),
            (idx(IMAGES_MAGIC, &[2, 28, 28], &[0; 784]), "truncated"),
            (idx(IMAGES_MAGIC, &[1, 2, 2], &[0; 5]), "trailing"),
            (idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]), "f.idx"),
            (idx(IMAGES_MAGIC, &[0, 0, 5], &[]), "empty image"),
            (vec![0, 0, 8], "truncated idx header"),
            (vec![], "truncated idx header"),
        ];
        for (bytes, want) in cases {
            let msg = parse_idx_images(&bytes, "f.idx").unwrap_err().to_string();
            assert!(msg.starts_with("f.idx: ") && msg.contains(want), "{msg} (want {want})");
        }
        assert!(parse_idx_labels(&idx(LABELS_MAGIC, &[5], &[1, 2]), "l").is_err());
        assert!(parse_idx_labels(&idx(IMAGES_MAGIC, &[2], &[1, 2]), "l").is_err());
    }
}
