//! Gradients of the whole ΔW map: finite differences against autograd for every factorization x
//! every projection on tiny shapes (f64), and the "every trainable tensor receives a finite,
//! non-zero gradient" guard.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use superlora_core::SuperLora;
use superlora_core::rng::{Purpose, stream};

/// Fixed random weights C_l, so that loss = Σ_l Σ C_l ⊙ ΔW_l² + Σ C_l ⊙ ΔW_l is a non-linear
/// scalar function of every trainable number.
fn weights(a: &SuperLora) -> Vec<Tensor> {
    let mut r = stream(42, 0, Purpose::Init);
    a.plan()
        .layers
        .iter()
        .map(|l| {
            let v: Vec<f64> = (0..l.rows * l.cols).map(|_| r.normal()).collect();
            Tensor::from_vec(v, (l.rows, l.cols), &Device::Cpu).unwrap().to_dtype(a.dtype()).unwrap()
        })
        .collect()
}

fn loss(a: &SuperLora, c: &[Tensor]) -> Tensor {
    loss_of(&a.delta_weights().unwrap(), c, a.dtype())
}

fn loss_of(deltas: &[Tensor], c: &[Tensor], dtype: DType) -> Tensor {
    let mut total = Tensor::zeros((), dtype, &Device::Cpu).unwrap();
    for (d, c) in deltas.iter().zip(c) {
        let term = ((d.sqr().unwrap() * 0.5).unwrap() + d).unwrap().mul(c).unwrap().sum_all().unwrap();
        total = (total + term).unwrap();
    }
    total
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn set_entry(v: &Var, k: usize, value: f64) {
    let mut vals = values(v.as_tensor());
    vals[k] = value;
    v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap()).unwrap();
}

#[test]
fn finite_differences_match_autograd_for_every_factorization_and_projection() {
    let shapes = odd_shapes();
    let h = 1e-6;
    for (label, spec) in matrix() {
        let a = adapter(&shapes, &spec, DType::F64);
        randomize(&a, 9);
        let c = weights(&a);
        let grads = loss(&a, &c).backward().unwrap();
        for (name, v) in a.named_vars() {
            let g = values(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{label}: no gradient for {name}")));
            let n = v.elem_count();
            // Every entry of small tensors, a spread of entries of larger ones.
            let picks: Vec<usize> = if n <= 12 { (0..n).collect() } else { (0..12).map(|i| i * n / 12).collect() };
            for k in picks {
                let x0 = values(v.as_tensor())[k];
                set_entry(&v, k, x0 + h);
                let up = scalar(&loss(&a, &c));
                set_entry(&v, k, x0 - h);
                let down = scalar(&loss(&a, &c));
                set_entry(&v, k, x0);
                let fd = (up - down) / (2.0 * h);
                let tol = 1e-5 * (1.0 + g[k].abs());
                assert!(
                    (fd - g[k]).abs() <= tol,
                    "{label}: d/d {name}[{k}]: finite difference {fd} vs autograd {}",
                    g[k]
                );
            }
        }
    }
}

/// After one backward from the zero-update init, and after one optimizer step, every trainable
/// tensor has a finite gradient; after the step every one is non-zero (spec §4: "able to receive
/// gradient soon"). At step 0 the tensors initialised to zero already receive a non-zero one.
#[test]
fn every_trainable_tensor_receives_a_finite_nonzero_gradient() {
    let shapes = odd_shapes();
    for (label, spec) in matrix() {
        for dtype in [DType::F32, DType::F64] {
            let a = adapter(&shapes, &spec, dtype);
            let c = weights(&a);
            let grads = loss(&a, &c).backward().unwrap();
            let mut any_nonzero = false;
            for (name, v) in a.named_vars() {
                let g = values(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{label}: {name} got no gradient")));
                assert!(g.iter().all(|x| x.is_finite()), "{label}: {name} non-finite at step 0");
                let zero_init = values(v.as_tensor()).iter().all(|x| *x == 0.0);
                let nonzero = g.iter().any(|x| *x != 0.0);
                any_nonzero |= nonzero;
                if zero_init {
                    assert!(nonzero, "{label} {dtype:?}: zero-initialised {name} gets no gradient at step 0");
                }
            }
            assert!(any_nonzero, "{label}: nothing receives gradient at step 0");
            // One SGD step, then every tensor must have a non-zero finite gradient.
            for (_, v) in a.named_vars() {
                let g = grads.get(v.as_tensor()).unwrap();
                v.set(&(v.as_tensor() - (g * 0.1).unwrap()).unwrap()).unwrap();
            }
            let grads = loss(&a, &c).backward().unwrap();
            for (name, v) in a.named_vars() {
                let g = values(grads.get(v.as_tensor()).unwrap());
                assert!(g.iter().all(|x| x.is_finite()), "{label}: {name} non-finite after a step");
                assert!(g.iter().any(|x| *x != 0.0), "{label} {dtype:?}: {name} gets no gradient after one step");
            }
        }
    }
}

/// The two-stage backward (ΔW leaves, then the tape) gives the same gradients as autograd through
/// the whole map, for every row of the matrix, with and without α, and when a layer is unused.
#[test]
fn tape_backward_equals_direct_backward() {
    let shapes = odd_shapes();
    for (label, spec) in matrix() {
        for scale in [1.0, -0.7] {
            let spec = superlora_core::AdapterSpec { scale: Some(scale), ..spec.clone() };
            let a = adapter(&shapes, &spec, DType::F64);
            randomize(&a, 21);
            let mut c = weights(&a);
            if scale != 1.0 {
                // Layer 1 unused by the loss: its ΔW leaf gets no gradient at all.
                c[1] = c[1].zeros_like().unwrap();
            }
            let direct = loss(&a, &c).backward().unwrap();
            let tape = a.forward_tape().unwrap();
            let deltas = tape.deltas().to_vec();
            let direct_deltas = a.delta_weights().unwrap();
            for (x, y) in deltas.iter().zip(&direct_deltas) {
                assert_eq!(bits(x), bits(y), "{label}: tape ΔW differs");
            }
            let model_grads = if scale != 1.0 {
                let used: Vec<Tensor> =
                    deltas.iter().enumerate().filter(|(l, _)| *l != 1).map(|(_, d)| d.clone()).collect();
                let cs: Vec<Tensor> = c.iter().enumerate().filter(|(l, _)| *l != 1).map(|(_, t)| t.clone()).collect();
                loss_of(&used, &cs, DType::F64).backward().unwrap()
            } else {
                loss_of(&deltas, &c, DType::F64).backward().unwrap()
            };
            let via_tape = tape.backward(model_grads).unwrap();
            for (name, v) in a.named_vars() {
                let want = values(direct.get(v.as_tensor()).unwrap());
                // No gradient at all is only right where the true gradient is zero (an unused layer).
                let got = match via_tape.get(v.as_tensor()) {
                    Some(g) => values(g),
                    None if want.iter().all(|x| *x == 0.0) => vec![0.0; want.len()],
                    None => panic!("{label}: tape gave no gradient for {name}"),
                };
                assert_close(&got, &want, 1e-12, &format!("{label} α={scale}: {name}"));
            }
        }
    }
}
