//! Multi-head scaled dot-product attention as one op with its own backward (f32 on the CPU).
//!
//! Equation, per example b and head h, with Q, K, V the T x d column block h of q, k, v
//! ([B, T, H·d], d = head size, s = 1/√d) and m_b the additive key mask of example b (0 keep, large
//! negative drop; none for images):
//!
//!   S = s·Q·Kᵀ + 1·m_bᵀ,   P = softmax over each row of S,   C = P·V   (block h of the output).
//!
//! Backward, P recomputed from Q and K by this op (nothing is kept between its forward and
//! backward), read from the forward by the one-node encoder blocks ([`crate::block`], B·H·T² more
//! floats kept per block for one product and one softmax fewer):
//!
//!   ∂V = Pᵀ·∂C,   ∂P = ∂C·Vᵀ,   ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P)),   ∂Q = s·∂S·K,   ∂K = s·∂Sᵀ·Q.
//!
//! Symbols → variables: B `b`, T `t`, H `heads`, d `d`, H·d `hd`, s `scale`, m `mask` ([B, T]),
//! P `p` (a T x T buffer per task), ∂S `ds`.
//!
//! Why one op: candle's backward adds each node's gradient to a zero tensor of the same size
//! (`GradStore::or_insert` + `add`), a memset and an add per node. The composed attention
//! ([`crate::ops::attention_reference`]: per-head split, two batched products, scale, mask,
//! softmax, merge) is about 24 nodes per layer, each passing a B·T·H·d or B·H·T·T gradient; this op
//! is one node. The products run on the strided blocks in place (no split or merge copies), one
//! (example, head) per task, through [`crate::small`] (an AVX-512 register-tile kernel that
//! allocates nothing; Kᵀ and Vᵀ of the head gathered into scratch first), with gemm's bits. The
//! composed function is the oracle (`tests/ops.rs`).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::Result;
use crate::ops::exp_nonpos;
use crate::simd::multiversion;
use crate::small::{Product, small_product, small_product_into, transpose_into};

/// The sizes of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    /// q, k, v of [b, t, hd] split into `heads`; an error when hd does not split.
    pub(crate) fn new(b: usize, t: usize, hd: usize, heads: usize) -> candle_core::Result<Self> {
        if heads == 0 || !hd.is_multiple_of(heads) {
            candle_core::bail!("attention: {hd} features do not split into {heads} heads");
        }
        Ok(Dims { b, t, heads, d: hd / heads })
    }

    fn hd(&self) -> usize {
        self.heads * self.d
    }
    /// Offset of block (example `bi`, head `h`) in a [B, T, H·d] buffer.
    fn base(&self, item: usize) -> usize {
        let (bi, h) = (item / self.heads, item % self.heads);
        bi * self.t * self.hd() + h * self.d
    }
}

/// A raw pointer that tasks writing disjoint elements may share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: each task writes only the elements of its own (example, head) block.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// P = softmax(s·Q·Kᵀ + mask) of one (example, head) into `p` (T x T, row-major); `kt` is scratch
/// for Kᵀ (d x T).
#[allow(clippy::too_many_arguments)]
fn probs(
    q: &[f32],
    k: &[f32],
    mask: Option<&[f32]>,
    dims: Dims,
    scale: f32,
    item: usize,
    kt: &mut [f32],
    p: &mut [f32],
) {
    let (t, d, hd, base) = (dims.t, dims.d, dims.hd(), dims.base(item));
    transpose_into(&k[base..], (t, d), hd, kt);
    small_product(Product { dims: (t, t, d), a: &q[base..], a_strides: (hd, 1), b: kt, brs: t, scale }, p);
    let bi = item / dims.heads;
    softmax_rows(p, t, mask.map(|m| &m[bi * t..(bi + 1) * t]));
}

multiversion! {
    /// Each row of t values of `p`, plus the key mask when given, through softmax in place.
    fn softmax_rows(p: &mut [f32], t: usize, mask: Option<&[f32]>) {
        for row in p.chunks_exact_mut(t) {
            if let Some(m) = mask {
                row.iter_mut().zip(m).for_each(|(v, &m)| *v += m);
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // The exponentials first, then their sum in the same order: the exp loop vectorises
            // once no sequential sum runs through it.
            for v in row.iter_mut() {
                *v = exp_nonpos(*v - max);
            }
            let sum: f32 = row.iter().sum();
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

multiversion! {
    /// ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P)) in place of ∂P (`ds`), rows of t.
    fn softmax_grad_rows(ds: &mut [f32], p: &[f32], t: usize) {
        for (dsr, pr) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
            let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
            dsr.iter_mut().zip(pr).for_each(|(x, &pv)| *x = pv * (*x - dot));
        }
    }
}

/// The f32 values of a contiguous CPU tensor.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("attention: inputs must be contiguous f32"),
    }
}

/// The forward op: q, k, v → C.
struct AttentionOp {
    heads: usize,
    /// The key mask, [B, T] flattened.
    mask: Option<Arc<Vec<f32>>>,
}

impl AttentionOp {
    fn dims(&self, shape: &Shape) -> candle_core::Result<Dims> {
        let (b, t, hd) = shape.dims3()?;
        if self.mask.as_ref().is_some_and(|m| m.len() != b * t) {
            candle_core::bail!("attention: the mask does not have B·T = {} entries", b * t);
        }
        Dims::new(b, t, hd, self.heads)
    }
}

fn scale(dims: Dims) -> f32 {
    1.0 / (dims.d as f32).sqrt()
}

/// C [B, T, H·d] from q, k, v (each [B, T, H·d], lengths checked by the caller) and the key mask
/// ([B·T]), one (example, head) per parallel task; with `keep`, also every P (B·H blocks of T x T,
/// block b·H + h), which [`backward_values`] then reads instead of forming it again.
pub(crate) fn forward_values(
    dims: Dims,
    (q, k, v): (&[f32], &[f32], &[f32]),
    mask: Option<&[f32]>,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (t, hd, scale) = (dims.t, dims.hd(), scale(dims));
    // Written without a zero fill: the (example, head) blocks cover every element once.
    let mut out: Vec<f32> = Vec::with_capacity(q.len());
    let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    let item_out = |kt: &mut [f32], p: &mut [f32], item: usize| {
        probs(q, k, mask, dims, scale, item, kt, p);
        let base = dims.base(item);
        let c = Product { dims: (t, dims.d, t), a: p, a_strides: (t, 1), b: &v[base..], brs: hd, scale: 1.0 };
        // SAFETY: C's block (T rows of d at stride H·d from `base`) lies inside `out` (length
        // B·T·H·d) and belongs to this item alone.
        unsafe { small_product_into(c, (dst.at(base), hd)) };
    };
    if keep {
        let mut all = vec![0f32; dims.b * dims.heads * t * t];
        all.par_chunks_mut((t * t).max(1))
            .enumerate()
            .for_each_init(|| vec![0f32; dims.d * t], |kt, (item, p)| item_out(kt, p, item));
        // SAFETY: every (example, head) block of the B·T·H·d values was written above.
        unsafe { out.set_len(q.len()) };
        return (out, Some(all));
    }
    (0..dims.b * dims.heads)
        .into_par_iter()
        .for_each_init(|| (vec![0f32; dims.d * t], vec![0f32; t * t]), |(kt, p), item| item_out(kt, p, item));
    // SAFETY: as above.
    unsafe { out.set_len(q.len()) };
    (out, None)
}

/// [∂Q, ∂K, ∂V] (one [B, T, H·d] after the other) for the upstream ∂C `g` (shapes as
/// [`forward_values`]), P read from `kept` (the forward's, bit for bit what it would be formed
/// again) or formed again per (example, head).
pub(crate) fn backward_values(
    dims: Dims,
    (q, k, v): (&[f32], &[f32], &[f32]),
    g: &[f32],
    mask: Option<&[f32]>,
    kept: Option<&[f32]>,
) -> Vec<f32> {
    let (t, d, hd, scale, n) = (dims.t, dims.d, dims.hd(), scale(dims), q.len());
    // Written without a zero fill: the (example, head) blocks of ∂Q, ∂K and ∂V cover every element.
    let mut out: Vec<f32> = Vec::with_capacity(3 * n);
    let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    (0..dims.b * dims.heads).into_par_iter().for_each_init(
        || (vec![0f32; d * t], vec![0f32; t * t], vec![0f32; t * t]),
        |(transposed, scratch, ds), item| {
            let p: &[f32] = match kept {
                Some(all) => &all[item * t * t..(item + 1) * t * t],
                None => {
                    probs(q, k, mask, dims, scale, item, transposed, scratch);
                    scratch
                }
            };
            let base = dims.base(item);
            let (dq, dk, dv) = ((dst.at(base), hd), (dst.at(n + base), hd), (dst.at(2 * n + base), hd));
            // SAFETY (each product into `out`): every block is T rows of d at stride H·d from
            // `base` inside its B·T·H·d part of `out` (at 0, n, 2n), and this item alone writes it.
            // ∂V = Pᵀ·∂C
            unsafe {
                small_product_into(
                    Product { dims: (t, d, t), a: p, a_strides: (1, t), b: &g[base..], brs: hd, scale: 1.0 },
                    dv,
                )
            };
            // ∂P = ∂C·Vᵀ
            transpose_into(&v[base..], (t, d), hd, transposed);
            small_product(
                Product { dims: (t, t, d), a: &g[base..], a_strides: (hd, 1), b: transposed, brs: t, scale: 1.0 },
                ds,
            );
            // ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))
            softmax_grad_rows(ds.as_mut_slice(), p, t);
            // ∂Q = s·∂S·K, ∂K = s·∂Sᵀ·Q
            unsafe {
                small_product_into(
                    Product { dims: (t, d, t), a: ds, a_strides: (t, 1), b: &k[base..], brs: hd, scale },
                    dq,
                )
            };
            unsafe {
                small_product_into(
                    Product { dims: (t, d, t), a: ds, a_strides: (1, t), b: &q[base..], brs: hd, scale },
                    dk,
                )
            };
        },
    );
    // SAFETY: every block of the three parts was written above.
    unsafe { out.set_len(3 * n) };
    out
}

/// The sizes and the q, k, v values of one call.
type Inputs<'a> = (Dims, &'a [f32], &'a [f32], &'a [f32]);

/// q, k, v as slices of one shape, checked.
fn inputs<'a>(
    op: &AttentionOp,
    (qs, ql): (&'a CpuStorage, &Layout),
    (ks, kl): (&'a CpuStorage, &Layout),
    (vs, vl): (&'a CpuStorage, &Layout),
) -> candle_core::Result<Inputs<'a>> {
    if ql.shape() != kl.shape() || ql.shape() != vl.shape() {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} differ", ql.shape(), kl.shape(), vl.shape());
    }
    Ok((op.dims(ql.shape())?, values(qs, ql)?, values(ks, kl)?, values(vs, vl)?))
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "superlora-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (dims, q, k, v) = inputs(self, (qs, ql), (ks, kl), (vs, vl))?;
        let (out, _) = forward_values(dims, (q, k, v), self.mask.as_deref().map(Vec::as_slice), false);
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionGradOp { heads: self.heads, mask: self.mask.clone(), grad: grad.contiguous()? };
        let packed = q.detach().apply_op3_no_bwd(&k.detach(), &v.detach(), &op)?;
        let part = |i: usize| packed.get(i);
        Ok((Some(part(0)?), Some(part(1)?), Some(part(2)?)))
    }
}

/// The backward op: q, k, v (and ∂C) → [∂Q, ∂K, ∂V] stacked on a new first axis.
struct AttentionGradOp {
    heads: usize,
    mask: Option<Arc<Vec<f32>>>,
    grad: Tensor,
}

impl CustomOp3 for AttentionGradOp {
    fn name(&self) -> &'static str {
        "superlora-attention-grad"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let fwd = AttentionOp { heads: self.heads, mask: self.mask.clone() };
        let (dims, q, k, v) = inputs(&fwd, (qs, ql), (ks, kl), (vs, vl))?;
        let (gstore, gl) = self.grad.storage_and_layout();
        let Storage::Cpu(gs) = &*gstore else { candle_core::bail!("attention: the gradient is not on the CPU") };
        if gl.shape() != ql.shape() {
            candle_core::bail!("attention: gradient {:?} for output {:?}", gl.shape(), ql.shape());
        }
        let g = values(gs, gl)?;
        let out = backward_values(dims, (q, k, v), g, self.mask.as_deref().map(Vec::as_slice), None);
        let (b, t2, hd2) = ql.shape().dims3()?;
        Ok((CpuStorage::F32(out), Shape::from((3, b, t2, hd2))))
    }
}

/// The fused attention when it applies (CPU, f32, `bias` absent or a key mask [B, 1, 1, T]);
/// `None` otherwise, for the composed path.
pub(crate) fn fused(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    if !q.device().is_cpu() || q.dtype() != DType::F32 || k.dtype() != DType::F32 || v.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, t, _) = q.dims3()?;
    let mask = match bias {
        None => None,
        Some(m) if m.dims() == [b, 1, 1, t] && m.dtype() == DType::F32 => {
            Some(Arc::new(m.flatten_all()?.to_vec1::<f32>()?))
        }
        Some(_) => return Ok(None),
    };
    let op = AttentionOp { heads, mask };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}
