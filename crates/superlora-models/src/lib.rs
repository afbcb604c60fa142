//! # superlora-models
//!
//! Trainable encoders owned by the project, built only from ops with a backward (candle's fused
//! kernels drop gradients silently), with frozen base weights that never get a gradient computed
//! and every targeted linear running with W + ΔW from a SuperLoRA adapter:
//!
//! - [`bert`]: BERT encoders (all-MiniLM-L6-v2): post-LN, mean pooling;
//! - [`vit`]: DINOv2 ViT encoders (ViT-S/14): patch embedding, class token, interpolated position
//!   embeddings, LayerScale, pre-LN blocks;
//! - [`adapt`]: which linears are targets, and the ΔW handed to a forward pass;
//! - [`ops`]: frozen/adapted linears, layer norm, softmax, attention.

pub mod adapt;
pub mod bert;
pub mod bmm;
pub mod ops;
pub mod vit;
pub mod weights;

pub use adapt::{Deltas, LinearInfo};
pub use weights::Weights;

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A base weight is missing or has the wrong shape.
    #[error("{0}")]
    Weights(String),
    /// Reading a file failed.
    #[error(transparent)]
    Io(#[from] superlora_io::Error),
    /// Target selection or ΔW shapes.
    #[error("{0}")]
    Adapter(String),
    /// From the adapter core.
    #[error(transparent)]
    Core(#[from] superlora_core::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
