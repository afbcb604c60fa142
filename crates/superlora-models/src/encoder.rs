//! The two encoder interfaces every loadable model implements, so callers (the CLI, the training
//! loop) need not know which architecture a Hugging Face folder holds: [`TextEncoder`] (token ids →
//! last hidden states) and [`ImageEncoder`] (normalised images → pooled features). Both are
//! object-safe and `Send + Sync`; [`crate::hf`] loads them by `config.json`'s `model_type`.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::adapt::{Deltas, LinearInfo};
use crate::{Error, Result};

/// A text encoder with frozen base weights and W + ΔW on targeted linears.
pub trait TextEncoder: Send + Sync {
    /// The `model_type` it implements (`bert`, `roberta`, `distilbert`).
    fn kind(&self) -> &'static str;
    /// The weights file (or shard index) it was loaded from.
    fn weights_path(&self) -> &Path;
    /// Width H of the hidden states.
    fn hidden_size(&self) -> usize;
    /// Longest usable sequence (RoBERTa: `max_position_embeddings - padding_idx - 1`).
    fn max_tokens(&self) -> usize;
    /// Whether token types (segment ids) other than 0 mean anything to the model.
    fn uses_token_types(&self) -> bool;
    /// Every linear layer, in module order, named by its Hugging Face module path without the
    /// model prefix (e.g. `encoder.layer.0.attention.self.query`).
    fn linears(&self) -> Vec<LinearInfo>;
    /// `[B, L]` u32 ids and mask (1 token, 0 padding), optional `[B, L]` u32 token types →
    /// last hidden states `[B, L, H]`.
    fn forward(&self, ids: &Tensor, mask: &Tensor, token_types: Option<&Tensor>, deltas: &Deltas) -> Result<Tensor>;
}

/// An image encoder with frozen base weights and W + ΔW on targeted linears.
pub trait ImageEncoder: Send + Sync {
    /// The `model_type` it implements (`vit`, `dinov2`).
    fn kind(&self) -> &'static str;
    /// The weights file (or shard index) it was loaded from.
    fn weights_path(&self) -> &Path;
    /// Width F of the pooled features.
    fn feature_dim(&self) -> usize;
    /// Patch side in pixels.
    fn patch_size(&self) -> usize;
    /// Whether square inputs of `px` pixels can be encoded (a positive multiple of the patch).
    fn check_size(&self, px: usize) -> Result<()>;
    /// Per-channel (mean, std) the images must be normalised with.
    fn normalization(&self) -> ([f32; 3], [f32; 3]);
    /// Every linear layer, in module order, named by its Hugging Face module path without the
    /// model prefix (e.g. `encoder.layer.0.attention.attention.query`).
    fn linears(&self) -> Vec<LinearInfo>;
    /// `[B, 3, S, S]` normalised images → pooled features `[B, F]`.
    fn features(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor>;
}

/// Checks `px` is a positive multiple of `patch`.
pub(crate) fn check_patch_multiple(px: usize, patch: usize) -> Result<()> {
    if patch == 0 || px < patch || !px.is_multiple_of(patch) {
        return Err(Error::Adapter(format!("image size {px} must be a positive multiple of the patch size {patch}")));
    }
    Ok(())
}

/// Checks ids/mask/token types are `[B, L]` alike, `L` ≤ `max_len`, every id < `vocab` and every
/// token type < `types` (so bad input is an error, never an out-of-range lookup).
pub(crate) fn check_text_inputs(
    ids: &Tensor,
    mask: &Tensor,
    token_types: Option<&Tensor>,
    vocab: usize,
    types: usize,
    max_len: usize,
) -> Result<()> {
    let (b, l) = ids.dims2().map_err(|_| Error::Adapter(format!("ids must be [B, L]; got {:?}", ids.dims())))?;
    if mask.dims() != [b, l] {
        return Err(Error::Adapter(format!("mask has shape {:?}, the ids {:?}", mask.dims(), ids.dims())));
    }
    if l > max_len {
        return Err(Error::Adapter(format!("sequence of {l} tokens is longer than the model's {max_len} positions")));
    }
    let max_of = |t: &Tensor| -> Result<Option<u32>> {
        if t.elem_count() == 0 {
            return Ok(None);
        }
        Ok(Some(t.to_dtype(DType::U32)?.flatten_all()?.max(0)?.to_scalar::<u32>()?))
    };
    if let Some(m) = max_of(ids)?
        && m as usize >= vocab
    {
        return Err(Error::Adapter(format!("token id {m} is outside the vocabulary of {vocab}")));
    }
    if let Some(tt) = token_types {
        if tt.dims() != [b, l] {
            return Err(Error::Adapter(format!("token types have shape {:?}, the ids {:?}", tt.dims(), ids.dims())));
        }
        if let Some(m) = max_of(tt)?
            && m as usize >= types
        {
            return Err(Error::Adapter(format!("token type {m} given, but the model has {types} token type(s)")));
        }
    }
    Ok(())
}

/// Reads `image_mean`/`image_std` from `preprocessor_config.json` in `dir` if it exists,
/// otherwise returns `default`.
pub(crate) fn read_normalization(dir: &Path, default: ([f32; 3], [f32; 3])) -> Result<([f32; 3], [f32; 3])> {
    let path = dir.join("preprocessor_config.json");
    if !path.exists() {
        return Ok(default);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Weights(format!("{}: not JSON: {e}", path.display())))?;
    let three = |key: &str, dflt: [f32; 3]| -> Result<[f32; 3]> {
        let Some(v) = json.get(key) else { return Ok(dflt) };
        let bad = || Error::Weights(format!("{}: `{key}` must be a list of 3 numbers", path.display()));
        let a = v.as_array().ok_or_else(bad)?;
        if a.len() != 3 {
            return Err(bad());
        }
        let mut out = [0f32; 3];
        for (o, x) in out.iter_mut().zip(a) {
            *o = x.as_f64().ok_or_else(bad)? as f32;
        }
        Ok(out)
    };
    let (mean, std) = (three("image_mean", default.0)?, three("image_std", default.1)?);
    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
        return Err(Error::Weights(format!("{}: image_std must be positive and finite", path.display())));
    }
    Ok((mean, std))
}
