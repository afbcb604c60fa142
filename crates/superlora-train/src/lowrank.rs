//! Best rank-k approximations of a matrix, for exporting any ΔW as per-layer LoRA factors.
//!
//! Equation (Eckart–Young): with ΔW = U Σ Vᵀ, the best rank-k approximation in Frobenius norm is
//! U_k Σ_k V_kᵀ, with error ‖ΔW − U_k Σ_k V_kᵀ‖_F = sqrt(Σ_{i>k} σ_i²). Exported as
//! B = U_k·√Σ_k [rows, k] and A = √Σ_k·V_kᵀ [k, cols] (PEFT's `lora_B`, `lora_A`).
//!
//! Computed in f64 from the Gram matrix G = ΔWᵀΔW (cols x cols, symmetric) by the cyclic Jacobi
//! eigenvalue method: G = V Λ Vᵀ, σ_i = √λ_i, U_k = ΔW V_k Σ_k⁻¹. At k ≥ min(rows, cols) the
//! export is exact by construction (B = ΔW, A = I, or B = I, A = ΔW), so the full-rank error is 0.

/// A rank-k factorization B·A of a rows x cols matrix (row-major values).
pub struct LowRank {
    /// B [rows, k].
    pub b: Vec<f32>,
    /// A [k, cols].
    pub a: Vec<f32>,
    /// k.
    pub rank: usize,
    /// ‖ΔW − B·A‖_F / ‖ΔW‖_F (0 when ΔW = 0).
    pub relative_error: f64,
}

/// Eigen-decomposition of a symmetric n x n matrix (row-major) by cyclic Jacobi rotations:
/// eigenvalues (descending) and eigenvectors as columns of a row-major n x n matrix.
pub fn symmetric_eigen(mut g: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let norm: f64 = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| g[i * n + j].powi(2))
            .sum();
        if off.sqrt() <= 1e-15 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let gpq = g[p * n + q];
                if gpq == 0.0 {
                    continue;
                }
                let (gpp, gqq) = (g[p * n + p], g[q * n + q]);
                let theta = (gqq - gpp) / (2.0 * gpq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (gkp, gkq) = (g[k * n + p], g[k * n + q]);
                    g[k * n + p] = c * gkp - s * gkq;
                    g[k * n + q] = s * gkp + c * gkq;
                }
                for k in 0..n {
                    let (gpk, gqk) = (g[p * n + k], g[q * n + k]);
                    g[p * n + k] = c * gpk - s * gqk;
                    g[q * n + k] = s * gpk + c * gqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| g[b * n + b].total_cmp(&g[a * n + a]));
    let values: Vec<f64> = order.iter().map(|&i| g[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + new] = v[k * n + old];
        }
    }
    (values, vectors)
}

/// The best rank-`k` factorization of the rows x cols matrix `w` (row-major). Works on the Gram
/// matrix of the smaller side.
pub fn best_rank(w: &[f32], rows: usize, cols: usize, k: usize) -> LowRank {
    if cols > rows && k < rows {
        // Factor Wᵀ = B'·A', then W = A'ᵀ·B'ᵀ.
        let wt: Vec<f32> = (0..cols * rows).map(|i| w[(i % rows) * cols + i / rows]).collect();
        let t = best_rank_gram(&wt, cols, rows, k);
        let b: Vec<f32> = (0..rows * k).map(|i| t.a[(i % k) * rows + i / k]).collect();
        let a: Vec<f32> = (0..k * cols).map(|i| t.b[(i % cols) * k + i / cols]).collect();
        return LowRank { b, a, rank: k, relative_error: t.relative_error };
    }
    best_rank_gram(w, rows, cols, k)
}

fn best_rank_gram(w: &[f32], rows: usize, cols: usize, k: usize) -> LowRank {
    let norm2: f64 = w.iter().map(|&x| f64::from(x).powi(2)).sum();
    let full = rows.min(cols);
    if k >= full {
        // Exact: B = W, A = I (cols ≤ rows) or B = I, A = W.
        return if cols <= rows {
            let mut a = vec![0f32; cols * cols];
            for i in 0..cols {
                a[i * cols + i] = 1.0;
            }
            LowRank { b: w.to_vec(), a, rank: cols, relative_error: 0.0 }
        } else {
            let mut b = vec![0f32; rows * rows];
            for i in 0..rows {
                b[i * rows + i] = 1.0;
            }
            LowRank { b, a: w.to_vec(), rank: rows, relative_error: 0.0 }
        };
    }
    let mut g = vec![0f64; cols * cols];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        for i in 0..cols {
            let wi = f64::from(row[i]);
            if wi == 0.0 {
                continue;
            }
            for j in 0..cols {
                g[i * cols + j] += wi * f64::from(row[j]);
            }
        }
    }
    let (lambda, v) = symmetric_eigen(g, cols);
    let mut b = vec![0f32; rows * k];
    let mut a = vec![0f32; k * cols];
    for t in 0..k {
        let sigma = lambda[t].max(0.0).sqrt();
        if sigma == 0.0 {
            continue;
        }
        let root = sigma.sqrt();
        for j in 0..cols {
            a[t * cols + j] = (root * v[j * cols + t]) as f32;
        }
        // u_t = W v_t / σ_t, B[:, t] = u_t √σ_t = W v_t / √σ_t.
        for r in 0..rows {
            let dot: f64 = (0..cols).map(|j| f64::from(w[r * cols + j]) * v[j * cols + t]).sum();
            b[r * k + t] = (dot / root) as f32;
        }
    }
    let mut err2 = 0f64;
    for r in 0..rows {
        for j in 0..cols {
            let approx: f64 = (0..k).map(|t| f64::from(b[r * k + t]) * f64::from(a[t * cols + j])).sum();
            err2 += (f64::from(w[r * cols + j]) - approx).powi(2);
        }
    }
    let relative_error = if norm2 > 0.0 { (err2 / norm2).sqrt() } else { 0.0 };
    LowRank { b, a, rank: k, relative_error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eckart_young_on_a_known_spectrum() {
        // W = Σ_i s_i x_i y_iᵀ with orthonormal x (rows 6), y (cols 4): singular values 4,3,2,1.
        let (rows, cols) = (6, 4);
        let s = [4.0, 3.0, 2.0, 1.0];
        let x = |i: usize, r: usize| if r == i { 1.0 } else { 0.0 };
        let c = std::f64::consts::FRAC_1_SQRT_2;
        let y: [[f64; 4]; 4] = [[c, c, 0.0, 0.0], [c, -c, 0.0, 0.0], [0.0, 0.0, c, c], [0.0, 0.0, c, -c]];
        let w: Vec<f32> = (0..rows * cols)
            .map(|k| (0..4).map(|i| s[i] * x(i, k / cols) * y[i][k % cols]).sum::<f64>() as f32)
            .collect();
        let total: f64 = s.iter().map(|v| v * v).sum();
        let mut last = f64::INFINITY;
        for k in 1..=4 {
            let lr = best_rank(&w, rows, cols, k);
            let want = (s[k..].iter().map(|v| v * v).sum::<f64>() / total).sqrt();
            assert!((lr.relative_error - want).abs() < 1e-6, "k={k}: {} vs {want}", lr.relative_error);
            assert!(lr.relative_error <= last);
            last = lr.relative_error;
        }
        assert_eq!(best_rank(&w, rows, cols, 4).relative_error, 0.0);
        // The wide case goes through the transpose and gives the same errors.
        let wt: Vec<f32> = (0..rows * cols).map(|i| w[(i % rows) * cols + i / rows]).collect();
        for k in 1..=3 {
            let a = best_rank(&w, rows, cols, k).relative_error;
            let b = best_rank(&wt, cols, rows, k);
            assert!((a - b.relative_error).abs() < 1e-9, "k={k}");
            assert_eq!((b.b.len(), b.a.len()), (cols * k, k * rows));
        }
        assert_eq!(best_rank(&w, rows, cols, 9).relative_error, 0.0);
    }
}
