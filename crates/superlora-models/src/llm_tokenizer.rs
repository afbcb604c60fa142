//! The tokenizer of a decoder LLM, built from a GGUF file's metadata or read from a
//! `tokenizer.json`, and SmolLM2's chat prompt format.
//!
//! From GGUF (`tokenizer.ggml.model = gpt2`, byte-level BPE): the vocabulary is
//! `tokenizer.ggml.tokens` (id = index), the merges `tokenizer.ggml.merges` ("a b" per rule, in
//! rank order); tokens whose `tokenizer.ggml.token_type` is control (3) or user-defined (4) become
//! special added tokens, so `<|im_start|>` in a text is one id; bos/eos/pad come from
//! `tokenizer.ggml.{bos,eos,padding}_token_id`. The pre-tokenizer follows `tokenizer.ggml.pre`:
//! `smollm` (and the other GPT-2-like ones) split every digit apart and then apply GPT-2's
//! byte-level regex, as SmolLM2's own `tokenizer.json` does; `llama3`-style pre-tokenizers use
//! Llama 3's regex. No BOS/EOS is added on encoding (`tokenizer.ggml.add_bos_token` is false for
//! SmolLM2; when true, [`LlmTokenizer::encode`] prepends it). Decoding is byte-level.
//!
//! What differs from upstream: the chat template is not run through a Jinja engine. The
//! template SmolLM2 ships (`tokenizer.chat_template`) is ChatML with a default system message; it
//! is hard-coded in [`chat_prompt`] and checked against transformers' rendering in the tests.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};

/// A causal LM's tokenizer and its special ids.
pub struct LlmTokenizer {
    /// The `tokenizers` tokenizer (encodes special tokens written in the text).
    pub tokenizer: Tokenizer,
    /// Beginning of sequence (SmolLM2: `<|im_start|>`, 1).
    pub bos: Option<u32>,
    /// End of sequence (SmolLM2: `<|im_end|>`, 2): a stop token for generation.
    pub eos: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Whether encoding prepends bos.
    pub add_bos: bool,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Weights(format!("tokenizer: {what}: {e}"))
}

/// Llama 3's pre-tokenizer regex (digits in groups of up to 3).
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl LlmTokenizer {
    /// Builds the tokenizer from a GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Weights(format!(
                "{}: tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) is supported",
                g.path().display()
            )));
        }
        let tokens = g.get_strings("tokenizer.ggml.tokens")?;
        let merges = g.get_strings("tokenizer.ggml.merges")?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Weights(format!("{}: merge `{m}` is not `a b`", g.path().display())))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tok_err("BPE", e))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("gpt2");
        let pre_tok: PreTokenizerWrapper = match pre {
            "llama3" | "llama-bpe" | "smaug-bpe" => {
                let split =
                    Split::new(SplitPattern::Regex(REGEX_LLAMA3.into()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(|e| tok_err("regex", e))?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
            }
            // smollm, gpt2 and the like: each digit apart, then GPT-2's byte-level regex.
            _ => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        };
        tokenizer.with_pre_tokenizer(Some(pre_tok));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        if let Ok(Value::Array(types)) = g.get("tokenizer.ggml.token_type") {
            let specials: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| matches!(t, Value::I32(3 | 4) | Value::U32(3 | 4)))
                .map(|(_, tok)| AddedToken::from(tok.to_string(), true))
                .collect();
            tokenizer.add_special_tokens(specials).map_err(|e| tok_err("special tokens", e))?;
        }
        let id = |key: &str| -> Option<u32> {
            g.get_usize(key).ok().and_then(|i| u32::try_from(i).ok()).filter(|&i| (i as usize) < tokens.len())
        };
        let add_bos = matches!(g.get("tokenizer.ggml.add_bos_token"), Ok(Value::Bool(true)));
        Ok(LlmTokenizer {
            tokenizer,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos,
        })
    }

    /// Reads the tokenizer of a GGUF file.
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        Self::from_gguf(&Gguf::open(path)?)
    }

    /// Reads a `tokenizer.json`; bos/eos/pad from `config.json` beside it when present.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| tok_err(&path.display().to_string(), e))?;
        let cfg: Option<serde_json::Value> = path
            .parent()
            .map(|d| d.join("config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok());
        let id =
            |k: &str| cfg.as_ref().and_then(|c| c.get(k)).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok());
        Ok(LlmTokenizer {
            tokenizer,
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            pad: id("pad_token_id"),
            add_bos: false,
        })
    }

    /// The tokenizer for a model path: a `.gguf` file's metadata, or `tokenizer.json` in a folder
    /// (or beside a weights file).
    pub fn for_model(path: &Path) -> Result<Self> {
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Self::from_gguf_file(path);
        }
        let dir =
            if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() };
        Self::from_tokenizer_json(&dir.join("tokenizer.json"))
    }

    /// Token ids of `text` (special tokens written in the text are recognised; bos prepended only
    /// when the model asks for it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| tok_err("encode", e))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens kept unless `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special).map_err(|e| tok_err("decode", e))
    }

    /// Writes the tokenizer as a `tokenizer.json` (what transformers' fast tokenizer reads).
    pub fn save_json(&self, path: &Path) -> Result<()> {
        self.tokenizer.save(path, false).map_err(|e| tok_err("save", e))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.to_string(), content: content.to_string() }
    }
}

/// SmolLM2's default system message, inserted when the conversation does not start with one.
pub const SMOLLM2_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Renders a conversation in SmolLM2's chat format (ChatML): every message as
/// `<|im_start|>{role}\n{content}<|im_end|>\n`, preceded by a system message with
/// [`SMOLLM2_SYSTEM`] when the first message is not a system one, and followed by
/// `<|im_start|>assistant\n` when `add_generation_prompt`.
///
/// This is SmolLM2's `tokenizer.chat_template` written out by hand, not a Jinja engine: a model
/// with another template needs its own function (the tests check this one against transformers'
/// rendering of the GGUF's template).
pub fn chat_prompt(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    if messages.first().is_none_or(|m| m.role != "system") && !messages.is_empty() {
        s.push_str(&format!("<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"));
    }
    for m in messages {
        s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}
