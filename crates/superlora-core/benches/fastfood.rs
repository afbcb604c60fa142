//! Fastfood forward and transpose (the candle custom ops, f32) against an elementwise multiply of
//! the same number of f32 in candle, at 2^16, 2^20 and 2^24 entries.
//! Target (issue "superlora-core"): fastfood ≤ 5x the elementwise pass.
//!
//! Shapes: x [d = D/2] → F(x) [D]; g [D] → Fᵀ(g) [d]; elementwise a[D] ⊙ b[D]. At 2^24 also
//! `forward_d93` / `transpose_d93`: d = 93, the size of the few-parameter configs that fastfood is
//! used for (the decoder-LLM study's 93 parameters), where the kernels take a shortcut.

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group};
use std::hint::black_box;
use std::sync::Arc;
use superlora_core::projection::GroupProjection;
use superlora_core::projection::fastfood::Fastfood;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fastfood");
    group.sample_size(10);
    for k in [16u32, 20, 24] {
        let big_d = 1usize << k;
        let d = big_d / 2;
        let ff = GroupProjection::Fastfood(Arc::new(Fastfood::generate(d, big_d, 0, 0)));
        let x = Tensor::ones(d, candle_core::DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::ones(big_d, candle_core::DType::F32, &Device::Cpu).unwrap();
        let a = Tensor::ones(big_d, candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::ones(big_d, candle_core::DType::F32, &Device::Cpu).unwrap();
        group.bench_with_input(BenchmarkId::new("forward", format!("2^{k}")), &k, |bch, _| {
            bch.iter(|| black_box(ff.apply(&x).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("transpose", format!("2^{k}")), &k, |bch, _| {
            bch.iter(|| black_box(ff.apply_transpose(&g).unwrap()))
        });
        if k == 24 {
            let small = GroupProjection::Fastfood(Arc::new(Fastfood::generate(93, big_d, 0, 0)));
            let xs = Tensor::ones(93, candle_core::DType::F32, &Device::Cpu).unwrap();
            group.bench_with_input(BenchmarkId::new("forward_d93", format!("2^{k}")), &k, |bch, _| {
                bch.iter(|| black_box(small.apply(&xs).unwrap()))
            });
            group.bench_with_input(BenchmarkId::new("transpose_d93", format!("2^{k}")), &k, |bch, _| {
                bch.iter(|| black_box(small.apply_transpose(&g).unwrap()))
            });
        }
        group.bench_with_input(BenchmarkId::new("elementwise_mul", format!("2^{k}")), &k, |bch, _| {
            bch.iter(|| black_box(a.mul(&b).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    // As the `superlora` binary does: keep freed memory for reuse (see superlora_core::sys).
    superlora_core::sys::ensure_malloc_tunables();
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}
