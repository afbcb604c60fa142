//! Elementwise loops compiled for the CPU they run on, chosen at run time.
//!
//! The release build targets baseline x86-64, so the loops of GELU, LayerNorm and softmax were
//! vectorised four floats wide (SSE) without FMA, and a MiniLM step spent 11 % of its time in
//! GELU alone (docs/BENCHMARKS.md). [`multiversion!`] compiles one loop body three times, for
//! AVX-512, for AVX2 + FMA and for the baseline, and calls the widest the CPU has.
//!
//! The three versions give bit-identical results: Rust never contracts a·b + c into an FMA by
//! itself and LLVM keeps the order of floating-point reductions, so only the vector width
//! changes, never the arithmetic of an element (test `every_version_gives_the_same_bits` in
//! `ops.rs`). Adapters stay reproducible across machines.

/// `$vis fn $name(args) { body }`, with the body compiled for AVX-512, AVX2 + FMA and the baseline
/// and the widest the CPU supports called (the detection is cached by std).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::simd::level() >= 2 {
                    // SAFETY: the CPU has every feature v4 is compiled for (`level` checked them).
                    return unsafe { v4($($arg),*) };
                }
                if $crate::simd::level() == 1 {
                    // SAFETY: the CPU has AVX2 and FMA (`level` checked them).
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Caps the version [`multiversion!`] functions pick (0 baseline, 1 AVX2 + FMA, 2 AVX-512) for the
/// whole process (see `superlora_core::simd::set_cap`).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn set_cap(level: u8) {
    superlora_core::simd::set_cap(level);
}

/// 2 with AVX-512 (F, VL, BW, DQ), 1 with AVX2 + FMA, 0 otherwise; `SUPERLORA_SIMD=0|1|2` caps it
/// (`superlora_core::simd::level`, shared with the core crate's kernels).
#[cfg(target_arch = "x86_64")]
pub(crate) fn level() -> u8 {
    superlora_core::simd::level()
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::ops::{attention, gelu, layer_norm, softmax_last};

    /// Deterministic values in [−2, 2).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 4_194_304.0 - 2.0)
            .collect()
    }

    /// Outputs and input gradients of GELU, LayerNorm, softmax and attention, as bits.
    fn run() -> Vec<Vec<u32>> {
        let dev = Device::Cpu;
        let (b, t, h) = (2, 9, 24);
        let x = Var::from_vec(values(b * t * h, 1), (b, t, h), &dev).unwrap();
        let gamma = Tensor::from_vec(values(h, 2), h, &dev).unwrap();
        let beta = Tensor::from_vec(values(h, 3), h, &dev).unwrap();
        let mask = Tensor::from_vec(vec![0f32, 0.0, -1e4, 0.0, 0.0, 0.0, 0.0, 0.0, -1e4], t, &dev).unwrap();
        let bias = Tensor::cat(&[&mask, &mask], 0).unwrap().reshape((b, 1, 1, t)).unwrap();
        let g = gelu(x.as_tensor()).unwrap();
        let n = layer_norm(&g, &gamma, &beta, 1e-12).unwrap();
        let s = softmax_last(&n).unwrap();
        let a = attention(&n, &g, &s, 4, Some(&bias)).unwrap();
        let w = Tensor::from_vec(values(b * t * h, 4), (b, t, h), &dev).unwrap();
        let loss = ((&a * &w).unwrap().sum_all().unwrap() + (&s * &w).unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(x.as_tensor()).unwrap().clone();
        [g, n, s, a, dx]
            .iter()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    #[test]
    fn every_version_gives_the_same_bits() {
        super::set_cap(0);
        let baseline = run();
        for level in [1, 2] {
            super::set_cap(level);
            assert_eq!(run(), baseline, "version {level} differs from the baseline");
        }
        super::set_cap(u8::MAX);
        println!("SIMD level of this CPU: {}", super::level());
    }
}

/// Asks the CPU to start loading the cache line holding `s[i]` (nothing when `i` is past the end):
/// a hint for streaming loops whose per-element work hides less memory latency than the
/// hardware prefetcher needs. No effect on any value.
#[inline(always)]
pub(crate) fn prefetch(s: &[f32], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < s.len() {
        // SAFETY: a prefetch never faults and reads nothing into the program; the address is
        // inside `s` anyway.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(s.as_ptr().add(i).cast::<i8>())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, i);
}

/// Elements per block of the streaming loops that prefetch ([`prefetch_ahead`]): four cache lines.
pub(crate) const STREAM_BLOCK: usize = 64;

/// Prefetches the block of [`STREAM_BLOCK`] values that starts 16 blocks (4 KiB) after `start`.
#[inline(always)]
pub(crate) fn prefetch_ahead(s: &[f32], start: usize) {
    let ahead = start + 16 * STREAM_BLOCK;
    for line in (0..STREAM_BLOCK).step_by(16) {
        prefetch(s, ahead + line);
    }
}
