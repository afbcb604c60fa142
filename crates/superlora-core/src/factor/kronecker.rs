//! Kronecker factor (K ≥ 2; LoNKr, and LoKr-like for K = 2, M = 2).
//!
//! Equation: X = X₁ ⊗ X₂ ⊗ … ⊗ X_K for order-M tensors X_k with sides s_km; mode m of X has size
//! S_m = Π_k s_km and X[i₁…i_M] = Π_k X_k[i_1k … i_Mk] where i_m = Σ_k i_mk · Π_{k'>k} s_k'm.
//! Each X_k is itself dense, lora or tucker (the plan's side rule, [`crate::plan`]).
//!
//! Symbol → variable: X_k → `factors[k]`, K → `factors.len()`.
//!
//! Computed pairwise left to right ([`kron2`]): on the CPU each product is one node written
//! straight in Kronecker order; elsewhere an outer product (one matmul) permuted into that order
//! ([`kron2_composed`]). No intermediate is larger than the final result.
//!
//! Init (spec §4): the last factor as its own kind would be (zero update), the others random.

/// One line for `--help`.
pub const SUMMARY: &str = "Kronecker product of K factors.";

use candle_core::{DType, Device, Tensor};

use super::{FactorVars, Init};
use crate::error::Result;
use crate::math::{ceil_div, ceil_root};
use crate::plan::FactorPlan;
use crate::rng::Rng;

/// Tensor-name prefix of factor k (`kron.<k>.`, then the factor's own names).
pub fn prefix(k: usize) -> String {
    format!("kron.{k}.")
}

/// The K factors' tensors, prefixed.
pub fn tensor_shapes(factors: &[FactorPlan]) -> Vec<(String, Vec<usize>)> {
    factors
        .iter()
        .enumerate()
        .flat_map(|(k, f)| f.tensor_shapes().into_iter().map(move |(n, s)| (format!("{}{n}", prefix(k)), s)))
        .collect()
}

/// `[A 28x4, B 28x4] ⊗ [dense 6x6]`.
pub fn describe(factors: &[FactorPlan]) -> String {
    factors.iter().map(|f| format!("[{}]", f.describe())).collect::<Vec<_>>().join(" ⊗ ")
}

/// The plan of X = X₁ ⊗ … ⊗ X_K over fold `sides` [decided, spec §3]: per mode,
/// s_km = ⌈s^(1/K)⌉ for k < K and the last takes ⌈s / Π_{k<K} s_km⌉ (a natural (rows, cols) fold
/// splits each side); each factor is dense when r ≥ its smallest side or M = 1, else lora
/// (M = 2) or tucker (M ≥ 3) of rank r.
pub fn plan(sides: &[usize], k: usize, rank: usize) -> FactorPlan {
    let mut factor_sides = vec![vec![0usize; sides.len()]; k];
    for (m, &side) in sides.iter().enumerate() {
        let p = ceil_root(side as u64, k as u32) as usize;
        for fs in factor_sides.iter_mut().take(k - 1) {
            fs[m] = p;
        }
        let head = p.pow(k as u32 - 1);
        factor_sides[k - 1][m] = ceil_div(side as u64, head as u64) as usize;
    }
    FactorPlan::Kronecker { factors: factor_sides.into_iter().map(|fs| factor_kind(fs, rank)).collect() }
}

fn factor_kind(sides: Vec<usize>, rank: usize) -> FactorPlan {
    let smallest = sides.iter().copied().min().unwrap_or(1);
    if rank >= smallest || sides.len() == 1 {
        FactorPlan::Dense { shape: sides }
    } else if sides.len() == 2 {
        FactorPlan::Lora { rows: sides[0], cols: sides[1], rank }
    } else {
        FactorPlan::Tucker { sides, rank }
    }
}

/// The K factors; factor k < K random, the last with the zero-update init. Drawn in order.
pub fn init(plans: &[FactorPlan], init: Init, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Vec<FactorVars>> {
    let last = plans.len().saturating_sub(1);
    plans
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let kind = if k == last { init } else { Init::Random };
            FactorVars::init(p, kind, rng, dtype, device)
        })
        .collect()
}

/// A ⊗ B for tensors of equal order M, shape [a₁b₁, …, a_M b_M]: entry
/// [i₁b₁ + j₁, …, i_M b_M + j_M] is A[i₁…i_M]·B[j₁…j_M]. On the CPU one node ([`KronOp`]) whose
/// backward is one permuted copy of the gradient and two matrix-vector products; elsewhere
/// [`kron2_composed`]. Both give the same bits, values and gradients.
pub fn kron2(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !a.device().is_cpu() || a.rank() != b.rank() || a.dtype() != b.dtype() || a.rank() == 0 {
        return kron2_composed(a, b);
    }
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, KronOp)?)
}

/// A ⊗ B from candle's ops: the outer product vec(A)·vec(B)ᵀ as one matmul
/// ([ΠA, 1] x [1, ΠB]), viewed as [a₁…a_M, b₁…b_M], permuted to [a₁, b₁, …, a_M, b_M] and merged
/// to [a₁b₁, …, a_M b_M]. No intermediate is larger than the result, but its backward walks five
/// result-sized nodes (each a zero fill and an add in candle's backward).
pub fn kron2_composed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
    let outer = a.reshape((a.elem_count(), 1))?.matmul(&b.reshape((1, b.elem_count()))?)?;
    Ok(to_kron_order(&outer, &ad, &bd)?.reshape(merged(&ad, &bd))?)
}

/// Sides of A ⊗ B: [a₁b₁, …, a_M b_M].
fn merged(ad: &[usize], bd: &[usize]) -> Vec<usize> {
    ad.iter().zip(bd).map(|(x, y)| x * y).collect()
}

/// The outer product [ΠA, ΠB] viewed as [a₁…a_M, b₁…b_M] and permuted to [a₁, b₁, …, a_M, b_M]
/// (contiguous).
fn to_kron_order(outer: &Tensor, ad: &[usize], bd: &[usize]) -> candle_core::Result<Tensor> {
    let m = ad.len();
    let split: Vec<usize> = ad.iter().chain(bd).copied().collect();
    let order: Vec<usize> = (0..m).flat_map(|i| [i, m + i]).collect();
    outer.reshape(split)?.permute(order)?.contiguous()
}

/// The inverse of [`to_kron_order`]: A ⊗ B-shaped `g` back to [ΠA, ΠB] (contiguous).
fn from_kron_order(g: &Tensor, ad: &[usize], bd: &[usize]) -> candle_core::Result<Tensor> {
    let m = ad.len();
    let interleaved: Vec<usize> = ad.iter().zip(bd).flat_map(|(&x, &y)| [x, y]).collect();
    let order: Vec<usize> = (0..m).map(|i| 2 * i).chain((0..m).map(|i| 2 * i + 1)).collect();
    let na: usize = ad.iter().product();
    let nb: usize = bd.iter().product();
    g.reshape(interleaved)?.permute(order)?.contiguous()?.reshape((na, nb))
}

/// The candle op of [`kron2`] (CPU, f32/f64, contiguous inputs of equal order ≥ 1).
///
/// Forward: the result row by row of its last mode; each such row is A's last-mode row times
/// B's, a_M·b_M products (the same products the outer-product matmul makes). Backward, with
/// G = the gradient put back into [ΠA, ΠB] order: ∂vec(A) = G·vec(B), ∂vec(B) = vec(A)ᵀ·G: the
/// very matmuls of [`kron2_composed`]'s backward, so the same bits.
pub struct KronOp;

impl candle_core::CustomOp2 for KronOp {
    fn name(&self) -> &'static str {
        "superlora-kron"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (ad, bd) = (l1.dims(), l2.dims());
        if ad.len() != bd.len() || ad.is_empty() {
            candle_core::bail!("kron: orders {:?} and {:?} differ or are 0", ad, bd)
        }
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("kron: inputs must be contiguous")
        };
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(kron_fill(&a[a0..a1], ad, &b[b0..b1], bd)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(kron_fill(&a[a0..a1], ad, &b[b0..b1], bd)),
            _ => candle_core::bail!("kron: f32 or f64 with matching dtypes"),
        };
        Ok((out, candle_core::Shape::from(merged(ad, bd))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (ad, bd) = (a.dims(), b.dims());
        let g = from_kron_order(grad, ad, bd)?;
        let (a, b) = (a.detach(), b.detach());
        let b_row = b.reshape((1, b.elem_count()))?;
        let a_col = a.reshape((a.elem_count(), 1))?;
        let ga = g.matmul(&b_row.t()?)?.reshape(ad)?;
        let gb = a_col.t()?.matmul(&g)?.reshape(bd)?;
        Ok((Some(ga), Some(gb)))
    }
}

/// A ⊗ B of row-major `a` (sides `ad`) and `b` (sides `bd`), row-major in [a₁b₁, …, a_M b_M].
fn kron_fill<T: Copy + Default + std::ops::Mul<Output = T>>(a: &[T], ad: &[usize], b: &[T], bd: &[usize]) -> Vec<T> {
    let m = ad.len();
    let (am, bm) = (ad[m - 1], bd[m - 1]);
    let row = am * bm;
    let rows: usize = ad[..m - 1].iter().zip(&bd[..m - 1]).map(|(x, y)| x * y).product();
    // Row-major strides of A and B over their modes.
    let stride = |d: &[usize]| -> Vec<usize> {
        let mut s = vec![1usize; d.len()];
        for k in (0..d.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * d[k + 1];
        }
        s
    };
    let (sa, sb) = (stride(ad), stride(bd));
    let mut out = vec![T::default(); rows * row];
    for (q, chunk) in out.chunks_exact_mut(row.max(1)).enumerate().take(rows) {
        // Mode coordinates c_k = i_k·b_k + j_k of row q (row-major over modes 0..M-1).
        let (mut rest, mut ao, mut bo) = (q, 0usize, 0usize);
        for k in (0..m - 1).rev() {
            let side = ad[k] * bd[k];
            let c = rest % side;
            rest /= side;
            ao += (c / bd[k]) * sa[k];
            bo += (c % bd[k]) * sb[k];
        }
        let (arow, brow) = (&a[ao..ao + am], &b[bo..bo + bm]);
        for (i, piece) in chunk.chunks_exact_mut(bm.max(1)).enumerate().take(am) {
            let x = arow[i];
            for (o, &y) in piece.iter_mut().zip(brow) {
                *o = x * y;
            }
        }
    }
    out
}

/// X₁ ⊗ … ⊗ X_K.
pub fn generate(xs: &[Tensor]) -> Result<Tensor> {
    let mut it = xs.iter();
    let Some(first) = it.next() else {
        return Err(crate::error::Error::Shapes("a Kronecker product needs at least one factor".into()));
    };
    let mut acc = first.clone();
    for x in it {
        acc = kron2(&acc, x)?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn bits(t: &Tensor) -> Vec<u64> {
        crate::oracle::value_bits(t).unwrap()
    }

    /// The one-node product against the composed one: the same bits in the value and in both
    /// gradients (under a non-uniform upstream gradient), orders 1 to 3, f32 and f64, sides with 1s.
    #[test]
    fn kron_op_equals_the_composed_product_bit_for_bit() {
        let dev = Device::Cpu;
        let cases: [(&[usize], &[usize]); 5] =
            [(&[3], &[4]), (&[2, 3], &[4, 5]), (&[1, 3], &[3, 1]), (&[2, 3, 2], &[3, 1, 2]), (&[5, 4], &[1, 1])];
        for dtype in [DType::F32, DType::F64] {
            for (ad, bd) in cases {
                let fill = |d: &[usize], k: u32| {
                    let n: usize = d.iter().product();
                    let v: Vec<f64> = (0..n as u32).map(|i| ((i * 37 + k * 11) % 23) as f64 / 7.0 - 1.5).collect();
                    Var::from_tensor(&Tensor::from_vec(v, d, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap()
                };
                let (a, b) = (fill(ad, 1), fill(bd, 2));
                let fast = kron2(a.as_tensor(), b.as_tensor()).unwrap();
                let slow = kron2_composed(a.as_tensor(), b.as_tensor()).unwrap();
                assert_eq!(fast.dims(), slow.dims());
                assert_eq!(bits(&fast), bits(&slow), "{ad:?} ⊗ {bd:?} {dtype:?}: values");
                let w = (fast.ones_like().unwrap().cumsum(fast.rank() - 1).unwrap() * 0.37).unwrap().detach();
                let gf = (&fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gs = (&slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
                for v in [&a, &b] {
                    let (x, y) = (gf.get(v.as_tensor()).unwrap(), gs.get(v.as_tensor()).unwrap());
                    assert_eq!(x.dims(), v.dims());
                    assert_eq!(bits(x), bits(y), "{ad:?} ⊗ {bd:?} {dtype:?}: gradient");
                }
            }
        }
    }

    /// Entry [i₁b₁ + j₁, i₂b₂ + j₂] is A[i₁, i₂]·B[j₁, j₂], read off element by element.
    #[test]
    fn kron_op_matches_the_definition() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f64, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let b = Tensor::new(&[[7f64, 8.], [9., 10.], [11., 12.]], &dev).unwrap();
        let k = kron2(&a, &b).unwrap().to_vec2::<f64>().unwrap();
        let (av, bv) = (a.to_vec2::<f64>().unwrap(), b.to_vec2::<f64>().unwrap());
        assert_eq!((k.len(), k[0].len()), (6, 6));
        for i1 in 0..2 {
            for i2 in 0..3 {
                for j1 in 0..3 {
                    for j2 in 0..2 {
                        assert_eq!(k[i1 * 3 + j1][i2 * 2 + j2], av[i1][i2] * bv[j1][j2]);
                    }
                }
            }
        }
    }
}
