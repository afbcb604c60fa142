//! # superlora-models
//!
//! Trainable encoders owned by the project, built only from ops with a backward (candle's fused
//! kernels drop gradients silently), with frozen base weights that never get a gradient computed
//! and every targeted linear running with W + ΔW from a SuperLoRA adapter:
//!
//! - [`hf`]: loading any of them from a Hugging Face folder by `config.json`'s `model_type`, as a
//!   [`TextEncoder`] or an [`ImageEncoder`] ([`encoder`]);
//! - [`bert`]: BERT encoders (all-MiniLM-L6-v2): post-LN, mean pooling;
//! - [`roberta`]: RoBERTa encoders (BERT blocks, padding-offset positions);
//! - [`distilbert`]: DistilBERT encoders;
//! - [`vit`]: DINOv2 ViT encoders (ViT-S/14): patch embedding, class token, interpolated position
//!   embeddings, LayerScale, pre-LN blocks;
//! - [`llama`]: the Llama decoder (SmolLM2-135M): causal LM from a GGUF file or a Hugging Face
//!   folder, KV-cached generation; [`gguf`] reads GGUF files, [`llm_tokenizer`] builds its
//!   byte-level BPE tokenizer and chat prompts;
//! - [`google_vit`]: ViT encoders in the `ViTModel` layout (google/vit-*);
//! - [`adapt`]: which linears are targets, and the ΔW handed to a forward pass;
//! - [`ops`]: frozen/adapted linears, layer norm, softmax, attention;
//! - [`bmm`]: batched products of many small matrices (attention heads);
//! - [`attention`]: multi-head attention as one op with its own backward (CPU, f32);
//! - [`weights`]: base weights from safetensors (sharded too), looked up by name with the shape
//!   checked.

pub mod adapt;
pub mod attention;
pub mod bert;
mod block;
pub mod bmm;
mod dense;
pub mod distilbert;
pub mod encoder;
pub mod gguf;
pub mod google_vit;
pub mod hf;
pub mod llama;
pub mod llm_tokenizer;
pub mod ops;
pub mod roberta;
mod simd;
mod small;
pub mod vit;
pub mod weights;

pub use adapt::{Deltas, LayerDelta, LinearInfo};
pub use encoder::{ImageEncoder, TextEncoder};
pub use hf::{SUPPORTED, load_image_encoder, load_text_encoder, model_type};
pub use llama::{GenerateOptions, Generation, KvCache, Llama, LlamaConfig, Sampling};
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
