//! ViT encoder in the Hugging Face `ViTModel` layout (`model_type` `vit`, the google/vit-*
//! checkpoints): patch embedding (a p x p stride-p convolution, `patch_size` from the config,
//! computed as one matmul over flattened patches), class token, position embeddings, then pre-LN
//! blocks x = x + O(attn(LN_before x)); x = x + W₂·GELU(W₁·LN_after x); a final LayerNorm. The
//! features are the class token after the final LayerNorm, [B, hidden].
//!
//! Weight names (with or without the `vit.` prefix of `ViTForImageClassification` files):
//! `embeddings.{cls_token, position_embeddings, patch_embeddings.projection.{weight,bias}}`,
//! `encoder.layer.<i>.{layernorm_before, attention.attention.{query,key,value},
//! attention.output.dense, layernorm_after, intermediate.dense, output.dense}`, `layernorm`.
//! LayerNorm ε is the config's `layer_norm_eps`. The pooler (`pooler.dense`) is not used.
//!
//! Linears in module order per layer: `attention.attention.{query,key,value}`,
//! `attention.output.dense`, `intermediate.dense`, `output.dense` (prefix `encoder.layer.<i>.`).
//!
//! Differs from transformers' `ViTModel` only in where weights come from, in using ops that have a
//! backward, and in always interpolating the position embeddings for an input size other than the
//! config's (as `interpolate_pos_encoding=True` does: bicubic, [`crate::vit::bicubic_resize`])
//! instead of refusing it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::adapt::{Deltas, Linear, LinearInfo};
use crate::encoder::{ImageEncoder, check_patch_multiple, read_normalization};
use crate::ops::Norm;
use crate::vit::{PosEmbed, embed_patches};
use crate::{Error, Result, Weights};

/// The subset of a Hugging Face `ViTConfig` the encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct ViTConfig {
    /// Width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Channels (must be 3).
    #[serde(default = "three")]
    pub num_channels: usize,
    /// LayerNorm ε.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Activation (only gelu).
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// Whether q/k/v have biases.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
}

fn three() -> usize {
    3
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

/// ViT's default normalisation (google/vit-*: mean 0.5, std 0.5).
pub const HALF: ([f32; 3], [f32; 3]) = ([0.5; 3], [0.5; 3]);

struct Block {
    norm1: Norm,
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// A Hugging Face `ViTModel` with frozen weights.
pub struct GoogleVit {
    /// Its configuration.
    pub config: ViTConfig,
    patch_w: Tensor,
    patch_b: Tensor,
    cls: Tensor,
    pos: PosEmbed,
    blocks: Vec<Block>,
    /// Ones [hidden]: this ViT has no LayerScale, so the one-node pre-LN block ([`crate::block`])
    /// runs with λ₁ = λ₂ = 1 (x + 1·y and 1·g are exact: the same values as without); the per-op
    /// path skips them.
    unit: Tensor,
    norm: Norm,
    normalization: ([f32; 3], [f32; 3]),
    /// The weights file.
    pub weights_path: PathBuf,
}

impl GoogleVit {
    /// Loads a folder: `config.json`, `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`), optional `preprocessor_config.json` (image_mean/std).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (dir, file) = crate::bert::dir_and_weights(path);
        let config: ViTConfig = crate::bert::read_config(&dir, "ViT")?;
        let cfg_path = dir.join("config.json");
        let bad = |m: String| Error::Weights(format!("{}: {m}", cfg_path.display()));
        if config.hidden_act != "gelu" {
            return Err(bad(format!("hidden_act `{}` is not supported (only gelu)", config.hidden_act)));
        }
        if config.num_channels != 3 {
            return Err(bad(format!("num_channels {} is not supported (only 3)", config.num_channels)));
        }
        let w = Weights::load(&file, device)?.strip_prefix("vit.", "embeddings.cls_token");
        let mut m = Self::from_weights(config, &w)?;
        m.normalization = read_normalization(&dir, HALF)?;
        Ok(m)
    }

    /// Builds the encoder from loaded weights (names without the `vit.` prefix).
    pub fn from_weights(config: ViTConfig, w: &Weights) -> Result<Self> {
        let (h, f, p) = (config.hidden_size, config.intermediate_size, config.patch_size);
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) || p == 0 {
            return Err(Error::Weights(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {} (or patch_size is 0)",
                config.num_attention_heads
            )));
        }
        let found = (0..).take_while(|i| w.contains(&format!("encoder.layer.{i}.layernorm_before.weight"))).count();
        if found != config.num_hidden_layers {
            return Err(Error::Weights(format!(
                "{}: {found} ViT layers in the weights, the config says {}",
                w.path().display(),
                config.num_hidden_layers
            )));
        }
        let proj = w.get("embeddings.patch_embeddings.projection.weight", &[h, 3, p, p])?;
        let blocks = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("encoder.layer.{i}");
                let lin = |n: &str, o, inp| Linear::load(w, &format!("{l}.{n}"), o, inp);
                let qkv = |n: &str| Linear::load_with_bias(w, &format!("{l}.{n}"), h, h, config.qkv_bias);
                Ok(Block {
                    norm1: Norm::load(w, &format!("{l}.layernorm_before"), h)?,
                    query: qkv("attention.attention.query")?,
                    key: qkv("attention.attention.key")?,
                    value: qkv("attention.attention.value")?,
                    output: lin("attention.output.dense", h, h)?,
                    norm2: Norm::load(w, &format!("{l}.layernorm_after"), h)?,
                    fc1: lin("intermediate.dense", f, h)?,
                    fc2: lin("output.dense", h, f)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GoogleVit {
            patch_w: proj.reshape((h, 3 * p * p))?,
            patch_b: w.get("embeddings.patch_embeddings.projection.bias", &[h])?,
            cls: w.get("embeddings.cls_token", &[1, 1, h])?,
            pos: PosEmbed::load(w, "embeddings.position_embeddings", h)?,
            blocks,
            unit: Tensor::ones(h, DType::F32, proj.device())?,
            norm: Norm::load(w, "layernorm", h)?,
            config,
            normalization: HALF,
            weights_path: w.path().to_path_buf(),
        })
    }

    /// Every linear layer, in module order.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.query, &b.key, &b.value, &b.output, &b.fc1, &b.fc2])
            .map(Linear::info)
            .collect()
    }

    /// Every base tensor (all frozen), for tests.
    pub fn frozen_tensors(&self) -> Vec<Tensor> {
        let mut v = vec![self.patch_w.clone(), self.patch_b.clone(), self.cls.clone(), self.pos.cls_pos().clone()];
        for b in &self.blocks {
            for l in [&b.query, &b.key, &b.value, &b.output, &b.fc1, &b.fc2] {
                v.push(l.weight.clone());
                v.extend(l.bias.iter().cloned());
            }
            for n in [&b.norm1, &b.norm2] {
                v.extend([n.gamma.clone(), n.beta.clone()]);
            }
        }
        v.extend([self.norm.gamma.clone(), self.norm.beta.clone()]);
        v
    }

    /// Token states after the final LayerNorm, [B, 1 + P, D] (transformers' `last_hidden_state`),
    /// for normalised `images` [B, 3, H, W] with H, W multiples of the patch size. Each block is one
    /// node ([`crate::block`]) on the CPU in f32, the per-op block otherwise.
    pub fn forward(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.forward_blocks(images, deltas, false)
    }

    /// [`GoogleVit::forward`] with every block built from per-op nodes (its oracle in the tests).
    pub fn forward_composed(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.forward_blocks(images, deltas, true)
    }

    fn forward_blocks(&self, images: &Tensor, deltas: &Deltas, composed: bool) -> Result<Tensor> {
        let (x, gh, gw) = embed_patches(images, &self.patch_w, &self.patch_b, self.config.patch_size)?;
        let b = x.dim(0)?;
        let cls = self.cls.broadcast_as((b, 1, self.config.hidden_size))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos.get(gh, gw)?)?;
        let eps = self.config.layer_norm_eps;
        let heads = self.config.num_attention_heads;
        for blk in &self.blocks {
            let one = crate::block::Block {
                linears: [&blk.query, &blk.key, &blk.value, &blk.output, &blk.fc1, &blk.fc2],
                norms: [&blk.norm1, &blk.norm2],
                scales: Some([&self.unit, &self.unit]),
            };
            x = one.pre_ln(&x, heads, eps, deltas, composed, false)?;
        }
        self.norm.forward(&x, eps)
    }

    /// Image features [B, D]: the class token after the final LayerNorm.
    pub fn features(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        Ok(self.forward(images, deltas)?.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

impl ImageEncoder for GoogleVit {
    fn kind(&self) -> &'static str {
        "vit"
    }
    fn weights_path(&self) -> &Path {
        &self.weights_path
    }
    fn feature_dim(&self) -> usize {
        self.config.hidden_size
    }
    fn patch_size(&self) -> usize {
        self.config.patch_size
    }
    fn check_size(&self, px: usize) -> Result<()> {
        check_patch_multiple(px, self.config.patch_size)
    }
    fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        self.normalization
    }
    fn linears(&self) -> Vec<LinearInfo> {
        GoogleVit::linears(self)
    }
    fn features(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        GoogleVit::features(self, images, deltas)
    }
}
