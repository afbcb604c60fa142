//! The real asset files, truncated or with flipped bytes, give errors naming the file — never a
//! panic and never a silently wrong set.

mod common;

use std::path::{Path, PathBuf};

use common::need;
use superlora_data::fashion::load_fashion_mnist_files;
use superlora_data::mnist::load_mnist_5k_file;
use superlora_data::text::load_rotten_tomatoes_file;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("superlora-data-corrupt-{}", std::process::id()));
    need(
        "mkdir",
        std::fs::create_dir_all(&dir).map_err(|source| superlora_data::Error::Io { path: dir.clone(), source }),
    );
    dir.join(name)
}

fn write(path: &Path, bytes: &[u8]) {
    need(
        "write",
        std::fs::write(path, bytes).map_err(|source| superlora_data::Error::Io { path: path.into(), source }),
    );
}

fn read(path: &Path) -> Vec<u8> {
    need("read", std::fs::read(path).map_err(|source| superlora_data::Error::Io { path: path.into(), source }))
}

/// Removes a scratch file, and its folder once empty (best effort).
fn clean(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Damaged copies: cut at a few points, and one byte flipped in the middle.
fn damaged(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [0, 1, 10, 20, bytes.len() / 3, bytes.len() - 9, bytes.len() - 1]
        .iter()
        .map(|&cut| bytes[..cut].to_vec())
        .collect();
    let mut flipped = bytes.to_vec();
    flipped[bytes.len() / 2] ^= 0x55;
    out.push(flipped);
    out
}

#[test]
fn damaged_fashion_mnist_files_are_errors() {
    let images = need("asset", superlora_data::asset_file("fashion-mnist", "t10k-images-idx3-ubyte.gz"));
    let labels = need("asset", superlora_data::asset_file("fashion-mnist", "t10k-labels-idx1-ubyte.gz"));
    let bad = scratch("labels.gz");
    for (k, copy) in damaged(&read(&labels)).iter().enumerate() {
        write(&bad, copy);
        let err = load_fashion_mnist_files(&images, &bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("labels.gz"), "copy {k}: {err:?}");
    }
    clean(&bad);
    // Images swapped with labels: wrong magic.
    let err = load_fashion_mnist_files(&labels, &images).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("wrong idx magic"), "{err}");
}

#[test]
fn damaged_mnist_5k_is_an_error() {
    let path = need("asset", superlora_data::asset_file("mnist-5k", "mnist_5k.csv.gz"));
    let bad = scratch("mnist.csv.gz");
    for (k, copy) in damaged(&read(&path)).iter().enumerate() {
        write(&bad, copy);
        let err = load_mnist_5k_file(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("mnist.csv.gz"), "copy {k}: {err:?}");
    }
    clean(&bad);
}

#[test]
fn damaged_rotten_tomatoes_is_an_error() {
    let path = need("asset", superlora_data::asset_file("rotten-tomatoes", superlora_data::text::FILE));
    let bad = scratch("rt.csv.bz2");
    for (k, copy) in damaged(&read(&path)).iter().enumerate() {
        write(&bad, copy);
        let err = load_rotten_tomatoes_file(&bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("rt.csv.bz2"), "copy {k}: {err:?}");
    }
    clean(&bad);
}
