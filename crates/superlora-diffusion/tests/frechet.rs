//! Fréchet distance: zero for identical Gaussians, the closed form for diagonal covariances, and
//! the Jacobi-based Tr((Σ₁Σ₂)^½) against slow, obvious oracles (2x2 closed form; Denman–Beavers
//! iteration with Gauss–Jordan inverses).

use superlora_diffusion::frechet::{Gaussian, frechet_distance, matmul, sqrt_psd, trace_sqrt_product};

fn rng(seed: u64) -> superlora_core::rng::Rng {
    superlora_core::rng::stream(seed, 3, superlora_core::rng::Purpose::Init)
}

/// A random SPD matrix A·Aᵀ + εI.
fn spd(n: usize, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    let a: Vec<f64> = (0..n * n).map(|_| r.normal()).collect();
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>() + if i == j { 0.1 } else { 0.0 };
        }
    }
    s
}

fn gauss(mean: Vec<f64>, cov: Vec<f64>) -> Gaussian {
    let dim = mean.len();
    Gaussian { mean, cov, dim }
}

#[test]
fn identical_gaussians_are_at_distance_zero() {
    for n in [1, 3, 8] {
        let g = gauss((0..n).map(|i| i as f64).collect(), spd(n, n as u64));
        let d = frechet_distance(&g, &g).unwrap();
        assert!(d.abs() < 1e-8, "n={n}: {d}");
    }
    // Fitted from the same features.
    let mut r = rng(1);
    let f: Vec<f32> = (0..200 * 5).map(|_| r.normal() as f32).collect();
    let g = Gaussian::fit(&f, 5).unwrap();
    assert!(frechet_distance(&g, &g.clone()).unwrap() < 1e-8);
}

#[test]
fn diagonal_covariances_match_the_closed_form() {
    // d² = ‖μ₁ − μ₂‖² + Σ_i (√a_i − √b_i)².
    let a = [1.0, 4.0, 0.25, 9.0];
    let b = [2.0, 1.0, 0.25, 0.5];
    let diag = |v: &[f64]| {
        let n = v.len();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            m[i * n + i] = v[i];
        }
        m
    };
    let (m1, m2) = (vec![0.0, 1.0, 2.0, 3.0], vec![1.0, 1.0, 0.0, 3.5]);
    let want: f64 = m1.iter().zip(&m2).map(|(x, y): (&f64, &f64)| (x - y).powi(2)).sum::<f64>()
        + a.iter().zip(&b).map(|(x, y): (&f64, &f64)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
    let got = frechet_distance(&gauss(m1, diag(&a)), &gauss(m2, diag(&b))).unwrap();
    assert!((got - want).abs() < 1e-10, "{got} vs {want}");
}

#[test]
fn matrix_square_root_squares_back() {
    for n in [2, 5, 12] {
        let s = spd(n, 40 + n as u64);
        let r = sqrt_psd(&s, n);
        let rr = matmul(&r, &r, n);
        let err = rr.iter().zip(&s).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let scale = s.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(err < 1e-9 * scale, "n={n}: {err}");
        for i in 0..n {
            for j in 0..n {
                assert!((r[i * n + j] - r[j * n + i]).abs() < 1e-9);
            }
        }
    }
}

#[test]
fn trace_sqrt_matches_the_2x2_closed_form() {
    // For a 2x2 M with non-negative eigenvalues, Tr √M = √(Tr M + 2√det M).
    for seed in 0..5 {
        let (s1, s2) = (spd(2, seed), spd(2, seed + 100));
        let m = matmul(&s1, &s2, 2);
        let det = m[0] * m[3] - m[1] * m[2];
        let want = (m[0] + m[3] + 2.0 * det.sqrt()).sqrt();
        let got = trace_sqrt_product(&s1, &s2, 2);
        assert!((got - want).abs() < 1e-9 * want, "seed {seed}: {got} vs {want}");
    }
}

fn inverse(a: &[f64], n: usize) -> Vec<f64> {
    // Gauss–Jordan with partial pivoting on [A | I].
    let mut m: Vec<f64> = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        m.extend_from_slice(&a[i * n..(i + 1) * n]);
        m.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
    }
    let w = 2 * n;
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x * w + c].abs().total_cmp(&m[y * w + c].abs())).unwrap();
        for k in 0..w {
            m.swap(c * w + k, p * w + k);
        }
        let d = m[c * w + c];
        for k in 0..w {
            m[c * w + k] /= d;
        }
        for r in 0..n {
            if r != c {
                let f = m[r * w + c];
                for k in 0..w {
                    m[r * w + k] -= f * m[c * w + k];
                }
            }
        }
    }
    (0..n * n).map(|k| m[(k / n) * w + n + k % n]).collect()
}

#[test]
fn trace_sqrt_matches_denman_beavers() {
    // Y_{k+1} = (Y_k + Z_k⁻¹)/2, Z_{k+1} = (Z_k + Y_k⁻¹)/2 from Y_0 = Σ₁Σ₂, Z_0 = I: Y → (Σ₁Σ₂)^½.
    for (n, seed) in [(3, 1), (5, 2), (6, 3)] {
        let (s1, s2) = (spd(n, seed), spd(n, seed + 50));
        let mut y = matmul(&s1, &s2, n);
        let mut z: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
        for _ in 0..60 {
            let (yi, zi) = (inverse(&y, n), inverse(&z, n));
            let ny: Vec<f64> = y.iter().zip(&zi).map(|(a, b)| 0.5 * (a + b)).collect();
            let nz: Vec<f64> = z.iter().zip(&yi).map(|(a, b)| 0.5 * (a + b)).collect();
            (y, z) = (ny, nz);
        }
        let want: f64 = (0..n).map(|i| y[i * n + i]).sum();
        let got = trace_sqrt_product(&s1, &s2, n);
        assert!((got - want).abs() < 1e-7 * want, "n={n}: {got} vs {want}");
    }
}

#[test]
fn fitting_checks_its_input() {
    assert!(Gaussian::fit(&[1.0, 2.0], 2).is_err());
    assert!(Gaussian::fit(&[1.0, 2.0, 3.0], 2).is_err());
    let g = Gaussian::fit(&[1.0, 0.0, 3.0, 2.0], 2).unwrap();
    assert_eq!(g.mean, vec![2.0, 1.0]);
    assert_eq!(g.cov, vec![2.0, 2.0, 2.0, 2.0]);
}
