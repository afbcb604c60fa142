//! Errors of the core crate. Every configuration error names the field, the value and the rule,
//! so a user can fix the flag or the TOML key it came from.

/// Everything that can go wrong while planning or generating a SuperLoRA update.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid on its own or in combination with others.
    #[error("`{field}` = {value}: {rule}")]
    Config {
        /// The setting's name as the CLI flag / TOML key spells it (`rank`, `ratio`, ...).
        field: &'static str,
        /// The offending value, formatted.
        value: String,
        /// The rule it breaks and, where possible, how to fix it.
        rule: String,
    },
    /// The list of adapted weight shapes is unusable.
    #[error("adapted shapes: {0}")]
    Shapes(String),
    /// A tensor handed to the adapter does not have the shape or dtype the plan requires.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// Stable name of the tensor (see `SuperLora::named_vars`).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn config(field: &'static str, value: impl std::fmt::Display, rule: impl Into<String>) -> Self {
        Error::Config { field, value: value.to_string(), rule: rule.into() }
    }
}

/// Result with the core crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Whether an OS error of this kind is the user's to fix (a missing or unreadable file, a bad
/// path, corrupt content) rather than the machine's (disk full, interrupted, out of memory).
/// The CLI exits with 2 for the first, 1 for the second.
pub fn io_is_input(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::NotFound
            | K::PermissionDenied
            | K::AlreadyExists
            | K::InvalidInput
            | K::InvalidData
            | K::UnexpectedEof
            | K::IsADirectory
            | K::NotADirectory
            | K::DirectoryNotEmpty
            | K::ReadOnlyFilesystem
            | K::InvalidFilename
    )
}

#[cfg(test)]
mod tests {
    use super::io_is_input;
    use std::io::ErrorKind as K;

    #[test]
    fn user_errors_and_machine_errors_are_told_apart() {
        for kind in [K::NotFound, K::PermissionDenied, K::InvalidData, K::IsADirectory, K::UnexpectedEof] {
            assert!(io_is_input(kind), "{kind:?}");
        }
        for kind in [K::StorageFull, K::Interrupted, K::OutOfMemory, K::WriteZero, K::Other, K::BrokenPipe] {
            assert!(!io_is_input(kind), "{kind:?}");
        }
    }
}
