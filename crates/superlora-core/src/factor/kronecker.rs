//! Kronecker factor (K ≥ 2; LoNKr, and LoKr-like for K = 2, M = 2).
//!
//! Equation: X = X₁ ⊗ X₂ ⊗ … ⊗ X_K for order-M tensors X_k with sides s_km; mode m of X has size
//! S_m = Π_k s_km and X[i₁…i_M] = Π_k X_k[i_1k … i_Mk] where i_m = Σ_k i_mk · Π_{k'>k} s_k'm.
//! Each X_k is itself dense, lora or tucker (the plan's side rule, [`crate::plan`]).
//!
//! Symbol → variable: X_k → `factors[k]`, K → `factors.len()`.
//!
//! Computed pairwise left to right, each product as one broadcast multiply of A reshaped to
//! [a₁,1,a₂,1,…] with B reshaped to [1,b₁,1,b₂,…], then merged to [a₁b₁, a₂b₂, …]: no
//! intermediate is larger than the final result.
//!
//! Init (spec §4): the last factor as its own kind would be (zero update), the others random.

use candle_core::{DType, Device, Tensor};

use super::{FactorVars, Init};
use crate::error::Result;
use crate::plan::FactorPlan;
use crate::rng::Rng;

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

/// A ⊗ B for tensors of equal order.
pub fn kron2(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ad, bd) = (a.dims(), b.dims());
    let mut a_shape = Vec::with_capacity(2 * ad.len());
    let mut b_shape = Vec::with_capacity(2 * ad.len());
    let mut out = Vec::with_capacity(ad.len());
    for (&x, &y) in ad.iter().zip(bd) {
        a_shape.extend([x, 1]);
        b_shape.extend([1, y]);
        out.push(x * y);
    }
    Ok(a.reshape(a_shape)?.broadcast_mul(&b.reshape(b_shape)?)?.reshape(out)?)
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
