//! Base weights: safetensors files loaded as plain (never trainable) f32 tensors, looked up by
//! name with the shape checked, so a wrong or truncated checkpoint fails with the tensor's name,
//! the expected and found shapes, and the file it came from. A sharded checkpoint (Hugging Face
//! `model.safetensors.index.json`) loads every shard it names.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// All tensors of one safetensors file (or of every shard of a sharded checkpoint), by name.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// The file each tensor came from, where it differs from `path` (shards).
    origin: HashMap<String, PathBuf>,
    path: PathBuf,
}

fn load_file(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    superlora_io::read_header(path)?;
    let raw = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
    raw.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?))).collect()
}

impl Weights {
    /// Loads every tensor of `path` (validated header first, then the data) as f32 on `device`.
    /// A `*.safetensors.index.json` path loads the sharded checkpoint it describes.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json")) {
            return Self::load_sharded(path, device);
        }
        let tensors = load_file(path, device)?;
        Ok(Weights { tensors, origin: HashMap::new(), path: path.to_path_buf() })
    }

    /// Loads a sharded checkpoint from its index (`model.safetensors.index.json`: a `weight_map`
    /// from tensor name to shard file, relative to the index). Every shard is loaded; a tensor the
    /// index names but its shard lacks, or a tensor in two shards, is an error naming the files.
    pub fn load_sharded(index: &Path, device: &Device) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::Weights(format!("{}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Weights(format!("{}: not a safetensors index: {e}", index.display())))?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
            Error::Weights(format!("{}: no `weight_map` object (not a safetensors index)", index.display()))
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards = BTreeSet::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::Weights(format!("{}: weight_map entry `{name}` is not a file name", index.display()))
            })?;
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(Error::Weights(format!("{}: shard `{file}` is outside the folder", index.display())));
            }
            shards.insert(file.to_string());
        }
        if shards.is_empty() {
            return Err(Error::Weights(format!("{}: the weight_map names no shard", index.display())));
        }
        let mut tensors = HashMap::new();
        let mut origin = HashMap::new();
        for shard in &shards {
            let file = dir.join(shard);
            for (k, t) in load_file(&file, device)? {
                if let Some(prev) = origin.insert(k.clone(), file.clone()) {
                    return Err(Error::Weights(format!(
                        "tensor `{k}` is in two shards: {} and {}",
                        prev.display(),
                        file.display()
                    )));
                }
                tensors.insert(k, t);
            }
        }
        for (name, file) in map {
            if !tensors.contains_key(name) {
                return Err(Error::Weights(format!(
                    "{}: the index puts `{name}` in {}, which lacks it",
                    index.display(),
                    file.as_str().unwrap_or("?")
                )));
            }
        }
        Ok(Weights { tensors, origin, path: index.to_path_buf() })
    }

    /// From tensors already in memory (tests, converted checkpoints).
    pub fn from_map(tensors: HashMap<String, Tensor>, origin: &str) -> Self {
        Weights { tensors, origin: HashMap::new(), path: PathBuf::from(origin) }
    }

    /// The file the tensor `name` came from (a shard, for sharded checkpoints).
    pub fn file_of(&self, name: &str) -> &Path {
        self.origin.get(name).map(PathBuf::as_path).unwrap_or(&self.path)
    }

    /// The tensor `name`, which must have shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            Error::Weights(format!("{}: no tensor `{name}` (is this the right model file?)", self.path.display()))
        })?;
        if t.dims() != shape {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` has shape {:?}, the model (its config) expects {shape:?}",
                self.file_of(name).display(),
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

    /// Names without `prefix` where the checkpoint has it (task-model files, e.g. `roberta.` or
    /// `vit.`, prefix the base model's names): a tensor `<prefix>x` is renamed `x` when `marker`
    /// (a name the base model must have) exists only with the prefix. Otherwise unchanged.
    pub fn strip_prefix(mut self, prefix: &str, marker: &str) -> Self {
        if self.contains(marker) || !self.contains(&format!("{prefix}{marker}")) {
            return self;
        }
        let tensors = std::mem::take(&mut self.tensors);
        for (k, t) in tensors {
            let name = k.strip_prefix(prefix).map(str::to_string).unwrap_or(k.clone());
            if let Some(f) = self.origin.remove(&k) {
                self.origin.insert(name.clone(), f);
            }
            self.tensors.insert(name, t);
        }
        self
    }

    /// The file the weights came from (the index, for a sharded checkpoint).
    pub fn path(&self) -> &Path {
        &self.path
    }
}
