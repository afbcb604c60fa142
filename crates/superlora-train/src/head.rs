//! The trainable classification head and the loss.
//!
//! logits = x·Wᵀ + b with W [classes, features] ~ U(±1/√features) from the seeded portable RNG and
//! b = 0; the head is counted separately from the adapter. Cross-entropy is composed from ops that
//! have a backward (log-softmax by log-sum-exp, then a gather of the true class).

use candle_core::{D, DType, Device, Tensor, Var};
use superlora_core::rng::{Purpose, stream};

use crate::Result;

/// Group index of the head's random stream (adapters use 0..G).
const HEAD_STREAM: usize = usize::MAX;

/// A linear classifier.
#[derive(Clone, Debug)]
pub struct Head {
    /// W [classes, features].
    pub weight: Var,
    /// b [classes].
    pub bias: Var,
}

impl Head {
    /// A fresh head drawn from `seed`.
    pub fn new(features: usize, classes: usize, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let mut rng = stream(seed, HEAD_STREAM, Purpose::Init);
        let bound = 1.0 / (features as f64).sqrt();
        let w: Vec<f64> = (0..features * classes).map(|_| rng.uniform_sym(bound)).collect();
        let weight = Tensor::from_vec(w, (classes, features), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        let bias = Tensor::zeros(classes, dtype, device)?;
        Ok(Head { weight: Var::from_tensor(&weight)?, bias: Var::from_tensor(&bias)? })
    }

    /// logits [B, classes] of features [B, F].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.as_tensor().t()?)?.broadcast_add(self.bias.as_tensor())?)
    }

    /// The head's tensors by name (`weight`, `bias`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("weight".into(), self.weight.clone()), ("bias".into(), self.bias.clone())]
    }

    /// Trainable scalars.
    pub fn num_params(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

/// Mean cross-entropy of `logits` [B, C] against `labels` [B] (u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok((picked.mean_all()? * -1.0)?)
}

/// Number of rows whose arg-max equals the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    Ok(pred.iter().zip(&labels).filter(|(p, l)| p == l).count())
}
