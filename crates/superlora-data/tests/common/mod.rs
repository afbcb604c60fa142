//! Helpers for the asset-backed tests: a missing asset FAILS the test with the error's message,
//! which names `scripts/setup-assets.sh <asset>`; nothing is skipped.

#![allow(dead_code)]

use std::time::Instant;

/// Unwraps a loader's result; on error fails the test with the loader's message.
pub fn need<T>(what: &str, r: superlora_data::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Runs `f`, prints how long it took, and unwraps its result like [`need`].
pub fn timed<T>(what: &str, f: impl FnOnce() -> superlora_data::Result<T>) -> T {
    let start = Instant::now();
    let r = f();
    eprintln!("timing: {what} took {:.3} s", start.elapsed().as_secs_f64());
    need(what, r)
}

/// The labels at `indices`.
pub fn labels_at(labels: &[u8], indices: &[usize]) -> Vec<u8> {
    indices.iter().map(|&i| labels[i]).collect()
}

/// Asserts the three parts are pairwise disjoint and together cover `0..n`.
pub fn assert_partition(parts: &[&[usize]], n: usize) {
    let mut all: Vec<usize> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    all.sort_unstable();
    assert_eq!(all.len(), n, "parts overlap or miss indices");
    assert!(all.iter().enumerate().all(|(i, &v)| i == v), "parts overlap or miss indices");
}
