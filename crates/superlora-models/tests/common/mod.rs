//! Helpers shared by the model tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `<cache>/assets/<asset>/<file>`, or a panic naming the set-up command (never a silent skip).
pub fn asset(asset: &str, file: &str) -> PathBuf {
    let cache = std::env::var_os("SUPERLORA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|x| PathBuf::from(x).join("superlora"))
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/superlora"))
    });
    let p = cache.join("assets").join(asset).join(file);
    assert!(p.exists(), "missing asset {}: run `scripts/setup-assets.sh {asset}` first", p.display());
    p
}
