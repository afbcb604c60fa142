//! The factorizations: how each group's tensor X_g is produced from trainable numbers
//! (spec §3 step 3) and initialised (spec §4).
//!
//! One file per family, each opening with its equation: [`dense`], [`lora`], [`tucker`],
//! [`kronecker`], [`vera`]. [`FactorVars`] holds the trainable [`Var`]s of one factor in the shapes that
//! [`FactorPlan`] fixed, and produces X on candle tensors so that autograd reaches every `Var`.

pub mod dense;
pub mod kronecker;
pub mod lora;
pub mod tucker;
pub mod vera;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::plan::FactorPlan;
use crate::rng::Rng;

/// How a factor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// The spec's zero-update initialisation (X = 0 exactly, gradient flows soon).
    ZeroUpdate,
    /// Fully random (the non-last factors of a Kronecker product).
    Random,
}

/// The trainable tensors of one factor.
#[derive(Clone, Debug)]
pub enum FactorVars {
    /// X itself.
    Dense(Var),
    /// A (rows x r) and B (cols x r).
    Lora {
        /// A, the output-side factor.
        a: Var,
        /// B, the input-side factor.
        b: Var,
    },
    /// Core (r^M) and the M factor matrices U_m (side_m x r).
    Tucker {
        /// C.
        core: Var,
        /// U_1 … U_M.
        factors: Vec<Var>,
    },
    /// The K factors of a Kronecker product.
    Kronecker(Vec<FactorVars>),
    /// VeRA's trainable vectors and frozen shared slices.
    Vera(vera::VeraVars),
}

/// A tensor of `shape` filled from `f` (drawn in row-major order).
pub(crate) fn filled(shape: &[usize], dtype: DType, device: &Device, mut f: impl FnMut() -> f64) -> Result<Var> {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| f()).collect();
    let t = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
    Ok(Var::from_tensor(&t)?)
}

impl FactorVars {
    /// Creates the tensors of `plan`, drawing random values from `rng` in the order of
    /// [`FactorPlan::tensor_shapes`].
    pub fn init(plan: &FactorPlan, init: Init, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Self> {
        Ok(match plan {
            FactorPlan::Dense { shape } => FactorVars::Dense(dense::init(shape, init, rng, dtype, device)?),
            FactorPlan::Lora { rows, cols, rank } => {
                let (a, b) = lora::init(*rows, *cols, *rank, init, rng, dtype, device)?;
                FactorVars::Lora { a, b }
            }
            FactorPlan::Tucker { sides, rank } => {
                let (core, factors) = tucker::init(sides, *rank, init, rng, dtype, device)?;
                FactorVars::Tucker { core, factors }
            }
            FactorPlan::Kronecker { factors } => {
                FactorVars::Kronecker(kronecker::init(factors, init, rng, dtype, device)?)
            }
            FactorPlan::Vera { .. } => FactorVars::Vera(vera::init(plan, dtype, device)?),
        })
    }

    /// Produces X (shape [`FactorPlan::output_shape`]) with autograd.
    pub fn generate(&self) -> Result<Tensor> {
        match self {
            FactorVars::Dense(x) => Ok(x.as_tensor().clone()),
            FactorVars::Lora { a, b } => lora::generate(a.as_tensor(), b.as_tensor()),
            FactorVars::Tucker { core, factors } => {
                let us: Vec<Tensor> = factors.iter().map(|u| u.as_tensor().clone()).collect();
                tucker::generate(core.as_tensor(), &us)
            }
            FactorVars::Kronecker(fs) => {
                let xs = fs.iter().map(FactorVars::generate).collect::<Result<Vec<_>>>()?;
                kronecker::generate(&xs)
            }
            FactorVars::Vera(v) => vera::generate(v.lambda_b.as_tensor(), v.lambda_d.as_tensor(), &v.a, &v.b),
        }
    }

    /// The trainable tensors with names relative to the factor, in [`FactorPlan::tensor_shapes`]
    /// order.
    pub fn named(&self) -> Vec<(String, Var)> {
        match self {
            FactorVars::Dense(x) => vec![(dense::NAME.into(), x.clone())],
            FactorVars::Lora { a, b } => vec![(lora::A_NAME.into(), a.clone()), (lora::B_NAME.into(), b.clone())],
            FactorVars::Tucker { core, factors } => {
                let mut v = vec![(tucker::CORE_NAME.into(), core.clone())];
                v.extend(factors.iter().enumerate().map(|(m, u)| (tucker::factor_name(m), u.clone())));
                v
            }
            FactorVars::Kronecker(fs) => fs
                .iter()
                .enumerate()
                .flat_map(|(k, f)| f.named().into_iter().map(move |(n, v)| (format!("{}{n}", kronecker::prefix(k)), v)))
                .collect(),
            FactorVars::Vera(v) => {
                vec![(vera::B_NAME.into(), v.lambda_b.clone()), (vera::D_NAME.into(), v.lambda_d.clone())]
            }
        }
    }
}
