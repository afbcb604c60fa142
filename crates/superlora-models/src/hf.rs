//! Loading encoders from Hugging Face model folders by `config.json`'s `model_type`.
//!
//! A folder holds `config.json`, `model.safetensors` or `model.safetensors.index.json` with its
//! shards, and optionally `tokenizer.json` / `preprocessor_config.json`. Nothing is downloaded.
//!
//! - text ([`load_text_encoder`]): `bert` ([`Bert`]; also a folder whose config has no
//!   `model_type`, as before), `roberta` ([`Roberta`]), `distilbert` ([`DistilBert`]);
//! - images ([`load_image_encoder`]): `vit` ([`GoogleVit`], google/vit-* `ViTModel`), `dinov2`
//!   ([`Vit`]); also a DINOv2 `.safetensors` converted from the ONNX graph, or that `.onnx` itself
//!   (converted once, beside it), as before.
//!
//! An unknown `model_type`, or one of the other modality, is an error listing the supported ones.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::bert::Bert;
use crate::distilbert::DistilBert;
use crate::encoder::{ImageEncoder, TextEncoder};
use crate::google_vit::GoogleVit;
use crate::roberta::Roberta;
use crate::vit::Vit;
use crate::{Error, Result};

/// Every `model_type` this crate loads.
pub const SUPPORTED: &[&str] = &["bert", "roberta", "distilbert", "vit", "dinov2"];
/// The text ones.
pub const TEXT: &[&str] = &["bert", "roberta", "distilbert"];
/// The image ones.
pub const IMAGE: &[&str] = &["vit", "dinov2"];

fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// `config.json`'s `model_type` in `dir`, `None` if the config has none.
fn read_model_type(dir: &Path) -> Result<Option<String>> {
    let path = config_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Weights(format!("{}: {e} (a Hugging Face model folder needs its config.json)", path.display()))
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Weights(format!("{}: not JSON: {e}", path.display())))?;
    match json.get("model_type") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::Weights(format!("{}: model_type is {other}, not a string", path.display()))),
    }
}

/// The `model_type` in `dir/config.json` (an error naming the file if it is missing, unreadable,
/// or has no `model_type`).
pub fn model_type(dir: &Path) -> Result<String> {
    read_model_type(dir)?.ok_or_else(|| {
        Error::Weights(format!("{}: no `model_type` (supported: {})", config_path(dir).display(), SUPPORTED.join(", ")))
    })
}

fn unsupported(dir: &Path, kind: &str, wanted: &str, these: &[&str]) -> Error {
    let why = if SUPPORTED.contains(&kind) {
        let article = if wanted.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        format!(
            "model_type `{kind}` cannot be loaded as {article} {wanted} encoder ({wanted} encoders: {})",
            these.join(", ")
        )
    } else {
        format!("model_type `{kind}` is not supported")
    };
    Error::Weights(format!("{}: {why}; supported model types: {}", config_path(dir).display(), SUPPORTED.join(", ")))
}

/// The folder of `path` (itself, or a file's parent).
fn folder(path: &Path) -> PathBuf {
    if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() }
}

/// Loads a text encoder from a model folder (or a `.safetensors` file with `config.json` beside
/// it), choosing the architecture by `model_type`; a config without one is BERT.
pub fn load_text_encoder(path: &Path, device: &Device) -> Result<Box<dyn TextEncoder>> {
    if !path.exists() {
        return Err(Error::Weights(format!("{}: no such file or folder", path.display())));
    }
    let dir = folder(path);
    let kind = read_model_type(&dir)?.unwrap_or_else(|| "bert".to_string());
    Ok(match kind.as_str() {
        "bert" => Box::new(Bert::load(path, device)?),
        "roberta" => Box::new(Roberta::load(path, device)?),
        "distilbert" => Box::new(DistilBert::load(path, device)?),
        other => return Err(unsupported(&dir, other, "text", TEXT)),
    })
}

/// Loads an image encoder: a model folder (by `model_type`: `vit` or `dinov2`) or a weights file
/// in one, or a DINOv2 `.safetensors` converted from the ONNX graph, or that `.onnx` file
/// (converted once, beside it).
pub fn load_image_encoder(path: &Path, device: &Device) -> Result<Box<dyn ImageEncoder>> {
    if !path.exists() {
        return Err(Error::Weights(format!("{}: no such file or folder", path.display())));
    }
    let dir = folder(path);
    if !path.is_dir() {
        // A weights file inside a Hugging Face folder loads as that folder's model_type; any other
        // file is the converted DINOv2 checkpoint (or its ONNX graph), as before.
        let in_folder = config_path(&dir).exists() && read_model_type(&dir)?.is_some();
        if !in_folder {
            return match path.extension().and_then(|e| e.to_str()) {
                Some("onnx") => Ok(Box::new(Vit::load(&crate::vit::ensure_converted(path)?, device)?)),
                _ => Ok(Box::new(Vit::load(path, device)?)),
            };
        }
    }
    let kind = model_type(&dir)?;
    Ok(match kind.as_str() {
        "vit" => Box::new(GoogleVit::load(path, device)?),
        "dinov2" => Box::new(Vit::load_hf(path, device)?),
        other => return Err(unsupported(&dir, other, "image", IMAGE)),
    })
}
