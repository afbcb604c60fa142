//! Low-rank matrix factor (M = 2).
//!
//! Equation: X = A · Bᵀ, A ∈ R^{rows x r}, B ∈ R^{cols x r}; (rows + cols)·r parameters.
//! Weight-wise LoRA (natural fold, G = L) gives ΔW_l = α · A_l B_lᵀ, i.e. PEFT's
//! `lora_B.weight` = A and `lora_A.weight` = Bᵀ.
//!
//! Symbol → variable: A → `a` (output side), B → `b` (input side), r → `rank`.
//!
//! Init (spec §4, "standard LoRA"): the factor that reads the input is random, the one that
//! writes the output is zero — in X = A·Bᵀ that is B ~ Kaiming-uniform U(±1/√cols) (PEFT's
//! `lora_A` init, transposed) and A = 0, so weight-wise LoRA starts exactly like PEFT's LoRA.
//! [decided here: the spec's wording "A ~ Kaiming, B = 0" names the letters the other way round;
//! we keep its intent, standard LoRA.] As a non-last Kronecker factor both are random:
//! A ~ U(±1/√r), B ~ U(±1/√cols).

/// One line for `--help`.
pub const SUMMARY: &str = "A·Bᵀ (order 2).";

use candle_core::{DType, Device, Tensor, Var};

use super::{Init, filled};
use crate::error::{Error, Result};
use crate::plan::FactorPlan;
use crate::rng::Rng;

/// Tensor name of A.
pub const A_NAME: &str = "lora_a";
/// Tensor name of B.
pub const B_NAME: &str = "lora_b";

/// The plan of X = A·Bᵀ with X of `rows` x `cols`; the rank may not exceed the smaller side.
pub fn plan(rows: usize, cols: usize, rank: usize, group: usize) -> Result<FactorPlan> {
    if rank > rows.min(cols) {
        return Err(Error::config(
            "rank",
            rank,
            format!(
                "group {group} folds to {rows}x{cols}; a lora rank cannot exceed its smaller side {}",
                rows.min(cols)
            ),
        ));
    }
    Ok(FactorPlan::Lora { rows, cols, rank })
}

/// (rows + cols)·r.
pub fn params(rows: usize, cols: usize, rank: usize) -> usize {
    (rows + cols) * rank
}

/// A: rows x r, B: cols x r.
pub fn tensor_shapes(rows: usize, cols: usize, rank: usize) -> Vec<(String, Vec<usize>)> {
    vec![(A_NAME.into(), vec![rows, rank]), (B_NAME.into(), vec![cols, rank])]
}

/// `A 768x7, B 768x7`.
pub fn describe(rows: usize, cols: usize, rank: usize) -> String {
    format!("A {rows}x{rank}, B {cols}x{rank}")
}

/// A (rows x r) and B (cols x r); B is drawn first, then A.
pub fn init(
    rows: usize,
    cols: usize,
    rank: usize,
    init: Init,
    rng: &mut Rng,
    dtype: DType,
    device: &Device,
) -> Result<(Var, Var)> {
    let b_bound = 1.0 / (cols as f64).sqrt();
    let b = filled(&[cols, rank], dtype, device, || rng.uniform_sym(b_bound))?;
    let a = match init {
        Init::ZeroUpdate => filled(&[rows, rank], dtype, device, || 0.0)?,
        Init::Random => {
            let a_bound = 1.0 / (rank as f64).sqrt();
            filled(&[rows, rank], dtype, device, || rng.uniform_sym(a_bound))?
        }
    };
    Ok((a, b))
}

/// X = A · Bᵀ, shape [rows, cols].
pub fn generate(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.matmul(&b.t()?)?)
}
