//! # superlora-io
//!
//! The model-facing layer that needs no framework:
//!
//! - [`header`]: a safetensors header read without loading the weights;
//! - [`targets`]: which weights an adapter targets (names, regexes, shapes);
//! - [`onnx`]: a minimal ONNX reader (graph nodes and initializers, hand-decoded protobuf);
//! - [`dinov2`]: the packaged DINOv2 ViT-S/14 ONNX export converted to Hugging Face-named
//!   safetensors.
//!
//! Every reader treats its input as untrusted: malformed files give an [`Error`], never a panic.

pub mod dinov2;
pub mod header;
pub mod onnx;
pub mod targets;

pub use header::{TensorInfo, read_header, read_model_headers};
pub use targets::{TargetPattern, select_linears, select_targets};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An ONNX file is malformed, or cannot be converted.
    #[error("{path}: {reason}")]
    Onnx {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A target pattern is invalid or matched nothing.
    #[error("{0}")]
    Targets(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
