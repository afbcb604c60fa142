//! Building blocks with a backward, for models whose base weights are frozen.
//!
//! candle's fused `softmax_last_dim`, `layer_norm` and friends have no backward: gradients through
//! them are silently missing, with no error (trap 1). Its `matmul` backward computes the gradient
//! of a frozen weight anyway, wasted work on every step (trap 2). So:
//! - [`frozen_linear`]: y = x·Wᵀ + b as one custom op whose backward returns ∂x only;
//! - [`adapted_linear`]: y = x·(W + ΔW)ᵀ + b, the gradient reaching ΔW (and x), b kept frozen;
//! - [`low_rank_linear`]: y = x·Wᵀ + (x·Q)·Pᵀ + b for ΔW = P·Qᵀ kept factored (weight-wise LoRA in
//!   training), so neither ΔW nor its d_out x d_in gradient is ever formed;
//! - [`layer_norm`], [`softmax_last`]: composed from ops that all have a backward;
//! - [`attention`]: one op with its own backward ([`crate::attention`]), [`attention_reference`]
//!   composed.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor};

use crate::Result;
use crate::dense::{View, par_filled, par_written, product, product_add};
use crate::simd::{STREAM_BLOCK, multiversion, prefetch_ahead};
use superlora_core::lanes::lane_sum;

/// `f` on the contiguous f32 values of a CPU tensor; an error naming `what` otherwise.
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else { candle_core::bail!("{what}: not on the CPU") };
    f(f32_slice(s, layout, what)?)
}

/// x [.., K] (contiguous) seen as rows: (M, the [M, K] layout). Errors name `what`.
fn row_view(xl: &Layout, k: usize, what: &str) -> candle_core::Result<(usize, Layout)> {
    let Some((start, _)) = xl.contiguous_offsets() else { candle_core::bail!("{what}: x must be contiguous") };
    if xl.shape().dims().last() != Some(&k) || k == 0 {
        candle_core::bail!("{what}: x {:?} does not end in {k}", xl.shape());
    }
    let m = xl.shape().elem_count() / k;
    Ok((m, Layout::contiguous_with_offset((m, k), start)))
}

/// `dims` with the last one replaced by `n` (the output shape of a linear on [.., K]).
fn with_last(dims: &[usize], n: usize) -> Shape {
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Shape::from(shape)
}

/// The adapter of one linear, as values: none, ΔW = P·Qᵀ kept factored (P [N, r], Q [K, r]), or
/// ΔW [N, K] formed.
#[derive(Clone, Copy)]
pub(crate) enum AdapterValues<'a> {
    /// Frozen.
    None,
    /// ΔW = P·Qᵀ.
    LowRank { p: &'a [f32], q: &'a [f32], r: usize },
    /// ΔW.
    Dense(&'a [f32]),
}

impl AdapterValues<'_> {
    /// Trainable values it holds (the length of its gradient: P then Q, or ΔW).
    pub(crate) fn len(&self) -> usize {
        match self {
            AdapterValues::None => 0,
            AdapterValues::LowRank { p, q, .. } => p.len() + q.len(),
            AdapterValues::Dense(d) => d.len(),
        }
    }
}

/// Where a linear's backward puts ∂x.
pub(crate) enum Dx<'a> {
    /// Nowhere (nothing trained feeds x).
    Skip,
    /// A new vector.
    New,
    /// Added onto this [M, K] gradient in place (no zero-filled vector, no separate add).
    AddTo(&'a mut [f32]),
}

/// One linear on row-major f32 values: y = x·(W + ΔW)ᵀ + b, W [N, K] and b [N] frozen, ΔW from
/// `adapter` (for a low-rank ΔW: x·Wᵀ + (x·Q)·Pᵀ, never forming ΔW). Shared by the linear ops
/// below and the one-node encoder block ([`crate::block`]).
pub(crate) struct LinearValues<'a> {
    /// Wᵀ [K, N] stored, when the caller has it: the forward then multiplies x by it as rows
    /// (a few percent faster in gemm than W read transposed; other bits in the last place).
    pub(crate) wt: Option<&'a [f32]>,
    pub(crate) w: &'a [f32],
    pub(crate) b: &'a [f32],
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) adapter: AdapterValues<'a>,
}

impl LinearValues<'_> {
    /// W + ΔW when ΔW is formed, W otherwise.
    fn effective(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.adapter {
            AdapterValues::Dense(d) => self.w.iter().zip(d).map(|(a, b)| a + b).collect::<Vec<f32>>().into(),
            _ => self.w.into(),
        }
    }

    /// y [M, N] for the rows x [M, K].
    pub(crate) fn forward(&self, x: &[f32], m: usize, what: &str) -> candle_core::Result<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        // b̂ + x·Wᵀ (W + ΔW when formed), then for a factored ΔW + (x·Q)·Pᵀ onto the same output.
        let w = self.effective();
        let mut out = match (self.wt, self.adapter) {
            (Some(wt), AdapterValues::None | AdapterValues::LowRank { .. }) => {
                product(m, k, n, View::rows(x, k), View::rows(wt, n), Some(self.b), what)?
            }
            _ => product(m, k, n, View::rows(x, k), View::transposed(&w, k), Some(self.b), what)?,
        };
        if let AdapterValues::LowRank { p, q, r } = self.adapter {
            let xq = product(m, k, r, View::rows(x, k), View::rows(q, r), None, what)?;
            product_add(&mut out, m, r, n, View::rows(&xq, r), View::transposed(p, r), what)?;
        }
        Ok(out)
    }

    /// The backward for the upstream gradient g [M, N] at input x [M, K]: ∂x = g·(W + ΔW) (for a
    /// factored ΔW: g·W + (g·P)·Qᵀ) as `dx` says, returned when [`Dx::New`]; the adapter's
    /// gradient written into `dadapter` (its [`AdapterValues::len`]): ∂P = gᵀ·(x·Q), ∂Q = xᵀ·(g·P),
    /// or ∂ΔW = gᵀ·x.
    pub(crate) fn backward(
        &self,
        x: &[f32],
        g: &[f32],
        m: usize,
        dx: Dx<'_>,
        dadapter: &mut [f32],
        what: &str,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let (n, k) = (self.n, self.k);
        if dadapter.len() != self.adapter.len() {
            candle_core::bail!("{what}: {} adapter gradients for {} values", dadapter.len(), self.adapter.len());
        }
        let gp = match self.adapter {
            AdapterValues::LowRank { p, r, .. } => {
                Some(product(m, n, r, View::rows(g, n), View::rows(p, r), None, what)?)
            }
            _ => None,
        };
        let w = self.effective();
        let low_rank_onto = |d: &mut [f32]| -> candle_core::Result<()> {
            if let (Some(gp), AdapterValues::LowRank { q, r, .. }) = (&gp, self.adapter) {
                product_add(d, m, r, k, View::rows(gp, r), View::transposed(q, r), what)?;
            }
            Ok(())
        };
        let out = match dx {
            Dx::Skip => None,
            Dx::New => {
                let mut d = product(m, n, k, View::rows(g, n), View::rows(&w, k), None, what)?;
                low_rank_onto(&mut d)?;
                Some(d)
            }
            Dx::AddTo(d) => {
                product_add(d, m, n, k, View::rows(g, n), View::rows(&w, k), what)?;
                low_rank_onto(d)?;
                None
            }
        };
        match (self.adapter, &gp) {
            (AdapterValues::LowRank { p, q, r }, Some(gp)) => {
                let xq = product(m, k, r, View::rows(x, k), View::rows(q, r), None, what)?;
                let dp = product(n, m, r, View::transposed(g, n), View::rows(&xq, r), None, what)?;
                let dq = product(k, m, r, View::transposed(x, k), View::rows(gp, r), None, what)?;
                dadapter[..p.len()].copy_from_slice(&dp);
                dadapter[p.len()..p.len() + q.len()].copy_from_slice(&dq);
            }
            (AdapterValues::Dense(_), _) => {
                dadapter.copy_from_slice(&product(n, m, k, View::transposed(g, n), View::rows(x, k), None, what)?);
            }
            _ => {}
        }
        Ok(out)
    }
}

/// x·Wᵀ + b on CPU with W and b frozen (backward gives ∂x only). x: [.., K] (contiguous; every
/// leading dim is a row, so no reshape node sits on either side: each node costs candle's
/// backward a zero-filled gradient and an add), W: [N, K], b: [N]; y: [.., N].
struct FrozenLinearOp;

impl CustomOp3 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "superlora-frozen-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = wl.shape().dims2()?;
        if bl.shape().dims() != [n] {
            candle_core::bail!("frozen linear: W {:?} and b {:?} do not fit", wl.shape(), bl.shape());
        }
        let (m, x2) = row_view(xl, k, "frozen linear")?;
        if let (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) = (x, w, b)
            && wl.is_contiguous()
        {
            // b̂ + x·Wᵀ in one product, no zero-filled output and no separate bias pass.
            let what = "frozen linear";
            let lin = LinearValues {
                wt: None,
                w: f32_slice(w, wl, what)?,
                b: f32_slice(b, bl, what)?,
                n,
                k,
                adapter: AdapterValues::None,
            };
            let out = lin.forward(f32_slice(x, &x2, what)?, m, what)?;
            return Ok((CpuStorage::F32(out), with_last(xl.shape().dims(), n)));
        }
        let mut out = x.matmul(w, (1, m, n, k), &x2, &wl.transpose(0, 1)?)?;
        let Some((bs, be)) = bl.contiguous_offsets() else {
            candle_core::bail!("frozen linear: bias must be contiguous")
        };
        match (&mut out, b) {
            (CpuStorage::F32(o), CpuStorage::F32(b)) => add_rows(o, &b[bs..be]),
            (CpuStorage::F64(o), CpuStorage::F64(b)) => add_rows(o, &b[bs..be]),
            _ => candle_core::bail!("frozen linear: f32 or f64 with matching dtypes"),
        }
        Ok((out, with_last(xl.shape().dims(), n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = w.dim(0)?;
        if !x.track_op() {
            return Ok((None, None, None));
        }
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let k = w.dim(1)?;
            let m = grad.elem_count() / n.max(1);
            let what = "frozen linear grad";
            let dx = with_f32(&grad.contiguous()?, what, |g| {
                with_f32(&w.contiguous()?, what, |w| {
                    with_f32(&b.contiguous()?, what, |b| {
                        let lin = LinearValues { wt: None, w, b, n, k, adapter: AdapterValues::None };
                        lin.backward(&[], g, m, Dx::New, &mut [], what)
                    })
                })
            })?;
            let dx = dx.ok_or_else(|| candle_core::Error::Msg(format!("{what}: no ∂x")))?;
            return Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), None, None));
        }
        let g2 = grad.contiguous()?.reshape((grad.elem_count() / n.max(1), n))?;
        Ok((Some(g2.matmul(w)?.reshape(x.dims())?), None, None))
    }
}

/// y = x·Wᵀ + (x·Q)·Pᵀ + b with W [N, K] and b [N] frozen (held by the op), x [.., K], P [N, r]
/// and Q [K, r] the op's inputs (f32, CPU). Backward: ∂x = ∂y·W + (∂y·P)·Qᵀ, ∂P = ∂yᵀ·(x·Q),
/// ∂Q = xᵀ·(∂y·P), computed on the rows [M, K] / [M, N] (M = every leading dim).
struct LowRankLinearOp {
    w: Tensor,
    b: Tensor,
}

impl CustomOp3 for LowRankLinearOp {
    fn name(&self) -> &'static str {
        "superlora-low-rank-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        qs: &CpuStorage,
        ql: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.w.dims2()?;
        let ((n2, r), (k2, r2)) = (pl.shape().dims2()?, ql.shape().dims2()?);
        if n2 != n || k2 != k || r2 != r || self.b.dims() != [n] {
            candle_core::bail!(
                "low-rank linear: x {:?}, W {:?}, P {:?}, Q {:?} do not fit",
                xl.shape(),
                self.w.shape(),
                pl.shape(),
                ql.shape()
            );
        }
        let (m, x2) = row_view(xl, k, "low-rank linear")?;
        let what = "low-rank linear";
        let (x, p, q) = (f32_slice(xs, &x2, what)?, f32_slice(ps, pl, what)?, f32_slice(qs, ql, what)?);
        let out = with_f32(&self.w, what, |w| {
            with_f32(&self.b, what, |b| {
                LinearValues { wt: None, w, b, n, k, adapter: AdapterValues::LowRank { p, q, r } }.forward(x, m, what)
            })
        })?;
        Ok((CpuStorage::F32(out), with_last(xl.shape().dims(), n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        q: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = self.w.dims2()?;
        let m = x.elem_count() / k.max(1);
        let r = q.dim(1)?;
        let what = "low-rank linear grad";
        // x feeding nothing trained (the first block's input): no ∂x, which candle would
        // zero-fill and add for nobody, after the largest product of this backward.
        let dx_mode = if x.track_op() { Dx::New } else { Dx::Skip };
        let (x, grad, p, q) = (x.contiguous()?, grad.contiguous()?, p.contiguous()?, q.contiguous()?);
        let mut dpq = vec![0f32; (n + k) * r];
        let dx = with_f32(&x, what, |xv| {
            with_f32(&grad, what, |g| {
                with_f32(&p, what, |pv| {
                    with_f32(&q, what, |qv| {
                        with_f32(&self.w, what, |w| {
                            with_f32(&self.b, what, |b| {
                                let lin = LinearValues {
                                    wt: None,
                                    w,
                                    b,
                                    n,
                                    k,
                                    adapter: AdapterValues::LowRank { p: pv, q: qv, r },
                                };
                                lin.backward(xv, g, m, dx_mode, &mut dpq, what)
                            })
                        })
                    })
                })
            })
        })?;
        let dq = dpq.split_off(n * r);
        let dev = x.device();
        let dx = dx.map(|d| Tensor::from_vec(d, x.dims(), dev)).transpose()?;
        Ok((dx, Some(Tensor::from_vec(dpq, (n, r), dev)?), Some(Tensor::from_vec(dq, (k, r), dev)?)))
    }
}

/// y = x·(W + ΔW)ᵀ + b with W [N, K] and b [N] frozen (held by the op), x [.., K] and ΔW [N, K]
/// the op's inputs (f32, CPU). Backward: ∂x = ∂y·(W + ΔW), ∂ΔW = ∂yᵀ·x on the rows.
struct AdaptedLinearOp {
    w: Tensor,
    b: Tensor,
}

impl CustomOp2 for AdaptedLinearOp {
    fn name(&self) -> &'static str {
        "superlora-adapted-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.w.dims2()?;
        if dl.shape().dims() != [n, k] || self.b.dims() != [n] {
            candle_core::bail!(
                "adapted linear: x {:?}, W {:?}, ΔW {:?} do not fit",
                xl.shape(),
                self.w.shape(),
                dl.shape()
            );
        }
        let what = "adapted linear";
        let delta = f32_slice(ds, dl, what)?;
        let (m, x2) = row_view(xl, k, what)?;
        let x = f32_slice(xs, &x2, what)?;
        // W + ΔW read in place (no copy of W per call).
        let out = with_f32(&self.w, what, |w| {
            with_f32(&self.b, what, |b| {
                LinearValues { wt: None, w, b, n, k, adapter: AdapterValues::Dense(delta) }.forward(x, m, what)
            })
        })?;
        Ok((CpuStorage::F32(out), with_last(xl.shape().dims(), n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        delta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = self.w.dims2()?;
        let m = x.elem_count() / k.max(1);
        let what = "adapted linear grad";
        // Nothing trained feeding x (the first block's input): ∂ΔW only.
        let dx_mode = if x.track_op() { Dx::New } else { Dx::Skip };
        let (x, grad, delta) = (x.contiguous()?, grad.contiguous()?, delta.contiguous()?);
        let mut dd = vec![0f32; n * k];
        let dx = with_f32(&x, what, |xv| {
            with_f32(&grad, what, |g| {
                with_f32(&delta, what, |d| {
                    with_f32(&self.w, what, |w| {
                        with_f32(&self.b, what, |b| {
                            let lin = LinearValues { wt: None, w, b, n, k, adapter: AdapterValues::Dense(d) };
                            lin.backward(xv, g, m, dx_mode, &mut dd, what)
                        })
                    })
                })
            })
        })?;
        let dev = x.device();
        let dx = dx.map(|d| Tensor::from_vec(d, x.dims(), dev)).transpose()?;
        Ok((dx, Some(Tensor::from_vec(dd, (n, k), dev)?)))
    }
}

/// y + b with b frozen (backward gives ∂y only). y: [M, N], b: [N].
struct FrozenBiasOp;

impl CustomOp2 for FrozenBiasOp {
    fn name(&self) -> &'static str {
        "superlora-frozen-bias"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((ys, ye)), Some((bs, be))) = (yl.contiguous_offsets(), bl.contiguous_offsets()) else {
            candle_core::bail!("frozen bias: inputs must be contiguous")
        };
        let out = match (y, b) {
            (CpuStorage::F32(y), CpuStorage::F32(b)) => {
                let mut o = y[ys..ye].to_vec();
                add_rows(&mut o, &b[bs..be]);
                CpuStorage::F32(o)
            }
            (CpuStorage::F64(y), CpuStorage::F64(b)) => {
                let mut o = y[ys..ye].to_vec();
                add_rows(&mut o, &b[bs..be]);
                CpuStorage::F64(o)
            }
            _ => candle_core::bail!("frozen bias: f32 or f64 with matching dtypes"),
        };
        Ok((out, yl.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), None))
    }
}

fn add_rows<T: Copy + std::ops::AddAssign>(out: &mut [T], bias: &[T]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += *b;
        }
    }
}

/// x + w with w frozen (backward gives ∂x only); same shapes.
struct FrozenAddOp;

impl CustomOp2 for FrozenAddOp {
    fn name(&self) -> &'static str {
        "superlora-frozen-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((xs, xe)), Some((ws, we))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            candle_core::bail!("frozen add: inputs must be contiguous")
        };
        if xl.shape() != wl.shape() {
            candle_core::bail!("frozen add: shapes {:?} and {:?} differ", xl.shape(), wl.shape());
        }
        let out = match (x, w) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(x[xs..xe].iter().zip(&w[ws..we]).map(|(a, b)| a + b).collect())
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(x[xs..xe].iter().zip(&w[ws..we]).map(|(a, b)| a + b).collect())
            }
            _ => candle_core::bail!("frozen add: f32 or f64 with matching dtypes"),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), None))
    }
}

/// Flattens all but the last dim: [.., K] → [M, K], returning the leading dims.
fn rows(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&1);
    let lead = dims[..dims.len().saturating_sub(1)].to_vec();
    Ok((x.contiguous()?.reshape(((x.elem_count() / k.max(1)), k))?, lead))
}

fn unrows(y: Tensor, mut lead: Vec<usize>) -> Result<Tensor> {
    lead.push(y.dim(1)?);
    Ok(y.reshape(lead)?)
}

/// y = x·Wᵀ + b for a frozen W [N, K] and b [N]; x [.., K] → [.., N]. No gradient is computed for
/// W or b. On devices other than the CPU (no custom kernel) it is [`frozen_linear_composed`].
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return frozen_linear_composed(x, w, b);
    }
    let x = x.contiguous()?;
    Ok(match b {
        Some(b) => x.apply_op3(&w.detach(), &b.detach(), FrozenLinearOp)?,
        None => {
            let zero = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
            x.apply_op3(&w.detach(), &zero, FrozenLinearOp)?
        }
    })
}

/// [`frozen_linear`] composed from candle's ops (matmul with the detached W, broadcast add of
/// the detached b): what runs on CUDA; tests compare it with the CPU op.
pub fn frozen_linear_composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x2, lead) = rows(x)?;
    let y = x2.matmul(&w.detach().t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.detach())?,
        None => y,
    };
    unrows(y, lead)
}

/// y = x·(W + ΔW)ᵀ + b: W and b frozen, ΔW (and x) differentiable. x [.., K] → [.., N]. On
/// devices other than the CPU it is [`adapted_linear_composed`].
///
/// On the CPU in f32 it is one op with its own backward (∂x = ∂y·(W + ΔW), ∂ΔW = ∂yᵀ·x; one node
/// in candle's backward instead of six); f64 goes through W + ΔW as a frozen add and candle's
/// matmul.
pub fn adapted_linear(x: &Tensor, w: &Tensor, delta: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return adapted_linear_composed(x, w, delta, b);
    }
    if x.dtype() == DType::F32 && delta.dtype() == DType::F32 {
        let bias = match b {
            Some(b) => b.detach().contiguous()?,
            None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?,
        };
        let op = AdaptedLinearOp { w: w.detach().contiguous()?, b: bias };
        return Ok(x.contiguous()?.apply_op2(&delta.contiguous()?, op)?);
    }
    let (x2, lead) = rows(x)?;
    let w_eff = delta.contiguous()?.apply_op2(&w.detach().contiguous()?, FrozenAddOp)?;
    let y = x2.matmul(&w_eff.t()?)?;
    let y = match b {
        Some(b) => y.apply_op2(&b.detach(), FrozenBiasOp)?,
        None => y,
    };
    unrows(y, lead)
}

/// [`adapted_linear`] composed from candle's ops (W and b detached): what runs on CUDA.
pub fn adapted_linear_composed(x: &Tensor, w: &Tensor, delta: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x2, lead) = rows(x)?;
    let y = x2.matmul(&(w.detach() + delta)?.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.detach())?,
        None => y,
    };
    unrows(y, lead)
}

/// y = x·Wᵀ + (x·Q)·Pᵀ + b for a frozen W [N, K] and b, with ΔW = P·Qᵀ kept factored
/// (P [N, r], Q [K, r], both trainable): PEFT's LoRA forward. The backward never forms an N x K
/// gradient: ∂P = (∂y)ᵀ·(x·Q), ∂Q = xᵀ·(∂y·P). [`adapted_linear`] with ΔW = P·Qᵀ is its oracle.
///
/// On the CPU it is one op (one node in candle's backward instead of about eight, each of which
/// costs a zero-filled gradient and an add there); [`low_rank_linear_composed`] elsewhere.
pub fn low_rank_linear(x: &Tensor, w: &Tensor, p: &Tensor, q: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return low_rank_linear_composed(x, w, p, q, b);
    }
    let bias = match b {
        Some(b) => b.detach().contiguous()?,
        None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?,
    };
    let op = LowRankLinearOp { w: w.detach().contiguous()?, b: bias };
    Ok(x.contiguous()?.apply_op3(&p.contiguous()?, &q.contiguous()?, op)?)
}

/// [`low_rank_linear`] composed from candle's ops: frozen linear plus (x·Q)·Pᵀ.
pub fn low_rank_linear_composed(x: &Tensor, w: &Tensor, p: &Tensor, q: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let base = frozen_linear(x, w, b)?;
    let (x2, lead) = rows(x)?;
    let update = x2.matmul(q)?.matmul(&p.t()?)?;
    Ok((base + unrows(update, lead)?)?)
}

/// e^x for x ≤ 0, inlined so that the loops calling it vectorise (libm's `expf` is a call per
/// element: 7.5 % of a single-threaded MiniLM step went to it, from GELU and softmax). Range
/// reduction x = k·ln 2 + r, |r| ≤ ln 2 / 2, with k rounded by the 1.5·2²³ trick (no `round` call)
/// and ln 2 split in two (Cody–Waite); e^r by the degree-7 polynomial of the Cephes `expf`; 2^k
/// built in the exponent bits by a float add and a shift. Relative error ≤ 2.5e-7 (test `exp_nonpos_matches_f64`); x below
/// −87 (where 2^k would leave the normal range) gives 0, NaN stays NaN, 0 gives 1.
#[inline(always)]
pub fn exp_nonpos(x: f32) -> f32 {
    const LOW: f32 = -87.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    const C: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    let xc = x.clamp(LOW, 0.0);
    let k = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let p = ((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5];
    let er = p * r * r + r + 1.0;
    // k + 127 + 2²³ holds the integer k + 127 in its mantissa bits: shifted into the exponent
    // field it is 2^k, with no float-to-int conversion (which would not vectorise as well).
    let two_k = f32::from_bits(((k + 8_388_735.0).to_bits() & 0x7f_ffff) << 23);
    let y = er * two_k;
    if x < LOW {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// erf(x), Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), branch-free apart from the sign and
/// with [`exp_nonpos`], so it vectorises; candle's `gelu_erf` calls a scalar libm `erf` per
/// element, which was 13% of a MiniLM training step.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_nonpos(-ax * ax);
    y.copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// Elements per parallel task of the GELU kernels.
const GELU_CHUNK: usize = 1 << 14;

multiversion! {
    /// GELU of each value of `x` into `o` (every element of `o` written: `o` and `x` have one
    /// length).
    fn gelu_slice(x: &[f32], o: &mut [MaybeUninit<f32>]) {
        for (b, (ob, xb)) in o.chunks_mut(STREAM_BLOCK).zip(x.chunks(STREAM_BLOCK)).enumerate() {
            prefetch_ahead(x, b * STREAM_BLOCK);
            for (o, &v) in ob.iter_mut().zip(xb) {
                o.write(0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2)));
            }
        }
    }
}

multiversion! {
    /// g·(Φ(x) + x·φ(x)) for each value of `x` and `g` into `o`.
    fn gelu_grad_slice(x: &[f32], g: &[f32], o: &mut [f32]) {
        for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp_nonpos(-0.5 * v * v);
            *o = gv * (cdf + v * pdf);
        }
    }
}

multiversion! {
    /// GELU of each value of `x` into `o`, and each value of `x` replaced by its slope
    /// GELU'(x) = Φ(x) + x·φ(x): the expressions of [`gelu_slice`] and [`gelu_grad_slice`], so the
    /// same bits, with erf evaluated once for both. `o` and `x` have one length.
    fn gelu_and_slope_slice(x: &mut [f32], o: &mut [MaybeUninit<f32>]) {
        for start in (0..x.len()).step_by(STREAM_BLOCK) {
            prefetch_ahead(x, start);
            let end = (start + STREAM_BLOCK).min(x.len());
            for (v, o) in x[start..end].iter_mut().zip(&mut o[start..end]) {
                let u = *v;
                let e = erf(u * FRAC_1_SQRT_2);
                o.write(0.5 * u * (1.0 + e));
                let cdf = 0.5 * (1.0 + e);
                let pdf = INV_SQRT_2PI * exp_nonpos(-0.5 * u * u);
                *v = cdf + u * pdf;
            }
        }
    }
}

multiversion! {
    /// d ← d ⊙ s elementwise (equal lengths).
    fn mul_in_place(s: &[f32], d: &mut [f32]) {
        for (b, (db, sb)) in d.chunks_mut(STREAM_BLOCK).zip(s.chunks(STREAM_BLOCK)).enumerate() {
            prefetch_ahead(s, b * STREAM_BLOCK);
            for (d, &s) in db.iter_mut().zip(sb) {
                *d *= s;
            }
        }
    }
}

/// GELU of every value of `h`, a new vector, with `h` replaced by GELU'(h) for the backward
/// ([`gelu_slope_grad_in_place`]): one erf per value for both passes instead of one in each.
pub(crate) fn gelu_and_slope_values(h: &mut [f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let n = h.len();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    h.par_chunks_mut(GELU_CHUNK)
        .zip(out.spare_capacity_mut()[..n].par_chunks_mut(GELU_CHUNK))
        .for_each(|(x, o)| gelu_and_slope_slice(x, o));
    // SAFETY: the chunks cover all n values and gelu_and_slope_slice wrote each.
    unsafe { out.set_len(n) };
    out
}

/// d ← d ⊙ GELU'(h), given the slope [`gelu_and_slope_values`] left: the same bits as
/// [`gelu_grad_values_in_place`] on h.
pub(crate) fn gelu_slope_grad_in_place(slope: &[f32], d: &mut [f32]) {
    use rayon::prelude::*;
    d.par_chunks_mut(GELU_CHUNK).zip(slope.par_chunks(GELU_CHUNK)).for_each(|(d, s)| mul_in_place(s, d));
}

/// GELU of every value of `x`, a new vector (parallel chunks).
pub(crate) fn gelu_values(x: &[f32]) -> Vec<f32> {
    // SAFETY: gelu_slice writes every element of its part, whose length its slice of x has.
    unsafe { par_written(x.len(), GELU_CHUNK, |start, o| gelu_slice(&x[start..start + o.len()], o)) }
}

/// d ← d ⊙ GELU'(x) elementwise (parallel chunks); `d` and `x` have one length.
pub(crate) fn gelu_grad_values_in_place(x: &[f32], d: &mut [f32]) {
    use rayon::prelude::*;
    d.par_chunks_mut(GELU_CHUNK).zip(x.par_chunks(GELU_CHUNK)).for_each(|(d, x)| gelu_grad_in_place(x, d));
}

/// GELU(x) = x·Φ(x) = ½x(1 + erf(x/√2)), with its derivative Φ(x) + x·φ(x) in the backward.
struct GeluOp;

impl candle_core::CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "superlora-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = gelu_values(f32_slice(s, l, "gelu")?);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluGradOp)?))
    }
}

/// g·(Φ(x) + x·φ(x)): the GELU backward.
struct GeluGradOp;

impl CustomOp2 for GeluGradOp {
    fn name(&self) -> &'static str {
        "superlora-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(xs, xl, "gelu grad")?, f32_slice(gs, gl, "gelu grad")?);
        if g.len() != x.len() {
            candle_core::bail!("gelu grad: {} gradients for {} inputs", g.len(), x.len());
        }
        let out = par_filled(x.len(), GELU_CHUNK, |start, o| {
            let end = start + o.len();
            gelu_grad_slice(&x[start..end], &g[start..end], o);
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

multiversion! {
    /// d ← d·(Φ(x) + x·φ(x)) for each value of `x` and `d`: the GELU backward in place.
    fn gelu_grad_in_place(x: &[f32], d: &mut [f32]) {
        // In blocks, loading x ahead: the per-element work here is long enough that the
        // hardware prefetcher alone left the loop waiting on x (docs/BENCHMARKS.md).
        for (b, (db, xb)) in d.chunks_mut(STREAM_BLOCK).zip(x.chunks(STREAM_BLOCK)).enumerate() {
            prefetch_ahead(x, b * STREAM_BLOCK);
            for (dv, &v) in db.iter_mut().zip(xb) {
                let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * exp_nonpos(-0.5 * v * v);
                *dv *= cdf + v * pdf;
            }
        }
    }
}

/// y = GELU(h)·Wᵀ + b with W [N, K] and b [N] frozen (held by the op) and h [.., K] its input
/// (f32, CPU): a frozen linear after the activation (the second FFN linear of BERT and ViT when
/// it is not adapted). One node in candle's backward instead of two: GELU(h) lives only during
/// the forward (no [.., K] activation kept for the backward, no zero-filled gradient and add for
/// it), and the backward ∂h = (∂y·W) ⊙ GELU'(h) scales the product's output in place.
struct GeluLinearOp {
    w: Tensor,
    b: Tensor,
}

impl candle_core::CustomOp1 for GeluLinearOp {
    fn name(&self) -> &'static str {
        "superlora-gelu-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = "gelu linear";
        let (n, k) = self.w.dims2()?;
        let (m, rows) = row_view(l, k, what)?;
        let h = f32_slice(s, &rows, what)?;
        let a = gelu_values(h);
        let out = with_f32(&self.w, what, |w| {
            with_f32(&self.b, what, |b| product(m, k, n, View::rows(&a, k), View::transposed(w, k), Some(b), what))
        })?;
        Ok((CpuStorage::F32(out), with_last(l.shape().dims(), n)))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let what = "gelu linear grad";
        let (n, k) = self.w.dims2()?;
        let m = grad.elem_count() / n.max(1);
        let h = h.contiguous()?;
        let dh = with_f32(&grad.contiguous()?, what, |g| {
            with_f32(&self.w, what, |w| {
                with_f32(&h, what, |hv| {
                    if hv.len() != m * k {
                        candle_core::bail!("{what}: input of {} values for {m} rows of {k}", hv.len());
                    }
                    let mut d = product(m, n, k, View::rows(g, n), View::rows(w, k), None, what)?;
                    gelu_grad_values_in_place(hv, &mut d);
                    Ok(d)
                })
            })
        })?;
        Ok(Some(Tensor::from_vec(dh, h.dims(), h.device())?))
    }
}

/// y = GELU(h)·Wᵀ + b with W and b frozen: one op on the CPU in f32 ([`GeluLinearOp`]),
/// [`frozen_linear`] of [`gelu`] elsewhere (its oracle in the tests).
pub fn gelu_frozen_linear(h: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !h.device().is_cpu() || h.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return frozen_linear(&gelu(h)?, w, b);
    }
    let bias = match b {
        Some(b) => b.detach().contiguous()?,
        None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?,
    };
    let op = GeluLinearOp { w: w.detach().contiguous()?, b: bias };
    Ok(h.contiguous()?.apply_op1(op)?)
}

/// GELU with the exact (erf) form, as BERT and DINOv2 use: a parallel f32 kernel on CPU,
/// candle's `gelu_erf` elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(GeluOp)?)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// LayerNorm over the last dim, composed from differentiable ops: (x − μ)/√(σ² + ε)·γ + β.
/// The slow twin of [`layer_norm`] (tests compare them).
pub fn layer_norm_reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(&gamma.detach())?.broadcast_add(&beta.detach())?)
}

/// Softmax over the last dim, composed from differentiable ops. The slow twin of
/// [`softmax_last`].
pub fn softmax_reference(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Rows per parallel task of the row kernels.
const ROWS_PER_TASK: usize = 64;

/// Mean and 1/√(var + ε) of one row (f64 accumulation).
#[inline(always)]
fn row_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = lane_sum(x, x, x, |v, _, _| f64::from(v)) / n;
    let var = lane_sum(x, x, x, |v, _, _| {
        let c = f64::from(v) - mean;
        c * c
    }) / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// LayerNorm of one row `x` into `o`.
#[inline(always)]
fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64, o: &mut [f32]) {
    let (mean, rstd) = row_stats(x, eps);
    for (((o, &v), &gv), &bv) in o.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * rstd * gv + bv;
    }
}

/// ∂x of LayerNorm for one row `x` with upstream gradient `dy`, into `o`.
#[inline(always)]
fn layer_norm_grad_row(x: &[f32], gamma: &[f32], dy: &[f32], eps: f64, o: &mut [f32]) {
    let d = gamma.len();
    let (mean, rstd) = row_stats(x, eps);
    let s1 = lane_sum(gamma, dy, dy, |gv, g, _| f64::from(gv * g));
    let s2 = lane_sum(gamma, dy, x, |gv, g, v| f64::from(gv * g) * f64::from((v - mean) * rstd));
    let (m1, m2) = ((s1 / d as f64) as f32, (s2 / d as f64) as f32);
    for (((o, &v), &gv), &g) in o.iter_mut().zip(x).zip(gamma).zip(dy) {
        let xhat = (v - mean) * rstd;
        *o = rstd * (gv * g - m1 - xhat * m2);
    }
}

multiversion! {
    /// LayerNorm of each row of d = γ.len() values of `x` into `o`.
    fn layer_norm_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64, o: &mut [f32]) {
        let d = gamma.len();
        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            layer_norm_row(x, gamma, beta, eps, o);
        }
    }
}

multiversion! {
    /// ∂x of LayerNorm for each row of d = γ.len() values of `x` and `dy` into `o`.
    fn layer_norm_grad_rows(x: &[f32], gamma: &[f32], dy: &[f32], eps: f64, o: &mut [f32]) {
        let d = gamma.len();
        for ((o, x), dy) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)) {
            layer_norm_grad_row(x, gamma, dy, eps, o);
        }
    }
}

multiversion! {
    /// LayerNorm of a + r, row by row (d = γ.len()), into `o`; `s` is a scratch row of d.
    fn layer_norm_sum_rows(a: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f64, s: &mut [f32], o: &mut [f32]) {
        let d = gamma.len();
        for ((o, a), r) in o.chunks_exact_mut(d).zip(a.chunks_exact(d)).zip(r.chunks_exact(d)) {
            s.iter_mut().zip(a).zip(r).for_each(|((s, &a), &r)| *s = a + r);
            layer_norm_row(s, gamma, beta, eps, o);
        }
    }
}

multiversion! {
    /// ∂x of LayerNorm at x = a + r, row by row (d = γ.len()), into `o`; `s` is a scratch row.
    fn layer_norm_sum_grad_rows(a: &[f32], r: &[f32], gamma: &[f32], dy: &[f32], eps: f64, s: &mut [f32], o: &mut [f32]) {
        let d = gamma.len();
        for (((o, a), r), dy) in o.chunks_exact_mut(d).zip(a.chunks_exact(d)).zip(r.chunks_exact(d)).zip(dy.chunks_exact(d)) {
            s.iter_mut().zip(a).zip(r).for_each(|((s, &a), &r)| *s = a + r);
            layer_norm_grad_row(s, gamma, dy, eps, o);
        }
    }
}

/// LayerNorm of x row by row (rows of d = γ.len(); x a whole number of rows, the caller checks),
/// a new vector.
pub(crate) fn layer_norm_values(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    par_filled(x.len(), gamma.len() * ROWS_PER_TASK, |start, o| {
        layer_norm_rows(&x[start..start + o.len()], gamma, beta, eps, o);
    })
}

/// ∂x of LayerNorm for the upstream `dy` (shapes as [`layer_norm_values`]), a new vector.
pub(crate) fn layer_norm_grad_values(x: &[f32], gamma: &[f32], dy: &[f32], eps: f64) -> Vec<f32> {
    par_filled(x.len(), gamma.len() * ROWS_PER_TASK, |start, o| {
        let end = start + o.len();
        layer_norm_grad_rows(&x[start..end], gamma, &dy[start..end], eps, o);
    })
}

/// LayerNorm(a + r) row by row (rows of d = γ.len()), a new vector; a, r of one length, a whole
/// number of rows (the caller checks).
pub(crate) fn layer_norm_sum_values(a: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    let d = gamma.len();
    par_filled(a.len(), d * ROWS_PER_TASK, |start, o| {
        let end = start + o.len();
        let mut s = vec![0f32; d];
        layer_norm_sum_rows(&a[start..end], &r[start..end], gamma, beta, eps, &mut s, o);
    })
}

/// ∂(a + r) of LayerNorm(a + r) for the upstream `dy`, row by row, a new vector (shapes as
/// [`layer_norm_sum_values`], `dy` of their length).
pub(crate) fn layer_norm_sum_grad_values(a: &[f32], r: &[f32], gamma: &[f32], dy: &[f32], eps: f64) -> Vec<f32> {
    let d = gamma.len();
    par_filled(a.len(), d * ROWS_PER_TASK, |start, o| {
        let end = start + o.len();
        let mut s = vec![0f32; d];
        layer_norm_sum_grad_rows(&a[start..end], &r[start..end], gamma, &dy[start..end], eps, &mut s, o);
    })
}

/// LayerNorm(a + r) with frozen γ, β (held by the op): the residual add of a post-LN block and
/// its norm as one node (BERT's `norm(sublayer(x) + x)`). The sum is never stored: the forward
/// forms each row in a scratch row, the backward forms it again; ∂a = ∂r = ∂x of the LayerNorm.
/// Bit for bit the two ops it replaces (test `layer_norm_of_a_sum_equals_add_then_layer_norm`).
struct LayerNormSumOp {
    gamma: Tensor,
    beta: Tensor,
    eps: f64,
}

impl LayerNormSumOp {
    /// a, r (and ∂y) as rows of d, checked.
    fn check(&self, a: &[f32], r: &[f32], d: usize, what: &str) -> candle_core::Result<()> {
        if d == 0 || a.len() != r.len() || !a.len().is_multiple_of(d) {
            candle_core::bail!("{what}: inputs of {} and {} values for rows of {d}", a.len(), r.len());
        }
        Ok(())
    }
}

impl CustomOp2 for LayerNormSumOp {
    fn name(&self) -> &'static str {
        "superlora-layer-norm-of-sum"
    }

    fn cpu_fwd(
        &self,
        a_s: &CpuStorage,
        al: &Layout,
        r_s: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = "layer norm of a sum";
        let (a, r) = (f32_slice(a_s, al, what)?, f32_slice(r_s, rl, what)?);
        let eps = self.eps;
        let out = with_f32(&self.gamma, what, |g| {
            with_f32(&self.beta, what, |b| {
                let d = g.len();
                self.check(a, r, d, what)?;
                if b.len() != d || al.shape() != rl.shape() || al.shape().dims().last() != Some(&d) {
                    candle_core::bail!("{what}: {:?} + {:?} does not end in the {d} of γ/β", al.shape(), rl.shape());
                }
                Ok(layer_norm_sum_values(a, r, g, b, eps))
            })
        })?;
        Ok((CpuStorage::F32(out), al.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let what = "layer norm of a sum grad";
        let (a, r, grad) = (a.contiguous()?, r.contiguous()?, grad.contiguous()?);
        let eps = self.eps;
        let dx = with_f32(&a, what, |av| {
            with_f32(&r, what, |rv| {
                with_f32(&grad, what, |dy| {
                    with_f32(&self.gamma, what, |g| {
                        let d = g.len();
                        self.check(av, rv, d, what)?;
                        if dy.len() != av.len() {
                            candle_core::bail!("{what}: {} gradients for {} values", dy.len(), av.len());
                        }
                        Ok(layer_norm_sum_grad_values(av, rv, g, dy, eps))
                    })
                })
            })
        })?;
        let dx = Tensor::from_vec(dx, a.dims(), a.device())?;
        Ok((Some(dx.clone()), Some(dx)))
    }
}

/// LayerNorm(a + r) over the last dim with frozen γ, β: one op on CPU in f32
/// ([`LayerNormSumOp`]), [`layer_norm`] of the sum elsewhere (its oracle in the tests).
pub fn layer_norm_of_sum(a: &Tensor, r: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(a) && cpu_f32(r) && cpu_f32(gamma) && cpu_f32(beta)) || a.dims() != r.dims() {
        return layer_norm(&(a + r)?, gamma, beta, eps);
    }
    let op = LayerNormSumOp { gamma: gamma.detach().contiguous()?, beta: beta.detach().contiguous()?, eps };
    Ok(a.contiguous()?.apply_op2(&r.contiguous()?, op)?)
}

/// LayerNorm with frozen γ, β as one op (forward and backward one pass over each row).
struct LayerNormOp {
    eps: f64,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: input must be contiguous") };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: f32 only"),
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "superlora-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g, b) =
            (f32_slice(xs, xl, "layer norm")?, f32_slice(gs, gl, "layer norm")?, f32_slice(bs, bl, "layer norm")?);
        let d = g.len();
        if d == 0 || b.len() != d || x.len() % d != 0 || xl.shape().dims().last() != Some(&d) {
            candle_core::bail!("layer norm: x {:?} does not end in the {d} of γ/β", xl.shape());
        }
        Ok((CpuStorage::F32(layer_norm_values(x, g, b, self.eps)), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = x.contiguous()?.apply_op3_no_bwd(
            &gamma.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGradOp { eps: self.eps },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// ∂x of LayerNorm: rstd·(γg − mean(γg) − x̂·mean(γg·x̂)), x̂ = (x − μ)·rstd.
struct LayerNormGradOp {
    eps: f64,
}

impl CustomOp3 for LayerNormGradOp {
    fn name(&self) -> &'static str {
        "superlora-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, gamma, dy) = (
            f32_slice(xs, xl, "layer norm grad")?,
            f32_slice(gs, gl, "layer norm grad")?,
            f32_slice(ds, dl, "layer norm grad")?,
        );
        let d = gamma.len();
        if d == 0 || x.len() != dy.len() || x.len() % d != 0 {
            candle_core::bail!("layer norm grad: shapes do not fit");
        }
        Ok((CpuStorage::F32(layer_norm_grad_values(x, gamma, dy, self.eps)), xl.shape().clone()))
    }
}

/// LayerNorm over the last dim with frozen γ, β: one fused op on CPU in f32 (its backward gives
/// ∂x only), the composed [`layer_norm_reference`] elsewhere.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op3(
            &gamma.detach().contiguous()?,
            &beta.detach().contiguous()?,
            LayerNormOp { eps },
        )?)
    } else {
        layer_norm_reference(x, gamma, beta, eps)
    }
}

/// Softmax over the last dim as one op (max-shifted), backward ∂x = y ⊙ (g − Σ g⊙y).
struct SoftmaxOp;

impl candle_core::CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "superlora-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let d = *l.shape().dims().last().unwrap_or(&1);
        let out = if d == 0 {
            vec![0f32; x.len()]
        } else {
            par_filled(x.len(), d * ROWS_PER_TASK, |start, o| {
                for (o, x) in o.chunks_exact_mut(d).zip(x[start..].chunks_exact(d)) {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    // The exponentials first, then their sum in the same order: the exp loop
                    // vectorises once no sequential sum runs through it.
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = exp_nonpos(v - max);
                    }
                    let sum: f32 = o.iter().sum();
                    let inv = 1.0 / sum;
                    o.iter_mut().for_each(|v| *v *= inv);
                }
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGradOp)?))
    }
}

/// y ⊙ (g − Σ g⊙y), row by row.
struct SoftmaxGradOp;

impl CustomOp2 for SoftmaxGradOp {
    fn name(&self) -> &'static str {
        "superlora-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_slice(ys, yl, "softmax grad")?, f32_slice(gs, gl, "softmax grad")?);
        let d = *yl.shape().dims().last().unwrap_or(&1);
        if g.len() != y.len() {
            candle_core::bail!("softmax grad: {} gradients for {} outputs", g.len(), y.len());
        }
        let out = if d == 0 {
            vec![0f32; y.len()]
        } else {
            par_filled(y.len(), d * ROWS_PER_TASK, |start, o| {
                for ((o, y), g) in o.chunks_exact_mut(d).zip(y[start..].chunks_exact(d)).zip(g[start..].chunks_exact(d))
                {
                    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
                        *o = yv * (gv - dot);
                    }
                }
            })
        };
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// Softmax over the last dim: one fused op on CPU in f32, [`softmax_reference`] elsewhere.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(SoftmaxOp)?)
    } else {
        softmax_reference(x)
    }
}

/// A LayerNorm with frozen γ (`<name>.weight`) and β (`<name>.bias`).
pub struct Norm {
    /// γ.
    pub gamma: Tensor,
    /// β.
    pub beta: Tensor,
}

impl Norm {
    /// Loads `<name>.weight` and `<name>.bias`, both of length `dim`.
    pub fn load(w: &crate::Weights, name: &str, dim: usize) -> Result<Self> {
        Ok(Norm { gamma: w.get(&format!("{name}.weight"), &[dim])?, beta: w.get(&format!("{name}.bias"), &[dim])? })
    }

    /// LayerNorm of `x` over its last dim.
    pub fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm(x, &self.gamma, &self.beta, eps)
    }

    /// LayerNorm of a + r (a post-LN residual block) as one op: [`layer_norm_of_sum`].
    pub fn forward_sum(&self, a: &Tensor, r: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm_of_sum(a, r, &self.gamma, &self.beta, eps)
    }
}

/// Multi-head scaled dot-product attention. q, k, v: [B, T, H·d]; `bias`: an additive mask
/// broadcastable to [B, H, T, T] (0 keep, large negative drop). Returns [B, T, H·d]. On the CPU in
/// f32 with no bias or a key mask ([`mask_bias`]) it is one op ([`crate::attention`]); otherwise
/// [`attention_reference`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    match crate::attention::fused(q, k, v, heads, bias)? {
        Some(c) => Ok(c),
        None => attention_reference(q, k, v, heads, bias),
    }
}

/// [`attention`] composed from ops that each have a backward: per-head split, two batched
/// products, scale, mask, softmax, merge. The oracle of the fused op.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, hd) = q.dims3()?;
    let d = hd / heads;
    // [B, T, H·d] → [B·H, T, d]
    let split = |x: &Tensor| -> Result<Tensor> {
        Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?.reshape((b * heads, t, d))?)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (crate::bmm::bmm(&q, &k, false, true)? * (1.0 / (d as f64).sqrt()))?.reshape((b, heads, t, t))?;
    let scores = match bias {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let p = softmax_last(&scores)?.reshape((b * heads, t, t))?;
    let ctx = crate::bmm::bmm(&p, &v, false, false)?;
    Ok(ctx.reshape((b, heads, t, d))?.transpose(1, 2)?.contiguous()?.reshape((b, t, hd))?)
}

/// The additive attention bias of a padding mask: [B, T] of 1/0 → [B, 1, 1, T] of 0 / −1e4·…
pub fn mask_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    Ok(((m - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?)
}

#[cfg(test)]
mod slope_tests {
    use super::*;

    /// The one-pass GELU + slope of the blocks against the two passes they replace, bit for bit, in
    /// every SIMD version: values from −12 to 12 (past erf's saturation), zeros of both signs.
    #[test]
    fn the_slope_pass_gives_the_bits_of_gelu_and_its_gradient() {
        let mut h: Vec<f32> = (0..40_000).map(|i| ((i * 7919) % 24_001) as f32 * 1e-3 - 12.0).collect();
        h.extend([0.0, -0.0, 1e-30, -1e-30, 80.0, -80.0]);
        let d: Vec<f32> = (0..h.len()).map(|i| ((i * 104_729) % 2001) as f32 * 1e-3 - 1.0).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        #[cfg(target_arch = "x86_64")]
        let levels = [0u8, 1, 2];
        #[cfg(not(target_arch = "x86_64"))]
        let levels = [0u8];
        for level in levels {
            #[cfg(target_arch = "x86_64")]
            crate::simd::set_cap(level);
            let want_g = gelu_values(&h);
            let mut want_d = d.clone();
            gelu_grad_values_in_place(&h, &mut want_d);
            let mut slope = h.clone();
            let g = gelu_and_slope_values(&mut slope);
            let mut got_d = d.clone();
            gelu_slope_grad_in_place(&slope, &mut got_d);
            assert_eq!(bits(&g), bits(&want_g), "GELU, version {level}");
            assert_eq!(bits(&got_d), bits(&want_d), "GELU', version {level}");
        }
        #[cfg(target_arch = "x86_64")]
        crate::simd::set_cap(u8::MAX);
    }
}
