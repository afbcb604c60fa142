//! # superlora-io
//!
//! The model-facing layer that needs no framework: read a safetensors header without loading
//! the weights ([`header`]), and decide which weights an adapter targets ([`targets`]).
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
