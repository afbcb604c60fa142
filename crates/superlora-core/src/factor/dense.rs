//! Dense factor: the tensor is itself trainable.
//!
//! Equation: X = P, P trainable with the shape the plan fixed ([n_g] for a whole group, the
//! factor's sides inside a Kronecker product). With M = 1 and a fastfood projection this is
//! intrinsic-dimension fine-tuning of the adapted layers; with the identity it is full
//! fine-tuning of them.
//!
//! Symbol → variable: X → the `Var` of [`super::FactorVars::Dense`].
//!
//! Init (spec §4): zeros; as a non-last Kronecker factor, Kaiming-uniform U(±1/√(last side)).

/// One line for `--help`.
pub const SUMMARY: &str = "The folded tensor itself is trainable.";

use candle_core::{DType, Device, Var};

use super::{Init, filled};
use crate::error::Result;
use crate::rng::Rng;

/// Tensor name of X.
pub const NAME: &str = "dense";

/// Π shape.
pub fn params(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// X itself.
pub fn tensor_shapes(shape: &[usize]) -> Vec<(String, Vec<usize>)> {
    vec![(NAME.into(), shape.to_vec())]
}

/// `dense 1000`.
pub fn describe(shape: &[usize]) -> String {
    format!("dense {}", shape.iter().map(usize::to_string).collect::<Vec<_>>().join("x"))
}

/// The dense tensor of `shape`.
pub fn init(shape: &[usize], init: Init, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Var> {
    match init {
        Init::ZeroUpdate => filled(shape, dtype, device, || 0.0),
        Init::Random => {
            let bound = 1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt();
            filled(shape, dtype, device, || rng.uniform_sym(bound))
        }
    }
}
