//! Run checkpoints, written atomically: a checkpoint is a folder `ckpt-<step>` holding
//! `params.safetensors` (adapter and head tensors), `optimizer.safetensors` (AdamW moments) and
//! `state.json` (step, progress, the settings it belongs to). It is written under a temporary
//! name and renamed into place, then `latest` (a one-line file naming it) is replaced by rename;
//! older checkpoints are removed only after that. A run killed at any moment leaves the previous
//! checkpoint intact and `latest` pointing at a complete one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Progress recorded with a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: u64,
    /// Best validation accuracy so far, and its step.
    pub best_valid: Option<(f64, u64)>,
    /// Test accuracy at the best validation step.
    pub test_at_best: Option<f64>,
    /// Seconds of training before this checkpoint (summed over resumed sessions).
    pub elapsed_s: f64,
    /// The run's settings, as JSON: a resume must present the same.
    pub settings: serde_json::Value,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |cause| Error::Io { path: path.display().to_string(), cause }
}

/// Writes `tensors` to a safetensors file.
pub fn save_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: Option<HashMap<String, String>>,
) -> Result<()> {
    let data: Vec<(String, Tensor)> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // Serialized in memory and written with std (callers stage the file): safetensors'
    // `serialize_to_file` goes through a private temporary file and leaves mode 0600, where
    // every other output is created with the user's umask like any file.
    let bytes = safetensors::serialize(data, meta)
        .map_err(|e| Error::Checkpoint(format!("writing {}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(|cause| Error::Io { path: path.display().to_string(), cause })
}

/// Reads a safetensors file written by [`save_tensors`].
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    superlora_io::read_header(path).map_err(|e| Error::Checkpoint(e.to_string()))?;
    candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Checkpoint(format!("reading {}: {e}", path.display())))
}

/// Writes checkpoint `step` in `dir` and points `latest` at it; keeps the newest `keep`.
pub fn write(
    dir: &Path,
    state: &RunState,
    params: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("ckpt-{:08}", state.step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    save_tensors(&tmp.join("params.safetensors"), params, None)?;
    save_tensors(&tmp.join("optimizer.safetensors"), optimizer, None)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Checkpoint(e.to_string()))?;
    std::fs::write(tmp.join("state.json"), json).map_err(io(&tmp))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    let latest_tmp = dir.join(".latest.tmp");
    std::fs::write(&latest_tmp, format!("{name}\n")).map_err(io(&latest_tmp))?;
    std::fs::rename(&latest_tmp, dir.join("latest")).map_err(io(dir))?;
    // Drop older checkpoints, newest `keep` kept.
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ckpt-")))
        .collect();
    all.sort();
    let drop = all.len().saturating_sub(keep.max(1));
    for old in &all[..drop] {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

/// A checkpoint read back.
pub struct Loaded {
    /// Progress and settings.
    pub state: RunState,
    /// Adapter and head tensors.
    pub params: HashMap<String, Tensor>,
    /// AdamW moments.
    pub optimizer: HashMap<String, Tensor>,
    /// The folder.
    pub path: PathBuf,
}

/// Reads the checkpoint `latest` points at, or `None` if the folder has none.
pub fn read_latest(dir: &Path, device: &Device) -> Result<Option<Loaded>> {
    let latest = dir.join("latest");
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(io(&latest))?;
    let name = name.trim();
    // Only a checkpoint of this folder: `ckpt-<step>`, never a path elsewhere.
    let step = name.strip_prefix("ckpt-").unwrap_or_default();
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Checkpoint(format!(
            "{} names `{name}`, not a checkpoint of this folder (`ckpt-<step>`); the run folder is damaged",
            latest.display()
        )));
    }
    let path = dir.join(name);
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: RunState =
        serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", state_path.display())))?;
    let params = load_tensors(&path.join("params.safetensors"), device)?;
    let optimizer = load_tensors(&path.join("optimizer.safetensors"), device)?;
    Ok(Some(Loaded { state, params, optimizer, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_may_only_name_a_checkpoint_of_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_latest(dir.path(), &Device::Cpu).unwrap().is_none());
        for bad in ["../../../etc", "ckpt-", "ckpt-12/../../x", "/etc"] {
            std::fs::write(dir.path().join("latest"), format!("{bad}\n")).unwrap();
            let e = read_latest(dir.path(), &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("not a checkpoint of this folder"), "{bad}: {e}");
        }
    }
}
