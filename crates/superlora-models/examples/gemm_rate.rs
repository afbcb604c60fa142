//! f32 matmul throughput of candle's CPU backend (the `gemm` crate) on the shapes of a MiniLM
//! step (1024 tokens x 384 hidden, FFN 1536), to set beside another BLAS on the same core:
//! `RAYON_NUM_THREADS=1 cargo run --release -p superlora-models --example gemm_rate`
//! (docs/BENCHMARKS.md, "Data parallel", compares it with PyTorch's MKL at one thread).
use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (m, k, n) in [(1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384), (2048, 384, 384)] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let bt = b.t()?;
        for _ in 0..3 {
            a.matmul(&bt)?;
        }
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            a.matmul(&bt)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{m} x {k} · ({n} x {k})ᵀ: {:.1} GFLOP/s", 2.0 * (m * k * n) as f64 / median / 1e9);
    }
    Ok(())
}
