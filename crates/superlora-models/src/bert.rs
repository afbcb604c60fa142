//! BERT encoder (as in all-MiniLM-L6-v2): word + position + token-type embeddings and LayerNorm,
//! then post-LN blocks x = LN(x + O(attn(x))); x = LN(x + W2·GELU(W1·x)), mean pooling over the
//! attention mask. Same weight names as Hugging Face `BertModel` files (no `bert.` prefix;
//! `bert.`-prefixed files are accepted too). Differs from candle-transformers' BERT only in where
//! weights come from and in using ops that have a backward.
//!
//! Linears in module order per layer: `attention.self.{query,key,value}`,
//! `attention.output.dense`, `intermediate.dense`, `output.dense` (prefix `encoder.layer.<i>.`).
//!
//! Token types: [`Bert::forward`] uses type 0 for every token (as before);
//! [`Bert::forward_with_types`] and the [`TextEncoder`] implementation take optional `[B, L]`
//! token types, as Hugging Face's `token_type_ids`. The post-LN block stack ([`BertStack`]) is
//! shared with RoBERTa.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

use crate::adapt::{Deltas, Linear, LinearInfo};
use crate::block::Block;
use crate::encoder::{TextEncoder, check_text_inputs};
use crate::ops::{Norm, attention, mask_bias};
use crate::{Error, Result, Weights};

/// The subset of a Hugging Face `config.json` the encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    /// Width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Token types.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (erf) is supported.
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// Position embedding type; only `absolute` is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl BertConfig {
    /// Refuses settings the encoder does not implement, naming them.
    pub fn check(&self) -> Result<()> {
        if self.hidden_act != "gelu" {
            return Err(Error::Weights(format!("hidden_act `{}` is not supported (only gelu)", self.hidden_act)));
        }
        if let Some(p) = &self.position_embedding_type
            && p != "absolute"
        {
            return Err(Error::Weights(format!("position_embedding_type `{p}` is not supported (only absolute)")));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Weights("hidden_size is not a multiple of num_attention_heads".into()));
        }
        Ok(())
    }
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

/// One post-LN block's frozen parts: x₁ = norm1(x + output(attention(query x, key x, value x))),
/// y = norm2(x₁ + ffn2(GELU(ffn1 x₁))) (BERT, RoBERTa and DistilBERT under their own names).
pub(crate) struct Layer {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) output: Linear,
    pub(crate) norm1: Norm,
    pub(crate) ffn1: Linear,
    pub(crate) ffn2: Linear,
    pub(crate) norm2: Norm,
}

/// The names of a [`Layer`]'s parts under its block's prefix, in the order query, key, value,
/// attention output, first norm, FFN in, FFN out, second norm.
pub(crate) type LayerNames = [&'static str; 8];

/// BERT's and RoBERTa's names.
const BERT_NAMES: LayerNames = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
];

impl Layer {
    /// Loads one layer of width h and FFN width f: `lin(name, out, in)` and `norm(name)` load a
    /// part by its name in `names`.
    pub(crate) fn load(
        names: &LayerNames,
        (h, f): (usize, usize),
        lin: impl Fn(&str, usize, usize) -> Result<Linear>,
        norm: impl Fn(&str) -> Result<Norm>,
    ) -> Result<Self> {
        let [q, k, v, o, n1, f1, f2, n2] = names;
        Ok(Layer {
            query: lin(q, h, h)?,
            key: lin(k, h, h)?,
            value: lin(v, h, h)?,
            output: lin(o, h, h)?,
            norm1: norm(n1)?,
            ffn1: lin(f1, f, h)?,
            ffn2: lin(f2, h, f)?,
            norm2: norm(n2)?,
        })
    }
}

/// The post-LN block stack of BERT and RoBERTa (`encoder.layer.<i>.*`) and DistilBERT
/// ([`BertStack::from_layers`]), frozen.
pub struct BertStack {
    layers: Vec<Layer>,
    heads: usize,
    eps: f64,
}

impl BertStack {
    /// Loads `<p>encoder.layer.<i>` for `i < config.num_hidden_layers`; linears are named without `p`.
    pub fn load(w: &Weights, p: &str, config: &BertConfig) -> Result<Self> {
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}encoder.layer.{i}");
                let lin = |n: &str, o, inp| -> Result<Linear> {
                    let mut lin = Linear::load(w, &format!("{l}.{n}"), o, inp)?;
                    lin.name = format!("encoder.layer.{i}.{n}");
                    Ok(lin)
                };
                Layer::load(&BERT_NAMES, (h, f), lin, |n| Norm::load(w, &format!("{l}.{n}"), h))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertStack { layers, heads: config.num_attention_heads, eps: config.layer_norm_eps })
    }

    /// A stack of these layers (DistilBERT's, loaded under its own names).
    pub(crate) fn from_layers(layers: Vec<Layer>, heads: usize, eps: f64) -> Self {
        BertStack { layers, heads, eps }
    }

    /// The blocks over embeddings `x` [B, T, H] with padding `mask` [B, T]: each block one node
    /// ([`crate::block`]) on the CPU in f32, [`BertStack::forward_composed`]'s per-op block
    /// otherwise.
    pub fn forward(&self, x: Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return self.forward_composed(x, mask, deltas);
        }
        let bias = mask_bias(mask, x.dtype())?;
        let keys = std::sync::Arc::new(bias.flatten_all()?.to_vec1::<f32>()?);
        let mut x = x;
        for l in &self.layers {
            let block = Block {
                linears: [&l.query, &l.key, &l.value, &l.output, &l.ffn1, &l.ffn2],
                norms: [&l.norm1, &l.norm2],
                scales: None,
            };
            x = match block.forward(&x, Some(keys.clone()), self.heads, self.eps, deltas)? {
                Some(y) => y,
                None => self.layer_composed(l, &x, &bias, deltas)?,
            };
        }
        Ok(x)
    }

    /// One block from per-op nodes (linears, attention, LayerNorm of a sum, GELU + linear): the
    /// path off the CPU or in f64, and the oracle of the one-node block.
    fn layer_composed(&self, l: &Layer, x: &Tensor, bias: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let eps = self.eps;
        let q = l.query.forward(x, deltas)?;
        let k = l.key.forward(x, deltas)?;
        let v = l.value.forward(x, deltas)?;
        let ctx = attention(&q, &k, &v, self.heads, Some(bias))?;
        let x = l.norm1.forward_sum(&l.output.forward(&ctx, deltas)?, x, eps)?;
        let h = l.ffn1.forward(&x, deltas)?;
        l.norm2.forward_sum(&l.ffn2.forward_gelu(&h, deltas)?, &x, eps)
    }

    /// [`BertStack::forward`] with every block built from per-op nodes (its oracle in the tests).
    pub fn forward_composed(&self, x: Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let bias = mask_bias(mask, x.dtype())?;
        let mut x = x;
        for l in &self.layers {
            x = self.layer_composed(l, &x, &bias, deltas)?;
        }
        Ok(x)
    }

    /// Every linear, in module order.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.layers
            .iter()
            .flat_map(|l| [&l.query, &l.key, &l.value, &l.output, &l.ffn1, &l.ffn2])
            .map(Linear::info)
            .collect()
    }

    /// Every base tensor of the blocks.
    pub fn frozen_tensors(&self) -> Vec<Tensor> {
        let mut v = Vec::new();
        for l in &self.layers {
            for lin in [&l.query, &l.key, &l.value, &l.output, &l.ffn1, &l.ffn2] {
                v.push(lin.weight.clone());
                v.extend(lin.bias.iter().cloned());
            }
            for n in [&l.norm1, &l.norm2] {
                v.push(n.gamma.clone());
                v.push(n.beta.clone());
            }
        }
        v
    }
}

/// Reads and parses `config.json` in `dir`, naming the file on failure.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(dir: &Path, what: &str) -> Result<T> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| Error::Weights(format!("{}: {e} (a {what} model needs its config.json)", cfg_path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Weights(format!("{}: not a {what} config: {e}", cfg_path.display())))
}

/// A folder → (folder, `model.safetensors` or the sharded index); a file → (its folder, the file).
pub(crate) fn dir_and_weights(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        let index = path.join("model.safetensors.index.json");
        let file = if index.exists() { index } else { path.join("model.safetensors") };
        (path.to_path_buf(), file)
    } else {
        (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.to_path_buf())
    }
}

/// A BERT encoder with frozen weights.
pub struct Bert {
    /// Its configuration.
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    stack: BertStack,
    /// The weights file.
    pub weights_path: PathBuf,
}

impl Bert {
    /// Loads `model.safetensors` (or the shards of `model.safetensors.index.json`) and
    /// `config.json` from a folder (or a `.safetensors` file with its `config.json` beside it).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (dir, file) = dir_and_weights(path);
        let config: BertConfig = read_config(&dir, "BERT")?;
        config.check()?;
        let weights = Weights::load(&file, device)?;
        Self::from_weights(config, &weights)
    }

    /// Builds the encoder from loaded weights (`bert.`-prefixed names are accepted too).
    pub fn from_weights(config: BertConfig, w: &Weights) -> Result<Self> {
        config.check()?;
        let p = if w.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let h = config.hidden_size;
        let word = w.get(&format!("{p}embeddings.word_embeddings.weight"), &[config.vocab_size, h])?;
        let position =
            w.get(&format!("{p}embeddings.position_embeddings.weight"), &[config.max_position_embeddings, h])?;
        let token_type = w.get(&format!("{p}embeddings.token_type_embeddings.weight"), &[config.type_vocab_size, h])?;
        let embed_norm = Norm::load(w, &format!("{p}embeddings.LayerNorm"), h)?;
        let stack = BertStack::load(w, p, &config)?;
        Ok(Bert { config, word, position, token_type, embed_norm, stack, weights_path: w.path().to_path_buf() })
    }

    /// Every linear layer, in module order (the order adapter plans use).
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.stack.linears()
    }

    /// Every base tensor (all frozen): for tests that check no gradient reaches them.
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

    /// Token states [B, T, H] for `ids` [B, T] (u32) with `mask` [B, T] (1 = token, 0 = padding),
    /// every token of type 0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.forward_with_types(ids, mask, None, deltas)
    }

    /// Token states [B, T, H] with optional token types [B, T] (u32; `None` = all type 0).
    pub fn forward_with_types(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        token_types: Option<&Tensor>,
        deltas: &Deltas,
    ) -> Result<Tensor> {
        let c = &self.config;
        check_text_inputs(ids, mask, token_types, c.vocab_size, c.type_vocab_size, c.max_position_embeddings)?;
        let (b, t) = ids.dims2()?;
        let h = c.hidden_size;
        let words = self.word.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?;
        let pos = self.position.narrow(0, 0, t)?;
        let x = words.broadcast_add(&pos)?;
        let x = match token_types {
            Some(tt) => {
                let tt = tt.to_dtype(DType::U32)?.flatten_all()?;
                (x + self.token_type.index_select(&tt, 0)?.reshape((b, t, h))?)?
            }
            None => x.broadcast_add(&self.token_type.narrow(0, 0, 1)?)?,
        };
        let x = self.embed_norm.forward(&x, c.layer_norm_eps)?;
        self.stack.forward(x, mask, deltas)
    }

    /// Mean of the token states over the mask: the sentence embedding [B, H].
    pub fn embed(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let x = self.forward(ids, mask, deltas)?;
        mean_pool(&x, mask)
    }
}

impl TextEncoder for Bert {
    fn kind(&self) -> &'static str {
        "bert"
    }
    fn weights_path(&self) -> &Path {
        &self.weights_path
    }
    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn uses_token_types(&self) -> bool {
        self.config.type_vocab_size > 1
    }
    fn linears(&self) -> Vec<LinearInfo> {
        Bert::linears(self)
    }
    fn forward(&self, ids: &Tensor, mask: &Tensor, token_types: Option<&Tensor>, deltas: &Deltas) -> Result<Tensor> {
        self.forward_with_types(ids, mask, token_types, deltas)
    }
}

/// Σ_t mask·x / Σ_t mask.
pub fn mean_pool(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(x.dtype())?.unsqueeze(D::Minus1)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    Ok(sum.broadcast_div(&count)?)
}

/// Cosine similarity of two [H] or [1, H] embeddings.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.flatten_all()?.to_dtype(DType::F64)?, b.flatten_all()?.to_dtype(DType::F64)?);
    let dot = (&a * &b)?.sum_all()?.to_scalar::<f64>()?;
    let na = a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    let nb = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    Ok(dot / (na * nb))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use superlora_core::{LayerShape, LowRankDelta};

    use super::*;
    use crate::adapt::LayerDelta;

    /// A seeded value in [-s, s) for index i (no RNG state, so the tests are reproducible).
    fn values(n: usize, seed: u64, s: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
                let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                ((h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * s
            })
            .collect()
    }

    fn tensor(dims: &[usize], seed: u64, s: f32) -> Tensor {
        Tensor::from_vec(values(dims.iter().product(), seed, s), dims, &Device::Cpu).unwrap()
    }

    /// A random two-block stack of width 16 (2 heads), FFN 32.
    fn stack() -> BertStack {
        let (h, f) = (16, 32);
        let mut seed = 0;
        let mut next = || {
            seed += 1;
            seed
        };
        let layers = (0..2)
            .map(|i| {
                let mut lin = |name: &str, o: usize, inp: usize| {
                    let (w, b) = (tensor(&[o, inp], next(), 0.4), tensor(&[o], next(), 0.1));
                    Linear::new(&format!("encoder.layer.{i}.{name}"), w, Some(b))
                };
                let (query, key, value) = (lin("q", h, h), lin("k", h, h), lin("v", h, h));
                let (output, ffn1, ffn2) = (lin("o", h, h), lin("f1", f, h), lin("f2", h, f));
                let mut norm =
                    || Norm { gamma: (tensor(&[h], next(), 0.2) + 1.0).unwrap(), beta: tensor(&[h], next(), 0.1) };
                Layer { query, key, value, output, norm1: norm(), ffn1, ffn2, norm2: norm() }
            })
            .collect();
        BertStack { layers, heads: 2, eps: 1e-12 }
    }

    /// ΔW for some linears of both blocks: factored on q, v and ffn2 of block 0 and ffn2 of block 1,
    /// formed on k, o, ffn1 of block 1 (every variable returned, for the gradients).
    fn deltas(s: &BertStack) -> (Deltas, Vec<Var>) {
        let (mut shapes, mut layers, mut vars) = (Vec::new(), Vec::new(), Vec::new());
        let mut seed = 100;
        let mut var = |dims: &[usize]| {
            seed += 1;
            let v = Var::from_tensor(&tensor(dims, seed, 0.3)).unwrap();
            vars.push(v.clone());
            v.as_tensor().clone()
        };
        for (i, l) in s.layers.iter().enumerate() {
            let all = [&l.query, &l.key, &l.value, &l.output, &l.ffn1, &l.ffn2];
            let factored: &[usize] = if i == 0 { &[0, 2, 5] } else { &[5] };
            let formed: &[usize] = if i == 0 { &[] } else { &[1, 3, 4] };
            for (j, lin) in all.iter().enumerate() {
                let (o, inp) = lin.weight.dims2().unwrap();
                let d = if factored.contains(&j) {
                    LayerDelta::LowRank(LowRankDelta { out: var(&[o, 3]), inp: var(&[inp, 3]) })
                } else if formed.contains(&j) {
                    LayerDelta::Dense(var(&[o, inp]))
                } else {
                    continue;
                };
                shapes.push(LayerShape::new(&lin.name, o, inp));
                layers.push(d);
            }
        }
        (Deltas::from_layers(&shapes, layers).unwrap(), vars)
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn rel(x: &[f32], y: &[f32]) -> f32 {
        let num = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        num / y.iter().map(|b| b.abs()).fold(0f32, f32::max).max(1e-30)
    }

    /// The one-node block against its oracle, the per-op block: the same output and the same
    /// gradient (to rounding) for every adapter tensor and for x, with padding in the batch,
    /// with x trained (a block above another) and not (the first block).
    #[test]
    fn one_node_block_equals_the_per_op_block() {
        let s = stack();
        let (deltas, vars) = deltas(&s);
        let mask = Tensor::from_vec(vec![1u32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], (2, 6), &Device::Cpu).unwrap();
        let c = tensor(&[2, 6, 16], 7, 1.0);
        for x_trained in [true, false] {
            let x = Var::from_tensor(&tensor(&[2, 6, 16], 3, 1.0)).unwrap();
            let input = if x_trained { x.as_tensor().clone() } else { x.as_tensor().detach() };
            let run = |composed: bool| {
                let y = if composed {
                    s.forward_composed(input.clone(), &mask, &deltas).unwrap()
                } else {
                    s.forward(input.clone(), &mask, &deltas).unwrap()
                };
                let grads = y.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
                let g: Vec<Option<Vec<f32>>> =
                    vars.iter().chain([&x]).map(|v| grads.get(v.as_tensor()).map(flat)).collect();
                (flat(&y), g)
            };
            let ((y1, g1), (y0, g0)) = (run(false), run(true));
            // The block multiplies by a stored Wᵀ, the per-op linears read W transposed: the same
            // products, summed by gemm in another blocking (last bits).
            assert!(rel(&y1, &y0) < 1e-6, "forward differs by {} (relative)", rel(&y1, &y0));
            for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
                let is_x = i == vars.len();
                match (a, b) {
                    (Some(a), Some(b)) => {
                        assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| *v != 0.0), "gradient {i}");
                        assert!(rel(a, b) < 1e-5, "gradient {i} differs by {} (relative)", rel(a, b));
                    }
                    (None, None) if is_x && !x_trained => {}
                    _ => panic!("gradient {i}: one path has it, the other not (x trained: {x_trained})"),
                }
            }
        }
    }

    /// No adapter in any block, x trained: ∂x through the one-node blocks equals the per-op one.
    #[test]
    fn one_node_block_without_adapters_passes_the_input_gradient() {
        let s = stack();
        let mask = Tensor::ones((2, 6), DType::U32, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&tensor(&[2, 6, 16], 5, 1.0)).unwrap();
        let c = tensor(&[2, 6, 16], 9, 1.0);
        let grad = |composed: bool| {
            let y = if composed {
                s.forward_composed(x.as_tensor().clone(), &mask, &Deltas::none()).unwrap()
            } else {
                s.forward(x.as_tensor().clone(), &mask, &Deltas::none()).unwrap()
            };
            flat(y.mul(&c).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap())
        };
        let (a, b) = (grad(false), grad(true));
        assert!(rel(&a, &b) < 1e-5, "∂x differs by {}", rel(&a, &b));
    }
}
