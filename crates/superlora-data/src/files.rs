//! Reading whole files, plain or compressed, with a cap on the decompressed size so a corrupt or
//! hostile archive cannot exhaust memory.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// No file this crate reads decompresses to more than this (Fashion-MNIST train images: 47 MB).
pub(crate) const MAX_DECOMPRESSED: u64 = 512 << 20;

pub(crate) fn read_plain(path: &Path) -> Result<Vec<u8>> {
    let file = open(path)?;
    read_capped(file, path)
}

pub(crate) fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_plain(path)?;
    gunzip(&bytes, &path.display().to_string())
}

pub(crate) fn read_bz2(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_plain(path)?;
    bunzip2(&bytes, &path.display().to_string())
}

/// Decompresses a gzip member held in memory; `name` labels errors.
pub(crate) fn gunzip(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    if bytes.get(..2) != Some(&[0x1f, 0x8b]) {
        return Err(Error::format(name, "not a gzip file (wrong magic bytes)"));
    }
    decode(flate2::read::GzDecoder::new(bytes), name, "gzip")
}

/// Decompresses bzip2 data held in memory; `name` labels errors.
pub(crate) fn bunzip2(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    if bytes.get(..3) != Some(b"BZh") {
        return Err(Error::format(name, "not a bzip2 file (wrong magic bytes)"));
    }
    decode(bzip2::read::MultiBzDecoder::new(bytes), name, "bzip2")
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn read_capped(reader: impl Read, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Error::format(path.display(), format!("larger than {MAX_DECOMPRESSED} bytes")));
    }
    Ok(out)
}

fn decode(reader: impl Read, name: &str, kind: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(name, format!("corrupt or truncated {kind} data: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Error::format(name, format!("decompresses to more than {MAX_DECOMPRESSED} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn bz(data: &[u8]) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn round_trips() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(gunzip(&gz(&data), "x").unwrap(), data);
        assert_eq!(bunzip2(&bz(&data), "x").unwrap(), data);
    }

    #[test]
    fn truncated_and_wrong_magic_are_errors() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let g = gz(&data);
        for cut in [1, 5, 11, g.len() / 2, g.len() - 1] {
            let err = gunzip(&g[..cut], "t.gz").unwrap_err().to_string();
            assert!(err.starts_with("t.gz: "), "{err}");
        }
        let b = bz(&data);
        for cut in [2, 5, b.len() / 2, b.len() - 1] {
            let err = bunzip2(&b[..cut], "t.bz2").unwrap_err().to_string();
            assert!(err.starts_with("t.bz2: "), "{err}");
        }
        assert!(gunzip(&data, "p").unwrap_err().to_string().contains("not a gzip"));
        assert!(bunzip2(&data, "p").unwrap_err().to_string().contains("not a bzip2"));
        let mut flipped = g.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        assert!(gunzip(&flipped, "f").is_err());
    }
}
