//! e^x over 4M values in [−20, 0]: libm's `expf` (a call per element) against
//! [`superlora_models::ops::exp_nonpos`] (inlined, so the loop vectorises), as GELU and softmax use
//! them. `cargo run --release -p superlora-models --example exp_rate` (docs/BENCHMARKS.md).
use std::hint::black_box;
use std::time::Instant;

use superlora_models::ops::exp_nonpos;

fn median_ms(mut f: impl FnMut()) -> f64 {
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

fn main() {
    let n = 1 << 22;
    let x: Vec<f32> = (0..n).map(|i| -20.0 * (i as f32) / n as f32).collect();
    let mut y = vec![0f32; n];
    let libm = median_ms(|| {
        for (o, &v) in y.iter_mut().zip(black_box(&x)) {
            *o = v.exp();
        }
        black_box(&y);
    });
    let ours = median_ms(|| {
        for (o, &v) in y.iter_mut().zip(black_box(&x)) {
            *o = exp_nonpos(v);
        }
        black_box(&y);
    });
    println!("{n} values: libm expf {libm:.2} ms, exp_nonpos {ours:.2} ms ({:.1}x)", libm / ours);
}
