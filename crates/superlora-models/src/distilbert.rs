//! DistilBERT encoder (`model_type` `distilbert`): word + position embeddings and LayerNorm (no
//! token types), then post-LN blocks x = LN_sa(x + out_lin(attn(x))); x = LN_out(x +
//! lin2·GELU(lin1·x)), LayerNorm ε 1e-12. Returns the last hidden states.
//!
//! Weight names as Hugging Face `DistilBertModel` files, with or without the `distilbert.` prefix
//! of task-model files: `embeddings.{word_embeddings, position_embeddings, LayerNorm}`,
//! `transformer.layer.<i>.attention.{q_lin,k_lin,v_lin,out_lin}`, `sa_layer_norm`,
//! `ffn.{lin1,lin2}`, `output_layer_norm`. Linears in module order per layer:
//! `attention.{q_lin,k_lin,v_lin,out_lin}`, `ffn.lin1`, `ffn.lin2` (prefix `transformer.layer.<i>.`),
//! so PEFT-style targets `q_lin,v_lin` work.
//!
//! Differs from transformers' `DistilBertModel` only in where weights come from and in using ops
//! that have a backward (sinusoidal position embeddings are read from the file like learned ones).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::adapt::{Deltas, Linear, LinearInfo};
use crate::bert::{dir_and_weights, read_config};
use crate::encoder::{TextEncoder, check_text_inputs};
use crate::ops::{Norm, attention, mask_bias};
use crate::{Error, Result, Weights};

/// LayerNorm ε of DistilBERT (fixed in transformers).
pub const LN_EPS: f64 = 1e-12;

/// The subset of a Hugging Face `DistilBertConfig` the encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct DistilBertConfig {
    /// Width.
    pub dim: usize,
    /// Blocks.
    pub n_layers: usize,
    /// Heads.
    pub n_heads: usize,
    /// FFN width.
    pub hidden_dim: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Activation (only gelu).
    #[serde(default = "gelu")]
    pub activation: String,
}

fn gelu() -> String {
    "gelu".into()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    sa_norm: Norm,
    lin1: Linear,
    lin2: Linear,
    out_norm: Norm,
}

/// A DistilBERT encoder with frozen weights.
pub struct DistilBert {
    /// Its configuration.
    pub config: DistilBertConfig,
    word: Tensor,
    position: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
    /// The weights file.
    pub weights_path: PathBuf,
}

impl DistilBert {
    /// Loads a folder (`config.json` + `model.safetensors` or a sharded index) or a
    /// `.safetensors` file with its `config.json` beside it.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (dir, file) = dir_and_weights(path);
        let config: DistilBertConfig = read_config(&dir, "DistilBERT")?;
        let w = Weights::load(&file, device)?.strip_prefix("distilbert.", "embeddings.word_embeddings.weight");
        Self::from_weights(config, &w)
    }

    /// Builds the encoder from loaded weights (names without the `distilbert.` prefix).
    pub fn from_weights(config: DistilBertConfig, w: &Weights) -> Result<Self> {
        if config.activation != "gelu" {
            return Err(Error::Weights(format!("activation `{}` is not supported (only gelu)", config.activation)));
        }
        let (h, f) = (config.dim, config.hidden_dim);
        if config.n_heads == 0 || !h.is_multiple_of(config.n_heads) {
            return Err(Error::Weights(format!("dim {h} is not a multiple of n_heads {}", config.n_heads)));
        }
        let word = w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = w.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
        let embed_norm = Norm::load(w, "embeddings.LayerNorm", h)?;
        let layers = (0..config.n_layers)
            .map(|i| {
                let l = format!("transformer.layer.{i}");
                let lin = |n: &str, o, inp| Linear::load(w, &format!("{l}.{n}"), o, inp);
                Ok(Layer {
                    q: lin("attention.q_lin", h, h)?,
                    k: lin("attention.k_lin", h, h)?,
                    v: lin("attention.v_lin", h, h)?,
                    out: lin("attention.out_lin", h, h)?,
                    sa_norm: Norm::load(w, &format!("{l}.sa_layer_norm"), h)?,
                    lin1: lin("ffn.lin1", f, h)?,
                    lin2: lin("ffn.lin2", h, f)?,
                    out_norm: Norm::load(w, &format!("{l}.output_layer_norm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DistilBert { config, word, position, embed_norm, layers, weights_path: w.path().to_path_buf() })
    }

    /// Every linear layer, in module order.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.layers.iter().flat_map(|l| [&l.q, &l.k, &l.v, &l.out, &l.lin1, &l.lin2]).map(Linear::info).collect()
    }

    /// Every base tensor (all frozen), for tests.
    pub fn frozen_tensors(&self) -> Vec<Tensor> {
        let mut v =
            vec![self.word.clone(), self.position.clone(), self.embed_norm.gamma.clone(), self.embed_norm.beta.clone()];
        for l in &self.layers {
            for lin in [&l.q, &l.k, &l.v, &l.out, &l.lin1, &l.lin2] {
                v.push(lin.weight.clone());
                v.extend(lin.bias.iter().cloned());
            }
            for n in [&l.sa_norm, &l.out_norm] {
                v.extend([n.gamma.clone(), n.beta.clone()]);
            }
        }
        v
    }

    /// Last hidden states [B, L, H]. `token_types`, if given, must be all 0 (DistilBERT has none).
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        token_types: Option<&Tensor>,
        deltas: &Deltas,
    ) -> Result<Tensor> {
        let c = &self.config;
        check_text_inputs(ids, mask, token_types, c.vocab_size, 1, c.max_position_embeddings)?;
        let (b, l) = ids.dims2()?;
        let words = self.word.index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?.reshape((b, l, c.dim))?;
        let x = words.broadcast_add(&self.position.narrow(0, 0, l)?)?;
        let mut x = self.embed_norm.forward(&x, LN_EPS)?;
        let bias = mask_bias(mask, x.dtype())?;
        for layer in &self.layers {
            let (q, k, v) = (layer.q.forward(&x, deltas)?, layer.k.forward(&x, deltas)?, layer.v.forward(&x, deltas)?);
            let ctx = attention(&q, &k, &v, c.n_heads, Some(&bias))?;
            x = layer.sa_norm.forward_sum(&layer.out.forward(&ctx, deltas)?, &x, LN_EPS)?;
            let h = layer.lin1.forward(&x, deltas)?;
            x = layer.out_norm.forward_sum(&layer.lin2.forward_gelu(&h, deltas)?, &x, LN_EPS)?;
        }
        Ok(x)
    }
}

impl TextEncoder for DistilBert {
    fn kind(&self) -> &'static str {
        "distilbert"
    }
    fn weights_path(&self) -> &Path {
        &self.weights_path
    }
    fn hidden_size(&self) -> usize {
        self.config.dim
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn uses_token_types(&self) -> bool {
        false
    }
    fn linears(&self) -> Vec<LinearInfo> {
        DistilBert::linears(self)
    }
    fn forward(&self, ids: &Tensor, mask: &Tensor, token_types: Option<&Tensor>, deltas: &Deltas) -> Result<Tensor> {
        DistilBert::forward(self, ids, mask, token_types, deltas)
    }
}
