//! ΔW generation, forward + backward, for the ViT-B query+value layout (24 weights of 768x768,
//! N = 14,155,776), f32 on CPU. The loss is Σ_l ⟨C_l, ΔW_l⟩ with fixed C_l, so backward reaches
//! every trainable tensor through the whole map.
//!
//! Two paths: `tape` (what training uses: ΔW as leaves, then `DeltaTape::backward`) and
//! `autograd` (`delta_weights()` differentiated end to end).
//!
//! Configs: weight-wise LoRA r=1; square 2D G=4 lora r=24; Tucker M=3 G=12 r=5; Kronecker K=2
//! (square G=1, M=2, r=4); dense M=1 + fastfood ρ=0.001 (G=1); and the peers VeRA r=256 and
//! FourierFT n=1000 per weight.

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group};
use std::hint::black_box;
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape, ProjectionKind, SuperLora};

fn configs() -> Vec<(&'static str, AdapterSpec)> {
    let square = |g, m, f, r| AdapterSpec {
        fold: Some(Fold::Square),
        groups: Some(g),
        order: Some(m),
        factor: Some(f),
        rank: r,
        ..Default::default()
    };
    vec![
        ("lora_weightwise_r1", AdapterSpec { rank: Some(1), ..Default::default() }),
        ("square2d_g4_r24", square(4, 2, FactorKind::Lora, Some(24))),
        ("tucker_m3_g12_r5", square(12, 3, FactorKind::Tucker, Some(5))),
        ("kron_k2_r4", AdapterSpec { kron: Some(2), ..square(1, 2, FactorKind::Kronecker, Some(4)) }),
        (
            "dense_m1_fastfood_0.001",
            AdapterSpec {
                projection: Some(ProjectionKind::Fastfood),
                ratio: Some(0.001),
                ..square(1, 1, FactorKind::Dense, None)
            },
        ),
        ("vera_r256", AdapterSpec { factor: Some(FactorKind::Vera), rank: Some(256), ..Default::default() }),
        (
            "fourierft_n1000",
            AdapterSpec { projection: Some(ProjectionKind::Fourier), count: Some(1000), ..Default::default() },
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let shapes: Vec<LayerShape> = (0..24).map(|i| LayerShape::new(format!("l{i}"), 768, 768)).collect();
    let dev = Device::Cpu;
    let weights: Vec<Tensor> = (0..24).map(|_| Tensor::randn(0f32, 1.0, (768, 768), &dev).unwrap()).collect();
    let mut group = c.benchmark_group("delta_fwd_bwd_vitb_qv");
    group.sample_size(10);
    for (label, spec) in configs() {
        let a = SuperLora::from_shapes(&shapes, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        // Move off the zero init so every path does real work.
        for (name, v) in a.named_vars() {
            a.set(&name, &Tensor::randn(0f32, 0.1, v.dims(), &dev).unwrap()).unwrap();
        }
        eprintln!("{label}: {} trainable params", a.num_trainable());
        let loss = |deltas: &[Tensor]| {
            let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
            for (d, w) in deltas.iter().zip(&weights) {
                loss = (loss + d.mul(w).unwrap().sum_all().unwrap()).unwrap();
            }
            loss
        };
        // The training path: ΔW leaves, the model's backward, then the tape.
        group.bench_function(format!("tape/{label}"), |b| {
            b.iter(|| {
                let tape = a.forward_tape().unwrap();
                let grads = loss(tape.deltas()).backward().unwrap();
                black_box(tape.backward(grads).unwrap())
            })
        });
        // Plain autograd through the whole map.
        group.bench_function(format!("autograd/{label}"), |b| {
            b.iter(|| black_box(loss(&a.delta_weights().unwrap()).backward().unwrap()))
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
