//! Every fast path against its explicit dense construction (spec §3), on small random shapes
//! including sizes that are neither powers of two nor perfect M-th powers.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use superlora_core::oracle::{self, Dense};
use superlora_core::projection::fastfood::Fastfood;
use superlora_core::projection::shuffle::Shuffle;
use superlora_core::projection::wht::wht;
use superlora_core::rng::{Purpose, stream};

fn randn(n: usize, seed: u64) -> Vec<f64> {
    let mut r = stream(seed, 0, Purpose::Init);
    (0..n).map(|_| r.normal()).collect()
}

#[test]
fn wht_equals_explicit_hadamard_matrix() {
    for k in 0..=8 {
        let n = 1usize << k;
        let x = randn(n, k as u64);
        let want = oracle::matvec(&oracle::hadamard(n), n, n, &x);
        let mut got = x.clone();
        wht(&mut got);
        assert_close(&got, &want, 1e-12, &format!("wht n={n}"));
    }
}

const FASTFOOD_SIZES: [(usize, usize); 9] =
    [(1, 1), (1, 2), (3, 5), (5, 5), (7, 12), (13, 33), (20, 64), (50, 100), (64, 65)];

#[test]
fn fastfood_equals_explicit_matrix_and_its_transpose() {
    for (i, &(d, big_d)) in FASTFOOD_SIZES.iter().enumerate() {
        let f = Fastfood::generate(d, big_d, 11, i);
        let m = oracle::fastfood_matrix(&f);
        let x = randn(d, 100 + i as u64);
        assert_close(&f.forward(&x), &oracle::matvec(&m, big_d, d, &x), 1e-12, &format!("F d={d} D={big_d}"));
        let g = randn(big_d, 200 + i as u64);
        let mt: Vec<f64> = (0..d * big_d).map(|k| m[(k % big_d) * d + k / big_d]).collect();
        assert_close(&f.transpose(&g), &oracle::matvec(&mt, d, big_d, &g), 1e-12, &format!("Fᵀ d={d} D={big_d}"));
        // f32 kernels implement the same matrix.
        let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let y32: Vec<f64> = f.forward(&x32).iter().map(|v| f64::from(*v)).collect();
        let x_rounded: Vec<f64> = x32.iter().map(|v| f64::from(*v)).collect();
        assert_close(&y32, &oracle::matvec(&m, big_d, d, &x_rounded), 1e-5, "F f32");
    }
}

#[test]
fn fastfood_reference_equals_explicit_matrix() {
    for (i, &(d, big_d)) in FASTFOOD_SIZES.iter().enumerate() {
        let f = Fastfood::generate(d, big_d, 12, i);
        let m = oracle::fastfood_matrix(&f);
        let x = randn(d, 300 + i as u64);
        assert_close(&oracle::fastfood_apply(&f, &x), &oracle::matvec(&m, big_d, d, &x), 1e-12, "reference F");
        let g = randn(big_d, 400 + i as u64);
        let mt: Vec<f64> = (0..d * big_d).map(|k| m[(k % big_d) * d + k / big_d]).collect();
        assert_close(
            &oracle::fastfood_apply_transpose(&f, &g),
            &oracle::matvec(&mt, d, big_d, &g),
            1e-12,
            "reference Fᵀ",
        );
    }
}

/// Sizes past one Hadamard row (2^14), where the fast path stages Π in two blocked passes.
#[test]
fn fastfood_fast_path_equals_reference_at_blocked_sizes() {
    for (i, &(d, big_d)) in
        [(1000usize, 20_000usize), (30_000, 65_536), (7, 70_001), (131_072, 131_072), (300_000, 1_000_000)]
            .iter()
            .enumerate()
    {
        let f = Fastfood::generate(d, big_d, 13, i);
        let x = randn(d, 500 + i as u64);
        assert_close(&f.forward(&x), &oracle::fastfood_apply(&f, &x), 1e-12, &format!("F d={d} D={big_d}"));
        let g = randn(big_d, 600 + i as u64);
        assert_close(
            &f.transpose(&g),
            &oracle::fastfood_apply_transpose(&f, &g),
            1e-12,
            &format!("Fᵀ d={d} D={big_d}"),
        );
        let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let y32: Vec<f64> = f.forward(&x32).iter().map(|v| f64::from(*v)).collect();
        let xr: Vec<f64> = x32.iter().map(|v| f64::from(*v)).collect();
        assert_close(&y32, &oracle::fastfood_apply(&f, &xr), 1e-5, "F f32 blocked");
        let g32: Vec<f32> = g.iter().map(|v| *v as f32).collect();
        let t32: Vec<f64> = f.transpose(&g32).iter().map(|v| f64::from(*v)).collect();
        let gr: Vec<f64> = g32.iter().map(|v| f64::from(*v)).collect();
        assert_close(&t32, &oracle::fastfood_apply_transpose(&f, &gr), 1e-5, "Fᵀ f32 blocked");
    }
}

#[test]
fn fastfood_columns_have_about_unit_norm() {
    // The normalisation 1/sqrt(D ΣG²) makes E‖F e_j‖² = 1 (spec §3.4).
    // (Columns computed with the fast path, which the test above pins to the explicit matrix.)
    let f = Fastfood::generate(64, 1000, 5, 0);
    let col = |j: usize| {
        let mut e = vec![0.0f64; 64];
        e[j] = 1.0;
        f.forward(&e).iter().map(|v| v * v).sum::<f64>()
    };
    let mean: f64 = (0..64).map(col).sum::<f64>() / 64.0;
    assert!((mean - 1.0).abs() < 0.1, "mean squared column norm {mean}");
}

#[test]
fn shuffle_equals_explicit_permutation_matrix() {
    for (i, n) in [1usize, 2, 7, 33, 100].into_iter().enumerate() {
        let s = Shuffle::generate(n, 3, i);
        let p = oracle::shuffle_matrix(&s);
        let x = randn(n, i as u64);
        assert_eq!(s.forward(&x), oracle::matvec(&p, n, n, &x));
        let pt: Vec<f64> = (0..n * n).map(|k| p[(k % n) * n + k / n]).collect();
        assert_eq!(s.transpose(&x), oracle::matvec(&pt, n, n, &x));
    }
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(randn(n, seed), shape, &Device::Cpu).unwrap()
}

#[test]
fn tucker_mode_products_equal_explicit_sum() {
    for (sides, r) in [(vec![3, 4, 5], 2), (vec![2, 3, 2, 3], 2), (vec![4, 4, 4], 1), (vec![2, 2, 3, 2, 2], 2)] {
        let core = tensor(&vec![r; sides.len()], 1);
        let us: Vec<Tensor> = sides.iter().enumerate().map(|(m, &s)| tensor(&[s, r], 10 + m as u64)).collect();
        let got = superlora_core::factor::tucker::generate(&core, &us).unwrap();
        assert_eq!(got.dims(), sides.as_slice());
        let want =
            oracle::tucker(&Dense::of(&core).unwrap(), &us.iter().map(|u| Dense::of(u).unwrap()).collect::<Vec<_>>());
        assert_close(&values(&got), &want.data, 1e-12, &format!("tucker {sides:?} r={r}"));
    }
}

#[test]
fn kronecker_equals_explicit_product() {
    for shapes in [vec![vec![2, 3], vec![3, 2]], vec![vec![3], vec![4], vec![2]], vec![vec![2, 2, 3], vec![3, 1, 2]]] {
        let ts: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| tensor(s, i as u64)).collect();
        let got = superlora_core::factor::kronecker::generate(&ts).unwrap();
        let mut want = Dense::of(&ts[0]).unwrap();
        for t in &ts[1..] {
            want = oracle::kron(&want, &Dense::of(t).unwrap());
        }
        assert_eq!(got.dims(), want.shape.as_slice());
        assert_eq!(values(&got), want.data, "{shapes:?}: products must match bit for bit");
    }
}

#[test]
fn lora_equals_explicit_product() {
    let (a, b) = (tensor(&[5, 3], 1), tensor(&[7, 3], 2));
    let got = superlora_core::factor::lora::generate(&a, &b).unwrap();
    let want = oracle::lora(&Dense::of(&a).unwrap(), &Dense::of(&b).unwrap());
    assert_close(&values(&got), &want.data, 1e-12, "lora");
}

/// The whole ΔW map (every factorization x every projection, both folds) against the oracle.
#[test]
fn whole_map_equals_oracle_f64_and_f32() {
    let shapes = odd_shapes();
    for (label, spec) in matrix() {
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-5)] {
            let a = adapter(&shapes, &spec, dtype);
            randomize(&a, 7);
            let got: Vec<Vec<f64>> = a.delta_weights().unwrap().iter().map(values).collect();
            let want = oracle::reference_delta(&a).unwrap();
            for (l, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(g, w, tol, &format!("{label} {dtype:?} layer {l}"));
            }
        }
    }
}

#[test]
fn scale_multiplies_the_update() {
    let shapes = odd_shapes();
    let spec = square(2, 3, superlora_core::FactorKind::Tucker, Some(2));
    let a1 = adapter(&shapes, &spec, DType::F64);
    let a3 = adapter(&shapes, &superlora_core::AdapterSpec { scale: Some(-3.0), ..spec }, DType::F64);
    randomize(&a1, 1);
    randomize(&a3, 1);
    for (x, y) in a1.delta_weights().unwrap().iter().zip(a3.delta_weights().unwrap()) {
        let want: Vec<f64> = values(x).iter().map(|v| -3.0 * v).collect();
        assert_close(&values(&y), &want, 1e-14, "scale");
    }
    let want = oracle::reference_delta(&a3).unwrap();
    let got: Vec<Vec<f64>> = a3.delta_weights().unwrap().iter().map(values).collect();
    assert_close(&got.concat(), &want.concat(), 1e-10, "scale vs oracle");
}
