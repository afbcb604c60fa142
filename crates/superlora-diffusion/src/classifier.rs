//! A small image classifier whose features define the Fréchet distance and whose predictions give
//! the conditional accuracy of generated samples (no external network needed).
//!
//! MLP on x ∈ [−1, 1]^{784}: h₁ = ReLU(W₁x + b₁) (`fc1`, 256), f = ReLU(W₂h₁ + b₂) (`fc2`, 128:
//! the features), logits = W₃f + b₃ (`fc3`, classes). Weights U(±1/√fan_in) from the seeded
//! portable RNG, biases 0; trained with AdamW on cross-entropy (ops with a backward only:
//! matmul, relu, the log-sum-exp cross-entropy of `superlora_train::head`). Saved as safetensors
//! with `format = superlora-classifier` and the class names in the metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use superlora_data::{EpochOrder, ImageSet};
use superlora_train::head::{correct, cross_entropy};
use superlora_train::optim::{AdamW, AdamWConfig, GroupSettings};

use crate::{Error, Result, data, seeds};

/// Hidden widths (fc1, fc2 = feature dimension).
pub const HIDDEN: [usize; 2] = [256, 128];
/// Metadata `format` value.
pub const FORMAT: &str = "superlora-classifier";

/// The classifier.
pub struct Classifier {
    layers: Vec<(Var, Var)>,
    /// Class names, by label.
    pub classes: Vec<String>,
    /// Input pixels.
    pub pixels: usize,
}

/// How to train it.
#[derive(Clone, Copy, Debug)]
pub struct ClassifierSettings {
    /// Passes over the training images.
    pub epochs: u64,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW learning rate (cosine decay to 0).
    pub lr: f64,
    /// Seed of the initial values and the data order.
    pub seed: u64,
}

impl Classifier {
    /// A fresh classifier for `pixels` inputs and `classes`.
    pub fn new(pixels: usize, classes: Vec<String>, seed: u64, device: &Device) -> Result<Self> {
        let dims = [pixels, HIDDEN[0], HIDDEN[1], classes.len()];
        let mut layers = Vec::new();
        for k in 0..3 {
            let (inp, out) = (dims[k], dims[k + 1]);
            let mut rng = seeds::classifier_init(seed, k);
            let bound = 1.0 / (inp as f64).sqrt();
            let w: Vec<f32> = (0..inp * out).map(|_| rng.uniform_sym(bound) as f32).collect();
            layers.push((
                Var::from_tensor(&Tensor::from_vec(w, (out, inp), device)?)?,
                Var::from_tensor(&Tensor::zeros(out, DType::F32, device)?)?,
            ));
        }
        Ok(Classifier { layers, classes, pixels })
    }

    /// Feature dimension.
    pub fn feature_dim(&self) -> usize {
        HIDDEN[1]
    }

    /// Trainable tensors `fc<k>.{weight,bias}`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(k, (w, b))| {
                [(format!("fc{}.weight", k + 1), w.clone()), (format!("fc{}.bias", k + 1), b.clone())]
            })
            .collect()
    }

    /// (features [B, 128], logits [B, classes]) of images `x` [B, pixels] in [−1, 1].
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let lin = |x: &Tensor, (w, b): &(Var, Var)| -> Result<Tensor> {
            Ok(x.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?)
        };
        let h = lin(x, &self.layers[0])?.relu()?;
        let f = lin(&h, &self.layers[1])?.relu()?;
        let logits = lin(&f, &self.layers[2])?;
        Ok((f, logits))
    }

    /// Features and predicted classes of images `x` [n·pixels] in [−1, 1], `batch` at a time.
    pub fn features_and_predictions(&self, x: &[f32], batch: usize, device: &Device) -> Result<(Vec<f32>, Vec<u32>)> {
        let n = x.len() / self.pixels;
        let (mut feats, mut preds) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(batch.max(1)) {
            let end = (start + batch.max(1)).min(n);
            let xb = Tensor::from_vec(
                x[start * self.pixels..end * self.pixels].to_vec(),
                (end - start, self.pixels),
                device,
            )?;
            let (f, logits) = self.forward(&xb)?;
            feats.extend(f.detach().flatten_all()?.to_vec1::<f32>()?);
            preds.extend(logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        Ok((feats, preds))
    }

    /// Accuracy on (at most `limit` images of) `set`.
    pub fn accuracy(&self, set: &ImageSet, limit: usize, device: &Device) -> Result<f64> {
        let idx: Vec<usize> = (0..set.n.min(limit)).collect();
        let (_, preds) = self.features_and_predictions(&data::pixels(set, &idx)?, 500, device)?;
        let right = preds.iter().zip(data::labels(set, &idx)).filter(|(p, l)| **p == *l).count();
        Ok(right as f64 / idx.len().max(1) as f64)
    }

    /// Trains on `train`; `report(step, total, loss, acc)` is called after every step.
    pub fn fit(
        &self,
        train: &ImageSet,
        s: &ClassifierSettings,
        device: &Device,
        report: &mut dyn FnMut(u64, u64, f64, f64),
    ) -> Result<()> {
        let order = EpochOrder::new(train.n, s.seed);
        let per_epoch = order.num_batches(s.batch_size, true) as u64;
        if per_epoch == 0 {
            return Err(Error::setting("batch-size", s.batch_size, format!("larger than the {} images", train.n)));
        }
        let total = per_epoch * s.epochs;
        let settings = GroupSettings { name: "classifier".into(), lr: s.lr, weight_decay: 1e-4 };
        let mut opt = AdamW::new(AdamWConfig::default(), vec![(settings, self.named_vars())])?;
        let mut step = 0u64;
        for epoch in 0..s.epochs {
            for idx in order.batches(epoch, s.batch_size, true)? {
                let x = Tensor::from_vec(data::pixels(train, &idx)?, (idx.len(), self.pixels), device)?;
                let y = Tensor::from_vec(data::labels(train, &idx), idx.len(), device)?;
                let (_, logits) = self.forward(&x)?;
                let loss = cross_entropy(&logits, &y)?;
                let lv = f64::from(loss.to_scalar::<f32>()?);
                if !lv.is_finite() {
                    return Err(Error::NonFinite(format!("classifier loss {lv} at step {step}")));
                }
                let grads = loss.backward()?;
                let factor = superlora_train::schedule::Schedule::Cosine.factor(step, total, total / 50);
                opt.step(&grads, factor)?;
                let acc = correct(&logits.detach(), &y)? as f64 / idx.len() as f64;
                step += 1;
                report(step, total, lv, acc);
            }
        }
        Ok(())
    }

    /// Writes the classifier (atomically) to `path`, with `extra` metadata.
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let tensors: HashMap<String, Tensor> =
            self.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("classes".to_string(), serde_json::to_string(&self.classes).map_err(|e| Error::File(e.to_string()))?),
            ("pixels".to_string(), self.pixels.to_string()),
        ]);
        for (k, v) in extra {
            meta.insert((*k).to_string(), v.clone());
        }
        let tmp = path.with_extension("safetensors.tmp");
        superlora_train::checkpoint::save_tensors(&tmp, &tensors, Some(meta))?;
        std::fs::rename(&tmp, path).map_err(crate::io_err(path))
    }

    /// Reads a classifier written by [`Self::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let meta = read_metadata(path)?;
        let bad = |what: &str| {
            Error::File(format!("{}: {what} (write one with `superlora diffusion classifier`)", path.display()))
        };
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("not a classifier file (metadata `format` is not superlora-classifier)"));
        }
        let classes: Vec<String> = meta
            .get("classes")
            .and_then(|c| serde_json::from_str(c).ok())
            .filter(|c: &Vec<String>| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| bad("metadata `classes` is missing or invalid"))?;
        let pixels: usize = meta
            .get("pixels")
            .and_then(|p| p.parse().ok())
            .filter(|p| *p > 0 && *p <= 1 << 20)
            .ok_or_else(|| bad("metadata `pixels` is missing or invalid"))?;
        let c = Classifier::new(pixels, classes, 0, device)?;
        let tensors = superlora_train::checkpoint::load_tensors(path, device)?;
        for (name, var) in c.named_vars() {
            let t = tensors.get(&name).ok_or_else(|| bad(&format!("tensor `{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(bad(&format!("tensor `{name}` has shape {:?}, expected {:?}", t.dims(), var.dims())));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(c)
    }
}

/// The `__metadata__` of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(crate::io_err(path))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::File(format!("{}: not a safetensors file: {e}", path.display())))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
