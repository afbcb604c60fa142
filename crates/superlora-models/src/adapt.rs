//! Adapter plumbing between a model and a SuperLoRA adapter: the model lists its linear layers in
//! module order ([`LinearInfo`]), targets are chosen among them by name/suffix/regex
//! ([`select`]), and each forward pass receives the ΔW of the targeted layers ([`Deltas`]). A
//! linear whose name has a ΔW runs with W + ΔW, or, for a factored ΔW = P·Qᵀ (weight-wise LoRA
//! in training), with x·Wᵀ + (x·Q)·Pᵀ beside the frozen product; every other weight stays frozen.

use std::collections::HashMap;

use candle_core::Tensor;
use superlora_core::{DeltaTape, LayerShape, LowRankDelta, TapeDeltas};
use superlora_io::TargetPattern;

use crate::{Error, Result};

/// One linear layer a model could adapt: its module path and its weight's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearInfo {
    /// Module path, e.g. `encoder.layer.0.attention.self.query` (the weight is `<path>.weight`).
    pub name: String,
    /// d_out.
    pub rows: usize,
    /// d_in.
    pub cols: usize,
}

/// The targeted linears among `linears` (in the model's module order), as plan shapes.
pub fn select(linears: &[LinearInfo], pattern: &TargetPattern) -> Result<Vec<LayerShape>> {
    let candidates: Vec<LayerShape> = linears.iter().map(|l| LayerShape::new(&l.name, l.rows, l.cols)).collect();
    Ok(superlora_io::select_linears(&candidates, pattern)?)
}

/// The ΔW of one layer: formed, or kept factored.
#[derive(Clone, Debug)]
pub enum LayerDelta {
    /// ΔW, d_out x d_in.
    Dense(Tensor),
    /// ΔW = P·Qᵀ.
    LowRank(LowRankDelta),
}

impl LayerDelta {
    /// Its shape (d_out, d_in).
    fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            LayerDelta::Dense(d) => d.dims2()?,
            LayerDelta::LowRank(lr) => (lr.out.dim(0)?, lr.inp.dim(0)?),
        })
    }

    /// ΔW, formed if it is factored.
    pub fn dense(&self) -> Result<Tensor> {
        Ok(match self {
            LayerDelta::Dense(d) => d.clone(),
            LayerDelta::LowRank(lr) => lr.dense()?,
        })
    }

    fn detach(&self) -> Self {
        match self {
            LayerDelta::Dense(d) => LayerDelta::Dense(d.detach()),
            LayerDelta::LowRank(lr) => LayerDelta::LowRank(LowRankDelta { out: lr.out.detach(), inp: lr.inp.detach() }),
        }
    }
}

/// The ΔW of one forward pass, by module path.
#[derive(Clone, Debug, Default)]
pub struct Deltas {
    map: HashMap<String, LayerDelta>,
}

impl Deltas {
    /// No adapter: every weight frozen as loaded.
    pub fn none() -> Self {
        Deltas::default()
    }

    /// ΔW for the layers `targets` (plan order), `tensors[i]` for `targets[i]`, each checked
    /// against the layer's shape.
    pub fn new(targets: &[LayerShape], tensors: &[Tensor]) -> Result<Self> {
        Self::from_layers(targets, tensors.iter().cloned().map(LayerDelta::Dense).collect())
    }

    /// The ΔW a training tape hands out ([`DeltaTape::layer_deltas`]: formed or factored) for the
    /// layers `targets` (plan order).
    pub fn from_tape(targets: &[LayerShape], tape: &DeltaTape) -> Result<Self> {
        match tape.layer_deltas() {
            TapeDeltas::Dense(d) => Self::new(targets, d),
            TapeDeltas::LowRank(lr) => {
                Self::from_layers(targets, lr.iter().cloned().map(LayerDelta::LowRank).collect())
            }
        }
    }

    pub(crate) fn from_layers(targets: &[LayerShape], layers: Vec<LayerDelta>) -> Result<Self> {
        if targets.len() != layers.len() {
            return Err(Error::Adapter(format!("{} targets but {} ΔW tensors", targets.len(), layers.len())));
        }
        let mut map = HashMap::with_capacity(targets.len());
        for (t, d) in targets.iter().zip(layers) {
            let dims = d.dims()?;
            if dims != (t.rows, t.cols) {
                return Err(Error::Adapter(format!(
                    "ΔW for `{}` has shape {}x{}, the layer is {}x{}",
                    t.name, dims.0, dims.1, t.rows, t.cols
                )));
            }
            if map.insert(t.name.clone(), d).is_some() {
                return Err(Error::Adapter(format!("`{}` is targeted twice", t.name)));
            }
        }
        Ok(Deltas { map })
    }

    /// ΔW of the layer `name` (formed or factored), if it is targeted.
    pub fn get(&self, name: &str) -> Option<&LayerDelta> {
        self.map.get(name)
    }

    /// Number of targeted layers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is adapted.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The same ΔW cut from any gradient graph (for inference, e.g. generation).
    pub fn detached(&self) -> Self {
        Deltas { map: self.map.iter().map(|(k, v)| (k.clone(), v.detach())).collect() }
    }

    /// Checks that every ΔW names a linear of the model (so a typo cannot silently train nothing).
    pub fn check_against(&self, linears: &[LinearInfo]) -> Result<()> {
        for name in self.map.keys() {
            if !linears.iter().any(|l| &l.name == name) {
                return Err(Error::Adapter(format!("ΔW for `{name}`, which is not a linear layer of this model")));
            }
        }
        Ok(())
    }
}

/// A linear layer with frozen W [out, in] and optional frozen bias.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Module path.
    pub name: String,
    /// W.
    pub weight: Tensor,
    /// b.
    pub bias: Option<Tensor>,
    /// Wᵀ [in, out] stored, made from `weight` on first use by the one-node blocks
    /// ([`Linear::weight_t`]).
    weight_t: std::sync::Arc<std::sync::OnceLock<Tensor>>,
}

impl Linear {
    /// A linear named `name` with W = `weight` [out, in] and bias `bias` [out].
    pub fn new(name: &str, weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { name: name.to_string(), weight, bias, weight_t: Default::default() }
    }

    /// Wᵀ [in, out], stored (contiguous): x·Wᵀ then multiplies two row-major matrices, which gemm
    /// runs a few percent faster than reading W transposed (docs/BENCHMARKS.md). Made from
    /// `weight` on first use and kept (one more copy of W in memory).
    pub(crate) fn weight_t(&self) -> Result<Tensor> {
        if let Some(t) = self.weight_t.get() {
            return Ok(t.clone());
        }
        let t = self.weight.detach().t()?.contiguous()?;
        Ok(self.weight_t.get_or_init(|| t).clone())
    }

    /// Loads `<name>.weight` [out, in] and `<name>.bias` [out].
    pub fn load(w: &crate::Weights, name: &str, out_dim: usize, in_dim: usize) -> Result<Self> {
        let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = Some(w.get(&format!("{name}.bias"), &[out_dim])?);
        Ok(Linear::new(name, weight, bias))
    }

    /// Loads `<name>.weight` `[out, in]` and, if `bias`, `<name>.bias` `[out]`.
    pub fn load_with_bias(w: &crate::Weights, name: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        if bias {
            return Self::load(w, name, out_dim, in_dim);
        }
        let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        Ok(Linear::new(name, weight, None))
    }

    /// y = x·(W [+ ΔW])ᵀ + b, with ΔW from `deltas` if this layer is targeted.
    pub fn forward(&self, x: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        match deltas.get(&self.name) {
            Some(LayerDelta::Dense(d)) => crate::ops::adapted_linear(x, &self.weight, d, self.bias.as_ref()),
            Some(LayerDelta::LowRank(lr)) => {
                crate::ops::low_rank_linear(x, &self.weight, &lr.out, &lr.inp, self.bias.as_ref())
            }
            None => crate::ops::frozen_linear(x, &self.weight, self.bias.as_ref()),
        }
    }

    /// `forward` of GELU(h): one op ([`crate::ops::gelu_frozen_linear`]) when this linear is not
    /// adapted, GELU then `forward` when it is.
    pub fn forward_gelu(&self, h: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        match deltas.get(&self.name) {
            None => crate::ops::gelu_frozen_linear(h, &self.weight, self.bias.as_ref()),
            Some(_) => self.forward(&crate::ops::gelu(h)?, deltas),
        }
    }

    /// Its [`LinearInfo`].
    pub fn info(&self) -> LinearInfo {
        let (rows, cols) = self.weight.dims2().unwrap_or((0, 0));
        LinearInfo { name: self.name.clone(), rows, cols }
    }
}
