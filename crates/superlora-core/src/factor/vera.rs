//! VeRA factor (Kopiczko et al., ICLR 2024; PEFT's `VERA`): per adapted weight,
//!
//! ΔW_l = α · Λ_b,l · B_l · Λ_d,l · A_l, Λ_b = diag(b), Λ_d = diag(d),
//!
//! with b ∈ R^{d_out}, d ∈ R^r trainable per weight and A (r x d_in), B (d_out x r) *frozen*,
//! regenerated from the seed and shared by every weight: one A_max (r x max d_in) and one B_max
//! (max d_out x r) are drawn, and each weight uses A_l = A_max[:, :d_in], B_l = B_max[:d_out, :]
//! (PEFT's slicing from the largest shape). Trainable: Σ_l (d_out,l + r).
//!
//! Settings: `factor = vera` with `rank` r, natural fold with one group per weight (no `groups`),
//! identity projection, order 2; r may not exceed min(d_out, d_in) of any weight.
//!
//! Symbol → variable (tensor name): b → `vera_lambda_b` (d_out), d → `vera_lambda_d` (r) (PEFT's
//! `vera_lambda_b` / `vera_lambda_d`); A_max, B_max → [`shared_values`] (never trained, never counted).
//!
//! Init (PEFT's defaults): b = 0 (so ΔW = 0 exactly), d = [`D_INITIAL`] = 0.1. A_max and B_max are
//! Kaiming-uniform as PEFT's `_kaiming_init` (gain √2, fan = the tensor's second dimension):
//! A_max ~ U(±√(6 / max d_in)), B_max ~ U(±√(6 / r)), drawn row-major, A_max first, from the
//! portable stream (seed, group 0, [`Purpose::VeraShared`]).
//!
//! Generation: (b ⊙_rows B_l) · (d ⊙_rows A_l), two broadcast multiplies and one matmul, with
//! autograd reaching b and d.

/// One line for `--help`.
pub const SUMMARY: &str = "VeRA: per weight diag(b)·B·diag(d)·A, A and B frozen random and shared (natural fold); trains d_out + rank per weight.";

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};

use super::filled;
use crate::config::{Fold, ProjectionKind};
use crate::error::{Error, Result};
use crate::plan::FactorPlan;
use crate::rng::{Purpose, stream};

/// PEFT's default initial value of every entry of d.
pub const D_INITIAL: f64 = 0.1;

/// Checks the settings VeRA needs (natural fold, one group per weight, identity projection).
pub fn check_settings(
    fold: Fold,
    groups: Option<usize>,
    _order: usize,
    projection: Option<ProjectionKind>,
) -> Result<()> {
    if fold != Fold::Natural {
        return Err(Error::config("fold", fold, "`factor = vera` adapts each weight on its own: use `fold = natural`"));
    }
    if let Some(g) = groups {
        return Err(Error::config(
            "groups",
            g,
            "`factor = vera` has one group per weight: drop `groups` (VeRA shares its frozen matrices, not its groups)",
        ));
    }
    if let Some(p) = projection.filter(|p| *p != ProjectionKind::Identity) {
        return Err(Error::config(
            "projection",
            p,
            "`factor = vera` produces ΔW directly: use `projection = identity`",
        ));
    }
    Ok(())
}

/// The plan of one weight (`rows` x `cols`) under VeRA of rank `rank`; `shared` = (max d_out,
/// max d_in) over all adapted weights.
pub fn plan(
    rows: usize,
    cols: usize,
    rank: usize,
    shared: (usize, usize),
    seed: u64,
    group: usize,
) -> Result<FactorPlan> {
    if rank > rows.min(cols) {
        return Err(Error::config(
            "rank",
            rank,
            format!("weight {group} is {rows}x{cols}; a vera rank cannot exceed its smaller side {}", rows.min(cols)),
        ));
    }
    Ok(FactorPlan::Vera { rows, cols, rank, shared_rows: shared.0, shared_cols: shared.1, seed })
}

/// Tensor name of b.
pub const B_NAME: &str = "vera_lambda_b";
/// Tensor name of d.
pub const D_NAME: &str = "vera_lambda_d";

/// Trainable parameters of one weight: d_out + r.
pub fn params(rows: usize, rank: usize) -> usize {
    rows + rank
}

/// The trainable tensors' names and shapes.
pub fn tensor_shapes(rows: usize, rank: usize) -> Vec<(String, Vec<usize>)> {
    vec![(B_NAME.into(), vec![rows]), (D_NAME.into(), vec![rank])]
}

/// One line for `plan`'s table.
pub fn describe(rows: usize, cols: usize, rank: usize) -> String {
    format!("b {rows}, d {rank} (frozen B {rows}x{rank}, A {rank}x{cols})")
}

/// A_max (rank x shared_cols) and B_max (shared_rows x rank), row-major, in f64.
pub fn shared_values(seed: u64, rank: usize, shared_rows: usize, shared_cols: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = stream(seed, 0, Purpose::VeraShared);
    let a_bound = (6.0 / shared_cols as f64).sqrt();
    let a: Vec<f64> = (0..rank * shared_cols).map(|_| rng.uniform_sym(a_bound)).collect();
    let b_bound = (6.0 / rank as f64).sqrt();
    let b: Vec<f64> = (0..shared_rows * rank).map(|_| rng.uniform_sym(b_bound)).collect();
    (a, b)
}

type SharedKey = (u64, usize, usize, usize, DType);
/// The last shared pair built, so every weight of an adapter views one copy (as PEFT's buffers).
static SHARED: Mutex<Option<(SharedKey, Device, Tensor, Tensor)>> = Mutex::new(None);

/// A_max and B_max as tensors (cached for the last key and device).
pub fn shared(
    seed: u64,
    rank: usize,
    shared_rows: usize,
    shared_cols: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let key = (seed, rank, shared_rows, shared_cols, dtype);
    let mut cache = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((k, d, a, b)) = cache.as_ref()
        && *k == key
        && d.same_device(device)
    {
        return Ok((a.clone(), b.clone()));
    }
    let (a, b) = shared_values(seed, rank, shared_rows, shared_cols);
    let a = Tensor::from_vec(a, (rank, shared_cols), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
    let b = Tensor::from_vec(b, (shared_rows, rank), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
    *cache = Some((key, device.clone(), a.clone(), b.clone()));
    Ok((a, b))
}

/// The frozen slices and trainable vectors of one weight.
#[derive(Clone, Debug)]
pub struct VeraVars {
    /// b (d_out), trainable.
    pub lambda_b: Var,
    /// d (r), trainable.
    pub lambda_d: Var,
    /// A_l = A_max[:, :d_in], frozen.
    pub a: Tensor,
    /// B_l = B_max[:d_out, :], frozen.
    pub b: Tensor,
}

/// b = 0, d = 0.1, and the frozen slices of the shared matrices.
pub fn init(plan: &FactorPlan, dtype: DType, device: &Device) -> Result<VeraVars> {
    let FactorPlan::Vera { rows, cols, rank, shared_rows, shared_cols, seed } = *plan else {
        return Err(Error::Shapes("vera::init needs a vera factor plan".into()));
    };
    let (a, b) = shared(seed, rank, shared_rows, shared_cols, dtype, device)?;
    Ok(VeraVars {
        lambda_b: filled(&[rows], dtype, device, || 0.0)?,
        lambda_d: filled(&[rank], dtype, device, || D_INITIAL)?,
        a: a.narrow(1, 0, cols)?,
        b: b.narrow(0, 0, rows)?,
    })
}

/// ΔW / α = (b ⊙_rows B_l) · (d ⊙_rows A_l), shape [d_out, d_in].
pub fn generate(lambda_b: &Tensor, lambda_d: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let left = b.broadcast_mul(&lambda_b.unsqueeze(1)?)?;
    let right = a.broadcast_mul(&lambda_d.unsqueeze(1)?)?;
    Ok(left.matmul(&right)?)
}
