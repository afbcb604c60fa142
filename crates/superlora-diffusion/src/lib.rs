//! # superlora-diffusion
//!
//! The project's second experiment (issue 6): a small class-conditional denoising diffusion model
//! on 28x28 grey images, pretrained here on MNIST and transferred to Fashion-MNIST by training only
//! a SuperLoRA adapter on its attention projections.
//!
//! - [`schedule`]: the DDPM noise schedule (cosine or linear β), q(x_t | x_0).
//! - [`dit`]: the model, a DiT (patch 4 → 49 tokens, adaLN-Zero conditioning on timestep + class,
//!   a null class for classifier-free guidance); attention linears `blocks.<i>.attn.<q|k|v|o>`.
//! - [`sampler`]: DDIM (η = 0 deterministic, η = 1 DDPM-like) with guidance
//!   ε = ε_uncond + w·(ε_cond − ε_uncond).
//! - [`train`]: the DDPM training loop (v-prediction MSE, label dropout), pretraining every base
//!   weight or only an adapter, with metrics.jsonl and atomic resumable checkpoints.
//! - [`data`]: datasets as [-1, 1] images, the fixed held-out denoising loss.
//! - [`classifier`]: a small MLP classifier whose penultimate features define the Fréchet distance.
//! - [`frechet`]: Fréchet distance between Gaussians (matrix square root by Jacobi eigenvalues).
//! - [`grid`]: PNG sample grids.
//! - [`output`]: what a diffusion command may write over or into (`--force` replaces only a file
//!   of the same kind; never an input, never inside an adapter or run folder).
//! - [`seeds`]: the random streams (all ChaCha8 through `superlora_core::rng`).

pub mod classifier;
pub mod data;
pub mod dit;
pub mod frechet;
pub mod grid;
pub mod output;
pub mod sampler;
pub mod schedule;
pub mod seeds;
pub mod train;

pub use dit::{Dit, DitConfig, Mode};
pub use schedule::{BetaSchedule, NoiseSchedule};

/// Errors of the diffusion crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting or argument is out of range; names the setting.
    #[error("`{name}` = {value}: {rule}")]
    Setting {
        /// The setting.
        name: String,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A model or classifier file is missing tensors, has wrong shapes or unreadable metadata.
    #[error("{0}")]
    File(String),
    /// A checkpoint or run folder problem (resume with other settings, existing run, ...).
    #[error("{0}")]
    Run(String),
    /// A loss or gradient is NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// An output would replace, or land inside, something the command must not touch.
    #[error("{0}")]
    Output(String),
    /// Reading or writing a file.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// From the data crate.
    #[error(transparent)]
    Data(#[from] superlora_data::Error),
    /// From the model crate.
    #[error(transparent)]
    Model(#[from] superlora_models::Error),
    /// From the adapter core.
    #[error(transparent)]
    Core(#[from] superlora_core::Error),
    /// From the training crate (optimizer, checkpoints).
    #[error(transparent)]
    Train(#[from] superlora_train::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A [`Error::Setting`].
    pub fn setting(name: &str, value: impl std::fmt::Display, rule: impl Into<String>) -> Self {
        Error::Setting { name: name.into(), value: value.to_string(), rule: rule.into() }
    }

    /// Whether the error is caused by the user's input (settings, files), not by a bug.
    pub fn is_input(&self) -> bool {
        match self {
            Error::Io { cause, .. } => superlora_core::error::io_is_input(cause.kind()),
            Error::Setting { .. } | Error::File(_) | Error::Run(_) | Error::Output(_) | Error::Data(_) => true,
            Error::Train(superlora_train::Error::Checkpoint(_) | superlora_train::Error::Output(_)) => true,
            _ => false,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The first of `tensors` holding a NaN or an infinity: (its name, how many such values).
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a candle_core::Tensor)>,
) -> Result<Option<(String, usize)>> {
    Ok(superlora_train::train_loop::first_non_finite(tensors)?)
}

/// `Error::Io` for `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |cause| Error::Io { path: path.display().to_string(), cause }
}
