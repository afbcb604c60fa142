//! Building blocks with a backward, for models whose base weights are frozen.
//!
//! candle's fused `softmax_last_dim`, `layer_norm` and friends have no backward and fail silently
//! (candle-notes.md, trap 1), and its `matmul` backward computes the gradient of a frozen weight
//! anyway (trap 2). So:
//! - [`frozen_linear`]: y = x·Wᵀ + b as one custom op whose backward returns ∂x only;
//! - [`adapted_linear`]: y = x·(W + ΔW)ᵀ + b, the gradient reaching ΔW (and x), b kept frozen;
//! - [`layer_norm`], [`softmax_last`]: composed from ops that all have a backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor};

use crate::Result;

/// x·Wᵀ + b on CPU with W and b frozen (backward gives ∂x only). x: [M, K], W: [N, K], b: [N].
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
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 || bl.shape().dims() != [n] {
            candle_core::bail!("frozen linear: x {:?}, W {:?}, b {:?} do not fit", xl.shape(), wl.shape(), bl.shape());
        }
        let mut out = x.matmul(w, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
        let Some((bs, be)) = bl.contiguous_offsets() else {
            candle_core::bail!("frozen linear: bias must be contiguous")
        };
        match (&mut out, b) {
            (CpuStorage::F32(o), CpuStorage::F32(b)) => add_rows(o, &b[bs..be]),
            (CpuStorage::F64(o), CpuStorage::F64(b)) => add_rows(o, &b[bs..be]),
            _ => candle_core::bail!("frozen linear: f32 or f64 with matching dtypes"),
        }
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None, None))
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
/// W or b. On devices other than the CPU (no custom kernel) it falls back to plain ops.
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x2, lead) = rows(x)?;
    let y = match (b, x.device().is_cpu()) {
        (Some(b), true) => x2.apply_op3(&w.detach(), &b.detach(), FrozenLinearOp)?,
        (None, true) => {
            let zero = Tensor::zeros(w.dim(0)?, w.dtype(), w.device())?;
            x2.apply_op3(&w.detach(), &zero, FrozenLinearOp)?
        }
        (b, false) => {
            let y = x2.matmul(&w.detach().t()?)?;
            match b {
                Some(b) => y.broadcast_add(&b.detach())?,
                None => y,
            }
        }
    };
    unrows(y, lead)
}

/// y = x·(W + ΔW)ᵀ + b: W and b frozen, ΔW (and x) differentiable. x [.., K] → [.., N].
pub fn adapted_linear(x: &Tensor, w: &Tensor, delta: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x2, lead) = rows(x)?;
    let w_eff = if x.device().is_cpu() {
        delta.contiguous()?.apply_op2(&w.detach().contiguous()?, FrozenAddOp)?
    } else {
        (w.detach() + delta)?
    };
    let y = x2.matmul(&w_eff.t()?)?;
    let y = match b {
        Some(b) if x.device().is_cpu() => y.apply_op2(&b.detach(), FrozenBiasOp)?,
        Some(b) => y.broadcast_add(&b.detach())?,
        None => y,
    };
    unrows(y, lead)
}

/// LayerNorm over the last dim, composed from differentiable ops: (x − μ)/√(σ² + ε)·γ + β.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(&gamma.detach())?.broadcast_add(&beta.detach())?)
}

/// Softmax over the last dim, composed from differentiable ops (max-shifted for stability).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Multi-head scaled dot-product attention. q, k, v: [B, T, H·d]; `bias`: an additive mask
/// broadcastable to [B, H, T, T] (0 keep, large negative drop). Returns [B, T, H·d].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, hd) = q.dims3()?;
    let d = hd / heads;
    let split = |x: &Tensor| -> Result<Tensor> { Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?) };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = match bias {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let p = softmax_last(&scores)?;
    let ctx = p.matmul(&v)?;
    Ok(ctx.transpose(1, 2)?.contiguous()?.reshape((b, t, hd))?)
}

/// The additive attention bias of a padding mask: [B, T] of 1/0 → [B, 1, 1, T] of 0 / −1e4·…
pub fn mask_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    Ok(((m - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?)
}
