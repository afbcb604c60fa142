//! # superlora-core
//!
//! The whole SuperLoRA update of `superlora-spec.md` (arXiv 2403.11887) on candle tensors, with
//! autograd, and nothing else: no models, no files.
//!
//! - [`config`]: the user's settings ([`AdapterSpec`]) and their validated form ([`AdapterConfig`]),
//!   with the one naming of a config (`slug`, `describe`, `family`, `flags`) and `Display`/`FromStr`
//!   on the field enums.
//! - [`plan`]: groups, fold sides, factor shapes, offsets and the parameter count, on integers.
//! - [`budget`]: the configs of every family closest to a parameter budget.
//! - [`factor`]: dense, lora, tucker, Kronecker and VeRA factorizations (one file each).
//! - [`projection`]: identity, shuffle, fastfood and FourierFT (custom ops with their own
//!   backward), and the in-place Walsh–Hadamard butterfly.
//! - [`adapter`] ([`SuperLora`]): trainable tensors + fixed projections → ΔW for every adapted
//!   layer, and the [`DeltaTape`] training loops use.
//! - [`oracle`]: the slow, obviously correct dense construction every fast path is tested against.
//! - [`rng`]: seeded portable randomness (ChaCha8), one stream per group and purpose.
//! - [`math`]: exact integer roots and decimal ratios for the plan.
//! - [`error`]: the crate's [`Error`]; every configuration error names the field, value and rule.
//! - [`sys`]: process-level allocator tuning for CPU training.
//! - [`simd`]: which vector unit (baseline, AVX2, AVX-512) the multiversioned loops use.
//!
//! ```
//! use candle_core::{DType, Device};
//! use superlora_core::{AdapterSpec, Fold, FactorKind, LayerShape, SuperLora};
//!
//! // Two 64x64 weights, one square-folded group, order-3 Tucker of rank 2.
//! let shapes = vec![LayerShape::new("q", 64, 64), LayerShape::new("v", 64, 64)];
//! let spec = AdapterSpec { fold: Some(Fold::Square), factor: Some(FactorKind::Tucker), rank: Some(2), ..Default::default() };
//! let adapter = SuperLora::from_shapes(&shapes, &spec.resolve()?, DType::F32, &Device::Cpu)?;
//! // N = 8192 entries, fold side s = 21 (the smallest s with s³ ≥ 8192): core 2³ + 3 factors 21x2.
//! assert_eq!(adapter.plan().trainable_params, 2 * 2 * 2 + 3 * 21 * 2);
//! let deltas = adapter.delta_weights()?; // ΔW = 0 at step 0
//! assert_eq!(deltas[0].dims(), &[64, 64]);
//! # Ok::<(), superlora_core::Error>(())
//! ```

pub mod adapter;
pub mod budget;
pub mod config;
pub mod error;
pub mod factor;
pub mod lanes;
pub mod math;
pub mod oracle;
pub mod plan;
pub mod projection;
pub mod rng;
pub mod simd;
pub mod sys;

pub use adapter::{DeltaTape, LowRankDelta, SuperLora, TapeDeltas};
pub use config::{AdapterConfig, AdapterSpec, FactorKind, Factorization, Fold, Named, Projection, ProjectionKind};
pub use error::{Error, Result};
pub use plan::{FactorPlan, GroupPlan, LayerPlan, LayerShape, Plan, ProjectionPlan, Segment};
