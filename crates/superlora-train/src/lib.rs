//! # superlora-train
//!
//! The pieces of a training run, and the one training loop ([`train_loop::run_loop`], generic over
//! a [`train_loop::LoopTask`]) that classification, causal-LM fine-tuning and the diffusion crate
//! run:
//!
//! - [`train_loop`]: resume, seeded batch order, schedule, NaN stop, checkpoints, progress,
//!   `metrics.jsonl` and `summary.json` for any task;
//! - [`trainer`]: classification (frozen encoder + adapter + [`head`]) on a [`task`];
//! - [`lm`]: causal-LM fine-tuning of a decoder (token chunks, next-token loss, perplexity);
//! - [`lm_classify`]: classification with a decoder by the next-token log-probability of label
//!   words (prompt template, zero-shot baseline, accuracy);
//! - [`optim`]: AdamW with saveable state; [`schedule`]: learning-rate schedules;
//! - [`checkpoint`]: atomic run checkpoints; [`metrics`]: run records and peak memory;
//! - [`artifact`]: the adapter folder (config + safetensors, docs/FORMAT.md);
//! - [`lowrank`]: best rank-k factors of any ΔW, for LoRA export;
//! - [`output`]: staged, atomic writes that never replace what they must not.

pub mod artifact;
pub mod checkpoint;
pub mod head;
pub mod lm;
pub mod lm_classify;
pub mod lowrank;
pub mod metrics;
pub mod optim;
pub mod output;
pub mod parallel;
pub mod schedule;
pub mod task;
pub mod train_loop;
pub mod trainer;

pub use train_loop::{LoopSettings, LoopTask, run_loop};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Optimizer misuse.
    #[error("optimizer: {0}")]
    Optim(String),
    /// A loss or gradient is NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// A checkpoint is missing pieces or does not fit.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A dataset problem.
    #[error("data: {0}")]
    Data(String),
    /// From the data crate.
    #[error(transparent)]
    DataLoad(#[from] superlora_data::Error),
    /// From the model crate.
    #[error(transparent)]
    Model(#[from] superlora_models::Error),
    /// From the adapter core.
    #[error(transparent)]
    Core(#[from] superlora_core::Error),
    /// An output that may not be written (exists without --force, or is not ours to replace).
    #[error("{0}")]
    Output(String),
    /// Reading or writing run files.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
