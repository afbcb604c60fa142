//! The SuperLoRA adapter: trainable tensors plus fixed projections, producing every adapted
//! layer's ΔW on candle tensors with autograd (spec §3, all steps).
//!
//! Per group g: X_g = factorization(params_g) → flatten row-major, keep the first n_g values
//! (natural fold: crop to rows x cols first) = x_g → v_g = F_g(x_g) (N_g values) → the layer
//! pieces of v_g at the plan's segments → ΔW_l = α · reshape(concat of its pieces, d_out x d_in).
//!
//! No step copies more than it must: a layer that lies inside one group is a view of v_g; only
//! layers that straddle groups are concatenated.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::config::AdapterConfig;
use crate::error::{Error, Result};
use crate::factor::{FactorVars, Init};
use crate::lanes::lane_sum;
use crate::plan::{GroupPlan, LayerShape, Plan};
use crate::projection::{self, GroupProjection};
use crate::rng::{Purpose, stream};

/// One group: its trainable tensors and its fixed projection.
#[derive(Clone, Debug)]
struct Group {
    vars: FactorVars,
    projection: GroupProjection,
}

/// A SuperLoRA adapter over a fixed list of weights.
#[derive(Clone, Debug)]
pub struct SuperLora {
    plan: Plan,
    groups: Vec<Group>,
    dtype: DType,
    device: Device,
}

impl SuperLora {
    /// Plans `config` over `shapes` and initialises the adapter (ΔW = 0 exactly).
    pub fn from_shapes(shapes: &[LayerShape], config: &AdapterConfig, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(Plan::new(shapes, config)?, dtype, device)
    }

    /// Initialises the adapter of `plan`: trainable tensors by spec §4 from the group's `Init`
    /// stream, projections regenerated from the seed.
    pub fn new(plan: Plan, dtype: DType, device: &Device) -> Result<Self> {
        if !projection::supports(dtype) {
            return Err(Error::config("dtype", format!("{dtype:?}"), "the adapter runs in f32 or f64"));
        }
        let seed = plan.config.seed;
        let groups = plan
            .groups
            .iter()
            .map(|g| {
                let mut rng = stream(seed, g.index, Purpose::Init);
                let vars = FactorVars::init(&g.factor, Init::ZeroUpdate, &mut rng, dtype, device)?;
                Ok(Group { vars, projection: GroupProjection::new(g, seed) })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SuperLora { plan, groups, dtype, device: device.clone() })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The settings.
    pub fn config(&self) -> &AdapterConfig {
        &self.plan.config
    }

    /// dtype of the trainable tensors.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device of the trainable tensors.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every trainable tensor with its stable name `group.<g>.<name>` (names in
    /// [`crate::plan::FactorPlan::tensor_shapes`]), in group order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(g, gr)| gr.vars.named().into_iter().map(move |(n, v)| (format!("group.{g}.{n}"), v)))
            .collect()
    }

    /// Every trainable tensor, in [`Self::named_vars`] order.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Number of trainable scalars (equals the plan's count).
    pub fn num_trainable(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The fixed projection of group `g`.
    pub fn projection(&self, g: usize) -> Option<&GroupProjection> {
        self.groups.get(g).map(|gr| &gr.projection)
    }

    /// x_g: the n_g values the factorization of group `g` produces.
    pub fn group_values(&self, g: usize) -> Result<Tensor> {
        let (gp, gr) = self.group(g)?;
        self.values_of(gp, gr.vars.generate()?)
    }

    /// x_g from a generated X_g: cropped to the layer (natural fold, 2-D), flattened, the first
    /// n_g values.
    fn values_of(&self, gp: &GroupPlan, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        for (m, &side) in kept_sides(&self.plan, gp, x.dims()).iter().enumerate() {
            if x.dim(m)? > side {
                x = x.narrow(m, 0, side)?;
            }
        }
        let x = x.flatten_all()?;
        Ok(if x.elem_count() > gp.n { x.narrow(0, 0, gp.n)? } else { x })
    }

    /// v_g = F_g(x_g): the N_g entries of group `g` (before α).
    pub fn group_update(&self, g: usize) -> Result<Tensor> {
        let x = self.group_values(g)?;
        self.groups[g].projection.apply(&x)
    }

    /// ΔW_l (d_out x d_in, α applied) for every adapted layer, in plan order, differentiable
    /// end to end: `loss.backward()` reaches every trainable tensor.
    ///
    /// Simple, but each layer cut out of a group costs its backward a zero-padded copy of the whole
    /// group (candle's `narrow` backward), O(L·N) per step when many layers share a group; training
    /// loops use [`Self::forward_tape`], which costs O(N).
    pub fn delta_weights(&self) -> Result<Vec<Tensor>> {
        let updates = (0..self.groups.len()).map(|g| self.group_update(g)).collect::<Result<Vec<_>>>()?;
        (0..self.plan.layers.len()).map(|l| self.assemble_layer(l, &updates)).collect()
    }

    /// ΔW_l plus the tape that carries their gradients back to the trainable tensors, for
    /// training loops: run the model with [`DeltaTape::deltas`], call `loss.backward()`, then pass
    /// the gradients through [`DeltaTape::backward`]. Gives the same gradients as
    /// [`Self::delta_weights`] (tested) in O(N) instead of O(L·N).
    ///
    /// When every group is exactly one layer (weight-wise LoRA, per-layer full fine-tuning), no
    /// layer is cut out of a shared group, so the ΔW stay attached to the graph and `backward` has
    /// nothing left to do. Otherwise the ΔW are detached leaves (a two-stage backward).
    pub fn forward_tape(&self) -> Result<DeltaTape> {
        let one_to_one = self.plan.groups.len() == self.plan.layers.len()
            && self.plan.groups.iter().all(|g| g.segments.len() == 1 && g.segments[0].len == g.len);
        if one_to_one {
            let updates = (0..self.groups.len()).map(|g| self.group_update(g)).collect::<Result<Vec<_>>>()?;
            let deltas =
                (0..self.plan.layers.len()).map(|l| self.assemble_layer(l, &updates)).collect::<Result<_>>()?;
            return Ok(DeltaTape {
                plan: self.plan.clone(),
                vars: Vec::new(),
                gens: Vec::new(),
                projections: Vec::new(),
                deltas,
                low_rank: None,
                leaves: false,
            });
        }
        // Two stages: X_g keeps its graph to the trainable tensors; everything after it (crop,
        // projection, the cut into layers) runs detached, and the backward applies its adjoint
        // by hand (`DeltaTape::backward`).
        let gens = self.groups.iter().map(|gr| gr.vars.generate()).collect::<Result<Vec<_>>>()?;
        let detached = (0..self.groups.len())
            .map(|g| {
                let x = self.values_of(&self.plan.groups[g], gens[g].detach())?;
                self.groups[g].projection.apply(&x)
            })
            .collect::<Result<Vec<_>>>()?;
        let deltas = (0..self.plan.layers.len())
            .map(|l| Ok(Var::from_tensor(&self.assemble_layer(l, &detached)?)?.as_tensor().clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeltaTape {
            plan: self.plan.clone(),
            vars: self.vars(),
            gens,
            projections: self.groups.iter().map(|gr| gr.projection.clone()).collect(),
            deltas,
            low_rank: None,
            leaves: true,
        })
    }

    /// The training tape: [`Self::forward_tape`], except that an adapter that is exactly
    /// weight-wise LoRA (see [`Self::low_rank_deltas`]) keeps every ΔW_l factored, so the model
    /// computes x·Wᵀ + α·(x·B_l)·A_lᵀ beside the frozen product (as PEFT does) and never forms ΔW_l
    /// or its d_out x d_in gradient. Same loss and gradients as the dense tape up to summation
    /// order (tested). `SUPERLORA_DENSE_DELTA=1` forces the dense tape (for benchmarks).
    pub fn training_tape(&self) -> Result<DeltaTape> {
        let dense_forced = std::env::var_os("SUPERLORA_DENSE_DELTA").is_some_and(|v| v == "1");
        match self.low_rank_deltas()? {
            Some(low_rank) if !dense_forced => Ok(DeltaTape {
                plan: self.plan.clone(),
                vars: Vec::new(),
                gens: Vec::new(),
                projections: Vec::new(),
                deltas: Vec::new(),
                low_rank: Some(low_rank),
                leaves: false,
            }),
            _ => self.forward_tape(),
        }
    }

    /// ΔW_l = P_l·Q_lᵀ for every layer, factored, when the adapter is exactly weight-wise LoRA: the
    /// natural fold, one group per layer covering it exactly, the low-rank factor, no projection.
    /// Then P_l = α·A_l (d_out x r) and Q_l = B_l (d_in x r), attached to the trainable tensors.
    /// `None` for every other adapter.
    pub fn low_rank_deltas(&self) -> Result<Option<Vec<LowRankDelta>>> {
        if self.plan.config.fold != crate::config::Fold::Natural || self.plan.groups.len() != self.plan.layers.len() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.groups.len());
        for (l, layer) in self.plan.layers.iter().enumerate() {
            let (gp, gr) = self.group(l)?;
            let whole_layer = gp.segments.len() == 1
                && gp.segments[0].layer == l
                && gp.segments[0].layer_offset == 0
                && gp.segments[0].len == layer.rows * layer.cols
                && gp.len == layer.rows * layer.cols
                && gp.n == gp.len
                && gp.sides == [layer.rows, layer.cols];
            let (FactorVars::Lora { a, b }, GroupProjection::Identity, true) = (&gr.vars, &gr.projection, whole_layer)
            else {
                return Ok(None);
            };
            if a.dims() != [layer.rows, b.dim(1)?] || b.dims() != [layer.cols, a.dim(1)?] {
                return Ok(None);
            }
            let scale = self.plan.config.scale;
            let out_side = if scale == 1.0 { a.as_tensor().clone() } else { a.as_tensor().affine(scale, 0.0)? };
            out.push(LowRankDelta { out: out_side, inp: b.as_tensor().clone() });
        }
        Ok(Some(out))
    }

    /// α · reshape(concatenation of layer `l`'s pieces of the group updates).
    fn assemble_layer(&self, l: usize, updates: &[Tensor]) -> Result<Tensor> {
        let layer = &self.plan.layers[l];
        let pieces = self
            .plan
            .layer_segments(l)
            .into_iter()
            .map(|(g, s)| Ok(updates[g].narrow(0, s.group_offset, s.len)?))
            .collect::<Result<Vec<_>>>()?;
        let flat = if pieces.len() == 1 { pieces[0].clone() } else { Tensor::cat(&pieces, 0)? };
        let w = flat.reshape((layer.rows, layer.cols))?;
        let scale = self.plan.config.scale;
        Ok(if scale == 1.0 { w } else { w.affine(scale, 0.0)? })
    }

    /// Replaces the value of the trainable tensor `name` (shape and dtype must match).
    pub fn set(&self, name: &str, value: &Tensor) -> Result<()> {
        let (_, var) = self.named_vars().into_iter().find(|(n, _)| n == name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            reason: "no such trainable tensor in this adapter".into(),
        })?;
        if var.dims() != value.dims() {
            return Err(Error::Tensor {
                name: name.into(),
                reason: format!("expected shape {:?}, got {:?}", var.dims(), value.dims()),
            });
        }
        var.set(&value.to_dtype(self.dtype)?.to_device(&self.device)?)?;
        Ok(())
    }

    fn group(&self, g: usize) -> Result<(&GroupPlan, &Group)> {
        match (self.plan.groups.get(g), self.groups.get(g)) {
            (Some(p), Some(gr)) => Ok((p, gr)),
            _ => Err(Error::Shapes(format!("no group {g}; the adapter has {}", self.groups.len()))),
        }
    }
}

/// The adjoint of [`SuperLora::values_of`]: ∂X_g (shape `x_dims`) from ∂x_g (n_g values), zero
/// where the crop or the cut dropped entries of X_g.
fn values_adjoint(plan: &Plan, gp: &GroupPlan, x_dims: &[usize], gx: &Tensor) -> Result<Tensor> {
    let cropped = kept_sides(plan, gp, x_dims);
    let flat: usize = cropped.iter().product();
    let g = if flat > gp.n { gx.pad_with_zeros(0, 0, flat - gp.n)? } else { gx.clone() };
    let mut g = g.reshape(cropped.as_slice())?;
    for (m, (&d, &c)) in x_dims.iter().zip(&cropped).enumerate() {
        if d > c {
            g = g.pad_with_zeros(m, 0, d - c)?;
        }
    }
    Ok(g)
}

/// The sides of X_g (shape `x_dims`) that x_g is read from: a 2-D X_g of the natural fold is
/// cropped to the layer's sides (a Kronecker product can be larger than the matrix), anything
/// else is kept whole.
fn kept_sides(plan: &Plan, gp: &GroupPlan, x_dims: &[usize]) -> Vec<usize> {
    if x_dims.len() == 2 && plan.config.fold == crate::config::Fold::Natural {
        x_dims.iter().zip(&gp.sides).map(|(&d, &s)| d.min(s)).collect()
    } else {
        x_dims.to_vec()
    }
}

/// ΔW_l = P·Qᵀ of one layer of a weight-wise LoRA adapter, kept factored
/// ([`SuperLora::low_rank_deltas`]).
#[derive(Clone, Debug)]
pub struct LowRankDelta {
    /// P = α·A, d_out x r (the output side, α folded in).
    pub out: Tensor,
    /// Q = B, d_in x r (the input side).
    pub inp: Tensor,
}

impl LowRankDelta {
    /// ΔW = P·Qᵀ, d_out x d_in (formed: for evaluation, merging and tests).
    pub fn dense(&self) -> Result<Tensor> {
        Ok(self.out.matmul(&self.inp.t()?)?)
    }
}

/// The per-layer ΔW of one forward pass, and the generated group tensors X_g (with their graph)
/// they were made from. See [`SuperLora::forward_tape`] and [`SuperLora::training_tape`].
pub struct DeltaTape {
    plan: Plan,
    vars: Vec<Var>,
    /// X_g per group, attached to the trainable tensors (empty when the ΔW are attached).
    gens: Vec<Tensor>,
    /// F_g per group, for its adjoint in the backward.
    projections: Vec<GroupProjection>,
    deltas: Vec<Tensor>,
    low_rank: Option<Vec<LowRankDelta>>,
    leaves: bool,
}

/// The ΔW a [`DeltaTape`] hands to the model, in plan order.
#[derive(Clone, Copy, Debug)]
pub enum TapeDeltas<'a> {
    /// Every ΔW_l formed (d_out x d_in).
    Dense(&'a [Tensor]),
    /// Every ΔW_l = P_l·Q_lᵀ kept factored.
    LowRank(&'a [LowRankDelta]),
}

impl DeltaTape {
    /// ΔW_l for every adapted layer, in plan order; empty for a factored tape (see
    /// [`Self::layer_deltas`], which covers both).
    pub fn deltas(&self) -> &[Tensor] {
        &self.deltas
    }

    /// The ΔW for the model: formed or factored.
    pub fn layer_deltas(&self) -> TapeDeltas<'_> {
        match &self.low_rank {
            Some(lr) => TapeDeltas::LowRank(lr),
            None => TapeDeltas::Dense(&self.deltas),
        }
    }

    /// Completes the backward pass: `grads` (from the model's `loss.backward()`) comes back with
    /// the adapter's trainable tensors' gradients in it. For detached ΔW, per group the layer
    /// gradients are cut to the group's segments and concatenated into ∂L/∂v_g (times α), taken
    /// back through the projection (∂L/∂x_g = F_gᵀ·∂L/∂v_g) and the crop and cut (zeros where
    /// X_g's entries were dropped) to ∂L/∂X_g, all by hand; then one backward of
    /// Σ_g ⟨X_g, ∂L/∂X_g⟩ yields ∂L/∂θ. Layers without a gradient count as zero.
    pub fn backward(&self, mut grads: GradStore) -> Result<GradStore> {
        if !self.leaves {
            return Ok(grads);
        }
        let scale = self.plan.config.scale;
        let mut surrogate: Option<Tensor> = None;
        for (g, group) in self.plan.groups.iter().enumerate() {
            let x = &self.gens[g];
            let mut pieces = Vec::with_capacity(group.segments.len());
            for s in &group.segments {
                let piece = match grads.get(&self.deltas[s.layer]) {
                    Some(dw) => dw.flatten_all()?.narrow(0, s.layer_offset, s.len)?,
                    None => Tensor::zeros(s.len, x.dtype(), x.device())?,
                };
                pieces.push(piece);
            }
            let gv = if pieces.len() == 1 { pieces.remove(0) } else { Tensor::cat(&pieces, 0)? };
            let gv = if scale == 1.0 { gv } else { gv.affine(scale, 0.0)? }.detach();
            let gx = match &self.projections[g] {
                GroupProjection::Identity => gv,
                p => p.apply_transpose(&gv)?.detach(),
            };
            let gx = values_adjoint(&self.plan, group, x.dims(), &gx)?;
            let term = dot_const(x, &gx)?;
            surrogate = Some(match surrogate {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
        let Some(s) = surrogate else {
            return Err(Error::Shapes("the adapter has no groups".into()));
        };
        let adapter_grads = s.backward()?;
        for var in &self.vars {
            if let Some(g) = adapter_grads.get(var.as_tensor()) {
                let merged = match grads.remove(var.as_tensor()) {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                };
                grads.insert(var.as_tensor(), merged);
            }
        }
        Ok(grads)
    }
}

/// ⟨u, c⟩ = Σ u ⊙ c with c held constant, as one node: its backward gives ∂u = g·c, and c itself
/// when g = 1 (the surrogate's case), so the ΔW-sized gradient costs no pass at all. `u.mul(c)`
/// then `sum_all` left candle two ΔW-sized nodes on the calling thread: a product, its
/// zero-filled gradient and the broadcast of the scalar gradient. Bit for bit the same ∂u
/// (g·c with g = 1 is c). Other devices take the composed path. The value itself (which nothing
/// reads but a test) is a [`lane_sum`], so it may differ from `sum_all` in the last bits.
fn dot_const(u: &Tensor, c: &Tensor) -> Result<Tensor> {
    if !u.device().is_cpu() || u.dims() != c.dims() || u.dtype() != c.dtype() {
        return Ok(u.mul(c)?.sum_all()?);
    }
    Ok(u.contiguous()?.apply_op1(DotConst { c: c.contiguous()? })?)
}

/// The op of [`dot_const`].
struct DotConst {
    c: Tensor,
}

impl candle_core::CustomOp1 for DotConst {
    fn name(&self) -> &'static str {
        "superlora-dot-const"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (cs, cl) = self.c.storage_and_layout();
        let candle_core::Storage::Cpu(cs) = &*cs else { candle_core::bail!("dot: the constant is not on the CPU") };
        let (Some((a0, a1)), Some((b0, b1))) = (l.contiguous_offsets(), cl.contiguous_offsets()) else {
            candle_core::bail!("dot: inputs must be contiguous")
        };
        let out = match (s, cs) {
            (CpuStorage::F32(u), CpuStorage::F32(c)) => {
                CpuStorage::F32(vec![lane_sum(&u[a0..a1], &c[b0..b1], &c[b0..b1], |a, b, _| f64::from(a * b)) as f32])
            }
            (CpuStorage::F64(u), CpuStorage::F64(c)) => {
                CpuStorage::F64(vec![lane_sum(&u[a0..a1], &c[b0..b1], &c[b0..b1], |a, b, _| a * b)])
            }
            _ => candle_core::bail!("dot: f32 or f64 with matching dtypes"),
        };
        Ok((out, candle_core::Shape::from(())))
    }

    fn bwd(&self, _u: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let one = grad.to_dtype(DType::F64)?.to_scalar::<f64>()? == 1.0;
        Ok(Some(if one { self.c.clone() } else { self.c.broadcast_mul(grad)? }))
    }
}

#[cfg(test)]
mod dot_tests {
    use super::*;

    /// The one-node inner product against mul + sum_all: the same gradient bit for bit (for the
    /// surrogate's g = 1 and for another g), a value within rounding, non-contiguous u too.
    #[test]
    fn dot_const_equals_mul_then_sum_with_gradients() {
        let dev = Device::Cpu;
        let vals = |n: usize, k: u32| -> Vec<f32> {
            (0..n as u32).map(|i| ((i * 37 + k) % 101) as f32 / 50.0 - 1.0).collect()
        };
        let u = Var::from_vec(vals(6 * 7, 1), (6, 7), &dev).unwrap();
        let c = Tensor::from_vec(vals(7 * 6, 2), (7, 6), &dev).unwrap();
        for scale in [1.0, 2.5] {
            let ut = u.as_tensor().t().unwrap();
            let fast = (dot_const(&ut, &c).unwrap() * scale).unwrap();
            let slow = (ut.mul(&c).unwrap().sum_all().unwrap() * scale).unwrap();
            let (a, b) = (fast.to_scalar::<f32>().unwrap(), slow.to_scalar::<f32>().unwrap());
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
            let bits = |g: &GradStore| -> Vec<u32> {
                g.get(u.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(&gf), bits(&gs), "scale {scale}");
        }
    }
}
