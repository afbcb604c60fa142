//! Helpers shared by the model tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, SuperLora};
use superlora_io::TargetPattern;
use superlora_models::LinearInfo;
use superlora_models::adapt::{Deltas, select};

/// `<cache>/assets/<asset>/<file>`, or a panic naming the set-up command (never a silent skip).
pub fn asset(asset: &str, file: &str) -> PathBuf {
    let cache = std::env::var_os("SUPERLORA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|x| PathBuf::from(x).join("superlora"))
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/superlora"))
    });
    let p = cache.join("assets").join(asset).join(file);
    assert!(p.exists(), "missing asset {}: run `scripts/setup-assets.sh {asset}` first", p.display());
    p
}

/// A tensor of seeded values in [-s, s) (no RNG state: the same every run).
pub fn seeded(dims: &[usize], seed: u64, s: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The one-node blocks ([`superlora_models`]' `block`) against their oracle, the per-op blocks,
/// through a model's `forward(deltas, composed)`: the same output and the same gradient (to
/// rounding) for every adapter tensor, with weight-wise LoRA (rank 2) on the linears `sets[0]`
/// names, ΔW factored, and on `sets[1]`, ΔW formed.
pub fn one_node_equals_per_op(linears: &[LinearInfo], sets: [&str; 2], forward: &dyn Fn(&Deltas, bool) -> Tensor) {
    let dev = Device::Cpu;
    for (names, factored) in [(sets[0], true), (sets[1], false)] {
        let targets = select(linears, &TargetPattern::names(names).unwrap()).unwrap();
        let spec = AdapterSpec { rank: Some(2), ..Default::default() };
        let a = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        for (i, (name, v)) in a.named_vars().into_iter().enumerate() {
            a.set(&name, &seeded(v.dims(), 10 + i as u64, 0.05)).unwrap();
        }
        let run = |composed: bool| {
            let tape = if factored { a.training_tape().unwrap() } else { a.forward_tape().unwrap() };
            let deltas = Deltas::from_tape(&targets, &tape).unwrap();
            let x = forward(&deltas, composed);
            let c = seeded(x.dims(), 2, 1.0);
            let grads = tape.backward(x.mul(&c).unwrap().sum_all().unwrap().backward().unwrap()).unwrap();
            (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), adapter_grads(&a, &grads))
        };
        let ((x1, g1), (x0, g0)) = (run(false), run(true));
        let rel = |a: &[f32], b: &[f32]| {
            let num = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            num / b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-30)
        };
        // The blocks multiply by a stored Wᵀ, the per-op linears read W transposed: last bits.
        assert!(rel(&x1, &x0) < 1e-5, "{names}: the forward differs by {}", rel(&x1, &x0));
        for ((n, _), (a, b)) in a.named_vars().iter().zip(g1.iter().zip(&g0)) {
            let rel = rel(a, b);
            assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| *v != 0.0), "{names}: gradient of {n}");
            assert!(rel < 1e-4, "{names}: gradient of {n} differs by {rel} (relative)");
        }
    }
}

/// Each adapter tensor's gradient in `grads`, flattened, in `named_vars` order (a panic naming
/// the tensor that has none).
pub fn adapter_grads(a: &SuperLora, grads: &candle_core::backprop::GradStore) -> Vec<Vec<f32>> {
    a.named_vars()
        .iter()
        .map(|(n, v)| {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {n}"));
            g.flatten_all().unwrap().to_vec1().unwrap()
        })
        .collect()
}

/// A tensor of seeded normal values N(mean, std²) (Box–Muller on hashed uniforms: no RNG state,
/// the same every run; candle's CPU `randn` cannot be seeded). `seed` picks the draw.
pub fn normal(mean: f32, std: f32, shape: impl Into<candle_core::Shape>, seed: u64) -> Tensor {
    let shape = shape.into();
    let unit = |i: u64, salt: u64| {
        let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (seed ^ salt).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let v: Vec<f32> = (0..shape.elem_count() as u64)
        .map(|i| {
            let (u1, u2) = (unit(i, 0x5EED), unit(i, 0xC0FFEE));
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mean as f64 + std as f64 * z) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A seed from a name (FNV-1a), to give each named tensor its own draw.
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
