//! The image → tensor path against slow, obviously correct references written here: bilinear
//! resize (PyTorch `align_corners=False` semantics, per output pixel in f64) and normalisation.

mod common;

use candle_core::{DType, Device};
use common::{need, timed};
use superlora_core::rng::{Purpose, stream};
use superlora_data::preprocess::resize_bilinear;
use superlora_data::{FashionSplit, IMAGENET_MEAN, IMAGENET_STD, ImageSet, labels_tensor, to_tensor};

/// PyTorch's `area_pixel_compute_source_index` + `upsample_bilinear2d`, one output pixel at a time.
fn reference_resize(img: &[u8], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f64> {
    let source = |o: usize, input: usize, output: usize| {
        let s = (o as f64 + 0.5) * (input as f64 / output as f64) - 0.5;
        let s = if s < 0.0 { 0.0 } else { s };
        let i0 = s as usize;
        let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
        (i0, i1, s - i0 as f64)
    };
    let mut out = vec![0.0; out_h * out_w];
    for y in 0..out_h {
        let (y0, y1, ly) = source(y, h, out_h);
        for x in 0..out_w {
            let (x0, x1, lx) = source(x, w, out_w);
            let p = |yy: usize, xx: usize| f64::from(img[yy * w + xx]);
            out[y * out_w + x] = (1.0 - ly) * (1.0 - lx) * p(y0, x0)
                + (1.0 - ly) * lx * p(y0, x1)
                + ly * (1.0 - lx) * p(y1, x0)
                + ly * lx * p(y1, x1);
        }
    }
    out
}

fn random_image(seed: u64, h: usize, w: usize) -> Vec<u8> {
    let mut rng = stream(seed, 0, Purpose::Init);
    (0..h * w).map(|_| rng.below(256) as u8).collect()
}

#[test]
fn resize_matches_reference_on_random_images() {
    let cases =
        [(28, 28, 224), (28, 28, 14), (28, 28, 42), (28, 28, 28), (5, 7, 3), (3, 3, 17), (1, 1, 4), (28, 28, 1)];
    for (seed, &(h, w, size)) in cases.iter().enumerate() {
        let img = random_image(seed as u64, h, w);
        let fast = need("resize", resize_bilinear(&img, h, w, size));
        let slow = reference_resize(&img, h, w, size, size);
        assert_eq!(fast.len(), slow.len());
        let worst = fast.iter().zip(&slow).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-3, "{h}x{w} -> {size}: max abs diff {worst}");
    }
}

fn tensor_values(t: &candle_core::Tensor) -> Vec<f32> {
    need("flatten", t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(Into::into))
}

#[test]
fn tensor_is_resized_replicated_and_normalised() {
    let h = 28;
    let mut images = random_image(99, h, h);
    images.extend(vec![255u8; h * h]);
    images.extend(vec![0u8; h * h]);
    let classes = (0..10).map(|d| d.to_string()).collect();
    let set = need("set", ImageSet::new(images, vec![3, 1, 4], h, h, classes, "synthetic"));
    let size = 56;
    let t = need("to_tensor", to_tensor(&set, &[0, 1, 2], size, &Device::Cpu));
    assert_eq!(t.dims(), &[3, 3, size, size]);
    assert_eq!(t.dtype(), DType::F32);
    let v = tensor_values(&t);
    let plane = size * size;
    let slow = reference_resize(set.image(0).unwrap_or_default(), h, h, size, size);
    for c in 0..3 {
        let (mean, std) = (f64::from(IMAGENET_MEAN[c]), f64::from(IMAGENET_STD[c]));
        for (k, s) in slow.iter().enumerate() {
            let want = (s / 255.0 - mean) / std;
            let got = f64::from(v[c * plane + k]);
            assert!((got - want).abs() < 1e-5, "image 0 channel {c} pixel {k}: {got} vs {want}");
        }
        // White and black images give (1 - mean) / std and -mean / std everywhere.
        let white = &v[(3 + c) * plane..(4 + c) * plane];
        let black = &v[(6 + c) * plane..(7 + c) * plane];
        assert!(white.iter().all(|x| (f64::from(*x) - (1.0 - mean) / std).abs() < 1e-5));
        assert!(black.iter().all(|x| (f64::from(*x) + mean / std).abs() < 1e-5));
    }
    // Known values: white red channel (1 - 0.485) / 0.229 = 2.2489, black blue -0.406 / 0.225 = -1.8044.
    assert!((v[3 * plane] - 2.248_908).abs() < 1e-5 && (v[9 * plane - 1] + 1.804_444).abs() < 1e-5);
    let labels = need("labels", labels_tensor(&set, &[2, 0], &Device::Cpu));
    assert_eq!(need("labels", labels.to_vec1::<u32>().map_err(Into::into)), vec![4, 3]);
    assert!(to_tensor(&set, &[3], size, &Device::Cpu).is_err());
    assert!(to_tensor(&set, &[0], 0, &Device::Cpu).is_err() && to_tensor(&set, &[0], 30, &Device::Cpu).is_ok());
    assert!(labels_tensor(&set, &[3], &Device::Cpu).is_err());
}

#[test]
fn real_batch_at_224() {
    let set = need("fashion-mnist test", superlora_data::load_fashion_mnist(FashionSplit::Test));
    let idx: Vec<usize> = (0..64).collect();
    let t = timed("to_tensor 64 images at 224 px", || to_tensor(&set, &idx, 224, &Device::Cpu));
    assert_eq!(t.dims(), &[64, 3, 224, 224]);
    let v = tensor_values(&t);
    let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    // Bounds of normalised [0, 1] values: -0.485/0.229 … (1 - 0.406)/0.225.
    assert!(lo >= -2.1180 - 1e-4 && hi <= 2.6400 + 1e-4, "{lo} {hi}");
    assert!(lo < -2.0 && hi > 2.5, "real images span black to white: {lo} {hi}");
}
