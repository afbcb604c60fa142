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
//! The blocks are BERT's post-LN stack ([`BertStack`], the same math under other names), so on the
//! CPU in f32 each runs as one node ([`crate::block`]); [`DistilBert::forward_composed`] keeps the
//! per-op blocks as the oracle.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::adapt::{Deltas, Linear, LinearInfo};
use crate::bert::{BertStack, Layer, LayerNames, dir_and_weights, read_config};
use crate::encoder::{TextEncoder, check_text_inputs};
use crate::ops::Norm;
use crate::{Error, Result, Weights};

/// LayerNorm ε of DistilBERT (fixed in transformers).
pub const LN_EPS: f64 = 1e-12;

/// A layer's parts under `transformer.layer.<i>.`, in [`LayerNames`] order.
const NAMES: LayerNames = [
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    "attention.out_lin",
    "sa_layer_norm",
    "ffn.lin1",
    "ffn.lin2",
    "output_layer_norm",
];

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

/// A DistilBERT encoder with frozen weights.
pub struct DistilBert {
    /// Its configuration.
    pub config: DistilBertConfig,
    word: Tensor,
    position: Tensor,
    embed_norm: Norm,
    /// The blocks: the post-LN stack BERT uses, one node per block on the CPU in f32.
    stack: BertStack,
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
                Layer::load(&NAMES, (h, f), lin, |n| Norm::load(w, &format!("{l}.{n}"), h))
            })
            .collect::<Result<Vec<_>>>()?;
        let stack = BertStack::from_layers(layers, config.n_heads, LN_EPS);
        Ok(DistilBert { config, word, position, embed_norm, stack, weights_path: w.path().to_path_buf() })
    }

    /// Every linear layer, in module order.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.stack.linears()
    }

    /// Every base tensor (all frozen), for tests.
    pub fn frozen_tensors(&self) -> Vec<Tensor> {
        let mut v =
            vec![self.word.clone(), self.position.clone(), self.embed_norm.gamma.clone(), self.embed_norm.beta.clone()];
        v.extend(self.stack.frozen_tensors());
        v
    }

    /// Last hidden states [B, L, H]. `token_types`, if given, must be all 0 (DistilBERT has none).
    /// Each block is one node ([`crate::block`]) on the CPU in f32, the per-op block otherwise.
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        token_types: Option<&Tensor>,
        deltas: &Deltas,
    ) -> Result<Tensor> {
        let x = self.embed(ids, mask, token_types)?;
        self.stack.forward(x, mask, deltas)
    }

    /// [`DistilBert::forward`] with every block built from per-op nodes (its oracle in the tests).
    pub fn forward_composed(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let x = self.embed(ids, mask, None)?;
        self.stack.forward_composed(x, mask, deltas)
    }

    /// The embedding: LayerNorm(word + position), after checking the inputs.
    fn embed(&self, ids: &Tensor, mask: &Tensor, token_types: Option<&Tensor>) -> Result<Tensor> {
        let c = &self.config;
        check_text_inputs(ids, mask, token_types, c.vocab_size, 1, c.max_position_embeddings)?;
        let (b, l) = ids.dims2()?;
        let words = self.word.index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?.reshape((b, l, c.dim))?;
        let x = words.broadcast_add(&self.position.narrow(0, 0, l)?)?;
        self.embed_norm.forward(&x, LN_EPS)
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
