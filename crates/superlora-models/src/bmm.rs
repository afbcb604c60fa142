//! Batched products of many small matrices (attention: one T x d by d x T per head and example).
//!
//! candle multiplies a batch by looping over it and giving each product to a multi-threaded gemm,
//! which for 32x32x32 matrices spends more time waking and waiting for threads than computing.
//! Here the batch is split across threads and each product runs single-threaded.
//!
//! Equation: C[i] = op(A[i]) · op(B[i]) for i < N, op(X) = X or Xᵀ per flag; A: [N, m, k] (or
//! [N, k, m] when transposed), B: [N, k, n] (or [N, n, k]); C: [N, m, n]. Backward:
//! ∂A = ∂C · op(B)ᵀ (transposed back if A was), ∂B = op(A)ᵀ · ∂C (likewise).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// C = op(A)·op(B) per batch item.
#[derive(Clone, Copy)]
struct BatchedMatmul {
    ta: bool,
    tb: bool,
}

impl BatchedMatmul {
    /// (N, m, k, n) from the input shapes, or an error.
    fn dims(&self, a: &Shape, b: &Shape) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (na, a0, a1) = a.dims3()?;
        let (nb, b0, b1) = b.dims3()?;
        let (m, ka) = if self.ta { (a1, a0) } else { (a0, a1) };
        let (kb, n) = if self.tb { (b1, b0) } else { (b0, b1) };
        if na != nb || ka != kb {
            candle_core::bail!("batched matmul: {:?} and {:?} do not fit (ta={}, tb={})", a, b, self.ta, self.tb);
        }
        Ok((na, m, ka, n))
    }
}

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "superlora-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n_batch, m, k, n) = self.dims(la.shape(), lb.shape())?;
        let (Some((a0, a1)), Some((b0, b1))) = (la.contiguous_offsets(), lb.contiguous_offsets()) else {
            candle_core::bail!("batched matmul: inputs must be contiguous")
        };
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (sa, sb) else { candle_core::bail!("batched matmul: f32 only") };
        let (a, b) = (&a[a0..a1], &b[b0..b1]);
        let mut c = vec![0f32; n_batch * m * n];
        // Row/column strides of op(A) [m, k] and op(B) [k, n] inside one batch item.
        let (a_rs, a_cs) = if self.ta { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if self.tb { (1, k) } else { (n, 1) };
        if m * n > 0 {
            c.par_chunks_mut(m * n).enumerate().for_each(|(i, ci)| {
                let ai = &a[i * m * k..(i + 1) * m * k];
                let bi = &b[i * k * n..(i + 1) * k * n];
                // SAFETY: the pointers cover exactly one batch item of each matrix (slices of the
                // lengths above), strides stay inside them, `ci` is this task's own output.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        ci.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        ai.as_ptr(),
                        a_cs as isize,
                        a_rs as isize,
                        bi.as_ptr(),
                        b_cs as isize,
                        b_rs as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        }
        Ok((CpuStorage::F32(c), Shape::from((n_batch, m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let op = |x: &Tensor, y: &Tensor, ta, tb| x.apply_op2_no_bwd(y, &BatchedMatmul { ta, tb });
        // ∂op(A) = ∂C·op(B)ᵀ; ∂op(B) = op(A)ᵀ·∂C; transpose back where the input was transposed.
        let da = if self.ta { op(b, &g, self.tb, true)? } else { op(&g, b, false, !self.tb)? };
        let db = if self.tb { op(&g, a, true, self.ta)? } else { op(a, &g, !self.ta, false)? };
        Ok((Some(da), Some(db)))
    }
}

/// op(A)·op(B) for every batch item (see the module docs). f32 on CPU only; other devices and
/// dtypes use candle's `matmul`.
pub fn bmm(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == DType::F32 && a.rank() == 3 && b.rank() == 3 {
        return Ok(a.contiguous()?.apply_op2(&b.contiguous()?, BatchedMatmul { ta, tb })?);
    }
    let a = if ta { a.transpose(1, 2)? } else { a.clone() };
    let b = if tb { b.transpose(1, 2)? } else { b.clone() };
    Ok(a.matmul(&b)?)
}
