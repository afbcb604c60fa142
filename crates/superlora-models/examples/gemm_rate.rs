//! f32 matmul throughput of candle's CPU backend (the `gemm` crate) on the shapes of a MiniLM
//! step (1024 tokens x 384 hidden, FFN 1536; 512 tokens per worker under `--workers 2`), forward
//! (x·Wᵀ, W stored [N, K]) and backward (∂y·W), to set beside another BLAS on the same core:
//! `RAYON_NUM_THREADS=1 cargo run --release -p superlora-models --example gemm_rate`
//! (docs/BENCHMARKS.md, "Data parallel", compares it with PyTorch's MKL at one thread;
//! tools/gemm_rate.py is the PyTorch side).
use std::time::Instant;

use candle_core::{Device, Tensor};

fn rate(a: &Tensor, b: &Tensor, flops: f64) -> candle_core::Result<f64> {
    for _ in 0..3 {
        a.matmul(b)?;
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        a.matmul(b)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(flops / times[times.len() / 2] / 1e9)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for m in [1024, 512] {
        for (k, n) in [(384, 384), (384, 1536), (1536, 384)] {
            let flops = 2.0 * (m * k * n) as f64;
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let g = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
            let fwd = rate(&x, &w.t()?, flops)?;
            let fwd_stored = rate(&x, &w.t()?.contiguous()?, flops)?;
            let bwd = rate(&g, &w, flops)?;
            println!(
                "M {m:>4} K {k:>4} N {n:>4}: x·Wᵀ {fwd:6.1} GFLOP/s (Wᵀ stored: {fwd_stored:6.1}), ∂y·W {bwd:6.1} GFLOP/s"
            );
        }
    }
    Ok(())
}
