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
//! Symbols → variables: x `x`, q k v `q` `k` `v`, c `ctx`, a `a`, x₁ `x1`, h `slope` (made in
//! one pass with GELU(h) and then holding GELU'(h), all the backward needs of h), GELU(h) `gh`,
//! f `f`, ∂s₂ `ds2`, ∂h `dgh` (in place), ∂x₁ `dx1` (= `ds2`'s buffer), ∂s₁ `ds1`, ∂x `dx`
//! (= `ds1`'s buffer); linears in module order q, k, v, o, ffn1, ffn2 (`Block::linears`).
//!
//! The pre-LN block with LayerScale of DINOv2 is the second kind (λ₁, λ₂ per-channel scales):
//!
//!   y₁ = LN₁(x),   q, k, v = y₁·W_{q,k,v}ₑᵀ + b,   c = attention(q, k, v),   x₁ = x + λ₁ ⊙ (c·W_oₑᵀ + b_o),
//!   y₂ = LN₂(x₁),   h = y₂·W₁ₑᵀ + b₁,   out = x₁ + λ₂ ⊙ (GELU(h)·W₂ₑᵀ + b₂);
//!
//!   ∂h = ((λ₂ ⊙ ∂out)·W₂ₑ) ⊙ GELU'(h),   ∂x₁ = ∂out + LN₂'(∂h·W₁ₑ),   ∂c = (λ₁ ⊙ ∂x₁)·W_oₑ,
//!   ∂y₁ = ∂q·W_qₑ + ∂k·W_kₑ + ∂v·W_vₑ (one buffer),   ∂x = ∂x₁ + LN₁'(∂y₁).
//!
//! Why: candle's backward starts each node's gradient as a zero tensor and adds every
//! contribution to it (`GradStore::or_insert` + `add`: a memset and an add pass over the whole
//! gradient per node and per input). The block built from our per-op nodes
//! ([`crate::bert::BertStack::forward_composed`]) has nine nodes, ∂x alone arriving from four of
//! them (DINOv2's per-op block: fourteen, its LayerScale products also computing a gradient for
//! the frozen λ); this op is one node. The forward runs the same kernels in the same order, except that
//! each product x·Wᵀ reads a stored Wᵀ (`Linear::weight_t`: gemm multiplies two row-major matrices
//! a few percent faster than it reads W transposed), so its output equals the per-op one to the
//! last bits; the backward sums in another order (equal to rounding). The per-op stacks are the
//! oracles (tests `one_node_block_*` in `bert.rs` and `vit.rs`).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use crate::Result;
use crate::adapt::{Deltas, LayerDelta, Linear};
use crate::attention::{self, Dims};
use crate::ops::{
    AdapterValues, Dx, LinearValues, Norm, gelu_and_slope_values, gelu_slope_grad_in_place, gelu_values,
    layer_norm_grad_values, layer_norm_sum_grad_values, layer_norm_sum_values, layer_norm_values,
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
    /// Wᵀ stored [K, N] (the forward's product reads it as rows).
    wt: Tensor,
    b: Tensor,
}

/// What attention's half of a forward keeps: q, k, v and, when the backward will run, the
/// attention probabilities (B·H blocks of T x T).
struct Heads {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Option<Vec<f32>>,
}

/// What a post-LN forward keeps for the backward (x itself is the op's input).
struct PostSaved {
    heads: Heads,
    ctx: Vec<f32>,
    a: Vec<f32>,
    x1: Vec<f32>,
    /// GELU'(h), which the forward made in h's place (the backward's only use of h).
    slope: Vec<f32>,
    f: Vec<f32>,
    /// GELU(h), kept only when the second FFN linear is adapted (its adapter gradient reads it).
    gh: Option<Vec<f32>>,
}

/// What a pre-LN forward keeps; a linear's input only when that linear is adapted.
struct PreSaved {
    y1: Option<Vec<f32>>,
    heads: Heads,
    ctx: Option<Vec<f32>>,
    x1: Vec<f32>,
    y2: Option<Vec<f32>>,
    /// GELU'(h), as [`PostSaved::slope`].
    slope: Vec<f32>,
    gh: Option<Vec<f32>>,
}

enum Saved {
    Post(PostSaved),
    Pre(PreSaved),
}

/// The op: the block's frozen weights, where each adapter sits, and the forward's activations.
struct BlockOp {
    linears: [Frozen; 6],
    norms: [(Tensor, Tensor); 2],
    /// LayerScale λ₁, λ₂: present for the pre-LN kind, absent for the post-LN one.
    scales: Option<[Tensor; 2]>,
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
    /// The frozen values in a fixed order: (W, b, Wᵀ) of the six linears, then (γ, β) of both
    /// norms, then λ₁, λ₂ when present.
    fn reads(&self) -> Reads<'_, impl std::ops::Deref<Target = Storage> + '_> {
        reads_of(
            self.linears
                .iter()
                .flat_map(|l| [&l.w, &l.b, &l.wt])
                .chain(self.norms.iter().flat_map(|(g, b)| [g, b]))
                .chain(self.scales.iter().flatten()),
        )
    }

    /// λ₁, λ₂ (after `reads`' norms), for the pre-LN kind.
    fn scales<'a, G: std::ops::Deref<Target = Storage>>(
        r: &'a Reads<'_, G>,
    ) -> candle_core::Result<(&'a [f32], &'a [f32])> {
        Ok((r.get(22, "encoder block")?, r.get(23, "encoder block")?))
    }

    /// Where linear `i`'s adapter gradient goes in a packed gradient of `len` values.
    fn slot_range(&self, r: &LinearValues<'_>, i: usize, len: usize) -> candle_core::Result<std::ops::Range<usize>> {
        let offset = match self.slots[i] {
            Slot::None => 0,
            Slot::LowRank { offset, .. } | Slot::Dense { offset } => offset,
        };
        let end = offset + r.adapter.len();
        if end > len {
            candle_core::bail!("encoder block: adapter {i} outside the packed values");
        }
        Ok(offset..end)
    }

    /// Whether linear `i` has an adapter.
    fn adapted(&self, i: usize) -> bool {
        !matches!(self.slots[i], Slot::None)
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
        let (w, b, wt) = (r.get(3 * i, what)?, r.get(3 * i + 1, what)?, r.get(3 * i + 2, what)?);
        Ok(LinearValues { wt: Some(wt), w, b, n, k, adapter })
    }

    /// γ and β of norm `j` (0 after attention, 1 after the FFN).
    fn norm<'a, G: std::ops::Deref<Target = Storage>>(
        r: &'a Reads<'_, G>,
        j: usize,
    ) -> candle_core::Result<(&'a [f32], &'a [f32])> {
        Ok((r.get(18 + 2 * j, "encoder block")?, r.get(19 + 2 * j, "encoder block")?))
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

/// x + λ ⊙ y, row by row (λ one row of d).
fn add_scaled(x: &[f32], lambda: &[f32], y: &[f32]) -> Vec<f32> {
    let d = lambda.len().max(1);
    let mut out = Vec::with_capacity(x.len());
    for (xr, yr) in x.chunks(d).zip(y.chunks(d)) {
        out.extend(xr.iter().zip(yr).zip(lambda).map(|((&x, &y), &l)| x + y * l));
    }
    out
}

/// g ⊙ λ, row by row.
fn scaled(g: &[f32], lambda: &[f32]) -> Vec<f32> {
    let d = lambda.len().max(1);
    let mut out = Vec::with_capacity(g.len());
    for gr in g.chunks(d) {
        out.extend(gr.iter().zip(lambda).map(|(&g, &l)| g * l));
    }
    out
}

/// a += b elementwise.
fn add_onto(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
}

fn none_error(what: &str, of: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: no {of}"))
}

/// The attention activations both backwards read: q, k, v, the kept probabilities, and the
/// attention output linear's input c (empty when that linear is frozen in the pre-LN kind).
struct Attn<'a> {
    heads: &'a Heads,
    ctx: &'a [f32],
}

/// What both backwards read: x, the packed adapters and ∂y (values), the rows M and attention
/// sizes, and whether x is trained (∂x wanted).
struct BackIn<'a> {
    x: &'a [f32],
    packed: &'a [f32],
    dy: &'a [f32],
    m: usize,
    dims: Dims,
    x_tracked: bool,
}

impl BlockOp {
    /// q, k, v = y·W_{q,k,v}ₑᵀ + b, then c = attention(q, k, v) (with its probabilities when the
    /// backward will want them): the attention half both forwards share, y the q/k/v input.
    fn attention_forward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        packed: &[f32],
        y: &[f32],
        (m, dims): (usize, Dims),
    ) -> candle_core::Result<(Heads, Vec<f32>)> {
        let what = "encoder block";
        let lin = |i| self.linear(r, packed, i);
        let (q, k, v) = (lin(0)?.forward(y, m, what)?, lin(1)?.forward(y, m, what)?, lin(2)?.forward(y, m, what)?);
        let mask = self.mask.as_deref().map(Vec::as_slice);
        let (ctx, probs) = attention::forward_values(dims, (&q, &k, &v), mask, self.keep);
        Ok((Heads { q, k, v, probs }, ctx))
    }

    /// GELU(h); when the backward will run (`keep`), h is replaced by GELU'(h) in the same pass.
    fn gelu(&self, h: &mut [f32]) -> Vec<f32> {
        if self.keep { gelu_and_slope_values(h) } else { gelu_values(h) }
    }

    /// The post-LN forward: y and what its backward needs.
    fn post_forward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        x: &[f32],
        packed: &[f32],
        (m, dims): (usize, Dims),
    ) -> candle_core::Result<(Vec<f32>, Saved)> {
        let what = "encoder block";
        let lin = |i| self.linear(r, packed, i);
        let (heads, ctx) = self.attention_forward(r, packed, x, (m, dims))?;
        let a = lin(3)?.forward(&ctx, m, what)?;
        let (g1, b1) = Self::norm(r, 0)?;
        let x1 = layer_norm_sum_values(&a, x, g1, b1, self.eps);
        let mut slope = lin(4)?.forward(&x1, m, what)?;
        let gh = self.gelu(&mut slope);
        let f = lin(5)?.forward(&gh, m, what)?;
        let (g2, b2) = Self::norm(r, 1)?;
        let y = layer_norm_sum_values(&f, &x1, g2, b2, self.eps);
        let gh = self.adapted(5).then_some(gh);
        Ok((y, Saved::Post(PostSaved { heads, ctx, a, x1, slope, f, gh })))
    }

    /// The pre-LN forward with LayerScale.
    fn pre_forward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        x: &[f32],
        packed: &[f32],
        (m, dims): (usize, Dims),
    ) -> candle_core::Result<(Vec<f32>, Saved)> {
        let what = "encoder block";
        let lin = |i| self.linear(r, packed, i);
        let (l1, l2) = Self::scales(r)?;
        let (g1, b1) = Self::norm(r, 0)?;
        let y1 = layer_norm_values(x, g1, b1, self.eps);
        let (heads, ctx) = self.attention_forward(r, packed, &y1, (m, dims))?;
        let x1 = add_scaled(x, l1, &lin(3)?.forward(&ctx, m, what)?);
        let (g2, b2) = Self::norm(r, 1)?;
        let y2 = layer_norm_values(&x1, g2, b2, self.eps);
        let mut slope = lin(4)?.forward(&y2, m, what)?;
        let gh = self.gelu(&mut slope);
        let out = add_scaled(&x1, l2, &lin(5)?.forward(&gh, m, what)?);
        let saved = PreSaved {
            y1: (0..3).any(|i| self.adapted(i)).then_some(y1),
            heads,
            ctx: self.adapted(3).then_some(ctx),
            x1,
            y2: self.adapted(4).then_some(y2),
            slope,
            gh: self.adapted(5).then_some(gh),
        };
        Ok((out, Saved::Pre(saved)))
    }

    /// Linear `i`'s backward at its input `input` for the upstream `g`: ∂input as `dx` says, its
    /// adapter's gradient into its slot of `dpacked`.
    fn linear_backward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        packed: &[f32],
        i: usize,
        (input, g, m): (&[f32], &[f32], usize),
        dx: Dx<'_>,
        dpacked: &mut [f32],
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let li = self.linear(r, packed, i)?;
        let rg = self.slot_range(&li, i, dpacked.len())?;
        li.backward(input, g, m, dx, &mut dpacked[rg], "encoder block grad")
    }

    /// [`BlockOp::linear_backward`] for a ∂input that must come back.
    fn linear_backward_new<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        packed: &[f32],
        i: usize,
        args: (&[f32], &[f32], usize),
        dpacked: &mut [f32],
    ) -> candle_core::Result<Vec<f32>> {
        self.linear_backward(r, packed, i, args, Dx::New, dpacked)?
            .ok_or_else(|| none_error("encoder block grad", "∂ of a linear's input"))
    }

    /// The attention half shared by both kinds, from the attention output linear's upstream `g`:
    /// ∂c = g·W_oₑ, (∂q, ∂k, ∂v) = attention'(∂c), then Σ ∂·W_{q,k,v}ₑ at the q/k/v input `y`,
    /// added onto `g` itself when `onto_g` (post-LN: ∂x = ∂s₁ + Σ) or into a new buffer; `None`
    /// when x is not trained.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        a: Attn<'_>,
        y: &[f32],
        g: Vec<f32>,
        onto_g: bool,
        inp: &BackIn<'_>,
        dpacked: &mut [f32],
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let (packed, m) = (inp.packed, inp.m);
        let dctx = self.linear_backward_new(r, packed, 3, (a.ctx, &g, m), dpacked)?;
        let mask = self.mask.as_deref().map(Vec::as_slice);
        let dqkv = attention::backward_values(
            inp.dims,
            (&a.heads.q, &a.heads.k, &a.heads.v),
            &dctx,
            mask,
            a.heads.probs.as_deref(),
        );
        drop(dctx);
        let n = inp.x.len();
        let mut acc = onto_g.then_some(g);
        for i in 0..3 {
            let dx = match (&mut acc, inp.x_tracked) {
                (_, false) => Dx::Skip,
                (None, true) => Dx::New,
                (Some(d), true) => Dx::AddTo(d),
            };
            if let Some(d) = self.linear_backward(r, packed, i, (y, &dqkv[i * n..(i + 1) * n], m), dx, dpacked)? {
                acc = Some(d);
            }
        }
        Ok(acc.filter(|_| inp.x_tracked))
    }

    /// The post-LN backward: ∂x (when `x_tracked`), with the adapter gradients written into
    /// `dpacked`.
    fn post_backward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        s: &PostSaved,
        inp: &BackIn<'_>,
        dpacked: &mut [f32],
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let (x, packed, m) = (inp.x, inp.packed, inp.m);
        // FFN: ∂s₂, then ∂h = (∂s₂·W₂ₑ) ⊙ GELU'(h), then ∂x₁ = ∂s₂ + ∂h·W₁ₑ in ∂s₂'s buffer.
        let (g2, _) = Self::norm(r, 1)?;
        let mut ds2 = layer_norm_sum_grad_values(&s.f, &s.x1, g2, inp.dy, self.eps);
        let gh = s.gh.as_deref().unwrap_or(&[]);
        let mut dgh = self.linear_backward_new(r, packed, 5, (gh, &ds2, m), dpacked)?;
        gelu_slope_grad_in_place(&s.slope, &mut dgh);
        self.linear_backward(r, packed, 4, (&s.x1, &dgh, m), Dx::AddTo(&mut ds2), dpacked)?;
        drop(dgh);
        let dx1 = ds2;
        // Attention: ∂s₁, then ∂x = ∂s₁ + Σ ∂·Wₑ in ∂s₁'s buffer.
        let (g1, _) = Self::norm(r, 0)?;
        let ds1 = layer_norm_sum_grad_values(&s.a, x, g1, &dx1, self.eps);
        drop(dx1);
        let saved = Attn { heads: &s.heads, ctx: &s.ctx };
        self.attention_backward(r, saved, x, ds1, true, inp, dpacked)
    }

    /// The pre-LN backward (as [`BlockOp::post_backward`]).
    fn pre_backward<G: std::ops::Deref<Target = Storage>>(
        &self,
        r: &Reads<'_, G>,
        s: &PreSaved,
        inp: &BackIn<'_>,
        dpacked: &mut [f32],
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let (x, packed, dy, m) = (inp.x, inp.packed, inp.dy, inp.m);
        let (l1, l2) = Self::scales(r)?;
        // MLP: ∂h = ((λ₂ ⊙ ∂out)·W₂ₑ) ⊙ GELU'(h), ∂y₂ = ∂h·W₁ₑ, ∂x₁ = ∂out + LN₂'(∂y₂).
        let gh = s.gh.as_deref().unwrap_or(&[]);
        let mut dgh = self.linear_backward_new(r, packed, 5, (gh, &scaled(dy, l2), m), dpacked)?;
        gelu_slope_grad_in_place(&s.slope, &mut dgh);
        let dy2 = self.linear_backward_new(r, packed, 4, (s.y2.as_deref().unwrap_or(&[]), &dgh, m), dpacked)?;
        drop(dgh);
        let (g2, _) = Self::norm(r, 1)?;
        let mut dx1 = layer_norm_grad_values(&s.x1, g2, &dy2, self.eps);
        drop(dy2);
        add_onto(&mut dx1, dy);
        // Attention from (λ₁ ⊙ ∂x₁): ∂y₁ in one buffer, then ∂x = ∂x₁ + LN₁'(∂y₁).
        let ctx = s.ctx.as_deref().unwrap_or(&[]);
        let saved = Attn { heads: &s.heads, ctx };
        let y1 = s.y1.as_deref().unwrap_or(&[]);
        let Some(dy1) = self.attention_backward(r, saved, y1, scaled(&dx1, l1), false, inp, dpacked)? else {
            return Ok(None);
        };
        let (g1, _) = Self::norm(r, 0)?;
        let mut dx = layer_norm_grad_values(x, g1, &dy1, self.eps);
        add_onto(&mut dx, &dx1);
        Ok(Some(dx))
    }
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        if self.scales.is_some() { "superlora-pre-ln-block" } else { "superlora-post-ln-block" }
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
        let (y, saved) = if self.scales.is_some() {
            self.pre_forward(&r, x, packed, (m, dims))?
        } else {
            self.post_forward(&r, x, packed, (m, dims))?
        };
        if self.keep {
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
        let Some(saved) = lock.as_ref() else { candle_core::bail!("{what}: no activations kept by the forward") };
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
        let mut dpacked = vec![0f32; pv.len()];
        let inputs = BackIn { x: xv, packed: pv, dy, m, dims, x_tracked };
        let dx = match saved {
            Saved::Post(s) => self.post_backward(&r, s, &inputs, &mut dpacked)?,
            Saved::Pre(s) => self.pre_backward(&r, s, &inputs, &mut dpacked)?,
        };
        let dev = x.device();
        let dx = match dx {
            Some(d) if x_tracked => Some(Tensor::from_vec(d, x.dims(), dev)?),
            _ => None,
        };
        let dp = if packed_tracked { Some(Tensor::from_vec(dpacked, packed.dims(), dev)?) } else { None };
        Ok((dx, dp))
    }
}

/// The frozen parts of one block, in module order: query, key, value, attention output, FFN in,
/// FFN out; the two norms (post-LN: after attention and after the FFN; pre-LN: before each); and
/// for the pre-LN kind its LayerScale λ₁, λ₂ (`scales`; `None` is the post-LN kind).
pub(crate) struct Block<'a> {
    pub(crate) linears: [&'a Linear; 6],
    pub(crate) norms: [&'a Norm; 2],
    pub(crate) scales: Option<[&'a Tensor; 2]>,
}

impl Block<'_> {
    /// A pre-LN block (`scales` present) over x [B, T, H]: as one node when [`Block::forward`]
    /// applies and `composed` is false, from per-op nodes otherwise (the one node's test oracle,
    /// and the path off the CPU or outside f32):
    /// x₁ = x + λ₁ ⊙ O(attention(LN₁ x)), out = x₁ + λ₂ ⊙ W₂ₑ·GELU(W₁ₑ·LN₂ x₁).
    /// `layer_scale` false: the model has no LayerScale (its `scales` are ones, which the one node
    /// multiplies by exactly) and the per-op path leaves the products out.
    pub(crate) fn pre_ln(
        &self,
        x: &Tensor,
        heads: usize,
        eps: f64,
        deltas: &Deltas,
        composed: bool,
        layer_scale: bool,
    ) -> Result<Tensor> {
        let Some([l1, l2]) = self.scales else {
            return Err(candle_core::Error::Msg("internal: pre_ln on a block without scales (post-LN)".into()).into());
        };
        if !composed && let Some(y) = self.forward(x, None, heads, eps, deltas)? {
            return Ok(y);
        }
        let scaled = |t: Tensor, l: &Tensor| if layer_scale { t.broadcast_mul(l) } else { Ok(t) };
        let [q, k, v, o, f1, f2] = self.linears;
        let y = self.norms[0].forward(x, eps)?;
        let (q, k, v) = (q.forward(&y, deltas)?, k.forward(&y, deltas)?, v.forward(&y, deltas)?);
        let a = o.forward(&crate::ops::attention(&q, &k, &v, heads, None)?, deltas)?;
        let x = (x + scaled(a, l1)?)?;
        let y = self.norms[1].forward(&x, eps)?;
        let m = f2.forward_gelu(&f1.forward(&y, deltas)?, deltas)?;
        Ok((x + scaled(m, l2)?)?)
    }

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
            Ok(Frozen { w: l.weight.detach().contiguous()?, wt: l.weight_t()?, b })
        };
        let [q, k, v, o, f1, f2] = self.linears;
        let norm = |n: &Norm| -> Result<(Tensor, Tensor)> {
            Ok((n.gamma.detach().contiguous()?, n.beta.detach().contiguous()?))
        };
        let scales = match self.scales {
            Some([l1, l2]) if cpu_f32(l1) && cpu_f32(l2) => {
                Some([l1.detach().contiguous()?, l2.detach().contiguous()?])
            }
            Some(_) => return Ok(None),
            None => None,
        };
        let op = BlockOp {
            linears: [frozen(q)?, frozen(k)?, frozen(v)?, frozen(o)?, frozen(f1)?, frozen(f2)?],
            norms: [norm(self.norms[0])?, norm(self.norms[1])?],
            scales,
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
