//! Shared helpers: a tiny model with every tensor moved off its zero init, and synthetic images.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use superlora_data::ImageSet;
use superlora_diffusion::{BetaSchedule, Dit, DitConfig};

pub fn tiny_config() -> DitConfig {
    DitConfig {
        image: 28,
        patch: 4,
        width: 16,
        depth: 2,
        heads: 2,
        mlp: 24,
        classes: 10,
        freq_dim: 8,
        timesteps: 50,
        schedule: BetaSchedule::Cosine,
    }
}

/// A tiny model whose tensors are all non-zero (as after pretraining): adaLN-Zero and the zero
/// output layer would otherwise block every gradient but the last layer's.
pub fn tiny_model(seed: u64) -> Dit {
    let dev = Device::Cpu;
    let m = Dit::new(tiny_config(), seed, &dev).unwrap();
    for (k, (_, v)) in m.named_vars().into_iter().enumerate() {
        let mut rng = superlora_core::rng::stream(seed + 1000, k, superlora_core::rng::Purpose::Init);
        let noise: Vec<f32> = (0..v.elem_count()).map(|_| (rng.normal() * 0.1) as f32).collect();
        let t = (v.as_tensor() + Tensor::from_vec(noise, v.dims(), &dev).unwrap()).unwrap();
        v.set(&t).unwrap();
    }
    m
}

/// `n` synthetic 28x28 images: class c is a bright vertical bar at column 2c + 4, plus noise.
pub fn bars(n: usize, seed: u64) -> ImageSet {
    let mut rng = superlora_core::rng::stream(seed, 7, superlora_core::rng::Purpose::Init);
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 10) as u8;
        labels.push(c);
        for y in 0..28 {
            for x in 0..28 {
                let on = x == 2 * c as usize + 4 && (4..24).contains(&y);
                let base = if on { 230.0 } else { 10.0 };
                images.push((base + rng.uniform() * 20.0) as u8);
            }
        }
    }
    ImageSet::new(images, labels, 28, 28, (0..10).map(|d| d.to_string()).collect(), "bars").unwrap()
}

/// `n` synthetic 28x28 images of three classes (labels i mod 3): class c is a bright band over
/// columns 8c + 5 ..= 8c + 7, rows 4..24, plus noise.
pub fn bands(n: usize, seed: u64) -> ImageSet {
    let mut rng = superlora_core::rng::stream(seed, 8, superlora_core::rng::Purpose::Init);
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 3) as u8;
        labels.push(c);
        let lo = 8 * c as usize + 5;
        for y in 0..28 {
            for x in 0..28 {
                let on = (lo..lo + 3).contains(&x) && (4..24).contains(&y);
                images.push(((if on { 220.0 } else { 10.0 }) + rng.uniform() * 20.0) as u8);
            }
        }
    }
    ImageSet::new(images, labels, 28, 28, (0..10).map(|d| d.to_string()).collect(), "bands").unwrap()
}
