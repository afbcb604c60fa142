//! AdamW over candle `Var`s, with parameter groups, global-norm gradient clipping and state that
//! can be saved and restored exactly (candle-nn's AdamW keeps its state private).
//!
//! Update (decoupled weight decay, Loshchilov & Hutter), for each parameter p with gradient g at
//! step t and the group's learning rate η (times the schedule's factor):
//!   m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  m̂ = m/(1−β₁ᵗ);  v̂ = v/(1−β₂ᵗ);
//!   p ← p − η·(m̂/(√v̂ + ε) + λ·p).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Storage, Tensor, Var};
use rayon::prelude::*;
use superlora_core::lanes::lane_sum;

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

    /// The global L2 norm of the gradients of all parameters (missing gradients count as zero),
    /// summed in f64 in a fixed order ([`sum_of_squares`]).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for g in self.groups.iter().flat_map(|g| &g.params) {
            if let Some(t) = grads.get(g.var.as_tensor()) {
                sq += sum_of_squares(t)?;
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
                let k = Coefs { clip, b1, b2, c1, c2, eps: self.config.eps, lr, wd };
                let (m, v, next) = match update_fused(p.var.as_tensor(), &p.m, &p.v, &g, &k)? {
                    Some(done) => done,
                    None => update_composed(p.var.as_tensor(), &p.m, &p.v, &g, &k)?,
                };
                (p.m, p.v) = (m, v);
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

/// Σ x² over a tensor, in f64: per chunk of [`CHUNK`] elements a [`lane_sum`] (a fixed order), then
/// the chunks in order. The order depends on neither the thread count
/// nor the CPU, so neither does the clipping factor. Off the CPU (or for other dtypes) candle's
/// `sqr` + `sum_all` in f64.
fn sum_of_squares(t: &Tensor) -> Result<f64> {
    let c = t.contiguous()?;
    let (storage, layout) = c.storage_and_layout();
    let parts: Option<Vec<f64>> = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(x)), Some((a, b))) => Some(
            x[a..b].par_chunks(CHUNK).map(|ch| lane_sum(ch, ch, ch, |v, _, _| f64::from(v) * f64::from(v))).collect(),
        ),
        (Storage::Cpu(CpuStorage::F64(x)), Some((a, b))) => {
            Some(x[a..b].par_chunks(CHUNK).map(|ch| lane_sum(ch, ch, ch, |v, _, _| v * v)).collect())
        }
        _ => None,
    };
    drop(storage);
    Ok(match parts {
        Some(parts) => parts.iter().sum(),
        None => t.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
    })
}

/// The numbers of one parameter's update, as the f64 values the composed ops receive.
#[derive(Clone, Copy, Debug)]
struct Coefs {
    clip: f64,
    b1: f64,
    b2: f64,
    c1: f64,
    c2: f64,
    eps: f64,
    lr: f64,
    wd: f64,
}

/// One parameter's update from candle's ops, one pass each (the oracle of [`update_fused`]):
/// (m, v, p) after the step.
fn update_composed(theta: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, k: &Coefs) -> Result<(Tensor, Tensor, Tensor)> {
    let g = if k.clip == 1.0 { g.clone() } else { (g * k.clip)? };
    let m = ((m * k.b1)? + (&g * (1.0 - k.b1))?)?;
    let v = ((v * k.b2)? + (g.sqr()? * (1.0 - k.b2))?)?;
    let mhat = (&m / k.c1)?;
    let vhat = (&v / k.c2)?;
    let update = (mhat / (vhat.sqrt()? + k.eps)?)?;
    let next = if k.wd == 0.0 { (theta - (update * k.lr)?)? } else { (theta - ((update + (theta * k.wd)?)? * k.lr)?)? };
    Ok((m, v, next))
}

/// [`update_composed`] in one pass over memory, on both cores: each element goes through the
/// same f32 (or f64) operations in the same order, constants rounded as candle rounds them
/// (`x * c` is candle's affine `x·c + 0`, `x / c` is `x·(1/c) + 0`), so the same bits (tested).
/// `None` where it does not apply (not the CPU, not f32/f64, dtypes or shapes that differ).
fn update_fused(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    k: &Coefs,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let all = [theta, m, v, g];
    if !theta.device().is_cpu() || all.iter().any(|t| t.dtype() != theta.dtype() || t.dims() != theta.dims()) {
        return Ok(None);
    }
    let (theta_c, m_c, v_c, g_c) = (theta.contiguous()?, m.contiguous()?, v.contiguous()?, g.contiguous()?);
    let guards = [&theta_c, &m_c, &v_c, &g_c].map(|t| t.storage_and_layout());
    let offsets: Vec<(usize, usize)> = guards.iter().filter_map(|(_, l)| l.contiguous_offsets()).collect();
    if offsets.len() != 4 {
        return Ok(None);
    }
    let slice = |i: usize| -> Option<Slice<'_>> {
        let (a, b) = offsets[i];
        match &*guards[i].0 {
            Storage::Cpu(CpuStorage::F32(x)) => Some(Slice::F32(&x[a..b])),
            Storage::Cpu(CpuStorage::F64(x)) => Some(Slice::F64(&x[a..b])),
            _ => None,
        }
    };
    let (dims, dev) = (theta.dims(), theta.device());
    let out = match (slice(0), slice(1), slice(2), slice(3)) {
        (Some(Slice::F32(p)), Some(Slice::F32(m)), Some(Slice::F32(v)), Some(Slice::F32(g))) => {
            let (m, v, p) = adamw_kernel(p, m, v, g, k);
            (Tensor::from_vec(m, dims, dev)?, Tensor::from_vec(v, dims, dev)?, Tensor::from_vec(p, dims, dev)?)
        }
        (Some(Slice::F64(p)), Some(Slice::F64(m)), Some(Slice::F64(v)), Some(Slice::F64(g))) => {
            let (m, v, p) = adamw_kernel(p, m, v, g, k);
            (Tensor::from_vec(m, dims, dev)?, Tensor::from_vec(v, dims, dev)?, Tensor::from_vec(p, dims, dev)?)
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

enum Slice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// The element types of [`adamw_kernel`]: candle's rounding of an f64 constant, and √.
trait Elem:
    Copy
    + Send
    + Sync
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn root(self) -> Self;
}

impl Elem for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn root(self) -> f32 {
        self.sqrt()
    }
}

impl Elem for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn root(self) -> f64 {
        self.sqrt()
    }
}

/// Elements per parallel chunk of [`adamw_kernel`] (four 64 KiB streams of f32 in, three out).
const CHUNK: usize = 1 << 14;

/// The update of [`update_composed`], element by element, written as its ops are (each `+ zero`
/// is the `+ 0` of candle's affine, kept for the sign of zero): (m, v, p) after the step.
fn adamw_kernel<T: Elem>(p: &[T], m: &[T], v: &[T], g: &[T], k: &Coefs) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = p.len();
    let zero = T::of(0.0);
    let (clip, b1, nb1, b2, nb2) = (T::of(k.clip), T::of(k.b1), T::of(1.0 - k.b1), T::of(k.b2), T::of(1.0 - k.b2));
    let (ic1, ic2, one, eps, lr, wd) =
        (T::of(1.0 / k.c1), T::of(1.0 / k.c2), T::of(1.0), T::of(k.eps), T::of(k.lr), T::of(k.wd));
    let c = Consts { zero, clip, b1, nb1, b2, nb2, ic1, ic2, one, eps, lr, wd };
    let (mut mo, mut vo, mut po) = (vec![zero; n], vec![zero; n], vec![zero; n]);
    mo.par_chunks_mut(CHUNK)
        .zip(vo.par_chunks_mut(CHUNK))
        .zip(po.par_chunks_mut(CHUNK))
        .zip(p.par_chunks(CHUNK).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)))
        .for_each(|(((mo, vo), po), (((p, m), v), g))| {
            // One loop per case, so none of them tests a flag per element.
            match (k.clip != 1.0, k.wd != 0.0) {
                (false, false) => adamw_chunk::<T, false, false>(&c, p, m, v, g, mo, vo, po),
                (true, false) => adamw_chunk::<T, true, false>(&c, p, m, v, g, mo, vo, po),
                (false, true) => adamw_chunk::<T, false, true>(&c, p, m, v, g, mo, vo, po),
                (true, true) => adamw_chunk::<T, true, true>(&c, p, m, v, g, mo, vo, po),
            }
        });
    (mo, vo, po)
}

/// The constants of [`adamw_kernel`], rounded to the element type.
struct Consts<T> {
    zero: T,
    clip: T,
    b1: T,
    nb1: T,
    b2: T,
    nb2: T,
    ic1: T,
    ic2: T,
    one: T,
    eps: T,
    lr: T,
    wd: T,
}

/// One chunk of [`adamw_kernel`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn adamw_chunk<T: Elem, const CLIPPED: bool, const DECAYED: bool>(
    c: &Consts<T>,
    p: &[T],
    m: &[T],
    v: &[T],
    g: &[T],
    mo: &mut [T],
    vo: &mut [T],
    po: &mut [T],
) {
    let zero = c.zero;
    let n = po.len().min(mo.len()).min(vo.len()).min(p.len()).min(m.len()).min(v.len()).min(g.len());
    let (p, m, v, g, mo, vo, po) = (&p[..n], &m[..n], &v[..n], &g[..n], &mut mo[..n], &mut vo[..n], &mut po[..n]);
    for i in 0..n {
        let g = if CLIPPED { g[i] * c.clip + zero } else { g[i] };
        let m = (m[i] * c.b1 + zero) + (g * c.nb1 + zero);
        let v = (v[i] * c.b2 + zero) + ((g * g) * c.nb2 + zero);
        let mhat = m * c.ic1 + zero;
        let vhat = v * c.ic2 + zero;
        let update = mhat / (vhat.root() * c.one + c.eps);
        let step = if DECAYED { update + (p[i] * c.wd + zero) } else { update };
        (mo[i], vo[i], po[i]) = (m, v, p[i] - (step * c.lr + zero));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn bits(t: &Tensor) -> Vec<u64> {
        superlora_core::oracle::value_bits(t).unwrap()
    }

    /// The gradient norm's sum of squares against a plain f64 sum (within rounding), f32 and f64,
    /// and the same value on one thread as on two.
    #[test]
    fn sum_of_squares_is_the_sum_and_does_not_depend_on_threads() {
        let n = 5 * (CHUNK + 3);
        let vals: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.37).cos() * 3.0).collect();
        let plain: f64 = vals.iter().map(|v| v * v).sum();
        for dtype in [DType::F32, DType::F64] {
            let t = Tensor::from_vec(vals.clone(), (5, n / 5), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let two = sum_of_squares(&t).unwrap();
            let one =
                rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| sum_of_squares(&t).unwrap());
            assert_eq!(one.to_bits(), two.to_bits(), "{dtype:?}");
            assert!((two - plain).abs() <= 1e-6 * plain, "{dtype:?}: {two} vs {plain}");
            let strided = sum_of_squares(&t.t().unwrap()).unwrap();
            assert!((strided - plain).abs() <= 1e-6 * plain, "{dtype:?} strided: {strided} vs {plain}");
        }
    }

    /// The one-pass update against candle's ops: the same bits for m, v and p, in f32 and f64,
    /// with and without clipping and weight decay, over several chunks, with zeros and -0 in g.
    #[test]
    fn fused_update_equals_the_composed_ops_bit_for_bit() {
        let dev = Device::Cpu;
        let n = 3 * CHUNK + 17;
        let wave = |k: f64| -> Vec<f64> {
            (0..n)
                .map(|i| if i % 97 == 0 { -0.0 } else { ((i as f64 * 0.7 + k).sin()) * 10f64.powi((i % 7) as i32 - 3) })
                .collect()
        };
        for dtype in [DType::F32, DType::F64] {
            let mk = |k: f64| Tensor::from_vec(wave(k), n, &dev).unwrap().to_dtype(dtype).unwrap();
            let (p, m, g) = (mk(0.1), mk(1.3), mk(2.9));
            let v = mk(4.2).abs().unwrap();
            for (clip, wd, t) in [(1.0, 0.0, 1), (0.37, 0.0, 2), (1.0, 0.01, 7), (0.5, 0.1, 1000)] {
                let (b1, b2) = (0.9f64, 0.999f64);
                let k = Coefs { clip, b1, b2, c1: 1.0 - b1.powi(t), c2: 1.0 - b2.powi(t), eps: 1e-8, lr: 3e-3, wd };
                let fast = update_fused(&p, &m, &v, &g, &k).unwrap().expect("the fused path applies");
                let slow = update_composed(&p, &m, &v, &g, &k).unwrap();
                for (what, a, b) in [("m", &fast.0, &slow.0), ("v", &fast.1, &slow.1), ("p", &fast.2, &slow.2)] {
                    assert_eq!(bits(a), bits(b), "{dtype:?} clip {clip} wd {wd} t {t}: {what}");
                }
            }
        }
    }
}
