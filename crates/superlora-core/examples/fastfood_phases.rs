//! Times the pieces of a large fastfood transform one by one (median of 15 runs each): a bare
//! Walsh–Hadamard transform, a copy and an elementwise multiply of the same length, and the
//! forward / transpose at d = D/2 and d = 93. To see where the time of
//! `cargo bench -p superlora-core --bench fastfood` goes:
//! `cargo run --release -p superlora-core --example fastfood_phases [log2 D [case]]`.
use std::time::Instant;

use superlora_core::projection::fastfood::Fastfood;
use superlora_core::projection::wht::wht;

fn median(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..15)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// A deterministic value in [−2, 2) with a full mantissa.
fn value(i: usize, seed: u64) -> f32 {
    let h = (i as u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((h >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
}

/// FNV-1a over the bits of `v`.
fn bits_hash(v: &[f32]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| (h ^ u64::from(x.to_bits())).wrapping_mul(0x100_0000_01b3))
}

fn main() {
    superlora_core::sys::ensure_malloc_tunables();
    let k: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(24);
    let n = 1usize << k;
    // A second argument (forward | transpose | forward93 | transpose93 | wht) runs that case only,
    // 40 times, for `perf record`.
    if let Some(case) = std::env::args().nth(2) {
        let d = if case.ends_with("93") { 93 } else { n / 2 };
        let f = Fastfood::generate(d, n, 0, 0);
        let (xs, g) = (vec![1.0f32; d], vec![1.0f32; n]);
        let mut w = g.clone();
        for _ in 0..40 {
            match case.trim_end_matches("93") {
                "forward" => drop(std::hint::black_box(f.forward(&xs))),
                "transpose" => drop(std::hint::black_box(f.transpose(&g))),
                _ => wht(&mut w),
            }
        }
        return;
    }
    // Values that are not small integers, so that a change in the order of rounding shows in the hashes.
    let a: Vec<f32> = (0..n).map(|i| value(i, 1)).collect();
    let b = a.clone();
    let mut x = a.clone();
    let mul = median(|| {
        let v: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p * q).collect();
        std::hint::black_box(v);
    });
    let copy = median(|| {
        x.copy_from_slice(&a);
        std::hint::black_box(&x);
    });
    let bare = median(|| {
        wht(&mut x);
        std::hint::black_box(&x);
    });
    x.copy_from_slice(&a);
    wht(&mut x);
    let hw = bits_hash(&x);
    println!("n = 2^{k}: multiply (one thread) {mul:.2} ms, copy {copy:.2} ms, wht {bare:.2} ms (bits {hw:016x})");
    for d in [n / 2, 93] {
        let f = Fastfood::generate(d, n, 0, 0);
        let xs: Vec<f32> = (0..d).map(|i| value(i, 2)).collect();
        let fwd = median(|| {
            std::hint::black_box(f.forward(&xs));
        });
        let tr = median(|| {
            std::hint::black_box(f.transpose(&a));
        });
        // Hashes of the result bits, to check that a faster build computes the same numbers.
        let (hf, ht) = (bits_hash(&f.forward(&xs)), bits_hash(&f.transpose(&a)));
        println!("d = {d}: forward {fwd:.2} ms, transpose {tr:.2} ms (bits {hf:016x} {ht:016x})");
    }
}
