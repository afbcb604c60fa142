//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use superlora_core::rng::{Purpose, stream};
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape, ProjectionKind, SuperLora};

/// Builds an adapter or panics with the spec in the message.
pub fn adapter(shapes: &[LayerShape], spec: &AdapterSpec, dtype: DType) -> SuperLora {
    let config = spec.resolve().unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    SuperLora::from_shapes(shapes, &config, dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{spec:?}: {e}"))
}

/// Sets every trainable tensor to N(0, 1) values drawn from `seed` (away from the zero init).
pub fn randomize(a: &SuperLora, seed: u64) {
    let mut rng = stream(seed, 999, Purpose::Init);
    for (name, v) in a.named_vars() {
        let vals: Vec<f64> = (0..v.elem_count()).map(|_| rng.normal()).collect();
        let t = Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap().to_dtype(v.dtype()).unwrap();
        a.set(&name, &t).unwrap();
    }
}

/// A tensor's values as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// Raw bytes of a tensor (for bit-exact comparisons).
pub fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().iter().map(|x| u64::from(x.to_bits())).collect(),
        DType::F64 => t.to_vec1::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

/// Asserts |a − b| ≤ tol · max(1, max|b|) elementwise.
pub fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}: entry {i}: {x} vs {y} (tol {tol} x {scale})");
    }
}

/// Shapes that are not powers of two nor perfect powers, crossing layer boundaries when grouped.
pub fn odd_shapes() -> Vec<LayerShape> {
    vec![LayerShape::new("l0", 5, 7), LayerShape::new("l1", 3, 7), LayerShape::new("l2", 6, 7)]
}

/// A named square-fold spec.
pub fn square(groups: usize, order: usize, factor: FactorKind, rank: Option<usize>) -> AdapterSpec {
    AdapterSpec {
        fold: Some(Fold::Square),
        groups: Some(groups),
        order: Some(order),
        factor: Some(factor),
        rank,
        ..Default::default()
    }
}

/// `spec` with a projection (and ratio).
pub fn with_projection(spec: &AdapterSpec, p: ProjectionKind, ratio: f64) -> AdapterSpec {
    AdapterSpec { projection: Some(p), ratio: Some(ratio), ..spec.clone() }
}

/// The factorization rows every test matrix runs (label, spec): each family and order, on
/// square and natural folds.
pub fn factor_rows() -> Vec<(&'static str, AdapterSpec)> {
    vec![
        ("dense M=1 G=1", square(1, 1, FactorKind::Dense, None)),
        ("dense M=1 G=4", square(4, 1, FactorKind::Dense, None)),
        ("dense M=3 G=2", square(2, 3, FactorKind::Dense, None)),
        ("lora M=2 G=1 r=2", square(1, 2, FactorKind::Lora, Some(2))),
        ("lora M=2 G=3 r=1", square(3, 2, FactorKind::Lora, Some(1))),
        ("tucker M=3 G=2 r=2", square(2, 3, FactorKind::Tucker, Some(2))),
        ("tucker M=4 G=1 r=2", square(1, 4, FactorKind::Tucker, Some(2))),
        ("tucker M=5 G=1 r=1", square(1, 5, FactorKind::Tucker, Some(1))),
        ("kron K=2 M=2 r=1", AdapterSpec { kron: Some(2), ..square(1, 2, FactorKind::Kronecker, Some(1)) }),
        ("kron K=2 M=2 dense", AdapterSpec { kron: Some(2), ..square(2, 2, FactorKind::Kronecker, Some(9)) }),
        ("kron K=3 M=3 r=1", AdapterSpec { kron: Some(3), ..square(1, 3, FactorKind::Kronecker, Some(1)) }),
        ("kron K=2 M=1", AdapterSpec { kron: Some(2), ..square(1, 1, FactorKind::Kronecker, Some(1)) }),
        ("natural lora G=L r=2", AdapterSpec { rank: Some(2), ..Default::default() }),
        ("natural lora G=1 r=1", AdapterSpec { rank: Some(1), groups: Some(1), ..Default::default() }),
        ("natural kron K=2 r=1", AdapterSpec { kron: Some(2), rank: Some(1), groups: Some(2), ..Default::default() }),
        ("natural dense G=L", AdapterSpec { factor: Some(FactorKind::Dense), ..Default::default() }),
    ]
}

/// The projection variants (label, kind, ratio). Natural folds only take ρ = 1.
pub fn projection_rows() -> Vec<(&'static str, ProjectionKind, f64)> {
    vec![
        ("identity", ProjectionKind::Identity, 1.0),
        ("shuffle", ProjectionKind::Shuffle, 1.0),
        ("fastfood ρ=1", ProjectionKind::Fastfood, 1.0),
        ("fastfood ρ=0.5", ProjectionKind::Fastfood, 0.5),
        ("fastfood ρ=0.1", ProjectionKind::Fastfood, 0.1),
    ]
}

/// Every (factor row x projection row) that is a valid combination.
pub fn matrix() -> Vec<(String, AdapterSpec)> {
    let mut out = Vec::new();
    for (fl, f) in factor_rows() {
        for (pl, p, r) in projection_rows() {
            if f.fold != Some(Fold::Square) && r < 1.0 {
                continue;
            }
            out.push((format!("{fl} | {pl}"), with_projection(&f, p, r)));
        }
    }
    out.extend(peer_rows().into_iter().map(|(l, s)| (l.to_string(), s)));
    out
}

/// The per-weight peers, VeRA and FourierFT (natural fold, one group per weight, no other
/// projection): ranks up to the smallest side, counts up to a whole weight.
pub fn peer_rows() -> Vec<(&'static str, AdapterSpec)> {
    let vera = |r| AdapterSpec { factor: Some(FactorKind::Vera), rank: Some(r), ..Default::default() };
    let fourier = |n, scale| AdapterSpec {
        projection: Some(ProjectionKind::Fourier),
        count: Some(n),
        scale,
        ..Default::default()
    };
    vec![
        ("vera r=1", vera(1)),
        ("vera r=3", vera(3)),
        ("fourier n=1 α=150", fourier(1, None)),
        ("fourier n=7 α=1", fourier(7, Some(1.0))),
        ("fourier n=21 α=2 (all of l1)", fourier(21, Some(2.0))),
    ]
}
