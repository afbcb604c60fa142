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
/// Most classes a classifier file may name.
pub const MAX_CLASSES: usize = 256;
/// Most input pixels a classifier file may take (a 256x256 image, the largest a DiT takes).
pub const MAX_PIXELS: usize = crate::dit::MAX_IMAGE * crate::dit::MAX_IMAGE;

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
        if !(s.lr.is_finite() && s.lr > 0.0) {
            return Err(Error::setting("lr", s.lr, "a finite number > 0"));
        }
        if s.epochs == 0 {
            return Err(Error::setting("epochs", 0, "at least 1"));
        }
        if s.batch_size == 0 {
            return Err(Error::setting("batch-size", 0, "at least 1"));
        }
        if train.h * train.w != self.pixels {
            return Err(Error::setting(
                "image size",
                format!("{}x{}", train.h, train.w),
                format!("the classifier takes {} pixels", self.pixels),
            ));
        }
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

    /// Writes the classifier (atomically) to `path`, with `extra` metadata; weights holding NaN or
    /// an infinity are refused (nothing is written).
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let tensors: HashMap<String, Tensor> =
            self.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
        if let Some((name, bad)) = crate::first_non_finite(tensors.iter().map(|(n, t)| (n.as_str(), t)))? {
            return Err(Error::NonFinite(format!(
                "classifier tensor `{name}` holds {bad} NaN or infinite values; {} not written",
                path.display()
            )));
        }
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("classes".to_string(), serde_json::to_string(&self.classes).map_err(|e| Error::File(e.to_string()))?),
            ("pixels".to_string(), self.pixels.to_string()),
        ]);
        for (k, v) in extra {
            meta.insert((*k).to_string(), v.clone());
        }
        let staged = superlora_train::output::Staged::new(path, false)?;
        superlora_train::checkpoint::save_tensors(staged.path(), &tensors, Some(meta))?;
        Ok(staged.commit()?)
    }

    /// Reads a classifier written by [`Self::save`]. The metadata is checked (class count, pixels
    /// at most [`MAX_PIXELS`]) before anything is allocated, and weights holding NaN or an
    /// infinity are refused.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let meta = read_metadata(path)?;
        let bad = |what: &str| {
            Error::File(format!(
                "{}: {what} (write a classifier with `superlora diffusion classifier --out {}`)",
                path.display(),
                path.display()
            ))
        };
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad("not a classifier file (metadata `format` is not superlora-classifier)"));
        }
        let classes: Vec<String> = meta
            .get("classes")
            .and_then(|c| serde_json::from_str(c).ok())
            .filter(|c: &Vec<String>| !c.is_empty() && c.len() <= MAX_CLASSES)
            .ok_or_else(|| bad(&format!("metadata `classes` is missing or invalid (1..={MAX_CLASSES} names)")))?;
        let pixels: usize = meta
            .get("pixels")
            .and_then(|p| p.parse().ok())
            .filter(|p| (1..=MAX_PIXELS).contains(p))
            .ok_or_else(|| bad(&format!("metadata `pixels` is missing or invalid (1..={MAX_PIXELS})")))?;
        let dims = [pixels, HIDDEN[0], HIDDEN[1], classes.len()];
        let tensors = superlora_train::checkpoint::load_tensors(path, device)?;
        let take = |name: String, shape: &[usize]| -> Result<Var> {
            let t = tensors.get(&name).ok_or_else(|| bad(&format!("tensor `{name}` is missing")))?;
            if t.dims() != shape {
                return Err(bad(&format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.dims())));
            }
            if let Some((_, n)) = crate::first_non_finite([(name.as_str(), t)])? {
                return Err(bad(&format!(
                    "tensor `{name}` holds {n} NaN or infinite values (a diverged or corrupt classifier)"
                )));
            }
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
        };
        let mut layers = Vec::new();
        for k in 0..3 {
            let w = take(format!("fc{}.weight", k + 1), &[dims[k + 1], dims[k]])?;
            let b = take(format!("fc{}.bias", k + 1), &[dims[k + 1]])?;
            layers.push((w, b));
        }
        Ok(Classifier { layers, classes, pixels })
    }
}

/// Whether `path` is a classifier file [`Classifier::save`] wrote (reads only the header).
pub fn is_classifier_file(path: &Path) -> bool {
    read_metadata(path).is_ok_and(|m| m.get("format").map(String::as_str) == Some(FORMAT))
}

/// The `__metadata__` of a safetensors file, reading only its header (at most
/// `superlora_io::header::MAX_HEADER` bytes), not the tensors.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let not = |why: String| Error::File(format!("{}: not a safetensors file: {why}", path.display()));
    let mut f = std::fs::File::open(path).map_err(crate::io_err(path))?;
    let file_len = f.metadata().map_err(crate::io_err(path))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| not(format!("{file_len} bytes, shorter than the 8-byte header length")))?;
    let n = u64::from_le_bytes(len);
    if n > superlora_io::header::MAX_HEADER || n > file_len.saturating_sub(8) {
        return Err(not(format!("header length {n} does not fit the file ({file_len} bytes)")));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(crate::io_err(path))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&buf).map_err(|e| not(format!("the header is not a JSON object: {e}")))?;
    let Some(meta) = header.get("__metadata__") else { return Ok(HashMap::new()) };
    serde_json::from_value(meta.clone()).map_err(|e| not(format!("`__metadata__` is not a map of strings: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        let images: Vec<u8> = (0..n * 4).map(|i| ((i * 37) % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        ImageSet::new(images, labels, 2, 2, vec!["a".into(), "b".into()], "t").unwrap()
    }

    #[test]
    fn a_learning_rate_that_is_not_a_positive_number_is_refused() {
        let dev = Device::Cpu;
        let c = Classifier::new(4, vec!["a".into(), "b".into()], 0, &dev).unwrap();
        let ok = ClassifierSettings { epochs: 1, batch_size: 2, lr: 1e-3, seed: 0 };
        c.fit(&set(4), &ok, &dev, &mut |_, _, _, _| {}).unwrap();
        for (s, name) in [
            (ClassifierSettings { lr: -1.0, ..ok }, "lr"),
            (ClassifierSettings { lr: 0.0, ..ok }, "lr"),
            (ClassifierSettings { lr: f64::NAN, ..ok }, "lr"),
            (ClassifierSettings { lr: f64::INFINITY, ..ok }, "lr"),
            (ClassifierSettings { epochs: 0, ..ok }, "epochs"),
            (ClassifierSettings { batch_size: 0, ..ok }, "batch-size"),
        ] {
            let e = c.fit(&set(4), &s, &dev, &mut |_, _, _, _| {}).unwrap_err();
            assert!(e.is_input() && e.to_string().starts_with(&format!("`{name}`")), "{e}");
        }
    }

    #[test]
    fn a_classifier_file_with_nan_weights_or_huge_sizes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let c = Classifier::new(4, vec!["a".into(), "b".into()], 0, &dev).unwrap();
        let path = dir.path().join("c.safetensors");
        c.save(&path, &[]).unwrap();
        assert!(is_classifier_file(&path));
        let back = Classifier::load(&path, &dev).unwrap();
        assert_eq!((back.pixels, back.classes.len()), (4, 2));

        let mut tensors: HashMap<String, Tensor> =
            c.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
        let meta = |pixels: &str| {
            HashMap::from([
                ("format".to_string(), FORMAT.to_string()),
                ("classes".to_string(), r#"["a","b"]"#.to_string()),
                ("pixels".to_string(), pixels.to_string()),
            ])
        };
        let huge = dir.path().join("huge.safetensors");
        superlora_train::checkpoint::save_tensors(&huge, &tensors, Some(meta("1000000000"))).unwrap();
        let e = Classifier::load(&huge, &dev).err().expect("refused");
        assert!(e.is_input() && e.to_string().contains("`pixels`") && e.to_string().contains("huge"), "{e}");

        tensors.insert("fc3.bias".into(), Tensor::from_vec(vec![f32::NAN, 0.0], 2, &dev).unwrap());
        let nan = dir.path().join("nan.safetensors");
        superlora_train::checkpoint::save_tensors(&nan, &tensors, Some(meta("4"))).unwrap();
        let e = Classifier::load(&nan, &dev).err().expect("refused");
        assert!(e.is_input() && e.to_string().contains("`fc3.bias` holds 1 NaN"), "{e}");
        assert!(e.to_string().contains("nan.safetensors"), "{e}");

        // A text file is not a classifier, and reading its "header" allocates nothing.
        let text = dir.path().join("t.safetensors");
        std::fs::write(&text, "\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{7f} text").unwrap();
        assert!(!is_classifier_file(&text));
        assert!(Classifier::load(&text, &dev).err().expect("refused").is_input());
    }
}
