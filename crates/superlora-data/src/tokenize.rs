//! Text → `input_ids` and `attention_mask` tensors through a Hugging Face `tokenizer.json`
//! (asset `minilm`: the bert-base-uncased WordPiece vocabulary of all-MiniLM-L6-v2).
//!
//! The file's own truncation and padding settings are switched off; [`TextTokenizer::encode_batch`]
//! applies its own: each text is encoded with its special tokens (`[CLS] … [SEP]`), a text longer
//! than `max_len` loses content tokens from its end (the leading and trailing special tokens are
//! kept), and the batch is padded on the right with the pad id to the longest text in the batch
//! (so `L ≤ max_len`; mask 1 = real token, 0 = padding).
//!
//! [`TextTokenizer::encode_pair_batch`] encodes text pairs through the file's post-processor
//! (`[CLS] a [SEP] b [SEP]` for BERT, `<s> a </s></s> b </s>` for RoBERTa) with `token_type_ids`
//! from it (0 for `a`, 1 for `b` in BERT; all 0 in RoBERTa). A pair longer than `max_len` is cut
//! longest-first: content tokens are removed from the end of the longer text (from `b` when both
//! are as long) until it fits, every special token is kept.

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
    /// Segment of each token: 0 for the first text (and padding), 1 for a pair's second text
    /// where the tokenizer marks it so; all zeros for single texts.
    pub token_type_ids: Tensor,
}

impl TextTokenizer {
    /// The MiniLM tokenizer from the asset cache.
    pub fn minilm() -> Result<Self> {
        Self::from_file(&asset_file(ASSET, "tokenizer.json")?)
    }

    /// Loads a `tokenizer.json`. The pad id is the file's padding `pad_id`, else the id of `[PAD]`
    /// (BERT), else of `<pad>` (RoBERTa).
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
                .or_else(|| inner.token_to_id("<pad>"))
                .ok_or_else(|| Error::format(&name, "no padding settings and no [PAD] or <pad> token"))?,
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
        let types: Vec<Vec<u32>> = rows.iter().map(|r| vec![0; r.len()]).collect();
        self.pad(&rows, &types, device)
    }

    /// Encodes pairs `(a[i], b[i])` (in parallel) into `[B, L]` ids, mask and token type ids on
    /// `device`, cut longest-first to `max_len` as the module says. `a` and `b` must be equally
    /// long and not empty; `max_len` must hold the special tokens (3 for BERT, 4 for RoBERTa).
    pub fn encode_pair_batch<S: AsRef<str>>(
        &self,
        a: &[S],
        b: &[S],
        max_len: usize,
        device: &Device,
    ) -> Result<TokenBatch> {
        if a.is_empty() || a.len() != b.len() {
            return Err(Error::invalid(
                "text pairs",
                format!("{} first and {} second texts", a.len(), b.len()),
                "a batch needs at least one pair and as many second texts as first texts",
            ));
        }
        let inputs: Vec<tokenizers::EncodeInput> =
            a.iter().zip(b).map(|(x, y)| (x.as_ref(), y.as_ref()).into()).collect();
        let encodings = self.inner.encode_batch(inputs, true).map_err(|e| self.err(e))?;
        let mut rows = Vec::with_capacity(encodings.len());
        let mut types = Vec::with_capacity(encodings.len());
        for e in &encodings {
            let (ids, ty) = truncate_pair(
                e.get_ids(),
                e.get_type_ids(),
                e.get_special_tokens_mask(),
                &e.get_sequence_ids(),
                max_len,
                &self.name,
            )?;
            rows.push(ids);
            types.push(ty);
        }
        self.pad(&rows, &types, device)
    }

    /// Pads rows on the right to the longest one.
    fn pad(&self, rows: &[Vec<u32>], types: &[Vec<u32>], device: &Device) -> Result<TokenBatch> {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        let mut type_ids = Vec::with_capacity(rows.len() * len);
        for (row, ty) in rows.iter().zip(types) {
            ids.extend_from_slice(row);
            ids.resize(ids.len() + len - row.len(), self.pad_id);
            mask.extend(std::iter::repeat_n(1u32, row.len()).chain(std::iter::repeat_n(0, len - row.len())));
            type_ids.extend_from_slice(ty);
            type_ids.resize(type_ids.len() + len - ty.len(), 0);
        }
        Ok(TokenBatch {
            input_ids: Tensor::from_vec(ids, (rows.len(), len), device)?,
            attention_mask: Tensor::from_vec(mask, (rows.len(), len), device)?,
            token_type_ids: Tensor::from_vec(type_ids, (rows.len(), len), device)?,
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

/// Longest-first truncation of an encoded pair: keeps every special token and removes content
/// tokens from the end of the longer sequence (the second on a tie) until `max_len` is met.
/// Returns the kept ids and their type ids.
fn truncate_pair(
    ids: &[u32],
    type_ids: &[u32],
    special: &[u32],
    sequence: &[Option<usize>],
    max_len: usize,
    name: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let n = ids.len();
    if type_ids.len() != n || special.len() != n || sequence.len() != n {
        return Err(Error::Tokenizer { file: name.to_string(), msg: "encoding parts differ in length".into() });
    }
    if n <= max_len {
        return Ok((ids.to_vec(), type_ids.to_vec()));
    }
    let content = |s: usize| (0..n).filter(|&i| special[i] == 0 && sequence[i] == Some(s)).count();
    let (n0, n1) = (content(0), content(1));
    let fixed = n - n0 - n1;
    let budget = max_len
        .checked_sub(fixed)
        .ok_or_else(|| Error::invalid("max_len", max_len, format!("{name} adds {fixed} special tokens to a pair")))?;
    // Removing one token at a time from the longer side (the second on a tie) ends here.
    let (k0, k1) = if n0 + n1 <= budget {
        (n0, n1)
    } else if n0.min(n1) * 2 <= budget {
        if n0 <= n1 { (n0, budget - n0) } else { (budget - n1, n1) }
    } else {
        (budget.div_ceil(2), budget / 2)
    };
    let (mut left0, mut left1) = (k0, k1);
    let (mut out, mut out_types) = (Vec::with_capacity(max_len), Vec::with_capacity(max_len));
    for i in 0..n {
        let keep = if special[i] == 1 {
            true
        } else {
            let left = match sequence[i] {
                Some(0) => &mut left0,
                Some(1) => &mut left1,
                _ => continue,
            };
            let keep = *left > 0;
            *left = left.saturating_sub(1);
            keep
        };
        if keep {
            out.push(ids[i]);
            out_types.push(type_ids[i]);
        }
    }
    Ok((out, out_types))
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

    #[test]
    fn pair_truncation_is_longest_first() {
        // [CLS] a1 a2 a3 [SEP] b1 [SEP]
        let ids = [101, 1, 2, 3, 102, 11, 102];
        let ty = [0, 0, 0, 0, 0, 1, 1];
        let sp = [1, 0, 0, 0, 1, 0, 1];
        let seq = [None, Some(0), Some(0), Some(0), None, Some(1), None];
        let cut = |m| truncate_pair(&ids, &ty, &sp, &seq, m, "t").unwrap();
        assert_eq!(cut(7).0, ids.to_vec());
        assert_eq!(cut(6), (vec![101, 1, 2, 102, 11, 102], vec![0, 0, 0, 0, 1, 1]));
        assert_eq!(cut(5).0, vec![101, 1, 102, 11, 102]);
        assert_eq!(cut(4).0, vec![101, 1, 102, 102]);
        assert_eq!(cut(3).0, vec![101, 102, 102]);
        assert!(truncate_pair(&ids, &ty, &sp, &seq, 2, "t").is_err());
    }

    /// A word-level tokenizer.json with the given special tokens and post-processor.
    fn write_tokenizer(dir: &Path, vocab: &[&str], processor: &str) -> std::path::PathBuf {
        let vocab: Vec<String> = vocab.iter().enumerate().map(|(i, w)| format!("\"{w}\": {i}")).collect();
        let json = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": {processor},
            "decoder": null, "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
            vocab.join(", ")
        );
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn bert_style_pairs_get_type_ids_and_roberta_pad_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let bert = r#"{"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}}"#;
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"];
        let tok = TextTokenizer::from_file(&write_tokenizer(dir.path(), &vocab, bert)).unwrap();
        assert_eq!(tok.pad_id(), 0);
        let batch = tok.encode_pair_batch(&["a b c", "d"], &["d", "a"], 6, &Device::Cpu).unwrap();
        let rows = |t: &Tensor| t.to_vec2::<u32>().unwrap();
        assert_eq!(rows(&batch.input_ids), vec![vec![2, 4, 5, 3, 7, 3], vec![2, 7, 3, 4, 3, 0]]);
        assert_eq!(rows(&batch.token_type_ids), vec![vec![0, 0, 0, 0, 1, 1], vec![0, 0, 0, 1, 1, 0]]);
        assert_eq!(rows(&batch.attention_mask), vec![vec![1; 6], vec![1, 1, 1, 1, 1, 0]]);
        let single = tok.encode_batch(&["a b", "c"], 8, &Device::Cpu).unwrap();
        assert_eq!(rows(&single.token_type_ids), vec![vec![0; 4]; 2]);
        assert!(tok.encode_pair_batch(&["a"], &["b", "c"], 8, &Device::Cpu).is_err());
        assert!(tok.encode_pair_batch::<&str>(&[], &[], 8, &Device::Cpu).is_err());
        assert!(tok.encode_pair_batch(&["a"], &["b"], 2, &Device::Cpu).is_err());

        let dir = tempfile::tempdir().unwrap();
        let roberta = r#"{"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
            "trim_offsets": true, "add_prefix_space": false}"#;
        let vocab = ["<s>", "<pad>", "</s>", "[UNK]", "a", "b"];
        let tok = TextTokenizer::from_file(&write_tokenizer(dir.path(), &vocab, roberta)).unwrap();
        assert_eq!(tok.pad_id(), 1);
        let batch = tok.encode_pair_batch(&["a", "a b"], &["b", "b"], 16, &Device::Cpu).unwrap();
        assert_eq!(rows(&batch.input_ids), vec![vec![0, 4, 2, 2, 5, 2, 1], vec![0, 4, 5, 2, 2, 5, 2]]);
        assert_eq!(rows(&batch.token_type_ids), vec![vec![0; 7]; 2]);
    }
}
