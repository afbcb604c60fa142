//! One post-LN encoder block (BERT, RoBERTa: all-MiniLM-L6-v2) as a single candle node on the CPU
//! in f32, with its backward written out and every gradient accumulated in place.
//!
//! Forward, rows x [M, H] (M = B·T), each linear ℓ with its effective weight Wₑ = W + ΔW (for a
//! factored ΔW = P·Qᵀ the product x·Wᵀ + (x·Q)·Pᵀ, ΔW never formed):
//!
//!   q, k, v = x·W_{q,k,v}ₑᵀ + b,   c = attention(q, k, v),   a = c·W_oₑᵀ + b_o,
//!   x₁ = LN₁(a + x),   h = x₁·W₁ₑᵀ + b₁,   f = GELU(h)·W₂ₑᵀ + b₂,   y = LN₂(f + x₁).
//!
//! Backward for ∂y (LNᵢ' the LayerNorm backward at its saved sum):
//!
//!   ∂s₂ = LN₂'(∂y)  (= ∂f, and the residual's share of ∂x₁),   ∂h = (∂s₂·W₂ₑ) ⊙ GELU'(h),
//!   ∂x₁ = ∂s₂ + ∂h·W₁ₑ,   ∂s₁ = LN₁'(∂x₁),   ∂c = ∂s₁·W_oₑ,   (∂q, ∂k, ∂v) = attention'(∂c),
//!   ∂x = ∂s₁ + ∂q·W_qₑ + ∂k·W_kₑ + ∂v·W_vₑ,
//!
//! each adapter's gradient (∂P = gᵀ·(x·Q), ∂Q = xᵀ·(g·P), or ∂ΔW = gᵀ·x for the linear's input x
//! and upstream g) written into one packed gradient. The sums ∂x₁ and ∂x are built by adding each
//! product onto the same buffer (gemm accumulating onto its output).
//!
//! Symbols → variables: x `x`, q k v `q` `k` `v`, c `ctx`, a `a`, x₁ `x1`, h `h`, GELU(h) `gh`,
//! f `f`, ∂s₂ `ds2`, ∂h `dgh` (in place), ∂x₁ `dx1` (= `ds2`'s buffer), ∂s₁ `ds1`, ∂x `dx`
//! (= `ds1`'s buffer); linears in module order q, k, v, o, ffn1, ffn2 (`Block::linears`).
//!
//! Why: candle's backward starts each node's gradient as a zero tensor and adds every
//! contribution to it (`GradStore::or_insert` + `add`: a memset and an add pass over the whole
//! gradient per node and per input). The block built from our per-op nodes
//! ([`crate::bert::BertStack::forward_composed`]) has nine nodes, ∂x alone arriving from four of
//! them; this op is one node. The forward runs the same kernels in the same order, so its output
//! is bit for bit the per-op one; the backward sums in another order (equal to rounding). The
//! per-op stack is the oracle (`tests/block.rs`).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use crate::Result;
use crate::adapt::{Deltas, LayerDelta, Linear};
use crate::attention::{self, Dims};
use crate::ops::{
    AdapterValues, Dx, LinearValues, Norm, gelu_grad_values_in_place, gelu_values, layer_norm_sum_grad_values,
    layer_norm_sum_values,
};

/// How one linear's adapter sits in the packed input.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Frozen.
    None,
    /// P [N, r] then Q [K, r], from `offset`.
    LowRank { offset: usize, r: usize },
    /// ΔW [N, K] from `offset`.
    Dense { offset: usize },
}

/// The frozen values of one linear: W [N, K] and b [N] (zeros when the layer has none).
struct Frozen {
    w: Tensor,
    b: Tensor,
}

/// What the forward keeps for the backward (x itself is the op's input).
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    a: Vec<f32>,
    x1: Vec<f32>,
    h: Vec<f32>,
    f: Vec<f32>,
    /// GELU(h), kept only when the second FFN linear is adapted (its adapter gradient reads it).
    gh: Option<Vec<f32>>,
}

/// The op: the block's frozen weights, where each adapter sits, and the forward's activations.
struct BlockOp {
    linears: [Frozen; 6],
    norms: [(Tensor, Tensor); 2],
    slots: [Slot; 6],
    heads: usize,
    eps: f64,
    mask: Option<Arc<Vec<f32>>>,
    /// Whether anything trained reaches the block (only then are activations kept).
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

/// The f32 values of a contiguous CPU storage.
fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: inputs must be contiguous f32 on the CPU"),
    }
}

/// Read guards on frozen tensors (`G`: candle's storage guard), kept while their values are
/// borrowed.
struct Reads<'t, G>(Vec<(G, &'t Layout)>);

fn reads_of<'t>(ts: impl IntoIterator<Item = &'t Tensor>) -> Reads<'t, impl std::ops::Deref<Target = Storage> + 't> {
    Reads(ts.into_iter().map(|t| t.storage_and_layout()).collect())
}

impl<G: std::ops::Deref<Target = Storage>> Reads<'_, G> {
    fn get(&self, i: usize, what: &str) -> candle_core::Result<&[f32]> {
        let (guard, layout) = &self.0[i];
        let Storage::Cpu(s) = &**guard else { candle_core::bail!("{what}: not on the CPU") };
        values(s, layout, what)
    }
}

impl BlockOp {
    /// The frozen values in a fixed order: (W, b) of the six linears, then (γ, β) of both norms.
    fn reads(&self) -> Reads<'_, impl std::ops::Deref<Target = Storage> + '_> {
        reads_of(self.linears.iter().flat_map(|l| [&l.w, &l.b]).chain(self.norms.iter().flat_map(|(g, b)| [g, b])))
    }

    /// Linear `i` on the frozen values `r` and the packed adapters.
    fn linear<'a, G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &'a Reads<'_, G>,
        packed: &'a [f32],
        i: usize,
    ) -> candle_core::Result<LinearValues<'a>> {
        let what = "encoder block";
        let (n, k) = self.linears[i].w.dims2()?;
        let adapter = match self.slots[i] {
            Slot::None => AdapterValues::None,
            Slot::LowRank { offset, r } => AdapterValues::LowRank {
                p: &packed[offset..offset + n * r],
                q: &packed[offset + n * r..offset + (n + k) * r],
                r,
            },
            Slot::Dense { offset } => AdapterValues::Dense(&packed[offset..offset + n * k]),
        };
        Ok(LinearValues { w: r.get(2 * i, what)?, b: r.get(2 * i + 1, what)?, n, k, adapter })
    }

    /// γ and β of norm `j` (0 after attention, 1 after the FFN).
    fn norm<'a, G: std::ops::Deref<Target = Storage>>(
        r: &'a Reads<'_, G>,
        j: usize,
    ) -> candle_core::Result<(&'a [f32], &'a [f32])> {
        Ok((r.get(12 + 2 * j, "encoder block")?, r.get(13 + 2 * j, "encoder block")?))
    }

    /// Rows M and the attention's sizes for x of `shape` ([B, T, H]).
    fn dims(&self, shape: &Shape) -> candle_core::Result<(usize, Dims)> {
        let (b, t, hd) = shape.dims3()?;
        if self.mask.as_ref().is_some_and(|m| m.len() != b * t) {
            candle_core::bail!("encoder block: the mask does not have B·T = {} entries", b * t);
        }
        Ok((b * t, Dims::new(b, t, hd, self.heads)?))
    }

    /// The packed input's length the slots need.
    fn packed_len(&self) -> candle_core::Result<usize> {
        let mut end = 0;
        for (l, s) in self.linears.iter().zip(&self.slots) {
            let (n, k) = l.w.dims2()?;
            end = end.max(match *s {
                Slot::None => 0,
                Slot::LowRank { offset, r } => offset + (n + k) * r,
                Slot::Dense { offset } => offset + n * k,
            });
        }
        Ok(end)
    }
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "superlora-post-ln-block"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = "encoder block";
        let (x, packed) = (values(xs, xl, what)?, values(ps, pl, what)?);
        let (m, dims) = self.dims(xl.shape())?;
        if packed.len() < self.packed_len()? {
            candle_core::bail!("{what}: {} adapter values, the slots need {}", packed.len(), self.packed_len()?);
        }
        let hidden = self.linears[0].w.dim(1)?;
        if x.len() != m * hidden {
            candle_core::bail!("{what}: x {:?} does not end in the block's width {hidden}", xl.shape());
        }
        let r = self.reads();
        let lin = |i| self.linear(&r, packed, i);
        let q = lin(0)?.forward(x, m, what)?;
        let k = lin(1)?.forward(x, m, what)?;
        let v = lin(2)?.forward(x, m, what)?;
        let ctx = attention::forward_values(dims, &q, &k, &v, self.mask.as_deref().map(Vec::as_slice));
        let a = lin(3)?.forward(&ctx, m, what)?;
        let (g1, b1) = Self::norm(&r, 0)?;
        let x1 = layer_norm_sum_values(&a, x, g1, b1, self.eps);
        let h = lin(4)?.forward(&x1, m, what)?;
        let gh = gelu_values(&h);
        let f = lin(5)?.forward(&gh, m, what)?;
        let (g2, b2) = Self::norm(&r, 1)?;
        let y = layer_norm_sum_values(&f, &x1, g2, b2, self.eps);
        if self.keep {
            let gh = (!matches!(self.slots[5], Slot::None)).then_some(gh);
            let saved = Saved { q, k, v, ctx, a, x1, h, f, gh };
            *self.saved.lock().map_err(|_| candle_core::Error::Msg(format!("{what}: poisoned")))? = Some(saved);
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let what = "encoder block grad";
        let lock = self.saved.lock().map_err(|_| candle_core::Error::Msg(format!("{what}: poisoned")))?;
        let Some(s) = lock.as_ref() else { candle_core::bail!("{what}: no activations kept by the forward") };
        let (x_tracked, packed_tracked) = (x.track_op(), packed.track_op());
        let (x, packed, grad) = (x.contiguous()?, packed.contiguous()?, grad.contiguous()?);
        let (xg, xl) = x.storage_and_layout();
        let (pg, pl) = packed.storage_and_layout();
        let (gg, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ps), Storage::Cpu(gs)) = (&*xg, &*pg, &*gg) else {
            candle_core::bail!("{what}: not on the CPU")
        };
        let (xv, pv, dy) = (values(xs, xl, what)?, values(ps, pl, what)?, values(gs, gl, what)?);
        let (m, dims) = self.dims(xl.shape())?;
        if dy.len() != xv.len() {
            candle_core::bail!("{what}: {} gradients for {} outputs", dy.len(), xv.len());
        }
        let r = self.reads();
        let lin = |i| self.linear(&r, pv, i);
        let mut dpacked = vec![0f32; pv.len()];
        let slot = |i: usize, d: &mut Vec<f32>| -> candle_core::Result<std::ops::Range<usize>> {
            let len = self.linear(&r, pv, i)?.adapter.len();
            let offset = match self.slots[i] {
                Slot::None => 0,
                Slot::LowRank { offset, .. } | Slot::Dense { offset } => offset,
            };
            if offset + len > d.len() {
                candle_core::bail!("{what}: adapter {i} outside the packed values");
            }
            Ok(offset..offset + len)
        };

        // FFN: ∂s₂, then ∂h = (∂s₂·W₂ₑ) ⊙ GELU'(h), then ∂x₁ = ∂s₂ + ∂h·W₁ₑ in ∂s₂'s buffer.
        let (g2, _) = Self::norm(&r, 1)?;
        let mut ds2 = layer_norm_sum_grad_values(&s.f, &s.x1, g2, dy, self.eps);
        let rg = slot(5, &mut dpacked)?;
        let gh = s.gh.as_deref().unwrap_or(&[]);
        let mut dgh = lin(5)?
            .backward(gh, &ds2, m, Dx::New, &mut dpacked[rg], what)?
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: no ∂GELU(h)")))?;
        gelu_grad_values_in_place(&s.h, &mut dgh);
        let rg = slot(4, &mut dpacked)?;
        lin(4)?.backward(&s.x1, &dgh, m, Dx::AddTo(&mut ds2), &mut dpacked[rg], what)?;
        drop(dgh);
        let dx1 = ds2;

        // Attention: ∂s₁, ∂c, (∂q, ∂k, ∂v), then ∂x = ∂s₁ + Σ ∂·Wₑ in ∂s₁'s buffer.
        let (g1, _) = Self::norm(&r, 0)?;
        let mut ds1 = layer_norm_sum_grad_values(&s.a, xv, g1, &dx1, self.eps);
        drop(dx1);
        let rg = slot(3, &mut dpacked)?;
        let dctx = lin(3)?
            .backward(&s.ctx, &ds1, m, Dx::New, &mut dpacked[rg], what)?
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: no ∂c")))?;
        let mask = self.mask.as_deref().map(Vec::as_slice);
        let dqkv = attention::backward_values(dims, (&s.q, &s.k, &s.v), &dctx, mask);
        drop(dctx);
        let n = xv.len();
        for i in 0..3 {
            let rg = slot(i, &mut dpacked)?;
            let dx = if x_tracked { Dx::AddTo(&mut ds1) } else { Dx::Skip };
            lin(i)?.backward(xv, &dqkv[i * n..(i + 1) * n], m, dx, &mut dpacked[rg], what)?;
        }
        let dev = x.device();
        let dx = if x_tracked { Some(Tensor::from_vec(ds1, x.dims(), dev)?) } else { None };
        let dp = if packed_tracked { Some(Tensor::from_vec(dpacked, packed.dims(), dev)?) } else { None };
        Ok((dx, dp))
    }
}

/// The frozen parts of one post-LN block, in module order: query, key, value, attention output,
/// FFN in, FFN out; the norm after attention and the one after the FFN.
pub(crate) struct Block<'a> {
    pub(crate) linears: [&'a Linear; 6],
    pub(crate) norms: [&'a Norm; 2],
}

impl Block<'_> {
    /// The block over x [B, T, H] as one node, or `None` when it does not apply (not f32 on the
    /// CPU, or an adapter that is not f32 on the CPU): the caller then runs the per-op block.
    /// `mask` is the additive key mask, [B·T] (0 keep, large negative drop).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        mask: Option<Arc<Vec<f32>>>,
        heads: usize,
        eps: f64,
        deltas: &Deltas,
    ) -> Result<Option<Tensor>> {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !cpu_f32(x) || x.rank() != 3 {
            return Ok(None);
        }
        let mut parts: Vec<Tensor> = Vec::new();
        let mut slots = [Slot::None; 6];
        let mut offset = 0;
        for (slot, l) in slots.iter_mut().zip(self.linears) {
            if !cpu_f32(&l.weight) || l.bias.as_ref().is_some_and(|b| !cpu_f32(b)) {
                return Ok(None);
            }
            match deltas.get(&l.name) {
                None => {}
                Some(LayerDelta::Dense(d)) => {
                    if !cpu_f32(d) {
                        return Ok(None);
                    }
                    *slot = Slot::Dense { offset };
                    offset += d.elem_count();
                    parts.push(d.flatten_all()?);
                }
                Some(LayerDelta::LowRank(lr)) => {
                    if !cpu_f32(&lr.out) || !cpu_f32(&lr.inp) {
                        return Ok(None);
                    }
                    *slot = Slot::LowRank { offset, r: lr.inp.dim(1)? };
                    offset += lr.out.elem_count() + lr.inp.elem_count();
                    parts.push(lr.out.flatten_all()?);
                    parts.push(lr.inp.flatten_all()?);
                }
            }
        }
        let packed = match parts.len() {
            0 => Tensor::zeros(1, DType::F32, x.device())?,
            1 => parts.remove(0).contiguous()?,
            _ => Tensor::cat(&parts, 0)?,
        };
        let frozen = |l: &Linear| -> Result<Frozen> {
            let b = match &l.bias {
                Some(b) => b.detach().contiguous()?,
                None => Tensor::zeros(l.weight.dim(0)?, DType::F32, l.weight.device())?,
            };
            Ok(Frozen { w: l.weight.detach().contiguous()?, b })
        };
        let [q, k, v, o, f1, f2] = self.linears;
        let norm = |n: &Norm| -> Result<(Tensor, Tensor)> {
            Ok((n.gamma.detach().contiguous()?, n.beta.detach().contiguous()?))
        };
        let op = BlockOp {
            linears: [frozen(q)?, frozen(k)?, frozen(v)?, frozen(o)?, frozen(f1)?, frozen(f2)?],
            norms: [norm(self.norms[0])?, norm(self.norms[1])?],
            slots,
            heads,
            eps,
            mask,
            keep: x.track_op() || packed.track_op(),
            saved: Mutex::new(None),
        };
        Ok(Some(x.contiguous()?.apply_op2(&packed, op)?))
    }
}
