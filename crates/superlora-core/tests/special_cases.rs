//! The special cases of spec §5, each as an equality (bit for bit where the arithmetic is the
//! same), not a resemblance; and the zero update at step 0 (spec §4).

mod common;

use candle_core::{DType, Tensor};
use common::*;
use superlora_core::oracle::{self, Dense};
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape};

fn var(a: &superlora_core::SuperLora, name: &str) -> Tensor {
    a.named_vars().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1.as_tensor().clone()
}

#[test]
fn weight_wise_lora_is_per_layer_a_b_transpose_exactly() {
    let shapes = vec![LayerShape::new("q", 6, 4), LayerShape::new("k", 5, 9), LayerShape::new("v", 6, 4)];
    for scale in [1.0, 2.5] {
        let spec = AdapterSpec { rank: Some(3), scale: Some(scale), ..Default::default() };
        let a = adapter(&shapes, &spec, DType::F32);
        assert_eq!(a.plan().groups.len(), 3);
        assert_eq!(a.plan().trainable_params, 3 * (6 + 4 + 5 + 9 + 6 + 4));
        randomize(&a, 3);
        let deltas = a.delta_weights().unwrap();
        for (l, d) in deltas.iter().enumerate() {
            let (wa, wb) = (var(&a, &format!("group.{l}.lora_a")), var(&a, &format!("group.{l}.lora_b")));
            let mut want = wa.matmul(&wb.t().unwrap()).unwrap();
            if scale != 1.0 {
                want = want.affine(scale, 0.0).unwrap();
            }
            assert_eq!(d.dims(), want.dims());
            assert_eq!(bits(d), bits(&want), "layer {l} scale {scale}");
        }
    }
}

#[test]
fn group_wise_lora_stacks_layers_along_rows() {
    let shapes = vec![LayerShape::new("q", 6, 4), LayerShape::new("v", 2, 4)];
    let a = adapter(&shapes, &AdapterSpec { rank: Some(2), groups: Some(1), ..Default::default() }, DType::F64);
    assert_eq!(a.plan().trainable_params, 2 * (8 + 4));
    randomize(&a, 4);
    let x = var(&a, "group.0.lora_a").matmul(&var(&a, "group.0.lora_b").t().unwrap()).unwrap();
    let d = a.delta_weights().unwrap();
    assert_eq!(bits(&d[0]), bits(&x.narrow(0, 0, 6).unwrap()));
    assert_eq!(bits(&d[1]), bits(&x.narrow(0, 6, 2).unwrap()));
}

#[test]
fn full_fine_tuning_setting_is_the_trainable_vector_itself() {
    let shapes = odd_shapes();
    for groups in [1, 3, 7] {
        let spec = square(groups, 1, FactorKind::Dense, None);
        let a = adapter(&shapes, &spec, DType::F32);
        let n: usize = shapes.iter().map(LayerShape::numel).sum();
        assert_eq!(a.plan().trainable_params, n);
        randomize(&a, 5);
        let trainable: Vec<u64> = a.vars().iter().flat_map(|v| bits(v.as_tensor())).collect();
        let delta: Vec<u64> = a.delta_weights().unwrap().iter().flat_map(bits).collect();
        assert_eq!(delta, trainable, "G = {groups}");
    }
}

#[test]
fn kronecker_k2_m2_is_a_kron_b() {
    // Rank >= every factor side makes both factors dense: X = A ⊗ B, then the first n values.
    let shapes = vec![LayerShape::new("w", 10, 10)];
    let spec = AdapterSpec { kron: Some(2), ..square(1, 2, FactorKind::Kronecker, Some(4)) };
    let a = adapter(&shapes, &spec, DType::F32);
    randomize(&a, 6);
    let (ka, kb) = (var(&a, "group.0.kron.0.dense"), var(&a, "group.0.kron.1.dense"));
    assert_eq!(
        (ka.dims(), kb.dims()),
        (&[4usize, 4][..], &[3usize, 3][..]),
        "side 10 splits into 4 and ceil(10/4) = 3"
    );
    let want = oracle::kron(&Dense::of(&ka).unwrap(), &Dense::of(&kb).unwrap());
    let got = values(&a.delta_weights().unwrap()[0]);
    // f32 products are exact in both paths, so equality is bit for bit.
    let want32: Vec<f64> = want.data[..100].iter().map(|v| f64::from(*v as f32)).collect();
    assert_eq!(got, want32);

    // Natural fold: the product 12x12 is cropped to the layer's 10x10.
    let spec = AdapterSpec {
        fold: Some(Fold::Natural),
        kron: Some(2),
        factor: Some(FactorKind::Kronecker),
        rank: Some(4),
        ..Default::default()
    };
    let a = adapter(&shapes, &spec, DType::F64);
    randomize(&a, 7);
    let (ka, kb) = (var(&a, "group.0.kron.0.dense"), var(&a, "group.0.kron.1.dense"));
    let want = oracle::kron(&Dense::of(&ka).unwrap(), &Dense::of(&kb).unwrap());
    let got = a.delta_weights().unwrap()[0].to_vec2::<f64>().unwrap();
    for (i, row) in got.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(*v, want.at(&[i, j]));
        }
    }
}

#[test]
fn delta_is_exactly_zero_at_step_zero() {
    let shapes = odd_shapes();
    for (label, spec) in matrix() {
        let a = adapter(&shapes, &spec, DType::F32);
        for (l, d) in a.delta_weights().unwrap().iter().enumerate() {
            assert!(values(d).iter().all(|v| *v == 0.0), "{label} layer {l}");
        }
        assert_eq!(a.num_trainable(), a.plan().trainable_params, "{label}");
    }
}

#[test]
fn trainable_tensor_names_are_stable() {
    let shapes = odd_shapes();
    let names = |spec: &AdapterSpec| {
        adapter(&shapes, spec, DType::F32).named_vars().into_iter().map(|(n, _)| n).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&square(1, 3, FactorKind::Tucker, Some(2))),
        ["group.0.tucker_core", "group.0.tucker_u.0", "group.0.tucker_u.1", "group.0.tucker_u.2"]
    );
    assert_eq!(
        names(&AdapterSpec { rank: Some(1), groups: Some(1), ..Default::default() }),
        ["group.0.lora_a", "group.0.lora_b"]
    );
    assert_eq!(
        names(&AdapterSpec { kron: Some(2), ..square(1, 2, FactorKind::Kronecker, Some(1)) }),
        ["group.0.kron.0.lora_a", "group.0.kron.0.lora_b", "group.0.kron.1.lora_a", "group.0.kron.1.lora_b"]
    );
}
