//! AdamW over candle `Var`s, with parameter groups, global-norm gradient clipping and state that
//! can be saved and restored exactly (candle-nn's AdamW keeps its state private).
//!
//! Update (decoupled weight decay, Loshchilov & Hutter), for each parameter p with gradient g at
//! step t and the group's learning rate η (times the schedule's factor):
//!   m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  m̂ = m/(1−β₁ᵗ);  v̂ = v/(1−β₂ᵗ);
//!   p ← p − η·(m̂/(√v̂ + ε) + λ·p).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// Settings of one parameter group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSettings {
    /// Name used in checkpoints and logs (`adapter`, `head`).
    pub name: String,
    /// Peak learning rate η.
    pub lr: f64,
    /// Decoupled weight decay λ.
    pub weight_decay: f64,
}

/// AdamW hyper-parameters shared by all groups.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, max_grad_norm: Some(1.0) }
    }
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

struct Group {
    settings: GroupSettings,
    params: Vec<Param>,
}

/// The optimizer.
pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<Group>,
    step: u64,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The schedule factor applied to every group's learning rate.
    pub lr_factor: f64,
}

impl AdamW {
    /// An optimizer over named parameter groups; names must be unique across groups.
    pub fn new(config: AdamWConfig, groups: Vec<(GroupSettings, Vec<(String, Var)>)>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let groups = groups
            .into_iter()
            .map(|(settings, params)| {
                let params = params
                    .into_iter()
                    .map(|(name, var)| {
                        let full = format!("{}.{name}", settings.name);
                        if !seen.insert(full.clone()) {
                            return Err(Error::Optim(format!("parameter `{full}` appears twice")));
                        }
                        let m = var.as_tensor().zeros_like()?;
                        let v = var.as_tensor().zeros_like()?;
                        Ok(Param { name: full, var, m, v })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Group { settings, params })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { config, groups, step: 0 })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The global L2 norm of the gradients of all parameters (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for g in self.groups.iter().flat_map(|g| &g.params) {
            if let Some(t) = grads.get(g.var.as_tensor()) {
                sq += t.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update with learning rates scaled by `lr_factor`. Returns an error (and changes
    /// nothing) if any gradient is not finite.
    pub fn step(&mut self, grads: &GradStore, lr_factor: f64) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite(format!("gradient norm is {grad_norm}")));
        }
        let clip = match self.config.max_grad_norm {
            Some(max) if grad_norm > max => max / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.config.beta1, self.config.beta2);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for group in &mut self.groups {
            let lr = group.settings.lr * lr_factor;
            let wd = group.settings.weight_decay;
            for p in &mut group.params {
                let Some(g) = grads.get(p.var.as_tensor()) else { continue };
                // candle detaches the gradients of intermediate nodes but not of leaves: a leaf's
                // gradient may still reference its backward graph (for A in A·Bᵀ, the whole ∂X).
                // Moments built from it would chain every past step's graph together, so memory
                // grew with the step count. Detached, the state holds plain values only.
                let g = g.detach();
                let g = if clip == 1.0 { g } else { (g * clip)? };
                p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
                p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let mhat = (&p.m / c1)?;
                let vhat = (&p.v / c2)?;
                let update = (mhat / (vhat.sqrt()? + self.config.eps)?)?;
                let theta = p.var.as_tensor();
                let next =
                    if wd == 0.0 { (theta - (update * lr)?)? } else { (theta - ((update + (theta * wd)?)? * lr)?)? };
                p.var.set(&next)?;
            }
        }
        Ok(StepStats { grad_norm, lr_factor })
    }

    /// The optimizer state as named tensors (`<group>.<param>.m`, `.v`) plus the step count.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut map = HashMap::new();
        for p in self.groups.iter().flat_map(|g| &g.params) {
            map.insert(format!("{}.m", p.name), p.m.clone());
            map.insert(format!("{}.v", p.name), p.v.clone());
        }
        (map, self.step)
    }

    /// Restores state saved by [`Self::state`]; every moment must be present with its shape.
    pub fn load_state(&mut self, map: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in self.groups.iter_mut().flat_map(|g| &mut g.params) {
            for (suffix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{}.{suffix}", p.name);
                let t = map.get(&key).ok_or_else(|| Error::Checkpoint(format!("optimizer state lacks `{key}`")))?;
                if t.dims() != p.var.dims() {
                    return Err(Error::Checkpoint(format!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        p.var.dims()
                    )));
                }
                *slot = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Every parameter with its full name, in group order.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        self.groups.iter().flat_map(|g| g.params.iter().map(|p| (p.name.clone(), p.var.clone()))).collect()
    }
}
