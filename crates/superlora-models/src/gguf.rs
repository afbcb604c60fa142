//! Reading GGUF files (llama.cpp's single-file checkpoints) into plain f32 tensors.
//!
//! Layout (little endian, versions 1–3): magic `GGUF`, version u32, tensor count and metadata
//! count (u64; u32 in v1), the metadata as key (string) / type (u32) / value, then per tensor its
//! name, `n_dims` u32, the dims (u64 each, fastest-varying first, as ggml's `ne`), its GGML type
//! u32 and its data offset u64, then padding to `general.alignment` (default 32) and the data.
//!
//! What differs from candle's `gguf_file::Content::read`, which this replaces for loading (its
//! [`Value`] type and its block decoders are reused): every failure names the file and what was
//! being read, so a truncated file says so; a tensor of a GGML type that cannot be dequantized is
//! an error naming the tensor and the type (candle fails on the unknown id without the name); the
//! data of every tensor is checked to lie inside the file when the header is read, not when the
//! tensor is. Dims are returned reversed (`[rows, cols]`, the row-major order of the tensors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
pub use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Longest metadata array or string accepted (guards allocations on a corrupt file).
const MAX_LEN: u64 = 1 << 28;
/// Most tensors and metadata entries accepted.
const MAX_COUNT: u64 = 1 << 20;

/// The GGML type names by id (ggml.h), for messages; `None` for ids that were never assigned.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied()
}

/// The GGML types this reader dequantizes (by id), with candle's decoder for each.
fn supported_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The names of the supported types, for messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// One tensor's entry in the header.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Its name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// Dims in row-major order (ggml's `ne` reversed): a linear weight is `[out, in]`.
    pub dims: Vec<usize>,
    /// The GGML type id.
    pub ggml_type: u32,
    /// Data offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorEntry {
    /// The type's name (`Q4_1`), or `type <id>` for an unknown id.
    pub fn type_name(&self) -> String {
        ggml_type_name(self.ggml_type).map(str::to_string).unwrap_or_else(|| format!("type {}", self.ggml_type))
    }
}

/// A GGUF file's header: its metadata and tensor entries (data stays in the file).
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    /// The format version (1, 2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: HashMap<String, Value>,
    /// Tensor entries in file order.
    pub tensors: Vec<TensorEntry>,
    data_start: u64,
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    v1: bool,
}

impl Cursor<'_> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&[u8], String> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(format!("truncated file: {what} needs {n} bytes at offset {}, only {left} remain", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count: u32 in version 1, u64 after.
    fn len(&mut self, what: &str) -> std::result::Result<u64, String> {
        if self.v1 { self.u32(what).map(u64::from) } else { self.u64(what) }
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.len(what)?;
        if n > MAX_LEN {
            return Err(format!("{what}: string of {n} bytes is implausibly long (corrupt file?)"));
        }
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: not UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte {b}")),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(format!("{what}: arrays nested too deep"));
                }
                let inner = self.u32(what)?;
                let n = self.len(what)?;
                let left = (self.buf.len() - self.pos) as u64;
                if n > MAX_LEN || n > left {
                    return Err(format!("truncated file: {what}: array of {n} elements, only {left} bytes remain"));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(format!("{what}: unknown metadata value type {t}")),
        })
    }
}

impl Gguf {
    /// Reads the header of `path` and checks that every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        Self::parse(&bytes, path)
    }

    /// Parses a GGUF header from the whole file's bytes.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let err = |m: String| Error::Weights(format!("{}: {m}", path.display()));
        let mut c = Cursor { buf: bytes, pos: 0, v1: false };
        let magic = c.array::<4>("the magic number").map_err(err)?;
        if &magic != b"GGUF" {
            return Err(err(format!("not a GGUF file (starts with {magic:02x?}, not `GGUF`)")));
        }
        let version = c.u32("the version").map_err(err)?;
        if !(1..=3).contains(&version) {
            return Err(err(format!("GGUF version {version} is not supported (1 to 3 are)")));
        }
        c.v1 = version == 1;
        let n_tensors = c.len("the tensor count").map_err(err)?;
        let n_meta = c.len("the metadata count").map_err(err)?;
        if n_tensors > MAX_COUNT || n_meta > MAX_COUNT {
            return Err(err(format!("{n_tensors} tensors / {n_meta} metadata entries: corrupt header")));
        }
        let mut metadata = HashMap::new();
        for i in 0..n_meta {
            let key = c.string(&format!("metadata key {i}")).map_err(err)?;
            let ty = c.u32(&format!("the type of metadata `{key}`")).map_err(err)?;
            let v = c.value(ty, &format!("metadata `{key}`"), 0).map_err(err)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor {i}")).map_err(err)?;
            let what = format!("tensor `{name}`");
            let n_dims = c.u32(&what).map_err(err)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(err(format!("{what} has {n_dims} dims (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&what).map_err(err)?;
                dims.push(usize::try_from(d).map_err(|_| err(format!("{what}: dim {d} too large")))?);
            }
            dims.reverse();
            let ggml_type = c.u32(&what).map_err(err)?;
            let offset = c.u64(&what).map_err(err)?;
            tensors.push(TensorEntry { name, dims, ggml_type, offset, size: 0 });
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => u64::from(*a),
            Some(v) => return Err(err(format!("general.alignment is {v:?}, not a power of two u32"))),
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &mut tensors {
            // Size only for types with a known block layout; others are refused when read.
            if let Some(dt) = supported_type(t.ggml_type) {
                let elems = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
                let Some(elems) = elems else { return Err(err(format!("tensor `{}`: too many elements", t.name))) };
                let block = dt.block_size() as u64;
                if !elems.is_multiple_of(block) {
                    return Err(err(format!(
                        "tensor `{}` ({}) has {elems} elements, not a multiple of the block of {block}",
                        t.name,
                        t.type_name()
                    )));
                }
                t.size = elems / block * dt.type_size() as u64;
                let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.size));
                if end.is_none_or(|e| e > file_len) {
                    return Err(err(format!(
                        "truncated file: tensor `{}` needs bytes up to {} but the file has {file_len}",
                        t.name,
                        end.map(|e| e.to_string()).unwrap_or_else(|| "beyond u64".into())
                    )));
                }
            }
        }
        Ok(Gguf { path: path.to_path_buf(), version, metadata, tensors, data_start })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Checks every tensor has a type this reader dequantizes (an error names the first that
    /// does not, and its type).
    pub fn check_types(&self) -> Result<()> {
        for t in &self.tensors {
            if supported_type(t.ggml_type).is_none() {
                return Err(self.unsupported(t));
            }
        }
        Ok(())
    }

    fn unsupported(&self, t: &TensorEntry) -> Error {
        Error::Weights(format!(
            "{}: tensor `{}` has GGML type {} ({}), which cannot be dequantized (supported: {SUPPORTED_TYPES})",
            self.path.display(),
            t.name,
            t.type_name(),
            t.ggml_type
        ))
    }

    /// Tensor `name` dequantized to f32 on `device`, shaped `entry.dims`; `bytes` is the whole
    /// file the header was parsed from.
    pub fn dequantize(&self, bytes: &[u8], name: &str, device: &Device) -> Result<Tensor> {
        let t =
            self.entry(name).ok_or_else(|| Error::Weights(format!("{}: no tensor `{name}`", self.path.display())))?;
        let dt = supported_type(t.ggml_type).ok_or_else(|| self.unsupported(t))?;
        let start = self.data_start + t.offset;
        let end = start + t.size;
        if end > bytes.len() as u64 {
            return Err(Error::Weights(format!(
                "{}: truncated file: tensor `{name}` ends at {end}, the file at {}",
                self.path.display(),
                bytes.len()
            )));
        }
        let raw = &bytes[start as usize..end as usize];
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dt, raw, t.dims.clone(), &Device::Cpu)
            .map_err(|e| Error::Weights(format!("{}: tensor `{name}`: {e}", self.path.display())))?;
        Ok(q.dequantize(device)?)
    }

    /// Metadata `key`, or an error naming it.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::Weights(format!("{}: no metadata `{key}`", self.path.display())))
    }

    /// Metadata `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string", v)),
        }
    }

    /// Metadata `key` as an unsigned integer (any integer type, non-negative).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n: Option<i128> = match v {
            Value::U8(x) => Some((*x).into()),
            Value::I8(x) => Some((*x).into()),
            Value::U16(x) => Some((*x).into()),
            Value::I16(x) => Some((*x).into()),
            Value::U32(x) => Some((*x).into()),
            Value::I32(x) => Some((*x).into()),
            Value::U64(x) => Some((*x).into()),
            Value::I64(x) => Some((*x).into()),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// Metadata `key` as a float (f32 or f64).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            v => Err(self.wrong(key, "a float", v)),
        }
    }

    /// Metadata `key` as an array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(self.wrong(key, "an array of strings", other)),
                })
                .collect(),
            v => Err(self.wrong(key, "an array of strings", v)),
        }
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> Error {
        let shown = format!("{got:?}");
        let shown: String = shown.chars().take(60).collect();
        Error::Weights(format!("{}: metadata `{key}` should be {want}, is {shown}", self.path.display()))
    }
}
