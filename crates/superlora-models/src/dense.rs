//! Dense f32 kernels on row-major slices that write new outputs without a zero-filling pass.
//!
//! candle's CPU matmul allocates its output with `vec![0; M·N]` and then lets gemm overwrite it,
//! and a frozen linear then adds its bias in one more pass; the elementwise ops of
//! [`crate::ops`] did the same `vec![0; n]` before writing every element. Each of those passes
//! reads and writes the whole tensor through memory (a 1024 x 1536 activation is 6 MiB, more than
//! a core's L2), and a MiniLM step spent about 6 % of its time in them (`memset` in the profile,
//! docs/BENCHMARKS.md). Here:
//!
//! - [`product`]: C = b̂ + A·B, where b̂ repeats an optional bias row: the output starts as the
//!   bias rows (one write pass, which replaces both the zero fill and the bias add) and gemm
//!   accumulates onto it; without a bias gemm writes every element of memory it never reads;
//! - [`product_add`]: C += A·B in place;
//! - [`par_filled`]: a new vector written by parallel chunks, each zeroed while it is in cache;
//!   [`par_written`] without the zeroing, for fills that write every element.
//!
//! Equation: C[i, j] = b[j] + Σ_l A[i, l]·B[l, j], A [m, k], B [k, n], C [m, n] row-major.
//! A [`View`] reads a stored row-major matrix as itself or as its transpose (strides only).
//! The products go to the gemm crate candle itself calls (same kernels, same version), on the
//! calling rayon pool's threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A row-major f32 matrix read with strides: element (i, j) is `s[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    s: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// `s` as stored: [rows, cols] with `cols` per row.
    pub(crate) fn rows(s: &'a [f32], cols: usize) -> Self {
        View { s, rs: cols, cs: 1 }
    }

    /// The transpose of `s` stored as [r, cols]: element (i, j) is s[j·cols + i].
    pub(crate) fn transposed(s: &'a [f32], cols: usize) -> Self {
        View { s, rs: 1, cs: cols }
    }

    /// Whether every element of an [r, c] read stays inside the slice.
    fn covers(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.s.len()
    }
}

/// gemm's parallelism for an m x n x k product on the current rayon pool: all of its threads
/// (one inside a data-parallel worker, whose pool has one thread), none for small products.
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m.saturating_mul(n).saturating_mul(k) >= 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// dst (m x n, row stride n) = [dst +] a·b. `read_dst` false: dst is written without being read.
///
/// # Safety
/// `dst` must be valid for writes of m·n f32 (and initialised if `read_dst`).
unsafe fn gemm_raw(dst: *mut f32, read_dst: bool, m: usize, k: usize, n: usize, a: View, b: View) {
    // SAFETY: the caller's contract for dst; `a` and `b` were checked to cover [m, k] and [k, n]
    // with their strides (`covers`), so gemm reads inside the two slices only. gemm with
    // read_dst = false sets its alpha to 0 and never reads dst (gemm-common's gemm_basic_generic).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            read_dst,
            a.s.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.s.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

fn check(m: usize, k: usize, n: usize, a: &View, b: &View, what: &str) -> candle_core::Result<()> {
    if !a.covers(m, k) || !b.covers(k, n) {
        candle_core::bail!("{what}: operands do not cover a {m} x {k} by {k} x {n} product");
    }
    Ok(())
}

/// A new [m, n] row-major C = b̂ + A·B (A [m, k], B [k, n]); b̂ repeats `bias` ([n]) on every row,
/// or is absent. Errors name `what` when a view does not cover its shape or the bias is not [n].
pub(crate) fn product(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    bias: Option<&[f32]>,
    what: &str,
) -> candle_core::Result<Vec<f32>> {
    check(m, k, n, &a, &b, what)?;
    let len = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if let Some(bias) = bias {
        if bias.len() != n {
            candle_core::bail!("{what}: bias of {} for {n} outputs", bias.len());
        }
        if n > 0 {
            for row in out.spare_capacity_mut()[..len].chunks_exact_mut(n) {
                for (o, &v) in row.iter_mut().zip(bias) {
                    o.write(v);
                }
            }
        }
    }
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<f32>();
    // SAFETY: the capacity is m·n, so dst is valid for those writes; with a bias every element
    // was initialised above before gemm reads it (read_dst), without one gemm only writes.
    unsafe { gemm_raw(dst, bias.is_some(), m, k, n, a, b) };
    // SAFETY: gemm wrote (or accumulated onto) all m·n elements; m·n ≤ capacity.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// C += A·B in place, C [m, n] row-major (A [m, k], B [k, n]).
pub(crate) fn product_add(
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    what: &str,
) -> candle_core::Result<()> {
    check(m, k, n, &a, &b, what)?;
    if c.len() != m * n {
        candle_core::bail!("{what}: output of {} for a {m} x {n} product", c.len());
    }
    // SAFETY: c is an initialised slice of exactly m·n elements.
    unsafe { gemm_raw(c.as_mut_ptr(), true, m, k, n, a, b) };
    Ok(())
}

/// A new vector of `n` values written by `fill(start, chunk)` over parallel chunks of `chunk`
/// elements (the last may be shorter; `start` is its first index). Each chunk is zeroed while in
/// cache just before `fill`, so no separate zeroing pass goes through memory.
pub(crate) fn par_filled(n: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let zeroed_then_filled = |start: usize, part: &mut [MaybeUninit<f32>]| {
        part.iter_mut().for_each(|e| {
            e.write(0.0);
        });
        // SAFETY: every element of `part` was initialised just above, and MaybeUninit<f32> has the
        // layout of f32.
        let part = unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) };
        fill(start, part);
    };
    // SAFETY: the closure writes (zeroes) every element of its part before `fill` sees it.
    unsafe { par_written(n, chunk, zeroed_then_filled) }
}

/// A new vector of `n` written by parallel chunks that `fill` writes without a zero fill first
/// (for fills that overwrite every element anyway, as GELU's does).
///
/// # Safety
/// `fill(start, part)` must write every element of `part`.
pub(crate) unsafe fn par_written(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(c, part)| fill(c * chunk.max(1), part));
    // SAFETY: the chunks cover all n elements and `fill` wrote each (the caller's contract).
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious triple loop.
    fn naive(m: usize, k: usize, n: usize, a: &View, b: &View, bias: Option<&[f32]>) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |b| b[j]) as f64;
                for l in 0..k {
                    acc += (a.s[i * a.rs + l * a.cs] as f64) * (b.s[l * b.rs + j * b.cs] as f64);
                }
                c[i * n + j] = acc as f32;
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn product_matches_the_triple_loop_in_every_layout_with_and_without_bias() {
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (33, 70, 17), (64, 300, 40), (0, 4, 3), (3, 0, 2)] {
            let (a_rows, a_t) = (values(m * k, 1), values(k * m, 2));
            let (b_rows, b_t) = (values(k * n, 3), values(n * k, 4));
            let bias = values(n, 5);
            for a in [View::rows(&a_rows, k), View::transposed(&a_t, m)] {
                for b in [View::rows(&b_rows, n), View::transposed(&b_t, k)] {
                    for with_bias in [false, true] {
                        let bias = with_bias.then_some(&bias[..]);
                        let got = product(m, k, n, a, b, bias, "test").unwrap();
                        let want = naive(m, k, n, &a, &b, bias);
                        assert_eq!(got.len(), want.len());
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{m}x{k}x{n}: {g} vs {w}");
                        }
                        let mut acc = vec![0.5f32; m * n];
                        product_add(&mut acc, m, k, n, a, b, "test").unwrap();
                        for (g, w) in acc.iter().zip(naive(m, k, n, &a, &b, None)) {
                            assert!((g - (w + 0.5)).abs() <= 1e-4 * (1.0 + w.abs()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_operands_and_wrong_bias_are_errors() {
        let a = values(6, 1);
        assert!(product(3, 3, 2, View::rows(&a, 3), View::rows(&a, 2), None, "t").is_err());
        let (a, b) = (values(6, 1), values(6, 2));
        assert!(product(2, 3, 2, View::rows(&a, 3), View::rows(&b, 2), Some(&[1.0]), "t").is_err());
        let mut c = vec![0f32; 3];
        assert!(product_add(&mut c, 2, 3, 2, View::rows(&a, 3), View::rows(&b, 2), "t").is_err());
    }

    #[test]
    fn par_filled_hands_each_index_to_fill_once() {
        for (n, chunk) in [(0, 4), (1, 4), (10, 4), (12, 4), (1000, 7)] {
            let v = par_filled(n, chunk, |start, part| {
                for (i, e) in part.iter_mut().enumerate() {
                    assert_eq!(*e, 0.0);
                    *e += (start + i) as f32;
                }
            });
            assert_eq!(v, (0..n).map(|i| i as f32).collect::<Vec<_>>());
        }
    }
}
