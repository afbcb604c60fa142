//! AdamW against a scalar reference written from the update rule, clipping, and state round trip.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use superlora_train::optim::{AdamW, AdamWConfig, GroupSettings};

fn grads_for(vars: &[&Var], values: &[Vec<f64>]) -> GradStore {
    // Build a GradStore through a backward: loss = Σ ⟨c, p⟩ gives ∂loss/∂p = c.
    let mut loss = Tensor::zeros((), DType::F64, &Device::Cpu).unwrap();
    for (v, c) in vars.iter().zip(values) {
        let c = Tensor::from_vec(c.clone(), v.dims(), &Device::Cpu).unwrap();
        loss = (loss + v.as_tensor().mul(&c).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn vals(v: &Var) -> Vec<f64> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn matches_the_scalar_reference() {
    let p0 = vec![0.5, -1.0, 2.0];
    let a = Var::from_tensor(&Tensor::from_vec(p0.clone(), 3, &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::from_vec(vec![0.1], 1, &Device::Cpu).unwrap()).unwrap();
    let cfg = AdamWConfig { max_grad_norm: None, ..Default::default() };
    let mut opt = AdamW::new(
        cfg,
        vec![
            (GroupSettings { name: "adapter".into(), lr: 0.01, weight_decay: 0.1 }, vec![("a".into(), a.clone())]),
            (GroupSettings { name: "head".into(), lr: 0.1, weight_decay: 0.0 }, vec![("b".into(), b.clone())]),
        ],
    )
    .unwrap();
    let (mut p, mut m, mut v) = (p0, [0.0; 3], [0.0; 3]);
    for t in 1..=5 {
        let g: Vec<f64> = (0..3).map(|i| (t as f64) * 0.3 - i as f64).collect();
        let factor = 1.0 / t as f64;
        opt.step(&grads_for(&[&a, &b], &[g.clone(), vec![1.0]]), factor).unwrap();
        for i in 0..3 {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let mh = m[i] / (1.0 - 0.9f64.powi(t));
            let vh = v[i] / (1.0 - 0.999f64.powi(t));
            p[i] -= 0.01 * factor * (mh / (vh.sqrt() + 1e-8) + 0.1 * p[i]);
        }
        for (x, y) in vals(&a).iter().zip(&p) {
            assert!((x - y).abs() < 1e-12, "step {t}: {x} vs {y}");
        }
    }
}

#[test]
fn clipping_scales_to_the_max_norm_and_nan_is_refused() {
    let a = Var::from_tensor(&Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap()).unwrap();
    let mut opt = AdamW::new(
        AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() },
        vec![(GroupSettings { name: "g".into(), lr: 1.0, weight_decay: 0.0 }, vec![("a".into(), a.clone())])],
    )
    .unwrap();
    let s = opt.step(&grads_for(&[&a], &[vec![3.0, 4.0]]), 1.0).unwrap();
    assert!((s.grad_norm - 5.0).abs() < 1e-12);
    let before = vals(&a);
    assert!(opt.step(&grads_for(&[&a], &[vec![f64::NAN, 0.0]]), 1.0).is_err());
    assert_eq!(vals(&a), before, "a refused step changes nothing");
}

#[test]
fn saved_state_resumes_bit_for_bit() {
    let make = || {
        let a = Var::from_tensor(&Tensor::from_vec(vec![1.0f64, 2.0], 2, &Device::Cpu).unwrap()).unwrap();
        let opt = AdamW::new(
            AdamWConfig::default(),
            vec![(GroupSettings { name: "g".into(), lr: 0.1, weight_decay: 0.01 }, vec![("a".into(), a.clone())])],
        )
        .unwrap();
        (a, opt)
    };
    let g = |t: usize| vec![t as f64, -(t as f64) * 0.5];
    let (a1, mut o1) = make();
    for t in 0..6 {
        o1.step(&grads_for(&[&a1], &[g(t)]), 1.0).unwrap();
    }
    let (a2, mut o2) = make();
    for t in 0..3 {
        o2.step(&grads_for(&[&a2], &[g(t)]), 1.0).unwrap();
    }
    let (state, step) = o2.state();
    let (a3, mut o3) = make();
    a3.set(a2.as_tensor()).unwrap();
    o3.load_state(&state, step).unwrap();
    for t in 3..6 {
        o3.step(&grads_for(&[&a3], &[g(t)]), 1.0).unwrap();
    }
    assert_eq!(vals(&a1), vals(&a3));
}

#[test]
fn moments_do_not_hold_the_graphs_of_past_steps() {
    // candle detaches the gradients of intermediate nodes but not those of the leaves: in
    // X = A·Bᵀ the gradient of A is computed as ∂X·(Bᵀ)ᵀ with Bᵀ a tracked node, so it still
    // references ∂X (a full rows x cols tensor). Moments built from it would chain every step's
    // ∂X together (the study's LoRA runs grew ~16 MB per step before the optimizer detached).
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::from_vec(vec![0.1, -0.2, 0.3, 0.4], (4, 1), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::from_vec(vec![0.5, 0.6, -0.7], (3, 1), &dev).unwrap()).unwrap();
    let target = Tensor::from_vec((0..12).map(|i| i as f64 / 10.0).collect::<Vec<_>>(), (4, 3), &dev).unwrap();
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        vec![(
            GroupSettings { name: "adapter".into(), lr: 0.01, weight_decay: 0.01 },
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        )],
    )
    .unwrap();
    for step in 0..3 {
        let x = a.as_tensor().matmul(&b.as_tensor().t().unwrap()).unwrap();
        let grads = (x - &target).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        if step == 0 {
            // The premise: this leaf gradient still carries a graph.
            assert!(grads.get(a.as_tensor()).unwrap().track_op());
        }
        opt.step(&grads, 1.0).unwrap();
    }
    let (state, _) = opt.state();
    for (name, t) in &state {
        assert!(!t.track_op(), "optimizer state `{name}` still references the autograd graph");
    }
}
