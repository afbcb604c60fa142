//! Tucker factor (M ≥ 3; SuperLoRA's "LoRTA").
//!
//! Equation: X = C ×₁ U₁ ×₂ U₂ … ×_M U_M, i.e.
//! X[i₁…i_M] = Σ_{j₁…j_M} C[j₁…j_M] · Π_m U_m[i_m, j_m],
//! C ∈ R^{r x … x r} (M modes), U_m ∈ R^{s_m x r}; r^M + r·Σ_m s_m parameters.
//!
//! Symbol → variable: C → `core`, U_m → `factors[m]`, r → `rank`, s_m → `sides[m]`.
//!
//! Computed by successive mode products, never the r^M·s^M sum: the running tensor is kept as a
//! [r, rest] matrix whose first mode is the next to contract; Y = Xᵀ·U_mᵀ is [rest, s_m], which
//! moves the finished mode to the back. After M steps the modes are back in order 1..M. Each step
//! is one matmul, the last (the largest) costing s^M·r multiply-adds.
//!
//! Init (spec §4): C = 0, U_m ~ N(0, 1/s_m) (near-orthonormal columns). As a non-last Kronecker
//! factor, C ~ N(0, 1) as well.

/// One line for `--help`.
pub const SUMMARY: &str = "Tucker core and factors (order >= 3).";

use candle_core::{DType, Device, Tensor, Var};

use super::{Init, filled};
use crate::error::{Error, Result};
use crate::math::checked_pow;
use crate::plan::FactorPlan;
use crate::rng::Rng;

/// Tensor name of C.
pub const CORE_NAME: &str = "tucker_core";

/// Tensor name of U_m.
pub fn factor_name(m: usize) -> String {
    format!("tucker_u.{m}")
}

/// The plan of an order-M Tucker tensor with every side `sides[m]` (all equal to s); r ≤ s and
/// r^M at most 2^40.
pub fn plan(sides: &[usize], rank: usize, group: usize) -> Result<FactorPlan> {
    let (s, order) = (sides.first().copied().unwrap_or(0), sides.len() as u32);
    if rank > s {
        return Err(Error::config(
            "rank",
            rank,
            format!("group {group} folds to side {s} (order {order}); a tucker rank cannot exceed the side"),
        ));
    }
    if checked_pow(rank as u64, order).is_none_or(|p| p > 1 << 40) {
        return Err(Error::config("rank", rank, format!("a tucker core of {rank}^{order} entries is too large")));
    }
    Ok(FactorPlan::Tucker { sides: sides.to_vec(), rank })
}

/// r^M + r·Σ_m s_m.
pub fn params(sides: &[usize], rank: usize) -> usize {
    rank.pow(sides.len() as u32) + rank * sides.iter().sum::<usize>()
}

/// C: r^M, U_m: s_m x r.
pub fn tensor_shapes(sides: &[usize], rank: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![(CORE_NAME.into(), vec![rank; sides.len()])];
    v.extend(sides.iter().enumerate().map(|(m, s)| (factor_name(m), vec![*s, rank])));
    v
}

/// `core 5x5x5, 3x U 12x5`.
pub fn describe(sides: &[usize], rank: usize) -> String {
    let dims = vec![rank.to_string(); sides.len()].join("x");
    let us = if sides.iter().all(|s| Some(s) == sides.first()) && !sides.is_empty() {
        format!("{}x U {}x{rank}", sides.len(), sides[0])
    } else {
        sides.iter().map(|s| format!("U {s}x{rank}")).collect::<Vec<_>>().join(", ")
    };
    format!("core {dims}, {us}")
}

/// C and U_1..U_M; drawn in that order.
pub fn init(
    sides: &[usize],
    rank: usize,
    init: Init,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<(Var, Vec<Var>)> {
    let core_shape = vec![rank; sides.len()];
    let core = match init {
        Init::ZeroUpdate => filled(&core_shape, dtype, device, || 0.0)?,
        Init::Random => filled(&core_shape, dtype, device, || rng.normal())?,
    };
    let factors = sides
        .iter()
        .map(|&s| {
            let std = 1.0 / (s as f64).sqrt();
            filled(&[s, rank], dtype, device, || std * rng.normal())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((core, factors))
}

/// X = C ×₁ U₁ … ×_M U_M, shape [s_1, …, s_M].
pub fn generate(core: &Tensor, factors: &[Tensor]) -> Result<Tensor> {
    let mut x = core.clone();
    let mut shape: Vec<usize> = core.dims().to_vec();
    for u in factors {
        let (s, r) = u.dims2()?;
        let rest = shape.iter().product::<usize>() / r;
        // [r, rest] -> [rest, r] · [r, s] = [rest, s]
        x = x.reshape((r, rest))?.t()?.matmul(&u.t()?)?;
        shape.remove(0);
        shape.push(s);
    }
    Ok(x.reshape(shape)?)
}
