//! Fréchet distance between two Gaussians fitted to feature vectors (the FID formula, here in a
//! small classifier's feature space):
//!
//!   d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁^{½} Σ₂ Σ₁^{½})^{½}).
//!
//! Tr((Σ₁^{½}Σ₂Σ₁^{½})^{½}) equals Tr((Σ₁Σ₂)^{½}) but its argument is symmetric positive
//! semi-definite, so both square roots come from a symmetric eigendecomposition (the cyclic Jacobi
//! solver of `superlora_train::lowrank`), eigenvalues clipped at 0 against rounding. Statistics
//! and the distance are computed in f64; Σ is the unbiased covariance (divides by n − 1).

use superlora_train::lowrank::symmetric_eigen;

use crate::{Error, Result};

/// Mean and covariance of a set of feature vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    /// μ [dim].
    pub mean: Vec<f64>,
    /// Σ [dim, dim], row-major.
    pub cov: Vec<f64>,
    /// dim.
    pub dim: usize,
}

impl Gaussian {
    /// Fits μ and Σ to `n = features.len() / dim` rows (n ≥ 2).
    pub fn fit(features: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 || !features.len().is_multiple_of(dim) || features.len() / dim < 2 {
            return Err(Error::setting(
                "features",
                format!("{} values of dimension {dim}", features.len()),
                "need at least two whole feature vectors",
            ));
        }
        let n = features.len() / dim;
        let mut mean = vec![0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0f64; dim * dim];
        let mut c = vec![0f64; dim];
        for row in features.chunks_exact(dim) {
            for (ci, (&x, m)) in c.iter_mut().zip(row.iter().zip(&mean)) {
                *ci = f64::from(x) - m;
            }
            for i in 0..dim {
                if c[i] == 0.0 {
                    continue;
                }
                for j in i..dim {
                    cov[i * dim + j] += c[i] * c[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Gaussian { mean, cov, dim })
    }
}

/// The symmetric PSD square root of a symmetric n x n matrix (row-major): V·diag(√max(λ, 0))·Vᵀ.
pub fn sqrt_psd(a: &[f64], n: usize) -> Vec<f64> {
    let (lambda, v) = symmetric_eigen(a.to_vec(), n);
    let roots: Vec<f64> = lambda.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n).map(|k| v[i * n + k] * roots[k] * v[j * n + k]).sum();
        }
    }
    out
}

/// Tr((Σ₁^{½} Σ₂ Σ₁^{½})^{½}) = Σ_k √max(λ_k, 0).
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> f64 {
    let r = sqrt_psd(s1, n);
    let m = matmul(&matmul(&r, s2, n), &r, n);
    // Symmetrize against rounding before the symmetric solver.
    let sym: Vec<f64> = (0..n * n).map(|k| 0.5 * (m[k] + m[(k % n) * n + k / n])).collect();
    let (lambda, _) = symmetric_eigen(sym, n);
    lambda.iter().map(|l| l.max(0.0).sqrt()).sum()
}

/// The Fréchet distance d² (module docs) between `a` and `b` (same dimension).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    if a.dim != b.dim {
        return Err(Error::setting("features", format!("dimensions {} and {}", a.dim, b.dim), "must be equal"));
    }
    let n = a.dim;
    let mean: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = |c: &[f64]| (0..n).map(|i| c[i * n + i]).sum::<f64>();
    let d = mean + trace(&a.cov) + trace(&b.cov) - 2.0 * trace_sqrt_product(&a.cov, &b.cov, n);
    Ok(d.max(0.0))
}

/// C = A·B for n x n row-major matrices.
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}
