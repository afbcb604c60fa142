//! The crate's error type: every variant names the file or argument it is about.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong while finding, reading or preparing data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An asset file is not in the cache.
    #[error("missing asset file {path} (asset `{asset}`); fetch it with: scripts/setup-assets.sh {asset}")]
    MissingAsset {
        /// The asset name, as `scripts/setup-assets.sh` knows it.
        asset: String,
        /// The file that was looked for.
        path: PathBuf,
    },
    /// None of SUPERLORA_CACHE, XDG_CACHE_HOME and HOME is set.
    #[error("no asset cache folder: set SUPERLORA_CACHE (or XDG_CACHE_HOME or HOME)")]
    NoCacheDir,
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's content is not what its format says (wrong magic, truncated, inconsistent sizes).
    #[error("{file}: {msg}")]
    Format {
        /// The file (or a name standing for in-memory data).
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// An argument is out of its domain.
    #[error("invalid {name} = {value}: {msg}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Its value, as given.
        value: String,
        /// What it must be.
        msg: String,
    },
    /// The tokenizer library failed (loading `tokenizer.json` or encoding).
    #[error("tokenizer {file}: {msg}")]
    Tokenizer {
        /// The tokenizer file.
        file: String,
        /// The library's message.
        msg: String,
    },
    /// Building a tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn format(file: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Format { file: file.to_string(), msg: msg.into() }
    }

    pub(crate) fn invalid(name: &'static str, value: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { name, value: value.to_string(), msg: msg.into() }
    }
}
