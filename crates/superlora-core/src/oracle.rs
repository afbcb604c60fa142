//! The slow, obviously correct twin of every fast path: dense f64 constructions written straight
//! from the spec's equations — explicit Kronecker products, explicit Tucker sums, explicit
//! Hadamard, permutation and fastfood *matrices* — and the whole ΔW map assembled from them with
//! explicit offsets. Tests compare [`crate::SuperLora`] against [`reference_delta`]. Sizes are
//! meant to be tiny (the fastfood matrix costs Lh² memory).

use candle_core::{DType, Tensor, Var};

use crate::adapter::SuperLora;
use crate::config::Fold;
use crate::error::Result;
use crate::factor::{self, FactorVars};
use crate::projection::GroupProjection;
use crate::projection::fastfood::Fastfood;
use crate::projection::fourier::Fourier;
use crate::projection::shuffle::Shuffle;
use crate::projection::wht::wht_reference;

/// The bit pattern of every value of `t`, row-major, each value widened to f64 first (exact for
/// f32 and f64, so equal patterns mean equal values, and -0 differs from +0): for comparing a fast
/// path with its oracle bit for bit.
pub fn value_bits(t: &Tensor) -> Result<Vec<u64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?.iter().map(|v| v.to_bits()).collect())
}

/// A dense row-major f64 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Sizes of the modes.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
}

impl Dense {
    /// The values of a candle tensor, widened to f64.
    pub fn of(t: &Tensor) -> Result<Dense> {
        Ok(Dense { shape: t.dims().to_vec(), data: t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()? })
    }

    fn of_var(v: &Var) -> Result<Dense> {
        Dense::of(v.as_tensor())
    }

    /// Value at a multi-index.
    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[flat_index(&self.shape, idx)]
    }
}

/// Row-major flat index of `idx` in `shape`.
pub fn flat_index(shape: &[usize], idx: &[usize]) -> usize {
    shape.iter().zip(idx).fold(0, |acc, (s, i)| acc * s + i)
}

/// The multi-index of flat position `flat` in `shape`.
pub fn unravel(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for m in (0..shape.len()).rev() {
        idx[m] = flat % shape[m];
        flat /= shape[m];
    }
    idx
}

/// X[i, j] = Σ_k A[i, k] B[j, k].
pub fn lora(a: &Dense, b: &Dense) -> Dense {
    let (rows, r, cols) = (a.shape[0], a.shape[1], b.shape[0]);
    let mut data = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            data[i * cols + j] = (0..r).map(|k| a.at(&[i, k]) * b.at(&[j, k])).sum();
        }
    }
    Dense { shape: vec![rows, cols], data }
}

/// X[i₁…i_M] = Σ_{j₁…j_M} C[j₁…j_M] Π_m U_m[i_m, j_m] — the explicit Tucker sum.
pub fn tucker(core: &Dense, factors: &[Dense]) -> Dense {
    let shape: Vec<usize> = factors.iter().map(|u| u.shape[0]).collect();
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|flat| {
            let i = unravel(&shape, flat);
            (0..core.data.len())
                .map(|cflat| {
                    let j = unravel(&core.shape, cflat);
                    core.data[cflat] * (0..factors.len()).map(|m| factors[m].at(&[i[m], j[m]])).product::<f64>()
                })
                .sum()
        })
        .collect();
    Dense { shape, data }
}

/// (A ⊗ B)[i] = A[i / b] · B[i mod b] mode by mode — the explicit Kronecker product.
pub fn kron(a: &Dense, b: &Dense) -> Dense {
    let shape: Vec<usize> = a.shape.iter().zip(&b.shape).map(|(x, y)| x * y).collect();
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|flat| {
            let i = unravel(&shape, flat);
            let ia: Vec<usize> = i.iter().zip(&b.shape).map(|(i, s)| i / s).collect();
            let ib: Vec<usize> = i.iter().zip(&b.shape).map(|(i, s)| i % s).collect();
            a.at(&ia) * b.at(&ib)
        })
        .collect();
    Dense { shape, data }
}

/// ΔW/α of VeRA: X_ij = Σ_k b_i · B_ik · d_k · A_kj, the explicit sum, with A and B
/// the `rows` x `cols` corner slices of the shared matrices.
pub fn vera(lambda_b: &Dense, lambda_d: &Dense, a: &Dense, b: &Dense) -> Dense {
    let (rows, r, cols) = (lambda_b.data.len(), lambda_d.data.len(), a.shape[1]);
    let mut data = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            data[i * cols + j] =
                (0..r).map(|k| lambda_b.data[i] * b.at(&[i, k]) * lambda_d.data[k] * a.at(&[k, j])).sum();
        }
    }
    Dense { shape: vec![rows, cols], data }
}

/// The explicit (R·C) x n FourierFT matrix: column k is Re(IDFT2) of a unit coefficient at flat
/// frequency `positions[k]` = u·C + v, i.e. cos(2π(u·i/R + v·j/C)) / (R·C) at row i·C + j —
/// straight from the definition of the inverse DFT, no separation into rows and columns.
pub fn fourier_matrix(f: &Fourier) -> Vec<f64> {
    let (r, c, n) = (f.rows, f.cols, f.positions.len());
    let mut m = vec![0.0; r * c * n];
    for i in 0..r {
        for j in 0..c {
            for (k, &p) in f.positions.iter().enumerate() {
                let (u, v) = (p / c, p % c);
                let phase =
                    2.0 * std::f64::consts::PI * (u as f64 * i as f64 / r as f64 + v as f64 * j as f64 / c as f64);
                m[(i * c + j) * n + k] = phase.cos() / (r * c) as f64;
            }
        }
    }
    m
}

/// X of one factor from the current values of its tensors.
pub fn factor(vars: &FactorVars) -> Result<Dense> {
    Ok(match vars {
        FactorVars::Dense(x) => Dense::of_var(x)?,
        FactorVars::Lora { a, b } => lora(&Dense::of_var(a)?, &Dense::of_var(b)?),
        FactorVars::Tucker { core, factors } => {
            tucker(&Dense::of_var(core)?, &factors.iter().map(Dense::of_var).collect::<Result<Vec<_>>>()?)
        }
        FactorVars::Kronecker(fs) => {
            let xs = fs.iter().map(factor).collect::<Result<Vec<_>>>()?;
            let mut acc = xs[0].clone();
            for x in &xs[1..] {
                acc = kron(&acc, x);
            }
            acc
        }
        FactorVars::Vera(v) => {
            vera(&Dense::of_var(&v.lambda_b)?, &Dense::of_var(&v.lambda_d)?, &Dense::of(&v.a)?, &Dense::of(&v.b)?)
        }
    })
}

/// The n x n Hadamard matrix H[i][j] = (−1)^popcount(i & j), row-major.
pub fn hadamard(n: usize) -> Vec<f64> {
    (0..n * n).map(|k| if ((k / n) & (k % n)).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 }).collect()
}

/// y = A x for a row-major `rows x cols` matrix A.
pub fn matvec(a: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows).map(|i| (0..cols).map(|j| a[i * cols + j] * x[j]).sum()).collect()
}

/// C = A B for row-major A (n x k) and B (k x m).
pub fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            c[i * m + j] = (0..k).map(|t| a[i * k + t] * b[t * m + j]).sum();
        }
    }
    c
}

fn diag(v: &[f64]) -> Vec<f64> {
    let n = v.len();
    (0..n * n).map(|k| if k / n == k % n { v[k / n] } else { 0.0 }).collect()
}

/// The explicit D x d fastfood matrix: scale · T_D · H · diag(G) · Π · H · diag(B) · Pad_d,
/// every factor built as a dense Lh x Lh matrix.
pub fn fastfood_matrix(f: &Fastfood) -> Vec<f64> {
    let lh = f.padded;
    let h = hadamard(lh);
    let b = diag(&f.signs.iter().map(|&s| if s { -1.0 } else { 1.0 }).collect::<Vec<_>>());
    let g = diag(&f.gauss.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
    let mut pi = vec![0.0; lh * lh];
    for (i, &p) in f.perm.iter().enumerate() {
        pi[i * lh + p as usize] = 1.0; // (Πy)[i] = y[perm[i]]
    }
    let mut m = matmul(&h, &g, lh, lh, lh);
    m = matmul(&m, &pi, lh, lh, lh);
    m = matmul(&m, &h, lh, lh, lh);
    m = matmul(&m, &b, lh, lh, lh);
    // Pad_d keeps the first d columns; T_D keeps the first D rows.
    let mut out = vec![0.0; f.big_d * f.d];
    for i in 0..f.big_d {
        for j in 0..f.d {
            out[i * f.d + j] = m[i * lh + j] * f.scale;
        }
    }
    out
}

/// F(x) straight from the equation, O(Lh log Lh) but with none of the fast path's tricks: pad,
/// signs, the textbook Hadamard loop, the plain gather (Πy)[i] = y[perm[i]], G, Hadamard again,
/// truncate, scale — all in f64. The bridge from the explicit matrix (small sizes) to the fast
/// path at sizes whose matrix would not fit.
pub fn fastfood_apply(f: &Fastfood, x: &[f64]) -> Vec<f64> {
    let mut y: Vec<f64> =
        (0..f.padded).map(|i| if i < f.d { if f.signs[i] { -x[i] } else { x[i] } } else { 0.0 }).collect();
    wht_reference(&mut y);
    let mut z: Vec<f64> = (0..f.padded).map(|i| y[f.perm[i] as usize] * f64::from(f.gauss[i])).collect();
    wht_reference(&mut z);
    z.truncate(f.big_d);
    z.iter().map(|v| v * f.scale).collect()
}

/// Fᵀ(g) straight from the equation (see [`fastfood_apply`]): the scatter z[perm[i]] = G_i·y[i].
pub fn fastfood_apply_transpose(f: &Fastfood, g: &[f64]) -> Vec<f64> {
    let mut y: Vec<f64> = (0..f.padded).map(|i| if i < f.big_d { g[i] } else { 0.0 }).collect();
    wht_reference(&mut y);
    let mut z = vec![0.0; f.padded];
    for (i, &p) in f.perm.iter().enumerate() {
        z[p as usize] = f64::from(f.gauss[i]) * y[i];
    }
    wht_reference(&mut z);
    (0..f.d).map(|i| if f.signs[i] { -z[i] } else { z[i] } * f.scale).collect()
}

/// The explicit N x N permutation matrix P with (P x)[π(i)] = x[i].
pub fn shuffle_matrix(s: &Shuffle) -> Vec<f64> {
    let n = s.src.len();
    let mut p = vec![0.0; n * n];
    for (j, &i) in s.src.iter().enumerate() {
        p[j * n + i as usize] = 1.0;
    }
    p
}

/// The explicit N_g x n_g matrix of a group's projection.
pub fn projection_matrix(p: &GroupProjection, n: usize, big_n: usize) -> Vec<f64> {
    match p {
        GroupProjection::Identity => diag(&vec![1.0; big_n.max(n)]),
        GroupProjection::Shuffle(s) => shuffle_matrix(s),
        GroupProjection::Fastfood(f) => fastfood_matrix(f),
        GroupProjection::Fourier(f) => fourier_matrix(f),
    }
}

/// The whole map, step by step with explicit offsets: every group's X_g from the explicit
/// constructions, cropped (natural) or truncated (square) to n_g, multiplied by the explicit
/// projection matrix, written into one vector of length N at the group's start, then cut at the
/// layers' offsets and scaled by α. Returns ΔW_l flattened row-major.
pub fn reference_delta(adapter: &SuperLora) -> Result<Vec<Vec<f64>>> {
    let plan = adapter.plan();
    let mut all = vec![0.0; plan.total_entries];
    let named = adapter.named_vars();
    for g in &plan.groups {
        let prefix = format!("group.{}.", g.index);
        let vars = rebuild(&g.factor, &named, &prefix)?;
        let x = factor(&vars)?;
        let values: Vec<f64> = if plan.config.fold == Fold::Natural && x.shape.len() == 2 {
            let (rows, cols) = (g.sides[0], g.sides[1]);
            (0..rows * cols).map(|k| x.at(&[k / cols, k % cols])).collect()
        } else {
            x.data[..g.n].to_vec()
        };
        let Some(proj) = adapter.projection(g.index) else { continue };
        let p = projection_matrix(proj, g.n, g.len);
        let v = matvec(&p, g.len, g.n, &values);
        all[g.start..g.start + g.len].copy_from_slice(&v);
    }
    Ok(plan
        .layers
        .iter()
        .map(|l| all[l.offset..l.offset + l.rows * l.cols].iter().map(|x| x * plan.config.scale).collect())
        .collect())
}

/// A `FactorVars` tree of `plan`'s shape holding the adapter's vars of one group.
fn rebuild(plan: &crate::plan::FactorPlan, named: &[(String, Var)], prefix: &str) -> Result<FactorVars> {
    use crate::plan::FactorPlan;
    let get = |n: &str| {
        let full = format!("{prefix}{n}");
        named.iter().find(|(k, _)| *k == full).map(|(_, v)| v.clone()).ok_or_else(|| crate::error::Error::Tensor {
            name: full,
            reason: "the plan names it but the adapter has no such tensor".into(),
        })
    };
    Ok(match plan {
        FactorPlan::Dense { .. } => FactorVars::Dense(get(factor::dense::NAME)?),
        FactorPlan::Lora { .. } => FactorVars::Lora { a: get(factor::lora::A_NAME)?, b: get(factor::lora::B_NAME)? },
        FactorPlan::Tucker { sides, .. } => FactorVars::Tucker {
            core: get(factor::tucker::CORE_NAME)?,
            factors: (0..sides.len()).map(|m| get(&factor::tucker::factor_name(m))).collect::<Result<Vec<_>>>()?,
        },
        FactorPlan::Kronecker { factors } => FactorVars::Kronecker(
            factors
                .iter()
                .enumerate()
                .map(|(k, f)| rebuild(f, named, &format!("{prefix}{}", factor::kronecker::prefix(k))))
                .collect::<Result<Vec<_>>>()?,
        ),
        FactorPlan::Vera { rows, cols, rank, shared_rows, shared_cols, seed } => {
            // The frozen matrices regenerated here in f64 (the adapter holds them in its dtype).
            let (a, b) = crate::factor::vera::shared_values(*seed, *rank, *shared_rows, *shared_cols);
            let a: Vec<f64> = (0..rank * cols).map(|k| a[(k / cols) * shared_cols + k % cols]).collect();
            let b = b[..rows * rank].to_vec();
            let dev = candle_core::Device::Cpu;
            FactorVars::Vera(crate::factor::vera::VeraVars {
                lambda_b: get(factor::vera::B_NAME)?,
                lambda_d: get(factor::vera::D_NAME)?,
                a: Tensor::from_vec(a, (*rank, *cols), &dev)?,
                b: Tensor::from_vec(b, (*rows, *rank), &dev)?,
            })
        }
    })
}
