//! A small class-conditional diffusion transformer (DiT, Peebles & Xie 2023) for 28x28 grey images.
//!
//! Architecture, for an image x_t ∈ [−1, 1]^{28·28}, a timestep t and a class y (y = `classes` is
//! the null class of classifier-free guidance):
//! - tokens: 4x4 patches → 49 tokens of 16 values → `patch` linear to width D, plus a fixed 2-D
//!   sin-cos position embedding;
//! - conditioning c = MLP(sinusoid(t·1000/T)) + E[y]  (`time.0`, SiLU, `time.2`; `label` [classes+1, D]);
//! - `depth` blocks with adaLN-Zero: (shift₁, scale₁, gate₁, shift₂, scale₂, gate₂) = `ada`(SiLU(c));
//!   x ← x + gate₁·O(Attn(Q, K, V)(LN(x)·(1 + scale₁) + shift₁));
//!   x ← x + gate₂·fc2(GELU(fc1(LN(x)·(1 + scale₂) + shift₂)));
//!   LN without affine parameters, attention with `heads` heads;
//! - output: LN(x)·(1 + scale) + shift with (shift, scale) = `final.ada`(SiLU(c)), `final.linear`
//!   to 16 values per token, un-patched to F ∈ R^{28·28};
//! - F is a v-prediction (Salimans & Ho 2022): v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0, so
//!   ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·F and x̂_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·F. A plain ε-prediction DiT must
//!   copy its input to ~1e-3 at high noise, where x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t divides its error
//!   by √ᾱ_t ≈ 0, and the ε loss gives the x_0 content of high-noise predictions almost no weight:
//!   in a test its guided samples came out as incoherent patches; with v they draw the class.
//!
//! Every linear is `<name>.weight` [out, in] + `<name>.bias` [out]; the attention projections are
//! `blocks.<i>.attn.{query,key,value,output}`, the adaptation targets. `ada` and `final.*` start at
//! zero (adaLN-Zero), so the untrained model predicts v̂ = 0, ε̂ = √(1 − ᾱ_t)·x_t.
//!
//! Two modes: [`Mode::TrainBase`] runs with plain candle ops so every base weight gets a gradient
//! (pretraining); [`Mode::Frozen`] runs every base weight through `superlora_models`' frozen ops
//! (no gradient is computed for them) and the targeted linears with W + ΔW (transfer). All ops have
//! a backward (candle's fused ones silently have none): `superlora_models::ops::{layer_norm, attention, gelu}`
//! (tested against their composed twins there), candle's `silu`, `index_select`, `matmul`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use superlora_models::adapt::{Deltas, LayerDelta, LinearInfo};
use superlora_models::ops;

use crate::schedule::{BetaSchedule, NoiseSchedule};
use crate::{Error, Result, seeds};

/// The model's shape and its diffusion process (saved with the weights).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Image side (square, grey).
    pub image: usize,
    /// Patch side; `image` must be a multiple.
    pub patch: usize,
    /// Width D (a multiple of 4 and of `heads`).
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp: usize,
    /// Number of real classes; the null class is `classes`.
    pub classes: usize,
    /// Width of the sinusoidal timestep features (even).
    pub freq_dim: usize,
    /// Diffusion timesteps T.
    pub timesteps: usize,
    /// β schedule.
    pub schedule: BetaSchedule,
}

impl Default for DitConfig {
    fn default() -> Self {
        DitConfig {
            image: 28,
            patch: 4,
            width: 96,
            depth: 4,
            heads: 4,
            mlp: 192,
            classes: 10,
            freq_dim: 64,
            timesteps: 400,
            schedule: BetaSchedule::Cosine,
        }
    }
}

/// Largest image side (the shipped base is 28).
pub const MAX_IMAGE: usize = 256;
/// Most tokens per image, (image / patch)² (attention is quadratic in them; the shipped base has 49).
pub const MAX_TOKENS: usize = 1024;
/// Largest width D (the shipped base: 96).
pub const MAX_WIDTH: usize = 4096;
/// Most blocks (the shipped base: 4).
pub const MAX_DEPTH: usize = 64;
/// Most attention heads (the shipped base: 4).
pub const MAX_HEADS: usize = 64;
/// Largest MLP hidden width (the shipped base: 192).
pub const MAX_MLP: usize = 16_384;
/// Most real classes (labels are stored as u8; the null class is one more).
pub const MAX_CLASSES: usize = 255;
/// Largest width of the timestep features (the shipped base: 64).
pub const MAX_FREQ_DIM: usize = 4096;
/// Most diffusion timesteps T (the shipped base: 400).
pub const MAX_TIMESTEPS: usize = 100_000;
/// Most parameters of a model (400 MB of f32; the shipped base has 559,504).
pub const MAX_PARAMS: usize = 100_000_000;
/// Most values the activations of one forward pass may hold (an estimate, see
/// [`DitConfig::values_per_image`]): 4 GiB of f32.
pub const MAX_FORWARD_VALUES: usize = 1 << 30;

impl DitConfig {
    /// Checks every field against its rule and upper bound (a base file's metadata is untrusted:
    /// nothing is allocated from a config that fails); the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: usize, rule: String| Err(Error::setting(name, v, rule));
        if !(1..=MAX_IMAGE).contains(&self.image) {
            return bad("image", self.image, format!("the image side must be in 1..={MAX_IMAGE} pixels"));
        }
        if !(1..=self.image).contains(&self.patch) || !self.image.is_multiple_of(self.patch) {
            return bad(
                "patch",
                self.patch,
                format!("the image side {} must be a positive multiple of the patch side", self.image),
            );
        }
        if self.grid() * self.grid() > MAX_TOKENS {
            return bad(
                "patch",
                self.patch,
                format!(
                    "(image / patch)² = {} tokens; at most {MAX_TOKENS} (use a larger patch)",
                    self.grid() * self.grid()
                ),
            );
        }
        if self.width == 0 || !self.width.is_multiple_of(4) || self.width > MAX_WIDTH {
            return bad(
                "width",
                self.width,
                format!("must be a positive multiple of 4 (2-D sin-cos positions), at most {MAX_WIDTH}"),
            );
        }
        if !(1..=MAX_HEADS).contains(&self.heads) || !self.width.is_multiple_of(self.heads) {
            return bad("heads", self.heads, format!("must be in 1..={MAX_HEADS} and divide the width {}", self.width));
        }
        if !(1..=MAX_DEPTH).contains(&self.depth) {
            return bad("depth", self.depth, format!("1..={MAX_DEPTH} blocks"));
        }
        if !(1..=MAX_MLP).contains(&self.mlp) {
            return bad("mlp", self.mlp, format!("1..={MAX_MLP}"));
        }
        if !(1..=MAX_CLASSES).contains(&self.classes) {
            return bad("classes", self.classes, format!("1..={MAX_CLASSES}"));
        }
        if !(2..=MAX_FREQ_DIM).contains(&self.freq_dim) || !self.freq_dim.is_multiple_of(2) {
            return bad("freq_dim", self.freq_dim, format!("an even number in 2..={MAX_FREQ_DIM}"));
        }
        if !(2..=MAX_TIMESTEPS).contains(&self.timesteps) {
            return bad("timesteps", self.timesteps, format!("2..={MAX_TIMESTEPS}"));
        }
        let params = self.num_params();
        if params > MAX_PARAMS {
            return Err(Error::setting(
                "width, depth, mlp",
                format!("{}, {}, {}", self.width, self.depth, self.mlp),
                format!("the model would have {params} parameters; at most {MAX_PARAMS}: make it smaller"),
            ));
        }
        Ok(())
    }

    /// Number of scalars of a model of this config (computed from the shapes, nothing allocated;
    /// meaningful for a config that passes [`Self::validate`]'s field bounds).
    pub fn num_params(&self) -> usize {
        let (d, pp) = (self.width, self.patch * self.patch);
        let linear = |out: usize, inp: usize| out.saturating_mul(inp).saturating_add(out);
        let block = linear(6 * d, d)
            .saturating_add(4usize.saturating_mul(linear(d, d)))
            .saturating_add(linear(self.mlp, d))
            .saturating_add(linear(d, self.mlp));
        linear(d, pp)
            .saturating_add(linear(d, self.freq_dim))
            .saturating_add(linear(d, d))
            .saturating_add(block.saturating_mul(self.depth))
            .saturating_add(linear(2 * d, d))
            .saturating_add(linear(pp, d))
            .saturating_add((self.classes + 1).saturating_mul(d))
    }

    /// An estimate of the values one forward pass holds per image, graph included (per block:
    /// the normalised and modulated inputs, q, k, v, context, output, residuals, the MLP hidden
    /// layer before and after GELU, and the attention scores and weights of every head).
    pub fn values_per_image(&self) -> usize {
        let n = self.grid() * self.grid();
        let per_block = n.saturating_mul(
            (12 * self.width).saturating_add(3 * self.mlp).saturating_add(2usize.saturating_mul(self.heads * n)),
        );
        per_block
            .saturating_mul(self.depth)
            .saturating_add(n.saturating_mul(6 * self.width + 2 * self.patch * self.patch))
    }

    /// Most images one forward pass may take (at least 1) under [`MAX_FORWARD_VALUES`].
    pub fn max_batch(&self) -> usize {
        (MAX_FORWARD_VALUES / self.values_per_image().max(1)).max(1)
    }

    /// Checks that `images` per call, each run as `rows_per_image` rows (2 with guidance), fit
    /// one forward pass; `flag` names the batch setting.
    pub fn check_batch(&self, images: usize, rows_per_image: usize, flag: &str) -> Result<()> {
        let rows = images.saturating_mul(rows_per_image.max(1));
        if rows <= self.max_batch() {
            return Ok(());
        }
        let gib = rows.saturating_mul(self.values_per_image()) as f64 * 4.0 / f64::from(1u32 << 30);
        Err(Error::setting(
            flag,
            images,
            format!(
                "{rows} rows per forward pass of this model would hold about {gib:.1} GiB of activations; \
                 at most {} images per call fit the {} GiB limit: lower it",
                (self.max_batch() / rows_per_image.max(1)).max(1),
                (MAX_FORWARD_VALUES * 4) >> 30
            ),
        ))
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.image * self.image
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image / self.patch
    }

    /// The noise schedule.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.schedule, self.timesteps)
    }
}

/// How the base weights take part in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain ops: every base weight receives a gradient (pretraining).
    TrainBase,
    /// Frozen ops: no gradient is computed for any base weight; ΔW (if any) gets one.
    Frozen,
}

#[derive(Clone, Copy, Debug)]
enum Init {
    Xavier,
    Normal(f64),
    Zero,
}

/// Every tensor of the model, in a fixed order: (name, shape, initialisation).
fn tensor_specs(c: &DitConfig) -> Vec<(String, Vec<usize>, Init)> {
    let d = c.width;
    let pp = c.patch * c.patch;
    let mut v = Vec::new();
    let mut linear = |name: String, out: usize, inp: usize, w: Init, b: Init| {
        v.push((format!("{name}.weight"), vec![out, inp], w));
        v.push((format!("{name}.bias"), vec![out], b));
    };
    linear("patch".into(), d, pp, Init::Xavier, Init::Zero);
    linear("time.0".into(), d, c.freq_dim, Init::Xavier, Init::Zero);
    linear("time.2".into(), d, d, Init::Xavier, Init::Zero);
    for i in 0..c.depth {
        linear(format!("blocks.{i}.ada"), 6 * d, d, Init::Zero, Init::Zero);
        for n in ["query", "key", "value", "output"] {
            linear(format!("blocks.{i}.attn.{n}"), d, d, Init::Xavier, Init::Zero);
        }
        linear(format!("blocks.{i}.mlp.fc1"), c.mlp, d, Init::Xavier, Init::Zero);
        linear(format!("blocks.{i}.mlp.fc2"), d, c.mlp, Init::Xavier, Init::Zero);
    }
    linear("final.ada".into(), 2 * d, d, Init::Zero, Init::Zero);
    linear("final.linear".into(), pp, d, Init::Zero, Init::Zero);
    v.push(("label.weight".into(), vec![c.classes + 1, d], Init::Normal(1.0)));
    v
}

/// The model: its tensors are `Var`s (trainable in [`Mode::TrainBase`], used detached in
/// [`Mode::Frozen`]).
pub struct Dit {
    config: DitConfig,
    alpha_bar: Vec<f64>,
    vars: Vec<(String, Var)>,
    index: HashMap<String, usize>,
    pos: Tensor,
    ones: Tensor,
    zeros: Tensor,
    device: Device,
}

impl Dit {
    /// A fresh model drawn from `seed` (tensor k from its own stream, see [`crate::seeds`]).
    pub fn new(config: DitConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut tensors = HashMap::new();
        for (k, (name, shape, init)) in tensor_specs(&config).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let mut rng = seeds::model_init(seed, k);
            let values: Vec<f32> = match init {
                Init::Zero => vec![0.0; n],
                Init::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
                Init::Xavier => {
                    let bound = (6.0 / (shape[0] + shape[1]) as f64).sqrt();
                    (0..n).map(|_| rng.uniform_sym(bound) as f32).collect()
                }
            };
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors(config, &tensors, device)
    }

    /// The model from named tensors (every tensor of the config, with its shape; extra tensors
    /// are an error).
    pub fn from_tensors(config: DitConfig, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        config.validate()?;
        let specs = tensor_specs(&config);
        let mut vars = Vec::with_capacity(specs.len());
        let mut index = HashMap::new();
        for (name, shape, _) in specs {
            let t = tensors.get(&name).ok_or_else(|| Error::File(format!("no tensor `{name}` in the model")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::File(format!(
                    "tensor `{name}` has shape {:?}, the config needs {shape:?}",
                    t.dims()
                )));
            }
            if let Some((_, bad)) = crate::first_non_finite([(name.as_str(), t)])? {
                return Err(Error::File(format!(
                    "tensor `{name}` holds {bad} NaN or infinite values (a diverged or corrupt model)"
                )));
            }
            index.insert(name.clone(), vars.len());
            vars.push((name, Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?));
        }
        if let Some(extra) = tensors.keys().find(|k| !index.contains_key(*k)) {
            return Err(Error::File(format!("unexpected tensor `{extra}` (not part of this model's config)")));
        }
        let d = config.width;
        let pos = Tensor::from_vec(sincos_2d(d, config.grid()), (config.grid() * config.grid(), d), device)?;
        Ok(Dit {
            alpha_bar: config.noise_schedule()?.alpha_bar,
            ones: Tensor::ones(d, DType::F32, device)?,
            zeros: Tensor::zeros(d, DType::F32, device)?,
            config,
            vars,
            index,
            pos,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DitConfig {
        &self.config
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every tensor with its name, in a fixed order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    /// Number of scalars.
    pub fn num_params(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every tensor by name (for saving).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Every linear layer in module order (the candidates for adapter targets).
    pub fn linears(&self) -> Vec<LinearInfo> {
        self.vars
            .iter()
            .filter_map(|(n, v)| {
                let name = n.strip_suffix(".weight")?;
                if !self.index.contains_key(&format!("{name}.bias")) {
                    return None;
                }
                let (rows, cols) = v.dims2().ok()?;
                Some(LinearInfo { name: name.to_string(), rows, cols })
            })
            .collect()
    }

    fn param(&self, name: &str, mode: Mode) -> Result<Tensor> {
        let i = self.index.get(name).ok_or_else(|| Error::File(format!("no tensor `{name}` in the model")))?;
        let t = self.vars[*i].1.as_tensor();
        Ok(match mode {
            Mode::TrainBase => t.clone(),
            Mode::Frozen => t.detach(),
        })
    }

    /// y = x·(W [+ ΔW])ᵀ + b for the linear `name`; x [.., in] → [.., out].
    fn linear(&self, x: &Tensor, name: &str, deltas: &Deltas, mode: Mode) -> Result<Tensor> {
        let w = self.param(&format!("{name}.weight"), mode)?;
        let b = self.param(&format!("{name}.bias"), mode)?;
        let delta = deltas.get(name);
        Ok(match mode {
            Mode::Frozen => match delta {
                Some(LayerDelta::Dense(d)) => ops::adapted_linear(x, &w, d, Some(&b))?,
                Some(LayerDelta::LowRank(lr)) => ops::low_rank_linear(x, &w, &lr.out, &lr.inp, Some(&b))?,
                None => ops::frozen_linear(x, &w, Some(&b))?,
            },
            Mode::TrainBase => {
                let w = match delta {
                    Some(d) => (w + d.dense()?)?,
                    None => w,
                };
                let dims = x.dims().to_vec();
                let k = dims[dims.len() - 1];
                let x2 = x.contiguous()?.reshape((x.elem_count() / k, k))?;
                let y = x2.matmul(&w.t()?)?.broadcast_add(&b)?;
                let mut out = dims;
                let last = out.len() - 1;
                out[last] = y.dim(1)?;
                y.reshape(out)?
            }
        })
    }

    /// LN without affine parameters over the last dim.
    fn norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::layer_norm(x, &self.ones, &self.zeros, 1e-6)?)
    }

    /// The sinusoidal features of timesteps `t` [B] → [B, freq_dim] (cos half, then sin half).
    pub fn timestep_features(&self, t: &[usize]) -> Result<Tensor> {
        let half = self.config.freq_dim / 2;
        let scale = 1000.0 / self.config.timesteps as f64;
        let mut v = Vec::with_capacity(t.len() * 2 * half);
        for &ti in t {
            let tt = ti as f64 * scale;
            let freq = |k: usize| (-(10_000f64.ln()) * k as f64 / half as f64).exp();
            v.extend((0..half).map(|k| (tt * freq(k)).cos() as f32));
            v.extend((0..half).map(|k| (tt * freq(k)).sin() as f32));
        }
        Ok(Tensor::from_vec(v, (t.len(), 2 * half), &self.device)?)
    }

    /// ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂ for noisy images `x` [B, pixels] at timesteps `t` with classes
    /// `y` (`classes` = null); see [`Self::predict_v`].
    pub fn forward(&self, x: &Tensor, t: &[usize], y: &[u32], deltas: &Deltas, mode: Mode) -> Result<Tensor> {
        let v = self.predict_v(x, t, y, deltas, mode)?;
        let (skip, scale) = self.coefficients(t)?;
        Ok(x.detach().broadcast_mul(&skip)?.add(&v.broadcast_mul(&scale)?)?)
    }

    /// (√(1−ᾱ_t), √ᾱ_t) as [B, 1] columns.
    pub fn coefficients(&self, t: &[usize]) -> Result<(Tensor, Tensor)> {
        let (skip, scale): (Vec<f32>, Vec<f32>) = t
            .iter()
            .map(|&ti| {
                let a = self.alpha_bar[ti.min(self.alpha_bar.len() - 1)];
                ((1.0 - a).sqrt() as f32, a.sqrt() as f32)
            })
            .unzip();
        let b = t.len();
        Ok((Tensor::from_vec(skip, (b, 1), &self.device)?, Tensor::from_vec(scale, (b, 1), &self.device)?))
    }

    /// v̂ for noisy images `x` [B, pixels] at timesteps `t` with classes `y` (`classes` = null).
    /// ΔW from `deltas` for the linears it names (checked against [`Self::linears`] by callers).
    pub fn predict_v(&self, x: &Tensor, t: &[usize], y: &[u32], deltas: &Deltas, mode: Mode) -> Result<Tensor> {
        let c = &self.config;
        let (b, px) = x.dims2()?;
        if px != c.pixels() || t.len() != b || y.len() != b {
            return Err(Error::setting(
                "batch",
                format!("x {:?}, {} timesteps, {} labels", x.dims(), t.len(), y.len()),
                format!("expected [B, {}] with B timesteps and B labels", c.pixels()),
            ));
        }
        if let Some(bad) = y.iter().find(|&&l| l as usize > c.classes) {
            return Err(Error::setting("label", bad, format!("0..={} ({} is the null class)", c.classes, c.classes)));
        }
        if let Some(bad) = t.iter().find(|&&ti| ti >= c.timesteps) {
            return Err(Error::setting("timestep", bad, format!("below T = {}", c.timesteps)));
        }
        let (g, p, d) = (c.grid(), c.patch, c.width);
        // Conditioning c = MLP(sinusoid(t)) + E[y]: [B, D].
        let tf = self.timestep_features(t)?;
        let temb = self.linear(&self.linear(&tf, "time.0", deltas, mode)?.silu()?, "time.2", deltas, mode)?;
        let labels = Tensor::from_vec(y.to_vec(), b, &self.device)?;
        let lemb = self.param("label.weight", mode)?.index_select(&labels, 0)?;
        let cond = (temb + lemb)?.silu()?;
        // Patches: [B, g·p·g·p] → [B, g, p, g, p] → [B, g, g, p, p] → [B, N, p²].
        let tokens = x.reshape((b, g, p, g, p))?.permute((0, 1, 3, 2, 4))?.contiguous()?.reshape((b, g * g, p * p))?;
        let mut h = self.linear(&tokens, "patch", deltas, mode)?.broadcast_add(&self.pos)?;
        for i in 0..c.depth {
            let m = self.linear(&cond, &format!("blocks.{i}.ada"), deltas, mode)?; // [B, 6D]
            let chunk = |k: usize| -> Result<Tensor> { Ok(m.narrow(1, k * d, d)?.unsqueeze(1)?) };
            let (sh1, sc1, g1, sh2, sc2, g2) = (chunk(0)?, chunk(1)?, chunk(2)?, chunk(3)?, chunk(4)?, chunk(5)?);
            let a = modulate(&self.norm(&h)?, &sh1, &sc1)?;
            let q = self.linear(&a, &format!("blocks.{i}.attn.query"), deltas, mode)?;
            let k = self.linear(&a, &format!("blocks.{i}.attn.key"), deltas, mode)?;
            let v = self.linear(&a, &format!("blocks.{i}.attn.value"), deltas, mode)?;
            let ctx = ops::attention(&q, &k, &v, c.heads, None)?;
            let o = self.linear(&ctx, &format!("blocks.{i}.attn.output"), deltas, mode)?;
            h = (h + o.broadcast_mul(&g1)?)?;
            let a = modulate(&self.norm(&h)?, &sh2, &sc2)?;
            let f = ops::gelu(&self.linear(&a, &format!("blocks.{i}.mlp.fc1"), deltas, mode)?)?;
            let f = self.linear(&f, &format!("blocks.{i}.mlp.fc2"), deltas, mode)?;
            h = (h + f.broadcast_mul(&g2)?)?;
        }
        let m = self.linear(&cond, "final.ada", deltas, mode)?;
        let (sh, sc) = (m.narrow(1, 0, d)?.unsqueeze(1)?, m.narrow(1, d, d)?.unsqueeze(1)?);
        let out = self.linear(&modulate(&self.norm(&h)?, &sh, &sc)?, "final.linear", deltas, mode)?; // [B, N, p²]
        Ok(out.reshape((b, g, g, p, p))?.permute((0, 1, 3, 2, 4))?.contiguous()?.reshape((b, c.pixels()))?)
    }
}

/// x·(1 + scale) + shift, with shift and scale [B, 1, D] broadcast over tokens.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

/// DiT's fixed 2-D sin-cos position embedding: [g·g, d], row-major over (row, col); the first
/// d/2 values encode the row, the last d/2 the column, each as d/4 sines then d/4 cosines with
/// frequencies 10000^(−k/(d/4)).
pub fn sincos_2d(d: usize, g: usize) -> Vec<f32> {
    let quarter = d / 4;
    let mut v = Vec::with_capacity(g * g * d);
    let freq = |k: usize| 1.0 / 10_000f64.powf(k as f64 / quarter.max(1) as f64);
    for r in 0..g {
        for c in 0..g {
            for pos in [r, c] {
                v.extend((0..quarter).map(|k| (pos as f64 * freq(k)).sin() as f32));
                v.extend((0..quarter).map(|k| (pos as f64 * freq(k)).cos() as f32));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> DitConfig {
        DitConfig { width: 16, depth: 2, heads: 2, mlp: 24, freq_dim: 8, timesteps: 50, ..DitConfig::default() }
    }

    /// A base file's config is untrusted: `image = 0` used to pass ("0 is a multiple of the
    /// patch") and panic in the sampler; huge sizes aborted on allocation.
    #[test]
    fn every_size_must_be_positive_and_bounded() {
        let ok = DitConfig::default();
        ok.validate().unwrap();
        tiny().validate().unwrap();
        let cases = [
            (DitConfig { image: 0, ..ok.clone() }, "`image` = 0"),
            (DitConfig { image: 100_000, ..ok.clone() }, "`image` = 100000"),
            (DitConfig { image: 114_688, ..ok.clone() }, "`image` = 114688"),
            (DitConfig { depth: 1_000_000_000, ..ok.clone() }, "`depth` = 1000000000"),
            (DitConfig { depth: 0, ..ok.clone() }, "`depth` = 0"),
            (DitConfig { patch: 0, ..ok.clone() }, "`patch` = 0"),
            (DitConfig { patch: 5, ..ok.clone() }, "`patch` = 5"),
            (DitConfig { patch: 56, ..ok.clone() }, "`patch` = 56"),
            (DitConfig { image: 256, patch: 2, ..ok.clone() }, "16384 tokens"),
            (DitConfig { width: 0, ..ok.clone() }, "`width` = 0"),
            (DitConfig { width: 8192, heads: 4, ..ok.clone() }, "`width` = 8192"),
            (DitConfig { heads: 0, ..ok.clone() }, "`heads` = 0"),
            (DitConfig { width: 384, heads: 128, ..ok.clone() }, "`heads` = 128"),
            (DitConfig { heads: 5, ..ok.clone() }, "`heads` = 5"),
            (DitConfig { mlp: 0, ..ok.clone() }, "`mlp` = 0"),
            (DitConfig { mlp: 1 << 30, ..ok.clone() }, "`mlp`"),
            (DitConfig { classes: 0, ..ok.clone() }, "`classes` = 0"),
            (DitConfig { classes: 100_000, ..ok.clone() }, "`classes`"),
            (DitConfig { freq_dim: 0, ..ok.clone() }, "`freq_dim` = 0"),
            (DitConfig { freq_dim: 1 << 30, ..ok.clone() }, "`freq_dim`"),
            (DitConfig { timesteps: 1, ..ok.clone() }, "`timesteps` = 1"),
            (DitConfig { timesteps: usize::MAX, ..ok.clone() }, "`timesteps`"),
            (DitConfig { width: 4096, heads: 4, depth: 64, mlp: 16_384, ..ok.clone() }, "parameters"),
        ];
        for (c, want) in cases {
            let e = c.validate().unwrap_err();
            assert!(e.is_input(), "{e}");
            assert!(e.to_string().contains(want), "{c:?}: {e}");
        }
        // The message states the bound.
        let e = DitConfig { image: 0, ..ok.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("1..=256"), "{e}");
    }

    #[test]
    fn the_parameter_count_is_known_before_building() {
        assert_eq!(DitConfig::default().num_params(), 559_504);
        let m = Dit::new(tiny(), 0, &Device::Cpu).unwrap();
        assert_eq!(tiny().num_params(), m.num_params());
    }

    #[test]
    fn a_batch_beyond_the_activation_budget_is_refused() {
        let c = DitConfig::default();
        assert!(c.max_batch() >= 1000, "{}", c.max_batch());
        c.check_batch(c.max_batch(), 1, "batch-size").unwrap();
        let e = c.check_batch(c.max_batch() + 1, 1, "batch-size").unwrap_err();
        assert!(e.is_input() && e.to_string().contains("`batch-size`") && e.to_string().contains("GiB"), "{e}");
        // Guided sampling runs every image twice.
        assert!(c.check_batch(c.max_batch() / 2 + 1, 2, "batch-size").is_err());
        assert!(c.check_batch(usize::MAX, 2, "batch-size").is_err());
        let big = DitConfig { image: 256, patch: 8, width: 512, heads: 8, depth: 8, mlp: 2048, ..c };
        big.validate().unwrap();
        assert!(big.max_batch() < 64, "{}", big.max_batch());
    }

    #[test]
    fn a_tensor_holding_nan_or_infinity_is_refused() {
        let dev = Device::Cpu;
        let m = Dit::new(tiny(), 0, &dev).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut t = m.tensors();
            let w = t["blocks.1.attn.value.weight"].clone();
            let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[3] = bad;
            t.insert("blocks.1.attn.value.weight".into(), Tensor::from_vec(v, w.dims(), &dev).unwrap());
            let e = Dit::from_tensors(tiny(), &t, &dev).err().expect("refused");
            assert!(e.is_input() && e.to_string().contains("`blocks.1.attn.value.weight` holds 1 NaN"), "{e}");
        }
    }
}
