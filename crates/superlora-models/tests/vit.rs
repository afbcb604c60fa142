//! DINOv2 ViT-S/14 (real weights, converted from the ONNX graph): features match an independent
//! forward of the ONNX graph (tests/golden, made by tools/dinov2_golden.py), gradients reach every
//! adapter tensor, frozen weights get none, and the position grid resize matches the reference.

mod common;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Fold, SuperLora};
use superlora_io::TargetPattern;
use superlora_models::adapt::{Deltas, select};
use superlora_models::vit::{Vit, bicubic_resize, ensure_converted};

fn model() -> Vit {
    let onnx = common::asset("dinov2-onnx", "vit_s_focus.onnx");
    Vit::load(&ensure_converted(&onnx).unwrap(), &Device::Cpu).unwrap()
}

/// The golden input: x[0,c,i,j] = 0.5 sin(0.1 (i+1)(c+1)) + 0.25 cos(0.07 (j+1)), computed in f64.
fn golden_input(size: usize) -> Tensor {
    let mut v = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for i in 0..size {
            for j in 0..size {
                let x = 0.5 * (0.1 * (i + 1) as f64 * (c + 1) as f64).sin() + 0.25 * (0.07 * (j + 1) as f64).cos();
                v.push(x as f32);
            }
        }
    }
    Tensor::from_vec(v, (1, 3, size, size), &Device::Cpu).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn features_match_the_onnx_graph() {
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("golden/dinov2_vits14_224.json")).expect("golden JSON");
    let tol = golden["suggested_tolerance"]["abs"].as_f64().unwrap() as f32;
    let m = model();
    let x = m.forward(&golden_input(224), &Deltas::none()).unwrap();
    assert_eq!(x.dims(), &[1, 257, 384]);
    let token = |i: usize| -> Vec<f32> { x.narrow(1, i, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
    let mean: Vec<f32> = x.narrow(1, 1, 256).unwrap().mean(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut worst = 0f32;
    let mut check = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            worst = worst.max((g - w).abs());
        }
        let d = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        assert!(d <= tol, "{what}: max abs difference {d} > {tol}");
    };
    check(&token(0), &floats(&golden["cls"]), "CLS token");
    check(&mean, &floats(&golden["patch_mean"]), "mean patch token");
    for (k, v) in golden["patch_tokens"].as_object().unwrap() {
        check(&token(k.parse().unwrap()), &floats(v), &format!("patch token {k}"));
    }
    println!("max abs difference to the ONNX graph: {worst:.2e} (tolerance {tol})");
}

#[test]
fn position_grid_resize_is_pytorch_bicubic() {
    // Upsampling a 2x2 grid to 4x4 with PyTorch's bicubic (A = -0.75, half-pixel, clamped):
    // F.interpolate(torch.tensor([[[[1.,2.],[3.,4.]]]]), size=4, mode="bicubic", align_corners=False)
    let want: [f64; 16] = [
        0.68359375, 1.015625, 1.5625, 1.89453125, 1.34765625, 1.6796875, 2.2265625, 2.55859375, 2.44140625, 2.7734375,
        3.3203125, 3.65234375, 3.10546875, 3.4375, 3.984375, 4.31640625,
    ];
    let got = bicubic_resize(&[1.0, 2.0, 3.0, 4.0], 2, 2, 1, 4, 4);
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?}");
    }
    // Same size is the identity.
    let src: Vec<f32> = (0..30).map(|i| i as f32 * 0.1).collect();
    assert_eq!(bicubic_resize(&src, 5, 3, 2, 5, 3), src);
}

#[test]
fn adapter_gradients_reach_every_tensor_and_frozen_weights_get_none() {
    let m = model();
    let targets = select(&m.linears(), &TargetPattern::names("query,value").unwrap()).unwrap();
    assert_eq!(targets.len(), 24);
    assert_eq!(targets[1].name, "encoder.layer.0.attention.attention.value");
    let dev = Device::Cpu;
    let images = common::normal(0f32, 1.0, (2, 3, 56, 56), 5001);
    let specs = [
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
            order: Some(4),
            factor: Some(FactorKind::Tucker),
            rank: Some(2),
            ..Default::default()
        },
    ];
    for spec in specs {
        let a = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        for (name, v) in a.named_vars() {
            a.set(&name, &common::normal(0f32, 0.05, v.dims(), 5002 ^ common::seed_of(&name))).unwrap();
        }
        let tape = a.forward_tape().unwrap();
        let f = m.features(&images, &Deltas::new(&targets, tape.deltas()).unwrap()).unwrap();
        assert_eq!(f.dims(), &[2, 768]);
        let loss = f.mul(&common::normal(0f32, 1.0, f.dims(), 5003)).unwrap().sum_all().unwrap();
        let grads = tape.backward(loss.backward().unwrap()).unwrap();
        for (name, v) in a.named_vars() {
            let g: Vec<f32> = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0), "{spec:?}: {name}");
        }
        for t in m.frozen_tensors() {
            assert!(grads.get(&t).is_none(), "frozen tensor {:?} got a gradient", t.dims());
        }
    }
}

/// The one-node blocks against their oracle, the per-op blocks, through the real DINOv2: the same
/// features and the same gradient (to rounding) for every adapter tensor, with ΔW
/// factored (LoRA on q, v) and formed (on k, o, fc1, fc2).
#[test]
fn one_node_blocks_equal_the_per_op_blocks() {
    let m = model();
    let images = common::seeded(&[2, 3, 28, 28], 1, 1.0);
    common::one_node_equals_per_op(&m.linears(), ["query,value", "key,dense,fc1,fc2"], &|d, composed| {
        if composed { m.forward_composed(&images, d) } else { m.forward(&images, d) }.unwrap()
    });
}
