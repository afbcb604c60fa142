//! VeRA and FourierFT: the fast paths against their explicit f64 twins, their initialisation,
//! names and counts, and the settings they refuse. (The whole-map oracle, gradient and zero-init
//! checks run them too, through `common::matrix()`.)

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::*;
use superlora_core::oracle;
use superlora_core::projection::GroupProjection;
use superlora_core::projection::fourier::Fourier;
use superlora_core::{AdapterSpec, FactorKind, FactorPlan, Fold, LayerShape, Named, Plan, ProjectionKind};

fn vera(rank: usize) -> AdapterSpec {
    AdapterSpec { factor: Some(FactorKind::Vera), rank: Some(rank), ..Default::default() }
}

fn fourier(count: usize) -> AdapterSpec {
    AdapterSpec { projection: Some(ProjectionKind::Fourier), count: Some(count), ..Default::default() }
}

fn randn(n: usize, seed: u64) -> Vec<f64> {
    let mut r = superlora_core::rng::stream(seed, 7, superlora_core::rng::Purpose::Init);
    (0..n).map(|_| r.normal()).collect()
}

#[test]
fn fourier_fast_path_and_transpose_equal_the_explicit_idft_matrix() {
    for (rows, cols, n) in [(1, 1, 1), (4, 6, 5), (7, 5, 35), (12, 10, 30), (16, 9, 3)] {
        let f = Arc::new(Fourier::generate(rows, cols, n, 3));
        let m = oracle::fourier_matrix(&f);
        let x = randn(n, 1);
        let got = f.apply(&Tensor::from_vec(x.clone(), n, &Device::Cpu).unwrap()).unwrap();
        assert_close(&values(&got), &oracle::matvec(&m, rows * cols, n, &x), 1e-12, &format!("{rows}x{cols} n={n}"));
        let g = randn(rows * cols, 2);
        let mt: Vec<f64> = (0..n * rows * cols).map(|k| m[(k % (rows * cols)) * n + k / (rows * cols)]).collect();
        let got = f.apply_transpose(&Tensor::from_vec(g.clone(), rows * cols, &Device::Cpu).unwrap()).unwrap();
        assert_close(&values(&got), &oracle::matvec(&mt, n, rows * cols, &g), 1e-12, "transpose");
    }
}

#[test]
fn fourier_is_the_real_part_of_the_inverse_dft() {
    // A unit coefficient at frequency (0, 0) is the constant 1/(R·C); at (u, v) it is
    // cos(2π(u·i/R + v·j/C))/(R·C), which at (i, j) = (0, 0) is again 1/(R·C).
    let (rows, cols) = (6, 4);
    let f = Arc::new(Fourier::from_positions(rows, cols, vec![0, 2 * cols + 1]));
    let one = f.apply(&Tensor::new(&[1.0f64, 0.0], &Device::Cpu).unwrap()).unwrap();
    assert!(values(&one).iter().all(|v| (v - 1.0 / 24.0).abs() < 1e-15));
    let w = values(&f.apply(&Tensor::new(&[0.0f64, 1.0], &Device::Cpu).unwrap()).unwrap());
    let want = |i: usize, j: usize| (2.0 * std::f64::consts::PI * (2.0 * i as f64 / 6.0 + j as f64 / 4.0)).cos() / 24.0;
    for i in 0..rows {
        for j in 0..cols {
            assert!((w[i * cols + j] - want(i, j)).abs() < 1e-15, "({i}, {j})");
        }
    }
}

#[test]
fn fourier_frequencies_are_distinct_seeded_and_shared_by_equal_shapes() {
    let f = Fourier::generate(30, 20, 600, 5);
    let mut p = f.positions.clone();
    p.sort_unstable();
    assert_eq!(p, (0..600).collect::<Vec<_>>(), "n = R·C takes every frequency once");
    let a = Fourier::generate(30, 20, 50, 5);
    assert_eq!(a.positions, Fourier::generate(30, 20, 50, 5).positions);
    assert_ne!(a.positions, Fourier::generate(30, 20, 50, 6).positions);
    let shapes = vec![LayerShape::new("q", 8, 8), LayerShape::new("v", 8, 8)];
    let ad = superlora_core::SuperLora::from_shapes(&shapes, &fourier(10).resolve().unwrap(), DType::F32, &Device::Cpu)
        .unwrap();
    let pos = |g| match ad.projection(g) {
        Some(GroupProjection::Fourier(f)) => f.positions.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(pos(0), pos(1), "like PEFT, weights of equal shape share their frequencies");
}

#[test]
fn vera_shares_one_frozen_pair_sliced_from_the_largest_shape() {
    let shapes = vec![LayerShape::new("a", 5, 9), LayerShape::new("b", 8, 4), LayerShape::new("c", 3, 6)];
    let a = adapter(&shapes, &vera(3), DType::F64);
    let FactorPlan::Vera { shared_rows, shared_cols, seed, .. } = a.plan().groups[0].factor else { panic!() };
    assert_eq!((shared_rows, shared_cols), (8, 9));
    let (big_a, big_b) = superlora_core::factor::vera::shared_values(seed, 3, 8, 9);
    // Kaiming-uniform as PEFT: A ~ U(±√(6/9)), B ~ U(±√(6/3)).
    assert!(big_a.iter().all(|v| v.abs() <= (6.0f64 / 9.0).sqrt()));
    assert!(big_b.iter().all(|v| v.abs() <= 2f64.sqrt()));
    assert!(big_b.iter().any(|v| v.abs() > 1.0), "B's bound comes from fan = r");
    // With b = 1 and d = 1, ΔW_l is exactly B_max[:d_out] · A_max[:, :d_in].
    for (name, v) in a.named_vars() {
        a.set(&name, &Tensor::ones(v.dims(), DType::F64, &Device::Cpu).unwrap()).unwrap();
    }
    for (l, (d, s)) in a.delta_weights().unwrap().iter().zip(&shapes).enumerate() {
        let want: Vec<f64> = (0..s.rows * s.cols)
            .map(|k| (0..3).map(|t| big_b[(k / s.cols) * 3 + t] * big_a[t * 9 + k % s.cols]).sum())
            .collect();
        assert_close(&values(d), &want, 1e-12, &format!("layer {l}"));
    }
}

#[test]
fn vera_init_is_peft_default() {
    let a = adapter(&odd_shapes(), &vera(2), DType::F32);
    let named = a.named_vars();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..2], ["group.0.vera_lambda_b", "group.0.vera_lambda_d"]);
    for (n, v) in &named {
        let want = if n.ends_with("lambda_b") { 0.0 } else { 0.1 };
        assert!(values(v.as_tensor()).iter().all(|x| (*x - want).abs() < 1e-7), "{n}");
    }
}

#[test]
fn counts_are_per_weight() {
    let shapes: Vec<LayerShape> = (0..12).map(|i| LayerShape::new(format!("l{i}"), 384, 384)).collect();
    let plan = |s: AdapterSpec| Plan::new(&shapes, &s.resolve().unwrap()).unwrap();
    assert_eq!(plan(vera(256)).trainable_params, 12 * (384 + 256));
    assert_eq!(plan(fourier(1000)).trainable_params, 12 * 1000);
    let mixed = vec![LayerShape::new("q", 768, 768), LayerShape::new("fc1", 3072, 768)];
    let p = Plan::new(&mixed, &vera(16).resolve().unwrap()).unwrap();
    assert_eq!(p.trainable_params, (768 + 16) + (3072 + 16));
    assert_eq!(fourier(5).resolve().unwrap().scale, 150.0, "PEFT's default scaling");
}

#[test]
fn bad_settings_name_the_flag_and_the_rule() {
    let shapes = vec![LayerShape::new("w", 4, 6)];
    let plan_err = |s: AdapterSpec| match s.resolve() {
        Err(e) => e.to_string(),
        Ok(c) => Plan::new(&shapes, &c).map(|_| String::from("accepted")).unwrap_or_else(|e| e.to_string()),
    };
    let cases: Vec<(AdapterSpec, &str, &str)> = vec![
        (vera(5), "`rank` = 5", "smaller side 4"),
        (AdapterSpec { fold: Some(Fold::Square), ..vera(2) }, "`fold` = square", "fold = natural"),
        (AdapterSpec { groups: Some(1), ..vera(2) }, "`groups` = 1", "one group per weight"),
        (AdapterSpec { projection: Some(ProjectionKind::Shuffle), ..vera(2) }, "`projection` = shuffle", "identity"),
        (fourier(25), "`count` = 25", "d_out·d_in = 24"),
        (fourier(0), "`count` = 0", "at least 1"),
        (AdapterSpec { fold: Some(Fold::Square), ..fourier(3) }, "`fold` = square", "not supported"),
        (AdapterSpec { groups: Some(1), ..fourier(3) }, "`groups` = 1", "one group per weight"),
        (AdapterSpec { factor: Some(FactorKind::Lora), ..fourier(3) }, "`factor` = lora", "factor = dense"),
        (AdapterSpec { count: None, ..fourier(3) }, "`count` = unset", "needs `count`"),
        (
            AdapterSpec { projection: Some(ProjectionKind::Fastfood), count: Some(3), ..Default::default() },
            "`count` = 3",
            "projection = fourier",
        ),
    ];
    for (s, field, rule) in cases {
        let e = plan_err(s.clone());
        assert!(e.contains(field) && e.contains(rule), "{s:?}: got `{e}`, want `{field}` and `{rule}`");
    }
    // `count` alone implies the fourier projection (and with it the dense factor).
    let c = AdapterSpec { count: Some(3), ..Default::default() }.resolve().unwrap();
    assert_eq!(c, fourier(3).resolve().unwrap());
    assert_eq!(c.to_spec().resolve().unwrap(), c);
    let v = vera(2).resolve().unwrap();
    assert_eq!(v.to_spec().resolve().unwrap(), v);
}

#[test]
fn names_slugs_and_families() {
    let v = vera(256).resolve().unwrap();
    assert_eq!(v.slug(), "natural-gL-m2-vera-r256");
    assert_eq!(v.family(), "vera");
    assert_eq!(
        v.describe(12),
        "fold=natural groups=12 order=2 factor=vera rank=256 projection=identity scale=1 seed=0"
    );
    let f = fourier(1000).resolve().unwrap();
    assert_eq!(f.slug(), "natural-gL-m1-dense-fourier1000");
    assert_eq!(f.family(), "fourierft");
    for k in FactorKind::ALL {
        assert_eq!(k.to_string().parse::<FactorKind>().unwrap(), *k);
    }
    for k in ProjectionKind::ALL {
        assert_eq!(k.to_string().parse::<ProjectionKind>().unwrap(), *k);
    }
    let e = "fft".parse::<ProjectionKind>().unwrap_err().to_string();
    assert!(e.contains("`projection` = fft") && e.contains("fourier"), "{e}");
    // The JSON form of both, and that an old file (no `count`) still reads.
    let json = serde_json::to_string(&f).unwrap();
    assert!(json.contains(r#""projection":{"kind":"fourier","count":1000}"#), "{json}");
    assert_eq!(serde_json::from_str::<superlora_core::AdapterConfig>(&json).unwrap(), f);
    let json = serde_json::to_string(&v).unwrap();
    assert!(json.contains(r#""factorization":{"kind":"vera","rank":256}"#), "{json}");
    let old: AdapterSpec = serde_json::from_str(r#"{"fold":"natural","rank":8}"#).unwrap();
    assert_eq!(old.count, None);
}
