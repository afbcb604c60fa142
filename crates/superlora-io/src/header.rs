//! Reading the header of a safetensors file: names, dtypes, shapes and offsets, without reading
//! or mapping the tensor data.
//!
//! Format: 8 bytes little-endian u64 `N`, then `N` bytes of UTF-8 JSON mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the byte after the
//! header), plus an optional `"__metadata__"` map of strings. Checked here: the header fits in the
//! file and under [`MAX_HEADER`]; it is a JSON object; every entry has a known dtype, a shape whose
//! byte size equals its offset range, and a range inside the file's data section.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// Largest header accepted (the format's own reference reader uses 100 MB).
pub const MAX_HEADER: u64 = 100 * 1024 * 1024;

/// One tensor's entry in a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// dtype string as written (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    pub data_offsets: (u64, u64),
    /// The file it lives in.
    pub file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Bytes per element of a safetensors dtype, or `None` if unknown.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads and validates the header of one safetensors file. Tensors come back in header order.
pub fn read_header(path: &Path) -> Result<Vec<TensorInfo>> {
    let shown = path.display().to_string();
    let io = |source| Error::Io { path: shown.clone(), cause: source };
    let bad = |reason: String| Error::Format { path: shown.clone(), reason };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(bad(format!("file is {file_len} bytes, shorter than the 8-byte header length")));
    }
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(io)?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER {
        return Err(bad(format!("header length {n} exceeds the {MAX_HEADER}-byte limit")));
    }
    if n > file_len - 8 {
        return Err(bad(format!("header length {n} is larger than the rest of the file ({} bytes)", file_len - 8)));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(io)?;
    let text = std::str::from_utf8(&buf).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_len = file_len - 8 - n;
    let mut out = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry =
            serde_json::from_value(value).map_err(|err| bad(format!("entry `{name}` is malformed: {err}")))?;
        let size =
            dtype_size(&e.dtype).ok_or_else(|| bad(format!("entry `{name}` has unknown dtype `{}`", e.dtype)))?;
        let (begin, end) = e.data_offsets;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "entry `{name}` has data_offsets [{begin}, {end}] outside the {data_len}-byte data section"
            )));
        }
        let numel = e.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        if numel.and_then(|n| n.checked_mul(size)) != Some(end - begin) {
            return Err(bad(format!(
                "entry `{name}`: shape {:?} of {} needs {} bytes but data_offsets span {}",
                e.shape,
                e.dtype,
                numel.and_then(|n| n.checked_mul(size)).map_or("too many".into(), |b| b.to_string()),
                end - begin
            )));
        }
        out.push(TensorInfo {
            name,
            dtype: e.dtype,
            shape: e.shape,
            data_offsets: e.data_offsets,
            file: path.to_path_buf(),
        });
    }
    let mut ranges: Vec<(u64, u64, &str)> = out
        .iter()
        .filter(|t| t.data_offsets.0 < t.data_offsets.1)
        .map(|t| (t.data_offsets.0, t.data_offsets.1, t.name.as_str()))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad(format!("entries `{}` and `{}` overlap in the data section", w[0].2, w[1].2)));
        }
    }
    Ok(out)
}

/// Reads the headers of a model: one `.safetensors` file, or every `.safetensors` file in a folder
/// (sharded checkpoints), in file-name order. Tensor names must be unique across files.
pub fn read_model_headers(path: &Path) -> Result<Vec<TensorInfo>> {
    let files = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|cause| Error::Io { path: path.display().to_string(), cause })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(Error::Format {
                path: path.display().to_string(),
                reason: "folder holds no .safetensors file".into(),
            });
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut all: Vec<TensorInfo> = Vec::new();
    for f in files {
        for t in read_header(&f)? {
            if let Some(prev) = all.iter().find(|p| p.name == t.name) {
                return Err(Error::Format {
                    path: f.display().to_string(),
                    reason: format!("tensor `{}` also appears in {}", t.name, prev.file.display()),
                });
            }
            all.push(t);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn file_with(header: &str, data: usize) -> tempfile::NamedTempFile {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        write(&b)
    }

    #[test]
    fn reads_a_valid_header() {
        let f = file_with(
            r#"{"__metadata__":{"a":"b"},"w.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#,
            24,
        );
        let t = read_header(f.path()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].shape, vec![2, 3]);
    }

    #[test]
    fn rejects_corrupt_files_without_panicking() {
        let cases: Vec<(tempfile::NamedTempFile, &str)> = vec![
            (write(b"abc"), "shorter than"),
            (write(&u64::MAX.to_le_bytes()), "exceeds"),
            (write(&[100, 0, 0, 0, 0, 0, 0, 0, b'{']), "larger than the rest"),
            (file_with("[1,2]", 0), "not a JSON object"),
            (file_with(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, 16), "needs 8 bytes"),
            (file_with(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4), "outside"),
            (file_with(r#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#, 8), "unknown dtype"),
            (file_with(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, 8), "outside"),
            (file_with(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#, 8), "malformed"),
            (
                file_with(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    12,
                ),
                "overlap",
            ),
            (file_with(r#"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#, 8), "too many"),
        ];
        for (f, want) in cases {
            let e = read_header(f.path()).unwrap_err().to_string();
            assert!(e.contains(want), "want `{want}` in `{e}`");
        }
    }
}
