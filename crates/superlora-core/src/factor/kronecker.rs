//! Kronecker factor (K ≥ 2; LoNKr, and LoKr-like for K = 2, M = 2).
//!
//! Equation: X = X₁ ⊗ X₂ ⊗ … ⊗ X_K for order-M tensors X_k with sides s_km; mode m of X has size
//! S_m = Π_k s_km and X[i₁…i_M] = Π_k X_k[i_1k … i_Mk] where i_m = Σ_k i_mk · Π_{k'>k} s_k'm.
//! Each X_k is itself dense, lora or tucker (the plan's side rule, [`crate::plan`]).
//!
//! Symbol → variable: X_k → `factors[k]`, K → `factors.len()`.
//!
//! Computed pairwise left to right, each product as an outer product (one matmul) permuted into
//! Kronecker order ([`kron2`]): no intermediate is larger than the final result.
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

/// A ⊗ B for tensors of equal order M: the outer product vec(A)·vec(B)ᵀ as one matmul
/// ([ΠA, 1] x [1, ΠB]), viewed as [a₁…a_M, b₁…b_M], permuted to [a₁, b₁, …, a_M, b_M] and merged
/// to [a₁b₁, …, a_M b_M]. Its backward is two matrix-vector products and one permutation, where a
/// broadcast multiply would need strided reductions over the whole product.
pub fn kron2(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
    let m = ad.len();
    let outer = a.reshape((a.elem_count(), 1))?.matmul(&b.reshape((1, b.elem_count()))?)?;
    let mut split = ad.clone();
    split.extend_from_slice(&bd);
    let order: Vec<usize> = (0..m).flat_map(|i| [i, m + i]).collect();
    let merged: Vec<usize> = ad.iter().zip(&bd).map(|(x, y)| x * y).collect();
    Ok(outer.reshape(split)?.permute(order)?.contiguous()?.reshape(merged)?)
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
