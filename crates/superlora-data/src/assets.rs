//! The asset cache filled by `scripts/setup-assets.sh`:
//! `${SUPERLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/superlora}/assets/<asset>/<file>`.
//! An empty variable counts as unset, as with the shell's `:-`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The cache folder: `SUPERLORA_CACHE`, else `XDG_CACHE_HOME/superlora`, else `HOME/.cache/superlora`.
pub fn cache_dir() -> Result<PathBuf> {
    cache_dir_from(std::env::var_os("SUPERLORA_CACHE"), std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`cache_dir`] on given variable values (testable without touching the environment).
pub fn cache_dir_from(
    superlora_cache: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(superlora_cache) {
        return Ok(dir);
    }
    if let Some(dir) = set(xdg_cache_home) {
        return Ok(dir.join("superlora"));
    }
    set(home).map(|h| h.join(".cache").join("superlora")).ok_or(Error::NoCacheDir)
}

/// The folder of `asset` in the cache (it may not exist).
pub fn asset_dir(asset: &str) -> Result<PathBuf> {
    Ok(cache_dir()?.join("assets").join(asset))
}

/// The path of `file` inside `asset`, checked to exist; if it does not, the error names the file
/// and the command that fetches it (`scripts/setup-assets.sh <asset>`).
pub fn asset_file(asset: &str, file: &str) -> Result<PathBuf> {
    let path = asset_dir(asset)?.join(file);
    if path.is_file() { Ok(path) } else { Err(Error::MissingAsset { asset: asset.to_string(), path }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn cache_dir_precedence() {
        assert_eq!(cache_dir_from(os("/a"), os("/x"), os("/h")).unwrap(), PathBuf::from("/a"));
        assert_eq!(cache_dir_from(None, os("/x"), os("/h")).unwrap(), PathBuf::from("/x/superlora"));
        assert_eq!(cache_dir_from(os(""), os(""), os("/h")).unwrap(), PathBuf::from("/h/.cache/superlora"));
        assert!(matches!(cache_dir_from(None, None, os("")), Err(Error::NoCacheDir)));
    }

    #[test]
    fn missing_file_names_the_fetch_command() {
        let err = asset_file("mnist-5k", "no-such-file.bin").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no-such-file.bin"), "{msg}");
        assert!(msg.contains("scripts/setup-assets.sh mnist-5k"), "{msg}");
    }
}
