//! RoBERTa encoder (`model_type` `roberta`): BERT's post-LN block stack ([`BertStack`]) after
//! word + position + token-type embeddings and LayerNorm, with RoBERTa's position ids: a token's
//! position is `padding_idx + (number of tokens up to and including it)` and padding sits at
//! `padding_idx` (transformers' `create_position_ids_from_input_ids`), so the usable length is
//! `max_position_embeddings - padding_idx - 1`. Returns the last hidden states; pooling is the
//! caller's business (the pooler is not loaded).
//!
//! Weight names as Hugging Face `RobertaModel` files, with or without the `roberta.` prefix of
//! task-model files: `embeddings.{word_embeddings, position_embeddings, token_type_embeddings,
//! LayerNorm}`, `encoder.layer.<i>.attention.self.{query,key,value}`,
//! `attention.output.{dense,LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`.
//! Linears are named as in BERT (`encoder.layer.<i>.attention.self.query`, …).
//!
//! Differs from transformers' `RobertaModel` only in where weights come from, in using ops that
//! have a backward, and in counting positions from the attention mask rather than from
//! `ids != pad_token_id` (the same whenever the padding tokens are the masked ones).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::adapt::{Deltas, LinearInfo};
use crate::bert::{BertConfig, BertStack, dir_and_weights, read_config};
use crate::encoder::{TextEncoder, check_text_inputs};
use crate::ops::Norm;
use crate::{Error, Result, Weights};

/// A Hugging Face `RobertaConfig`: BERT's fields and the padding id.
#[derive(Clone, Debug, Deserialize)]
pub struct RobertaConfig {
    /// The BERT fields (hidden_size, layers, heads, …).
    #[serde(flatten)]
    pub base: BertConfig,
    /// Padding id, also the position offset.
    #[serde(default = "one")]
    pub pad_token_id: usize,
}

fn one() -> usize {
    1
}

/// A RoBERTa encoder with frozen weights.
pub struct Roberta {
    /// Its configuration.
    pub config: RobertaConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    stack: BertStack,
    /// The weights file.
    pub weights_path: PathBuf,
}

impl Roberta {
    /// Loads a folder (`config.json` + `model.safetensors` or a sharded index) or a
    /// `.safetensors` file with its `config.json` beside it.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (dir, file) = dir_and_weights(path);
        let config: RobertaConfig = read_config(&dir, "RoBERTa")?;
        let w = Weights::load(&file, device)?.strip_prefix("roberta.", "embeddings.word_embeddings.weight");
        Self::from_weights(config, &w)
    }

    /// Builds the encoder from loaded weights (names without the `roberta.` prefix).
    pub fn from_weights(config: RobertaConfig, w: &Weights) -> Result<Self> {
        let c = &config.base;
        c.check()?;
        if config.pad_token_id + 1 >= c.max_position_embeddings {
            return Err(Error::Weights(format!(
                "pad_token_id {} leaves no positions of {}",
                config.pad_token_id, c.max_position_embeddings
            )));
        }
        let h = c.hidden_size;
        let word = w.get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let position = w.get("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?;
        let token_type = w.get("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, h])?;
        let embed_norm = Norm::load(w, "embeddings.LayerNorm", h)?;
        let stack = BertStack::load(w, "", c)?;
        Ok(Roberta { config, word, position, token_type, embed_norm, stack, weights_path: w.path().to_path_buf() })
    }

    /// Usable positions: `max_position_embeddings - pad_token_id - 1`.
    pub fn max_tokens(&self) -> usize {
        self.config.base.max_position_embeddings - self.config.pad_token_id - 1
    }

    /// Position ids [B·L]: `pad + cumsum(mask)` on tokens, `pad` on padding.
    fn position_ids(&self, mask: &Tensor) -> Result<Tensor> {
        let pad = self.config.pad_token_id as u32;
        let rows = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let (b, l) = (rows.len(), rows.first().map_or(0, Vec::len));
        let mut ids = Vec::with_capacity(b * l);
        for row in rows {
            let mut n = 0u32;
            for m in row {
                if m != 0 {
                    n += 1;
                    ids.push(pad + n);
                } else {
                    ids.push(pad);
                }
            }
        }
        Ok(Tensor::from_vec(ids, b * l, &Device::Cpu)?.to_device(mask.device())?)
    }

    /// Every linear layer, in module order.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.stack.linears()
    }

    /// Every base tensor (all frozen), for tests.
    pub fn frozen_tensors(&self) -> Vec<Tensor> {
        let mut v = vec![
            self.word.clone(),
            self.position.clone(),
            self.token_type.clone(),
            self.embed_norm.gamma.clone(),
            self.embed_norm.beta.clone(),
        ];
        v.extend(self.stack.frozen_tensors());
        v
    }

    /// Last hidden states [B, L, H] for `ids`, `mask` and optional `token_types` ([B, L] u32).
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        token_types: Option<&Tensor>,
        deltas: &Deltas,
    ) -> Result<Tensor> {
        let c = &self.config.base;
        check_text_inputs(ids, mask, token_types, c.vocab_size, c.type_vocab_size, self.max_tokens())?;
        let (b, l) = ids.dims2()?;
        let h = c.hidden_size;
        let words = self.word.index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?.reshape((b, l, h))?;
        let pos = self.position.index_select(&self.position_ids(mask)?, 0)?.reshape((b, l, h))?;
        let x = (words + pos)?;
        let x = match token_types {
            Some(tt) => {
                let tt = tt.to_dtype(DType::U32)?.flatten_all()?;
                (x + self.token_type.index_select(&tt, 0)?.reshape((b, l, h))?)?
            }
            None => x.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?,
        };
        let x = self.embed_norm.forward(&x, c.layer_norm_eps)?;
        self.stack.forward(x, mask, deltas)
    }
}

impl TextEncoder for Roberta {
    fn kind(&self) -> &'static str {
        "roberta"
    }
    fn weights_path(&self) -> &Path {
        &self.weights_path
    }
    fn hidden_size(&self) -> usize {
        self.config.base.hidden_size
    }
    fn max_tokens(&self) -> usize {
        Roberta::max_tokens(self)
    }
    fn uses_token_types(&self) -> bool {
        self.config.base.type_vocab_size > 1
    }
    fn linears(&self) -> Vec<LinearInfo> {
        Roberta::linears(self)
    }
    fn forward(&self, ids: &Tensor, mask: &Tensor, token_types: Option<&Tensor>, deltas: &Deltas) -> Result<Tensor> {
        Roberta::forward(self, ids, mask, token_types, deltas)
    }
}
