//! Every trainable tensor gets a finite, non-zero gradient: all base tensors when pretraining, all
//! adapter tensors (and no base tensor) when transferring; and the frozen-op path computes the same
//! outputs and ΔW gradients as the plain-op path (its slow twin).

mod common;

use candle_core::{Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Fold, SuperLora};
use superlora_diffusion::train::{TrainSettings, Trainee, step_loss};
use superlora_diffusion::{Dit, Mode};
use superlora_io::TargetPattern;
use superlora_models::adapt::{Deltas, select};
use superlora_train::schedule::Schedule;

fn settings() -> TrainSettings {
    TrainSettings {
        steps: 1,
        batch_size: 6,
        lr: 1e-3,
        weight_decay: 0.0,
        schedule: Schedule::Constant,
        warmup: 0,
        max_grad_norm: None,
        label_dropout: 0.3,
        eval_every: 1,
        heldout_limit: 4,
        eval_batch_size: 4,
        seed: 3,
    }
}

fn assert_grad(g: Option<&Tensor>, what: &str) {
    let g = g.unwrap_or_else(|| panic!("no gradient for {what}"));
    let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "non-finite gradient for {what}");
    assert!(v.iter().any(|x| *x != 0.0), "zero gradient for {what}");
}

#[test]
fn pretraining_reaches_every_base_tensor() {
    let m = common::tiny_model(1);
    let set = common::bars(12, 0);
    let (loss, tape) = step_loss(&m, &Trainee::Base, &set, &[0, 1, 2, 3, 4, 5], 0, &settings()).unwrap();
    assert!(tape.is_none());
    let grads = loss.backward().unwrap();
    for (name, v) in m.named_vars() {
        assert_grad(grads.get(v.as_tensor()), &name);
    }
}

/// F = 0 at initialisation (adaLN-Zero), so ε̂ = √(1 − ᾱ_t)·x_t exactly.
#[test]
fn a_fresh_model_predicts_the_skip_term_only() {
    let m = Dit::new(common::tiny_config(), 0, &Device::Cpu).unwrap();
    let x = Tensor::ones((2, 784), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = m.forward(&x, &[3, 40], &[1, 10], &Deltas::none(), Mode::TrainBase).unwrap();
    let ab = common::tiny_config().noise_schedule().unwrap().alpha_bar;
    let y: Vec<Vec<f32>> = y.to_vec2().unwrap();
    for (row, t) in y.iter().zip([3, 40]) {
        let want = (1.0 - ab[t]).sqrt() as f32;
        assert!(row.iter().all(|v| (v - want).abs() < 1e-6), "t={t}: {} vs {want}", row[0]);
    }
}

fn adapter_specs() -> Vec<AdapterSpec> {
    vec![
        AdapterSpec { rank: Some(1), ..Default::default() },
        AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(4),
            order: Some(2),
            factor: Some(FactorKind::Lora),
            rank: Some(2),
            ..Default::default()
        },
        AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(2),
            order: Some(3),
            factor: Some(FactorKind::Tucker),
            rank: Some(2),
            ..Default::default()
        },
        AdapterSpec {
            fold: Some(Fold::Square),
            order: Some(3),
            factor: Some(FactorKind::Tucker),
            rank: Some(2),
            ratio: Some(0.01),
            ..Default::default()
        },
    ]
}

#[test]
fn transfer_reaches_every_adapter_tensor_and_no_base_tensor() {
    let m = common::tiny_model(2);
    let set = common::bars(12, 1);
    let targets = select(&m.linears(), &TargetPattern::names("query,key,value,output").unwrap()).unwrap();
    assert_eq!(targets.len(), 8);
    assert!(targets.iter().all(|t| t.name.contains(".attn.") && (t.rows, t.cols) == (16, 16)));
    for spec in adapter_specs() {
        let a =
            SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (k, (name, v)) in a.named_vars().into_iter().enumerate() {
            let mut rng = superlora_core::rng::stream(9, k, superlora_core::rng::Purpose::Init);
            let vals: Vec<f32> = (0..v.elem_count()).map(|_| (rng.normal() * 0.05) as f32).collect();
            a.set(&name, &Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap()).unwrap();
        }
        let trainee = Trainee::Adapter { adapter: &a, targets: &targets };
        let (loss, tape) = step_loss(&m, &trainee, &set, &[6, 7, 8, 9, 10, 11], 4, &settings()).unwrap();
        let grads = tape.unwrap().backward(loss.backward().unwrap()).unwrap();
        for (name, v) in a.named_vars() {
            assert_grad(grads.get(v.as_tensor()), &format!("{spec:?}: {name}"));
        }
        for (name, v) in m.named_vars() {
            assert!(grads.get(v.as_tensor()).is_none(), "{spec:?}: base tensor {name} got a gradient");
        }
    }
}

/// The frozen path (fused frozen/adapted linear ops) against the plain path (matmul on W + ΔW):
/// same ε̂, same ∂L/∂ΔW.
#[test]
fn frozen_ops_match_their_plain_twin() {
    let m = common::tiny_model(3);
    let dev = Device::Cpu;
    let targets = select(&m.linears(), &TargetPattern::names("query,value").unwrap()).unwrap();
    let mut rng = superlora_core::rng::stream(5, 0, superlora_core::rng::Purpose::Init);
    let mut rand = |n: usize, s: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * s) as f32).collect() };
    let x = Tensor::from_vec(rand(3 * 784, 1.0), (3, 784), &dev).unwrap();
    let (t, y) = ([0usize, 17, 49], [2u32, 10, 7]);
    let mut outs = Vec::new();
    for mode in [Mode::TrainBase, Mode::Frozen] {
        let vars: Vec<candle_core::Var> = targets
            .iter()
            .map(|s| {
                let mut r = superlora_core::rng::stream(11, s.name.len(), superlora_core::rng::Purpose::Init);
                let v: Vec<f32> = (0..s.rows * s.cols).map(|_| (r.normal() * 0.1) as f32).collect();
                candle_core::Var::from_tensor(&Tensor::from_vec(v, (s.rows, s.cols), &dev).unwrap()).unwrap()
            })
            .collect();
        let d: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let deltas = Deltas::new(&targets, &d).unwrap();
        let e = m.forward(&x, &t, &y, &deltas, mode).unwrap();
        let grads = e.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> =
            vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect();
        outs.push((e.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g));
    }
    let close = |a: &[f32], b: &[f32], what: &str| {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= 1e-4 * scale, "{what}: max difference {err} (scale {scale})");
    };
    close(&outs[0].0, &outs[1].0, "ε̂");
    for (k, (a, b)) in outs[0].1.iter().zip(&outs[1].1).enumerate() {
        close(a, b, &format!("∂L/∂ΔW of {}", targets[k].name));
    }
}

#[test]
fn bad_inputs_name_the_problem() {
    let m = common::tiny_model(4);
    let x = Tensor::zeros((1, 784), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = |t: usize, y: u32| m.forward(&x, &[t], &[y], &Deltas::none(), Mode::Frozen).unwrap_err().to_string();
    assert!(err(0, 11).contains("label"), "{}", err(0, 11));
    assert!(err(50, 1).contains("timestep"), "{}", err(50, 1));
    let bad = superlora_diffusion::DitConfig { heads: 5, ..common::tiny_config() };
    assert!(Dit::new(bad, 0, &Device::Cpu).err().unwrap().to_string().contains("heads"));
}
