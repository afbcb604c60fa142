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
use crate::error::Result;
use crate::rng::Rng;

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
