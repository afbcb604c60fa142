//! Adapter plumbing between a model and a SuperLoRA adapter: the model lists its linear layers in
//! module order ([`LinearInfo`]), targets are chosen among them by name/suffix/regex
//! ([`select`]), and each forward pass receives the ΔW of the targeted layers ([`Deltas`]). A
//! linear whose name has a ΔW runs with W + ΔW; every other weight stays frozen.

use std::collections::HashMap;

use candle_core::Tensor;
use superlora_core::LayerShape;
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

/// The ΔW of one forward pass, by module path.
#[derive(Clone, Debug, Default)]
pub struct Deltas {
    map: HashMap<String, Tensor>,
}

impl Deltas {
    /// No adapter: every weight frozen as loaded.
    pub fn none() -> Self {
        Deltas::default()
    }

    /// ΔW for the layers `targets` (plan order), `tensors[i]` for `targets[i]`, each checked
    /// against the layer's shape.
    pub fn new(targets: &[LayerShape], tensors: &[Tensor]) -> Result<Self> {
        if targets.len() != tensors.len() {
            return Err(Error::Adapter(format!("{} targets but {} ΔW tensors", targets.len(), tensors.len())));
        }
        let mut map = HashMap::with_capacity(targets.len());
        for (t, d) in targets.iter().zip(tensors) {
            if d.dims() != [t.rows, t.cols] {
                return Err(Error::Adapter(format!(
                    "ΔW for `{}` has shape {:?}, the layer is {}x{}",
                    t.name,
                    d.dims(),
                    t.rows,
                    t.cols
                )));
            }
            if map.insert(t.name.clone(), d.clone()).is_some() {
                return Err(Error::Adapter(format!("`{}` is targeted twice", t.name)));
            }
        }
        Ok(Deltas { map })
    }

    /// ΔW of the layer `name`, if it is targeted.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
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
}

impl Linear {
    /// Loads `<name>.weight` [out, in] and `<name>.bias` [out].
    pub fn load(w: &crate::Weights, name: &str, out_dim: usize, in_dim: usize) -> Result<Self> {
        let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = Some(w.get(&format!("{name}.bias"), &[out_dim])?);
        Ok(Linear { name: name.to_string(), weight, bias })
    }

    /// Loads `<name>.weight` `[out, in]` and, if `bias`, `<name>.bias` `[out]`.
    pub fn load_with_bias(w: &crate::Weights, name: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Self> {
        if bias {
            return Self::load(w, name, out_dim, in_dim);
        }
        let weight = w.get(&format!("{name}.weight"), &[out_dim, in_dim])?;
        Ok(Linear { name: name.to_string(), weight, bias: None })
    }

    /// y = x·(W [+ ΔW])ᵀ + b, with ΔW from `deltas` if this layer is targeted.
    pub fn forward(&self, x: &Tensor, deltas: &Deltas) -> Result<Tensor> {
        match deltas.get(&self.name) {
            Some(d) => crate::ops::adapted_linear(x, &self.weight, d, self.bias.as_ref()),
            None => crate::ops::frozen_linear(x, &self.weight, self.bias.as_ref()),
        }
    }

    /// Its [`LinearInfo`].
    pub fn info(&self) -> LinearInfo {
        let (rows, cols) = self.weight.dims2().unwrap_or((0, 0));
        LinearInfo { name: self.name.clone(), rows, cols }
    }
}
