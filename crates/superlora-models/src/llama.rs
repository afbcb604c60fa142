//! The Llama decoder (SmolLM2-135M and other Llama-architecture causal LMs), trainable with frozen
//! base weights and W + ΔW on its linears, plus KV-cached generation.
//!
//! Architecture (pre-norm): `h = embed(ids)`; per block `h += o_proj(attn(rope(q_proj(n)),
//! rope(k_proj(n)), v_proj(n)))` with `n = rms_norm(h)`, then `h += down_proj(silu(gate_proj(n)) ⊙
//! up_proj(n))` with `n = rms_norm(h)`; logits = `lm_head(rms_norm(h))`, lm_head being the token
//! embedding when the checkpoint has none (tied). Attention is grouped-query (each of the
//! `num_key_value_heads` K/V heads serves `heads / kv_heads` consecutive query heads), causal, and
//! masks padding keys (right-padded batches only). Rotary embeddings rotate the pairs
//! `(i, i + d/2)` of each head (Hugging Face's `rotate_half`), angle `pos · θ^(-2i/d)`.
//!
//! Weight names are Hugging Face's: `model.embed_tokens.weight`, `model.layers.N.input_layernorm.weight`,
//! `model.layers.N.self_attn.{q,k,v,o}_proj.weight`, `model.layers.N.post_attention_layernorm.weight`,
//! `model.layers.N.mlp.{gate,up,down}_proj.weight`, `model.norm.weight`, `lm_head.weight`; the
//! adapter targets are the seven linears of each block by module path
//! (`model.layers.N.self_attn.q_proj`), as PEFT names them.
//!
//! Sources: a `.gguf` file (llama.cpp names `token_embd`, `blk.N.attn_q`, … are mapped to the names
//! above; every tensor dequantized once to f32) or a Hugging Face folder (`config.json` with
//! `model_type: llama` + safetensors). llama.cpp's converter permutes the rows of q/k so that rotary
//! pairs are interleaved `(2i, 2i + 1)`; the loader un-permutes them, so the model always runs in
//! Hugging Face's layout and a ΔW for `q_proj` means the same thing whichever file it was trained
//! on (and exports to PEFT as is).
//!
//! What differs from upstream (transformers' `LlamaForCausalLM`): no rope scaling, attention or
//! MLP biases (a config asking for them is refused); padding must be on the right; masked scores
//! use −1e9 rather than −∞ (so a fully padded row stays finite); RMSNorm, rotary and the attention
//! softmax are the project's own ops with a backward (candle's fused ones drop gradients) and the
//! frozen weights never get a gradient computed. For training memory, the scale + mask + softmax
//! of attention, silu(gate) ⊙ up, and lm_head + cross-entropy ([`Llama::next_token_loss`], which
//! makes the logits a chunk of rows at a time and never keeps the [B, L, V] tensor) are single ops:
//! a step at batch 8 x 128 tokens with LoRA r=8 on q/v peaked at 2.5 GB RSS (4.0 GB unfused).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};
use serde::Deserialize;

use crate::adapt::{Deltas, Linear, LinearInfo};
use crate::gguf::Gguf;
use crate::ops::{frozen_linear, softmax_last};
use crate::{Error, Result, Weights};

/// The shape of a Llama model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// V.
    pub vocab_size: usize,
    /// Width H.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (divides the query heads).
    pub num_key_value_heads: usize,
    /// Per-head width d (even).
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Rotary base θ.
    pub rope_theta: f64,
    /// Context length: the most positions a sequence (prompt + generated) may use.
    pub max_position_embeddings: usize,
    /// lm_head is the token embedding.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Checks the numbers fit together.
    pub fn check(&self) -> Result<()> {
        let c = self;
        let bad = |m: String| Err(Error::Weights(format!("Llama config: {m}")));
        if c.vocab_size == 0 || c.hidden_size == 0 || c.intermediate_size == 0 || c.num_hidden_layers == 0 {
            return bad(format!("zero size in {c:?}"));
        }
        if c.num_attention_heads == 0 || c.num_key_value_heads == 0 || c.head_dim == 0 {
            return bad(format!("zero heads or head width in {c:?}"));
        }
        if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
            return bad(format!(
                "{} query heads are not a multiple of {} KV heads",
                c.num_attention_heads, c.num_key_value_heads
            ));
        }
        if !c.head_dim.is_multiple_of(2) {
            return bad(format!("head width {} is odd (rotary needs pairs)", c.head_dim));
        }
        if !(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0 && c.rope_theta.is_finite() && c.rope_theta > 1.0) {
            return bad(format!("rms_norm_eps {} / rope_theta {} out of range", c.rms_norm_eps, c.rope_theta));
        }
        if c.max_position_embeddings == 0 {
            return bad("zero context length".into());
        }
        Ok(())
    }

    /// A Hugging Face `config.json` for this shape (f32 weights; `bos` / `eos` token ids if known),
    /// which transformers' `LlamaForCausalLM` and [`Llama::load`] read back.
    pub fn hf_config_json(&self, bos: Option<u32>, eos: Option<u32>) -> serde_json::Value {
        let c = self;
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": "float32",
            "bos_token_id": bos,
            "eos_token_id": eos,
        })
    }

    /// The configuration in a GGUF's `llama.*` metadata (an error if `general.architecture` is
    /// not `llama`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Weights(format!(
                "{}: general.architecture is `{arch}`; only `llama` is supported",
                g.path().display()
            )));
        }
        let heads = g.get_usize("llama.attention.head_count")?;
        let hidden = g.get_usize("llama.embedding_length")?;
        let vocab = match (
            g.get_usize("llama.vocab_size"),
            g.get_strings("tokenizer.ggml.tokens"),
            g.entry("token_embd.weight"),
        ) {
            (Ok(v), _, _) => v,
            (_, Ok(tokens), _) => tokens.len(),
            (_, _, Some(e)) => e.dims[0],
            _ => {
                return Err(Error::Weights(format!(
                    "{}: no vocabulary size (llama.vocab_size, tokens or token_embd)",
                    g.path().display()
                )));
            }
        };
        let head_dim = match g.get_usize("llama.rope.dimension_count") {
            Ok(d) => d,
            Err(_) if heads > 0 => hidden / heads,
            Err(e) => return Err(e),
        };
        let c = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: g.get_usize("llama.feed_forward_length")?,
            num_hidden_layers: g.get_usize("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: g.get_usize("llama.attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rms_norm_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: g.get_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            max_position_embeddings: g.get_usize("llama.context_length")?,
            tie_word_embeddings: g.entry("output.weight").is_none(),
        };
        if g.metadata.contains_key("llama.rope.scaling.type")
            && g.get_str("llama.rope.scaling.type").is_ok_and(|s| s != "none")
        {
            return Err(Error::Weights(format!("{}: rope scaling is not supported", g.path().display())));
        }
        c.check()?;
        Ok(c)
    }
}

/// `config.json` of a Hugging Face Llama folder (the fields this model reads).
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_ctx")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_ctx() -> usize {
    2048
}

impl HfConfig {
    fn resolve(self, path: &Path) -> Result<LlamaConfig> {
        let bad = |m: String| Err(Error::Weights(format!("{}: {m}", path.display())));
        match self.model_type.as_deref() {
            Some("llama") => {}
            other => return bad(format!("model_type is {other:?}; this loader reads `llama`")),
        }
        if self.attention_bias || self.mlp_bias {
            return bad("attention/MLP biases are not supported".into());
        }
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return bad(format!("hidden_act `{act}` is not supported (silu is)"));
        }
        let mut theta = self.rope_theta;
        for scaling in [&self.rope_scaling, &self.rope_parameters].into_iter().flatten() {
            if let Some(t) = scaling.get("rope_theta").and_then(|t| t.as_f64()) {
                theta = Some(t);
            }
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|t| t.as_str());
            if kind.is_some_and(|k| k != "default") {
                return bad(format!("rope scaling {scaling} is not supported"));
            }
        }
        let c = LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: theta.unwrap_or(10_000.0),
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        c.check()?;
        Ok(c)
    }
}

// ---------------------------------------------------------------------------------------------
// Ops with a backward: RMSNorm with frozen γ, rotary embedding.

/// Rows per parallel task of the row kernels.
const ROWS_PER_TASK: usize = 64;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: input must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: f32 only"),
    }
}

/// 1/√(mean(x²) + ε) of one row (f64 accumulation).
fn rms_rstd(x: &[f32], eps: f64) -> f32 {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    (1.0 / (ms + eps).sqrt()) as f32
}

/// RMSNorm with frozen γ: y = x·r·γ, r = 1/√(mean(x²) + ε). Backward: ∂x = r·(γg − x̂·mean(γg·x̂)),
/// x̂ = x·r.
struct RmsNormOp {
    eps: f64,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "superlora-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (x, g) = (f32_slice(xs, xl, "rms norm")?, f32_slice(gs, gl, "rms norm")?);
        let d = g.len();
        if d == 0 || x.len() % d != 0 || xl.shape().dims().last() != Some(&d) {
            candle_core::bail!("rms norm: x {:?} does not end in the {d} of γ", xl.shape());
        }
        let mut out = vec![0f32; x.len()];
        let eps = self.eps;
        out.par_chunks_mut(d * ROWS_PER_TASK).zip(x.par_chunks(d * ROWS_PER_TASK)).for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let r = rms_rstd(x, eps);
                for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
                    *o = gv * (v * r);
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let xg = Tensor::stack(&[x.contiguous()?, grad.contiguous()?], 0)?;
        let dx = xg.apply_op2_no_bwd(&gamma.contiguous()?, &RmsNormGradOp { eps: self.eps })?;
        Ok((Some(dx), None))
    }
}

/// ∂x of RMSNorm; input: x and ∂y stacked as [2, ..], γ.
struct RmsNormGradOp {
    eps: f64,
}

impl CustomOp2 for RmsNormGradOp {
    fn name(&self) -> &'static str {
        "superlora-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (s, gamma) = (f32_slice(ss, sl, "rms norm grad")?, f32_slice(gs, gl, "rms norm grad")?);
        let d = gamma.len();
        let half = s.len() / 2;
        if d == 0 || s.len() % 2 != 0 || half % d != 0 {
            candle_core::bail!("rms norm grad: shapes do not fit");
        }
        let (x, dy) = s.split_at(half);
        let mut out = vec![0f32; half];
        let eps = self.eps;
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK).zip(dy.par_chunks(d * ROWS_PER_TASK)))
            .for_each(|(o, (x, dy))| {
                for ((o, x), dy) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)) {
                    let r = rms_rstd(x, eps);
                    let mut s2 = 0f64;
                    for ((&v, &gv), &g) in x.iter().zip(gamma).zip(dy) {
                        s2 += f64::from(gv * g) * f64::from(v * r);
                    }
                    let m2 = (s2 / d as f64) as f32;
                    for (((o, &v), &gv), &g) in o.iter_mut().zip(x).zip(gamma).zip(dy) {
                        *o = r * (gv * g - v * r * m2);
                    }
                }
            });
        let dims = sl.shape().dims()[1..].to_vec();
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// RMSNorm over the last dim with frozen γ: a fused op with backward on CPU/f32, composed ops
/// elsewhere.
pub fn rms_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op2(&gamma.detach().contiguous()?, RmsNormOp { eps })?);
    }
    rms_norm_reference(x, gamma, eps)
}

/// RMSNorm composed from differentiable ops (the slow twin of [`rms_norm`]).
pub fn rms_norm_reference(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    let r = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&r)?.broadcast_mul(&gamma.detach())?)
}

/// cos and sin of the rotary angles `pos · θ^(-2i/d)` for positions `start..start + len`, each
/// `[len, d/2]`, computed in f32 as transformers does.
pub fn rotary_tables(head_dim: usize, theta: f64, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in start..start + len {
        for &f in &inv {
            let a = f64::from(p as f32 * f);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Rotary embedding of x [B, H, L, d] (pairs (i, i + d/2)); backward rotates by −angle.
struct RopeOp {
    cos: std::sync::Arc<Vec<f32>>,
    sin: std::sync::Arc<Vec<f32>>,
    /// −1 for the inverse rotation.
    sign: f32,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "superlora-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = f32_slice(s, l, "rope")?;
        let dims = l.shape().dims();
        let [_, _, len, d] = dims else { candle_core::bail!("rope: x must be [B, H, L, d], is {:?}", dims) };
        let (len, d) = (*len, *d);
        let half = d / 2;
        if d % 2 != 0 || self.cos.len() != len * half || self.sin.len() != len * half {
            candle_core::bail!("rope: tables for {} angles, x {:?}", self.cos.len(), dims);
        }
        let mut out = vec![0f32; x.len()];
        if d > 0 && len > 0 {
            out.par_chunks_mut(len * d).zip(x.par_chunks(len * d)).for_each(|(o, x)| {
                for (p, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                    let (c, sn) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                    for i in 0..half {
                        let (a, b) = (x[i], x[i + half]);
                        let (cv, sv) = (c[i], self.sign * sn[i]);
                        o[i] = a * cv - b * sv;
                        o[i + half] = b * cv + a * sv;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inv = RopeOp { cos: self.cos.clone(), sin: self.sin.clone(), sign: -self.sign };
        Ok(Some(grad.contiguous()?.apply_op1(inv)?))
    }
}

/// Rotary embedding of x [B, H, L, d] at positions `start..start + L`.
pub fn rope(x: &Tensor, theta: f64, start: usize) -> Result<Tensor> {
    let (_, _, len, d) = x.dims4()?;
    let (cos, sin) = rotary_tables(d, theta, start, len);
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = RopeOp { cos: std::sync::Arc::new(cos), sin: std::sync::Arc::new(sin), sign: 1.0 };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    rope_reference_with(x, &cos, &sin)
}

/// Rotary embedding composed from differentiable ops (the slow twin of [`rope`]).
pub fn rope_reference(x: &Tensor, theta: f64, start: usize) -> Result<Tensor> {
    let (_, _, len, d) = x.dims4()?;
    let (cos, sin) = rotary_tables(d, theta, start, len);
    rope_reference_with(x, &cos, &sin)
}

fn rope_reference_with(x: &Tensor, cos: &[f32], sin: &[f32]) -> Result<Tensor> {
    let (_, _, len, d) = x.dims4()?;
    let half = d / 2;
    let c = Tensor::from_slice(cos, (1, 1, len, half), x.device())?.to_dtype(x.dtype())?;
    let s = Tensor::from_slice(sin, (1, 1, len, half), x.device())?.to_dtype(x.dtype())?;
    let (a, b) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
    let o1 = (a.broadcast_mul(&c)? - b.broadcast_mul(&s)?)?;
    let o2 = (b.broadcast_mul(&c)? + a.broadcast_mul(&s)?)?;
    Ok(Tensor::cat(&[o1, o2], 3)?)
}

/// Next-token cross-entropy per row: logits [N, V], targets [N] (u32) → −log softmax(logits)[t],
/// [N]. One pass per row; backward g·(softmax − onehot). Targets get no gradient.
struct CrossEntropyOp;

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "superlora-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let logits = f32_slice(ls, ll, "cross entropy")?;
        let (n, v) = ll.shape().dims2()?;
        let Some((a, b)) = tl.contiguous_offsets() else { candle_core::bail!("cross entropy: targets not contiguous") };
        let CpuStorage::U32(t) = ts else { candle_core::bail!("cross entropy: targets must be u32") };
        let t = &t[a..b];
        if t.len() != n || t.iter().any(|&x| x as usize >= v) {
            candle_core::bail!(
                "cross entropy: {} targets for {n} rows of {v} classes (or a target out of range)",
                t.len()
            );
        }
        let out: Vec<f32> = logits
            .par_chunks(v.max(1))
            .zip(t.par_iter())
            .map(|(row, &t)| (log_sum_exp(row) - f64::from(row[t as usize])) as f32)
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.unsqueeze(1)?;
        let dl = logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &CrossEntropyGradOp)?;
        Ok((Some(dl.broadcast_mul(&g)?), None))
    }
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s: f64 = row.iter().map(|&x| f64::from(x - m).exp()).sum();
    f64::from(m) + s.ln()
}

/// softmax(logits) − onehot(targets), row by row.
struct CrossEntropyGradOp;

impl CustomOp2 for CrossEntropyGradOp {
    fn name(&self) -> &'static str {
        "superlora-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let logits = f32_slice(ls, ll, "cross entropy grad")?;
        let (_, v) = ll.shape().dims2()?;
        let Some((a, b)) = tl.contiguous_offsets() else { candle_core::bail!("cross entropy grad: targets") };
        let CpuStorage::U32(t) = ts else { candle_core::bail!("cross entropy grad: targets must be u32") };
        let t = &t[a..b];
        let mut out = vec![0f32; logits.len()];
        out.par_chunks_mut(v.max(1)).zip(logits.par_chunks(v.max(1))).zip(t.par_iter()).for_each(|((o, row), &t)| {
            let lse = log_sum_exp(row);
            for (o, &x) in o.iter_mut().zip(row) {
                *o = (f64::from(x) - lse).exp() as f32;
            }
            if let Some(o) = o.get_mut(t as usize) {
                *o -= 1.0;
            }
        });
        Ok((CpuStorage::F32(out), ll.shape().clone()))
    }
}

/// −log p(target) per row: logits `[N, V]` (f32), targets `[N]` u32 → `[N]`. Differentiable in the
/// logits (a fused op on CPU: no [N, V] intermediates are kept for the backward beyond the logits).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.dims() != [n] {
        return Err(Error::Adapter(format!("{} targets for {n} rows of logits", targets.elem_count())));
    }
    let targets = targets.to_dtype(DType::U32)?;
    if n > 0 {
        let m = targets.max(0)?.to_scalar::<u32>()?;
        if m as usize >= v {
            return Err(Error::Adapter(format!("target {m} is outside the vocabulary of {v}")));
        }
    }
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return Ok(logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropyOp)?);
    }
    let m = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((lse - picked)?.squeeze(1)?)
}

/// Softmax over the last dim of `scale · scores + bias`, scores [R, Lk] viewed as `outer` blocks
/// of `groups · L` rows, bias [outer, L, Lk] shared by the `groups` of a block (the attention
/// mask, frozen). One op, so neither the scaled nor the biased scores are kept for the backward:
/// ∂scores = scale · y ⊙ (g − Σ g⊙y).
struct MaskedSoftmaxOp {
    scale: f32,
    groups: usize,
}

impl CustomOp2 for MaskedSoftmaxOp {
    fn name(&self) -> &'static str {
        "superlora-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (s, bias) = (f32_slice(ss, sl, "masked softmax")?, f32_slice(bs, bl, "masked softmax")?);
        let (outer, l, lk) = bl.shape().dims3()?;
        if lk == 0 || s.len() != outer * self.groups * l * lk {
            candle_core::bail!(
                "masked softmax: scores {:?}, bias {:?}, {} groups",
                sl.shape(),
                bl.shape(),
                self.groups
            );
        }
        let mut out = vec![0f32; s.len()];
        let scale = self.scale;
        out.par_chunks_mut(lk).zip(s.par_chunks(lk)).enumerate().for_each(|(r, (o, x))| {
            let (blk, row) = (r / (self.groups * l), r % l);
            let b = &bias[(blk * l + row) * lk..(blk * l + row + 1) * lk];
            let mut m = f32::NEG_INFINITY;
            for ((o, &x), &bv) in o.iter_mut().zip(x).zip(b) {
                *o = x * scale + bv;
                m = m.max(*o);
            }
            let mut sum = 0f32;
            for o in o.iter_mut() {
                *o = (*o - m).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            for o in o.iter_mut() {
                *o *= inv;
            }
        });
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }

    fn bwd(
        &self,
        _s: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGradOp { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// scale · y ⊙ (g − Σ g⊙y), row by row over the last dim.
struct SoftmaxGradOp {
    scale: f32,
}

impl CustomOp2 for SoftmaxGradOp {
    fn name(&self) -> &'static str {
        "superlora-masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (y, g) = (f32_slice(ys, yl, "softmax grad")?, f32_slice(gs, gl, "softmax grad")?);
        let lk = *yl.shape().dims().last().unwrap_or(&0);
        if lk == 0 || y.len() != g.len() {
            candle_core::bail!("softmax grad: shapes do not fit");
        }
        let mut out = vec![0f32; y.len()];
        let scale = self.scale;
        out.par_chunks_mut(lk).zip(y.par_chunks(lk).zip(g.par_chunks(lk))).for_each(|(o, (y, g))| {
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = scale * y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// softmax(scale · scores + bias) over the last dim: scores [outer, groups, .., L, Lk] (any
/// middle dims, `groups` rows blocks of L per outer index), bias [outer, L, Lk] (frozen).
pub fn masked_softmax(scores: &Tensor, scale: f64, bias: &Tensor, groups: usize) -> Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        let op = MaskedSoftmaxOp { scale: scale as f32, groups };
        return Ok(scores.contiguous()?.apply_op2(&bias.detach().contiguous()?, op)?);
    }
    let (outer, l, lk) = bias.dims3()?;
    let s = (scores.reshape((outer, groups, l, lk))? * scale)?;
    let s = s.broadcast_add(&bias.detach().unsqueeze(1)?)?;
    Ok(softmax_last(&s)?.reshape(scores.shape())?)
}

/// silu(a) ⊙ b (SwiGLU) as one op, so silu(a) is not kept for the backward:
/// ∂a = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))), ∂b = g ⊙ silu(a).
struct SwiGluOp;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "superlora-swiglu"
    }

    fn cpu_fwd(
        &self,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (a, b) = (f32_slice(as_, al, "swiglu")?, f32_slice(bs, bl, "swiglu")?);
        if a.len() != b.len() {
            candle_core::bail!("swiglu: {:?} and {:?}", al.shape(), bl.shape());
        }
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(4096).zip(a.par_chunks(4096).zip(b.par_chunks(4096))).for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a * sigmoid(a) * b;
            }
        });
        Ok((CpuStorage::F32(out), al.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let abg = Tensor::stack(&[a.contiguous()?, b.contiguous()?, grad.contiguous()?], 0)?;
        let d = abg.apply_op1_no_bwd(&SwiGluGradOp)?;
        Ok((Some(d.get(0)?), Some(d.get(1)?)))
    }
}

/// [a; b; g] stacked → [∂a; ∂b] stacked.
struct SwiGluGradOp;

impl CustomOp1 for SwiGluGradOp {
    fn name(&self) -> &'static str {
        "superlora-swiglu-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = f32_slice(s, l, "swiglu grad")?;
        let n = x.len() / 3;
        let (a, rest) = x.split_at(n);
        let (b, g) = rest.split_at(n);
        let mut out = vec![0f32; 2 * n];
        let (da, db) = out.split_at_mut(n);
        da.par_chunks_mut(4096)
            .zip(db.par_chunks_mut(4096))
            .zip(a.par_chunks(4096).zip(b.par_chunks(4096)).zip(g.par_chunks(4096)))
            .for_each(|((da, db), ((a, b), g))| {
                for i in 0..a.len() {
                    let s = sigmoid(a[i]);
                    da[i] = g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                    db[i] = g[i] * a[i] * s;
                }
            });
        let mut dims = l.shape().dims().to_vec();
        dims[0] = 2;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// silu(a) ⊙ b: one fused op on CPU/f32, composed ops elsewhere.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == DType::F32 && a.dims() == b.dims() {
        return Ok(a.contiguous()?.apply_op2(&b.contiguous()?, SwiGluOp)?);
    }
    Ok((a.silu()? * b)?)
}

/// Rows per chunk of the fused lm_head + cross-entropy (a [rows, V] block of logits at a time).
const CE_CHUNK: usize = 128;

/// −log softmax(h·Eᵀ)[t] per row, h [N, H], E [V, H] frozen, targets [N]: the logits are made a
/// chunk of rows at a time and never kept (the backward makes them again):
/// ∂h = (softmax − onehot)·E, scaled per row by the incoming gradient.
struct LmHeadCrossEntropyOp {
    e: Tensor,
}

impl LmHeadCrossEntropyOp {
    /// For rows `s..s + r` of h: the chunk's logits as a Vec ([r, V], row-major).
    fn chunk_logits(&self, h: &[f32], hd: usize, s: usize, r: usize) -> candle_core::Result<Vec<f32>> {
        let hc = Tensor::from_slice(&h[s * hd..(s + r) * hd], (r, hd), &Device::Cpu)?;
        hc.matmul(&self.e.t()?)?.flatten_all()?.to_vec1()
    }
}

impl CustomOp2 for LmHeadCrossEntropyOp {
    fn name(&self) -> &'static str {
        "superlora-lm-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let h = f32_slice(hs, hl, "lm head cross entropy")?;
        let (n, hd) = hl.shape().dims2()?;
        let (v, _) = self.e.dims2()?;
        let Some((a, b)) = tl.contiguous_offsets() else { candle_core::bail!("lm head cross entropy: targets") };
        let CpuStorage::U32(t) = ts else { candle_core::bail!("lm head cross entropy: targets must be u32") };
        let t = &t[a..b];
        if t.len() != n || t.iter().any(|&x| x as usize >= v) {
            candle_core::bail!("lm head cross entropy: {} targets for {n} rows over {v} classes", t.len());
        }
        let mut out = Vec::with_capacity(n);
        for s in (0..n).step_by(CE_CHUNK) {
            let r = CE_CHUNK.min(n - s);
            let logits = self.chunk_logits(h, hd, s, r)?;
            let nll: Vec<f32> = logits
                .par_chunks(v)
                .zip(t[s..s + r].par_iter())
                .map(|(row, &t)| (log_sum_exp(row) - f64::from(row[t as usize])) as f32)
                .collect();
            out.extend(nll);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (n, hd) = h.dims2()?;
        let (v, _) = self.e.dims2()?;
        let hv: Vec<f32> = h.detach().flatten_all()?.to_vec1()?;
        let t: Vec<u32> = targets.to_vec1()?;
        let g: Vec<f32> = grad.detach().to_vec1()?;
        let mut parts = Vec::new();
        for s in (0..n).step_by(CE_CHUNK) {
            let r = CE_CHUNK.min(n - s);
            let mut logits = self.chunk_logits(&hv, hd, s, r)?;
            logits.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
                let lse = log_sum_exp(row);
                let gi = g[s + i];
                for x in row.iter_mut() {
                    *x = ((f64::from(*x) - lse).exp() as f32) * gi;
                }
                row[t[s + i] as usize] -= gi;
            });
            parts.push(Tensor::from_vec(logits, (r, v), &Device::Cpu)?.matmul(&self.e)?);
        }
        let dh =
            if parts.is_empty() { Tensor::zeros((0, hd), DType::F32, &Device::Cpu)? } else { Tensor::cat(&parts, 0)? };
        Ok((Some(dh), None))
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

/// One decoder block.
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Cached keys and values of the positions seen so far, per block ([B, KV heads, T, d] each).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Llama causal LM with frozen f32 base weights.
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `None`: tied to `embed`.
    lm_head: Option<Tensor>,
    source: PathBuf,
}

/// Maps a llama.cpp tensor name to its Hugging Face name.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let part = match rest {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{n}.{part}"))
}

/// Undoes llama.cpp's q/k row permutation for `heads` heads: GGUF row `h·d + 2i + j` is Hugging
/// Face row `h·d + j·d/2 + i` (j ∈ {0, 1}, i < d/2).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if heads == 0 || !out.is_multiple_of(2 * heads) {
        return Err(Error::Weights(format!("q/k weight {out}x{inp} does not split into {heads} heads of pairs")));
    }
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?)
}

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    /// The most probable token (the lowest id among ties).
    Greedy,
    /// From softmax(logits / temperature), restricted to the smallest set of most probable
    /// tokens whose probability reaches `top_p`; the draws come from a ChaCha8 stream seeded by
    /// `seed` (`superlora_core::rng`), so the same seed gives the same tokens.
    TopP {
        /// > 0.
        temperature: f64,
        /// In (0, 1].
        top_p: f64,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Options of [`Llama::generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Token ids that end generation (emitted, then stop), e.g. the tokenizer's eos.
    pub stop_tokens: Vec<u32>,
    /// Use the KV cache (true) or recompute the whole sequence for every token (for tests).
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 64, sampling: Sampling::Greedy, stop_tokens: Vec::new(), use_cache: true }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop token was generated.
    StopToken,
    /// The context is full.
    Context,
    /// The callback asked to stop.
    Callback,
}

/// What [`Llama::generate`] produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The new tokens (not the prompt).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Seconds spent on the prompt (prefill, up to the first new token).
    pub prompt_secs: f64,
    /// Seconds spent generating the tokens after the first.
    pub decode_secs: f64,
}

impl Generation {
    /// Tokens per second after the first token (decode speed); 0 with fewer than 2 tokens.
    pub fn tokens_per_sec(&self) -> f64 {
        if self.tokens.len() < 2 || self.decode_secs <= 0.0 {
            return 0.0;
        }
        (self.tokens.len() - 1) as f64 / self.decode_secs
    }
}

/// Picks tokens from logits by a [`Sampling`] rule.
pub struct Sampler {
    sampling: Sampling,
    rng: Option<superlora_core::rng::Rng>,
}

impl Sampler {
    /// A sampler (checks temperature > 0 and top_p in (0, 1]).
    pub fn new(sampling: Sampling) -> Result<Self> {
        let rng = match &sampling {
            Sampling::Greedy => None,
            Sampling::TopP { temperature, top_p, seed } => {
                if !(temperature.is_finite() && *temperature > 0.0) {
                    return Err(Error::Adapter(format!("temperature must be > 0, is {temperature}")));
                }
                if !(top_p.is_finite() && *top_p > 0.0 && *top_p <= 1.0) {
                    return Err(Error::Adapter(format!("top-p must be in (0, 1], is {top_p}")));
                }
                Some(superlora_core::rng::stream(*seed, 0, superlora_core::rng::Purpose::Sampling))
            }
        };
        Ok(Sampler { sampling, rng })
    }

    /// The next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Adapter("no logits to sample from".into()));
        }
        if let Some(bad) = logits.iter().find(|x| x.is_nan()) {
            return Err(Error::Adapter(format!("logits contain {bad}")));
        }
        match (&self.sampling, self.rng.as_mut()) {
            (Sampling::TopP { temperature, top_p, .. }, Some(rng)) => {
                let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut p: Vec<(u32, f64)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (i as u32, (f64::from(x - m) / temperature).exp()))
                    .collect();
                let total: f64 = p.iter().map(|x| x.1).sum();
                // Most probable first; ties by id, so the order is total and deterministic.
                p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut kept = 0;
                let mut mass = 0.0;
                for (_, q) in &p {
                    mass += q / total;
                    kept += 1;
                    if mass >= *top_p {
                        break;
                    }
                }
                let p = &p[..kept];
                let kept_total: f64 = p.iter().map(|x| x.1).sum();
                let u = rng.uniform() * kept_total;
                let mut acc = 0.0;
                for (id, q) in p {
                    acc += q;
                    if u < acc {
                        return Ok(*id);
                    }
                }
                Ok(p[p.len() - 1].0)
            }
            _ => {
                let mut best = 0;
                for (i, &x) in logits.iter().enumerate() {
                    if x > logits[best] {
                        best = i;
                    }
                }
                Ok(best as u32)
            }
        }
    }
}

impl Llama {
    /// Loads a `.gguf` file or a Hugging Face Llama folder (or a `.safetensors` file in one).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Weights(format!("{}: no such file or folder", path.display())));
        }
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Self::load_gguf(path, device);
        }
        let (dir, file) = crate::bert::dir_and_weights(path);
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            Error::Weights(format!("{}: {e} (a Hugging Face Llama folder needs its config.json)", cfg_path.display()))
        })?;
        let hf: HfConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Weights(format!("{}: not a Llama config: {e}", cfg_path.display())))?;
        let config = hf.resolve(&cfg_path)?;
        let weights = Weights::load(&file, device)?;
        Self::from_weights(config, &weights)
    }

    /// Loads a GGUF file: the configuration from its `llama.*` metadata, every tensor
    /// dequantized to f32, q/k un-permuted to Hugging Face's layout.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
        let g = Gguf::parse(&bytes, path)?;
        let config = LlamaConfig::from_gguf(&g)?;
        g.check_types()?;
        let mut map = std::collections::HashMap::new();
        for t in &g.tensors {
            let Some(name) = hf_name(&t.name) else {
                // rope_freqs and other extras a llama.cpp file may carry are not used.
                continue;
            };
            let mut w = g.dequantize(&bytes, &t.name, device)?;
            if name.ends_with("self_attn.q_proj.weight") {
                w = unpermute_qk(&w, config.num_attention_heads)?;
            } else if name.ends_with("self_attn.k_proj.weight") {
                w = unpermute_qk(&w, config.num_key_value_heads)?;
            }
            map.insert(name, w);
        }
        let weights = Weights::from_map(map, &path.display().to_string());
        let mut m = Self::from_weights(config, &weights)?;
        m.source = path.to_path_buf();
        Ok(m)
    }

    /// Builds the model from Hugging Face-named f32 weights.
    pub fn from_weights(config: LlamaConfig, w: &Weights) -> Result<Self> {
        config.check()?;
        let c = &config;
        let (h, f, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let embed = w.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let blocks = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let lin = |n: &str, o, inp| Linear::load_with_bias(w, &format!("{p}.{n}"), o, inp, false);
                Ok(Block {
                    attn_norm: w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                    q: lin("self_attn.q_proj", qd, h)?,
                    k: lin("self_attn.k_proj", kvd, h)?,
                    v: lin("self_attn.v_proj", kvd, h)?,
                    o: lin("self_attn.o_proj", h, qd)?,
                    mlp_norm: w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    gate: lin("mlp.gate_proj", f, h)?,
                    up: lin("mlp.up_proj", f, h)?,
                    down: lin("mlp.down_proj", h, f)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = w.get("model.norm.weight", &[h])?;
        let lm_head = if w.contains("lm_head.weight") {
            Some(w.get("lm_head.weight", &[c.vocab_size, h])?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(Error::Weights(format!(
                "{}: no `lm_head.weight` and tie_word_embeddings is false",
                w.path().display()
            )));
        };
        let mut config = config;
        config.tie_word_embeddings = lm_head.is_none();
        Ok(Llama { config, embed, blocks, norm, lm_head, source: w.path().to_path_buf() })
    }

    /// Every weight under its Hugging Face name (q/k in Hugging Face's layout), with ΔW from
    /// `deltas` added to the targeted linears: what a `model.safetensors` of the merged model
    /// holds (no `lm_head.weight` when it is tied to the embedding).
    pub fn hf_tensors(&self, deltas: &Deltas) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), b.attn_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), b.mlp_norm.clone()));
            for lin in [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down] {
                let w = match deltas.get(&lin.name) {
                    Some(d) => (&lin.weight + d.dense()?.detach())?,
                    None => lin.weight.clone(),
                };
                out.push((format!("{}.weight", lin.name), w));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        Ok(out)
    }

    /// Its configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The file or folder it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The device of its weights.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Every linear layer (the adapter targets), in module order: per block q, k, v, o, gate,
    /// up, down, named `model.layers.N.self_attn.q_proj` etc.
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.blocks.iter().flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]).map(Linear::info).collect()
    }

    /// Every base tensor (all frozen): for tests that check no gradient reaches them.
    pub fn frozen_tensors(&self) -> Vec<Tensor> {
        let mut v = vec![self.embed.clone(), self.norm.clone()];
        v.extend(self.lm_head.clone());
        for b in &self.blocks {
            v.extend([b.attn_norm.clone(), b.mlp_norm.clone()]);
            v.extend([&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down].map(|l| l.weight.clone()));
        }
        v
    }

    /// Number of base parameters.
    pub fn num_parameters(&self) -> usize {
        self.frozen_tensors().iter().map(Tensor::elem_count).sum()
    }

    /// Checks ids [B, L] (each < V), a right-padded 0/1 mask [B, L], and L within the context.
    fn check_inputs(&self, ids: &Tensor, mask: &Tensor, start: usize) -> Result<()> {
        let c = &self.config;
        let room = c.max_position_embeddings.saturating_sub(start);
        crate::encoder::check_text_inputs(ids, mask, None, c.vocab_size, 1, room).map_err(|e| match e {
            Error::Adapter(m) if m.contains("longer than") => Error::Adapter(format!(
                "{} tokens after {start} cached exceed the context of {} tokens",
                ids.dim(1).unwrap_or(0),
                c.max_position_embeddings
            )),
            other => other,
        })?;
        let rows: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
        for (i, r) in rows.iter().enumerate() {
            if r.iter().any(|&m| m > 1) {
                return Err(Error::Adapter(format!("mask row {i} has values other than 0 and 1")));
            }
            if r.windows(2).any(|w| w[0] < w[1]) {
                return Err(Error::Adapter(format!(
                    "mask row {i} is not right-padded (a 1 after a 0); pad on the right"
                )));
            }
        }
        Ok(())
    }

    /// The additive attention bias [B, L, Lk] for queries at `start..start + L` over keys
    /// `0..Lk` (causal, and padding keys from `mask` [B, Lk] if given): 0 keep, −1e9 drop.
    fn attention_bias(&self, b: usize, l: usize, start: usize, mask: Option<&[Vec<u32>]>) -> Result<Tensor> {
        let lk = start + l;
        let mut v = vec![0f32; b * l * lk];
        for bi in 0..b {
            for i in 0..l {
                for j in 0..lk {
                    let pad = mask.is_some_and(|m| m[bi].get(j).copied().unwrap_or(0) == 0);
                    if j > start + i || pad {
                        v[(bi * l + i) * lk + j] = -1e9;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(v, (b, l, lk), self.device())?)
    }

    /// The blocks and the final norm over ids at positions `start..`; keys/values appended to
    /// `cache` when given.
    fn run(
        &self,
        ids: &Tensor,
        bias: &Tensor,
        start: usize,
        mut cache: Option<&mut KvCache>,
        deltas: &Deltas,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, l) = ids.dims2()?;
        let (h, d, heads, kv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let rep = heads / kv;
        let eps = c.rms_norm_eps;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, l, h))?;
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.len() != self.blocks.len()
        {
            cache.layers = vec![None; self.blocks.len()];
        }
        let scale = 1.0 / (d as f64).sqrt();
        for (li, blk) in self.blocks.iter().enumerate() {
            let n = rms_norm(&x, &blk.attn_norm, eps)?;
            let heads_of = |t: Tensor, nh: usize| -> Result<Tensor> {
                Ok(t.reshape((b, l, nh, d))?.transpose(1, 2)?.contiguous()?)
            };
            let q = rope(&heads_of(blk.q.forward(&n, deltas)?, heads)?, c.rope_theta, start)?;
            let mut k = rope(&heads_of(blk.k.forward(&n, deltas)?, kv)?, c.rope_theta, start)?;
            let mut v = heads_of(blk.v.forward(&n, deltas)?, kv)?;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((ck, cv)) = &cache.layers[li] {
                    k = Tensor::cat(&[ck, &k], 2)?;
                    v = Tensor::cat(&[cv, &v], 2)?;
                }
                cache.layers[li] = Some((k.detach(), v.detach()));
            }
            let lk = k.dim(2)?;
            // Query heads grouped by their KV head: [B·KV, rep·L, d] against [B·KV, Lk, d].
            let qg = q.reshape((b * kv, rep * l, d))?;
            let scores = crate::bmm::bmm(&qg, &k.reshape((b * kv, lk, d))?, false, true)?;
            let p = masked_softmax(&scores, scale, bias, kv * rep)?;
            let ctx = crate::bmm::bmm(&p, &v.reshape((b * kv, lk, d))?, false, false)?;
            let ctx = ctx.reshape((b, heads, l, d))?.transpose(1, 2)?.contiguous()?.reshape((b, l, heads * d))?;
            x = (x + blk.o.forward(&ctx, deltas)?)?;
            let n = rms_norm(&x, &blk.mlp_norm, eps)?;
            let g = blk.gate.forward(&n, deltas)?;
            let u = blk.up.forward(&n, deltas)?;
            x = (x + blk.down.forward(&swiglu(&g, &u)?, deltas)?)?;
        }
        if let Some(cache) = cache {
            cache.len = start + l;
        }
        rms_norm(&x, &self.norm, eps)
    }

    /// Last hidden states [B, L, H] (after the final norm) of ids [B, L] (u32) with a right-padded
    /// mask [B, L] (1 token, 0 padding).
    pub fn forward_hidden(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.check_inputs(ids, mask, 0)?;
        deltas.check_against(&self.linears())?;
        let (b, l) = ids.dims2()?;
        let rows: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
        let all = rows.iter().all(|r| r.iter().all(|&m| m == 1));
        let bias = self.attention_bias(b, l, 0, if all { None } else { Some(&rows) })?;
        self.run(&ids.to_dtype(DType::U32)?, &bias, 0, None, deltas)
    }

    /// Hidden states [.., H] → logits [.., V].
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        frozen_linear(hidden, self.lm_head.as_ref().unwrap_or(&self.embed), None)
    }

    /// Logits [B, L, V] of ids [B, L] (u32) with a right-padded mask [B, L].
    pub fn logits(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.lm_head(&self.forward_hidden(ids, mask, deltas)?)
    }

    /// −log p(ids[t+1] | ids[..=t]) for every position, [B, L − 1], differentiable in the
    /// adapter: the lm_head and the cross-entropy are one op that makes the [rows, V] logits a
    /// chunk at a time, so a training step never holds the [B, L, V] logits (or their gradient).
    pub fn next_token_nll(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if l < 2 {
            return Err(Error::Adapter(format!("next-token loss needs at least 2 tokens per row, got {l}")));
        }
        let hidden = self.forward_hidden(ids, mask, deltas)?;
        let h = hidden.reshape((b * l, self.config.hidden_size))?;
        let targets = shifted_targets(ids)?;
        let e = self.lm_head.as_ref().unwrap_or(&self.embed).detach();
        let nll = if h.device().is_cpu() && h.dtype() == DType::F32 {
            h.contiguous()?.apply_op2(&targets, LmHeadCrossEntropyOp { e })?
        } else {
            cross_entropy(&self.lm_head(&h)?, &targets)?
        };
        Ok(nll.reshape((b, l))?.narrow(1, 0, l - 1)?)
    }

    /// Mean next-token cross-entropy over the positions whose token and next token are both real
    /// (mask 1), without materialising the logits (see [`Llama::next_token_nll`]).
    pub fn next_token_loss(&self, ids: &Tensor, mask: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        masked_mean(&self.next_token_nll(ids, mask, deltas)?, mask)
    }

    /// Logits [B, n, V] of `ids` [B, n] following the `cache.len()` positions in `cache` (no
    /// padding), appending their keys and values to it.
    pub fn forward_step(&self, ids: &Tensor, cache: &mut KvCache, deltas: &Deltas) -> Result<Tensor> {
        let start = cache.len;
        let ones = Tensor::ones(ids.dims(), DType::U32, ids.device())?;
        self.check_inputs(ids, &ones, start)?;
        let (b, l) = ids.dims2()?;
        if let Some((k, _)) = cache.layers.first().and_then(|x| x.as_ref())
            && k.dim(0)? != b
        {
            return Err(Error::Adapter(format!("cache holds a batch of {}, the ids {b}", k.dim(0)?)));
        }
        let bias = self.attention_bias(b, l, start, None)?;
        let h = self.run(&ids.to_dtype(DType::U32)?, &bias, start, Some(cache), deltas)?;
        self.lm_head(&h)
    }

    /// Generates up to `opts.max_tokens` tokens after `prompt`, calling `on_token` with each as it
    /// comes (return false to stop). The prompt must leave room in the context for at least one
    /// token. `deltas` are detached first: generation never builds a gradient graph.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        deltas: &Deltas,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let ctx = self.config.max_position_embeddings;
        if prompt.is_empty() {
            return Err(Error::Adapter("empty prompt: give at least one token".into()));
        }
        if prompt.len() >= ctx {
            return Err(Error::Adapter(format!(
                "prompt of {} tokens is longer than the context: the model takes at most {ctx} tokens, prompt and output together",
                prompt.len()
            )));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::Adapter(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let deltas = deltas.detached();
        deltas.check_against(&self.linears())?;
        let mut sampler = Sampler::new(opts.sampling.clone())?;
        let dev = self.device().clone();
        let mut cache = KvCache::new();
        let mut seq: Vec<u32> = prompt.to_vec();
        let mut tokens = Vec::new();
        let t0 = Instant::now();
        let mut t_first = None;
        let mut stop = StopReason::MaxTokens;
        let mut next_input: Vec<u32> = prompt.to_vec();
        while tokens.len() < opts.max_tokens {
            if seq.len() >= ctx {
                stop = StopReason::Context;
                break;
            }
            let logits = if opts.use_cache {
                let ids = Tensor::from_vec(next_input.clone(), (1, next_input.len()), &dev)?;
                self.forward_step(&ids, &mut cache, &deltas)?
            } else {
                let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &dev)?;
                let mask = Tensor::ones((1, seq.len()), DType::U32, &dev)?;
                self.logits(&ids, &mask, &deltas)?
            };
            let last = logits.dim(1)? - 1;
            let row: Vec<f32> = logits.get(0)?.get(last)?.to_dtype(DType::F32)?.to_vec1()?;
            let t = sampler.sample(&row)?;
            if t_first.is_none() {
                t_first = Some(Instant::now());
            }
            tokens.push(t);
            seq.push(t);
            next_input = vec![t];
            let go_on = on_token(t);
            if opts.stop_tokens.contains(&t) {
                stop = StopReason::StopToken;
                break;
            }
            if !go_on {
                stop = StopReason::Callback;
                break;
            }
        }
        let end = Instant::now();
        let first = t_first.unwrap_or(end);
        Ok(Generation {
            tokens,
            stop,
            prompt_secs: (first - t0).as_secs_f64(),
            decode_secs: (end - first).as_secs_f64(),
        })
    }
}

/// log p(ids[t+1] | ids[..=t]) for every position: logits [B, L, V], ids [B, L] → [B, L − 1].
pub fn next_token_log_probs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, l, v) = logits.dims3()?;
    if ids.dims() != [b, l] || l < 2 {
        return Err(Error::Adapter(format!(
            "logits {:?} and ids {:?}: need [B, L, V] and [B, L], L ≥ 2",
            logits.dims(),
            ids.dims()
        )));
    }
    // Every row (the last with a dummy target), so the logits need no copy; then drop the last.
    let x = logits.reshape((b * l, v))?;
    let t = shifted_targets(ids)?;
    Ok(cross_entropy(&x, &t)?.neg()?.reshape((b, l))?.narrow(1, 0, l - 1)?)
}

/// ids [B, L] → [B·L] u32 targets: ids[b, t + 1], and 0 at each row's last position.
fn shifted_targets(ids: &Tensor) -> Result<Tensor> {
    let (b, l) = ids.dims2()?;
    let rows: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
    let mut t = Vec::with_capacity(b * l);
    for r in rows {
        t.extend_from_slice(&r[1..]);
        t.push(0);
    }
    Ok(Tensor::from_vec(t, b * l, ids.device())?)
}

/// Mean of nll [B, L − 1] over positions t where mask[t] and mask[t + 1] are 1.
fn masked_mean(nll: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, l) = mask.dims2()?;
    if nll.dims() != [b, l.saturating_sub(1)] || l < 2 {
        return Err(Error::Adapter(format!("mask {:?} for per-token losses {:?}", mask.dims(), nll.dims())));
    }
    let m = mask.to_dtype(DType::F32)?;
    let w = (m.narrow(1, 1, l - 1)? * m.narrow(1, 0, l - 1)?)?;
    let count = w.sum_all()?.to_scalar::<f32>()?;
    if count == 0.0 {
        return Err(Error::Adapter("no position has a real next token (every row shorter than 2 tokens)".into()));
    }
    Ok(((nll * w)?.sum_all()? / f64::from(count))?)
}

/// Mean next-token cross-entropy over the positions whose token and next token are both real
/// (mask 1): logits [B, L, V], ids and mask [B, L]. Differentiable in the logits.
pub fn next_token_loss(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, l, _) = logits.dims3()?;
    if mask.dims() != [b, l] {
        return Err(Error::Adapter(format!("mask {:?} for logits {:?}", mask.dims(), logits.dims())));
    }
    masked_mean(&next_token_log_probs(logits, ids)?.neg()?, mask)
}
