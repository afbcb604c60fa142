//! Base weights: a safetensors file loaded as plain (never trainable) f32 tensors, looked up by
//! name with the shape checked, so a wrong or truncated checkpoint fails with the tensor's name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// All tensors of one safetensors file, by name.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
}

impl Weights {
    /// Loads every tensor of `path` (validated header first, then the data) as f32 on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        superlora_io::read_header(path)?;
        let raw = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        let tensors = raw
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Weights { tensors, path: path.to_path_buf() })
    }

    /// From tensors already in memory (tests, converted checkpoints).
    pub fn from_map(tensors: HashMap<String, Tensor>, origin: &str) -> Self {
        Weights { tensors, path: PathBuf::from(origin) }
    }

    /// The tensor `name`, which must have shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::Weights(format!("{}: no tensor `{name}` (is this the right model file?)", self.path.display()))
        })?;
        if t.dims() != shape {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` has shape {:?}, the model expects {shape:?}",
                self.path.display(),
                t.dims()
            )));
        }
        Ok(t.clone())
    }

    /// The tensor `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.tensors.get(name).cloned().ok_or_else(|| {
            Error::Weights(format!("{}: no tensor `{name}` (is this the right model file?)", self.path.display()))
        })
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
