//! Text → `input_ids` and `attention_mask` tensors through a Hugging Face `tokenizer.json`
//! (asset `minilm`: the bert-base-uncased WordPiece vocabulary of all-MiniLM-L6-v2).
//!
//! The file's own truncation and padding settings are switched off; [`TextTokenizer::encode_batch`]
//! applies its own: each text is encoded with its special tokens (`[CLS] … [SEP]`), a text longer
//! than `max_len` loses content tokens from its end (the leading and trailing special tokens are
//! kept), and the batch is padded on the right with the pad id to the longest text in the batch
//! (so `L ≤ max_len`; mask 1 = real token, 0 = padding).

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::assets::asset_file;
use crate::error::{Error, Result};

/// The asset holding the MiniLM tokenizer.
pub const ASSET: &str = "minilm";

/// A loaded tokenizer with its pad id.
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    name: String,
}

/// One encoded batch: `[B, L]` u32 tensors.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// Token ids, padded with the pad id.
    pub input_ids: Tensor,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Tensor,
}

impl TextTokenizer {
    /// The MiniLM tokenizer from the asset cache.
    pub fn minilm() -> Result<Self> {
        Self::from_file(&asset_file(ASSET, "tokenizer.json")?)
    }

    /// Loads a `tokenizer.json`. The pad id is the file's padding `pad_id`, else the id of `[PAD]`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Io { path: path.to_path_buf(), source: std::io::ErrorKind::NotFound.into() });
        }
        let mut inner =
            Tokenizer::from_file(path).map_err(|e| Error::Tokenizer { file: name.clone(), msg: e.to_string() })?;
        let pad_id = match inner.get_padding() {
            Some(p) => p.pad_id,
            None => inner
                .token_to_id("[PAD]")
                .ok_or_else(|| Error::format(&name, "no padding settings and no [PAD] token"))?,
        };
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer { file: name.clone(), msg: e.to_string() })?;
        Ok(TextTokenizer { inner, pad_id, name })
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of one text with its special tokens, truncated to `max_len` as the module says.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| self.err(e))?;
        truncate(enc.get_ids(), enc.get_special_tokens_mask(), max_len, &self.name)
    }

    /// Encodes `texts` (in parallel) into `[B, L]` ids and mask on `device`, `L` = the longest
    /// (truncated) text. `max_len` must be at least the number of special tokens (2 for BERT).
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], max_len: usize, device: &Device) -> Result<TokenBatch> {
        if texts.is_empty() {
            return Err(Error::invalid("texts", "[]", "a batch needs at least one text"));
        }
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| self.err(e))?;
        let rows = encodings
            .iter()
            .map(|e| truncate(e.get_ids(), e.get_special_tokens_mask(), max_len, &self.name))
            .collect::<Result<Vec<_>>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for row in &rows {
            ids.extend_from_slice(row);
            ids.resize(ids.len() + len - row.len(), self.pad_id);
            mask.extend(std::iter::repeat_n(1u32, row.len()).chain(std::iter::repeat_n(0, len - row.len())));
        }
        Ok(TokenBatch {
            input_ids: Tensor::from_vec(ids, (rows.len(), len), device)?,
            attention_mask: Tensor::from_vec(mask, (rows.len(), len), device)?,
        })
    }

    fn err(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer { file: self.name.clone(), msg: e.to_string() }
    }
}

/// Keeps the leading and trailing special tokens and as many content tokens as fit in `max_len`.
fn truncate(ids: &[u32], special: &[u32], max_len: usize, name: &str) -> Result<Vec<u32>> {
    if ids.len() <= max_len {
        return Ok(ids.to_vec());
    }
    if special.len() != ids.len() {
        return Err(Error::Tokenizer {
            file: name.to_string(),
            msg: "special-token mask and ids differ in length".into(),
        });
    }
    let head = special.iter().take_while(|&&s| s == 1).count();
    let tail = special[head..].iter().rev().take_while(|&&s| s == 1).count();
    if head + tail > max_len {
        return Err(Error::invalid("max_len", max_len, format!("{name} adds {} special tokens", head + tail)));
    }
    let keep = max_len - head - tail;
    let mut out = ids[..head + keep].to_vec();
    out.extend_from_slice(&ids[ids.len() - tail..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_special_tokens() {
        let ids = [101, 5, 6, 7, 8, 102];
        let sp = [1, 0, 0, 0, 0, 1];
        assert_eq!(truncate(&ids, &sp, 10, "t").unwrap(), ids.to_vec());
        assert_eq!(truncate(&ids, &sp, 4, "t").unwrap(), vec![101, 5, 6, 102]);
        assert_eq!(truncate(&ids, &sp, 2, "t").unwrap(), vec![101, 102]);
        assert!(truncate(&ids, &sp, 1, "t").is_err());
    }
}
