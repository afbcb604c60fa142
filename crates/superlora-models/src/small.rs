//! The small dense products of attention (T x d by d x T and the like, one (example, head) each),
//! on one thread, without allocating.
//!
//! Equation: C[i, j] = s · Σ_l A[i, l]·B[l, j], A [m, k] read with strides (`ars`, `acs`), B [k, n]
//! with rows of n contiguous values at stride `brs`, C [m, n] contiguous; each sum runs over l in
//! order, one fused multiply-add per term, from 0, and is then multiplied by s — what gemm's
//! kernels do, so both give the same bits (test `the_kernel_gives_gemms_bits`).
//!
//! Symbols → variables: m `m`, n `n`, k `k`, s `scale`, A `a`, B `b`, C `out`, R `R` rows and
//! 32 columns of C per register tile.
//!
//! Why not gemm for these: attention runs six of them per (example, head) and layer (MiniLM:
//! 32 x 32 x 32, 2,304 per block and worker), and every gemm call allocated its packing buffer and
//! flags on the heap. The data-parallel workers share one malloc arena (`superlora_core::sys`), so
//! those allocations contended for its lock: futex waits and context switches were 2.5 % of a
//! MiniLM step (docs/BENCHMARKS.md). Here an AVX-512 kernel keeps an R x 32 tile of C in registers
//! while l runs, broadcasting A's elements where they lie (the last rows in tiles of 4, 2, 1); B's
//! edge columns use masked loads and stores. Without AVX-512 the products go to gemm as before.

/// Rows of C per register tile (fewer at the last rows: 4, 2, 1).
const R: usize = 8;

/// One product C = s·A·B, C [m, n]: A's element (i, l) is `a[i·ars + l·acs]`, B's row l is
/// `b[l·brs..l·brs + n]`.
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    /// (m, n, k).
    pub(crate) dims: (usize, usize, usize),
    pub(crate) a: &'a [f32],
    /// A's strides (ars, acs).
    pub(crate) a_strides: (usize, usize),
    pub(crate) b: &'a [f32],
    /// B's row stride.
    pub(crate) brs: usize,
    pub(crate) scale: f32,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Product, R};

    /// One tile of C: RR rows from i0, columns j0..j0 + w (w ≤ 32; NV = 2 vectors when w > 16,
    /// else 1), from A (element (i, l) at `a + i·ars + l·acs`) and B.
    ///
    /// # Safety
    /// AVX-512F must be present; A's rows i0..i0 + RR must be readable for l < k; B rows l < k
    /// hold w values from `b + l·brs + j0`; C rows i0..i0 + RR are writable for w values from
    /// `out + row·ors + j0`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const NV: usize, const RR: usize>(
        k: usize,
        (a, ars, acs): (*const f32, usize, usize),
        b: *const f32,
        brs: usize,
        scale: f32,
        (out, ors): (*mut f32, usize),
        (i0, j0, w): (usize, usize, usize),
    ) {
        // Lanes of the last vector that are inside C.
        let last = w - 16 * (NV - 1);
        let mask: __mmask16 = if last >= 16 { 0xffff } else { (1u16 << last) - 1 };
        let mut c = [[_mm512_setzero_ps(); NV]; RR];
        let rows_at: [usize; RR] = std::array::from_fn(|r| (i0 + r) * ars);
        for l in 0..k {
            // SAFETY (the pointers of this iteration): column l of A's rows and row l of B from j0,
            // readable by the contract; the masked lanes of the last vector are not read.
            let (al, bl) = unsafe { (a.add(l * acs), b.add(l * brs + j0)) };
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = if v + 1 < NV {
                    unsafe { _mm512_loadu_ps(bl.add(16 * v)) }
                } else {
                    unsafe { _mm512_maskz_loadu_ps(mask, bl.add(16 * v)) }
                };
            }
            for (cr, &at) in c.iter_mut().zip(&rows_at) {
                let av = _mm512_set1_ps(unsafe { *al.add(at) });
                for (x, &bx) in cr.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
        }
        let s = _mm512_set1_ps(scale);
        for (r, cr) in c.iter().enumerate() {
            // SAFETY: row i0 + r of C from column j0, w values by the contract.
            let o = unsafe { out.add((i0 + r) * ors + j0) };
            for (v, &x) in cr.iter().enumerate() {
                let y = _mm512_mul_ps(s, x);
                if v + 1 < NV {
                    unsafe { _mm512_storeu_ps(o.add(16 * v), y) };
                } else {
                    unsafe { _mm512_mask_storeu_ps(o.add(16 * v), mask, y) };
                }
            }
        }
    }

    /// The tiles of RR rows from i0 across C's columns.
    ///
    /// # Safety
    /// As [`tiles`], with rows i0..i0 + RR inside A and C.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_block<const RR: usize>(
        (n, k): (usize, usize),
        a: (*const f32, usize, usize),
        b: &[f32],
        brs: usize,
        scale: f32,
        out: (*mut f32, usize),
        i0: usize,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let w = (n - j0).min(32);
            // SAFETY: the caller's contract for the rows; small_product_into checked that B's rows
            // l < k hold n values from l·brs, and its caller that `out` is writable for m x n.
            unsafe {
                if w > 16 {
                    tile::<2, RR>(k, a, b.as_ptr(), brs, scale, out, (i0, j0, w));
                } else {
                    tile::<1, RR>(k, a, b.as_ptr(), brs, scale, out, (i0, j0, w));
                }
            }
            j0 += w;
        }
    }

    /// Column j of the [rows, cols] block at stride `rs` of `s` into row j of `out` ([cols, rows]),
    /// 16 rows of the block per gather (masked at the last rows).
    ///
    /// # Safety
    /// AVX-512F must be present; the block must lie inside `s`, `out` hold rows·cols values, and
    /// 15·rs fit an i32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(s: &[f32], (rows, cols): (usize, usize), rs: usize, out: &mut [f32]) {
        let step = rs as i32;
        let offsets = _mm512_setr_epi32(
            0,
            step,
            2 * step,
            3 * step,
            4 * step,
            5 * step,
            6 * step,
            7 * step,
            8 * step,
            9 * step,
            10 * step,
            11 * step,
            12 * step,
            13 * step,
            14 * step,
            15 * step,
        );
        for i0 in (0..rows).step_by(16) {
            let left = rows - i0;
            let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
            for j in 0..cols {
                // SAFETY: the unmasked lanes read s[(i0 + ii)·rs + j] with i0 + ii < rows and
                // j < cols, inside the block; they write out[j·rows + i0 + ii], inside out.
                unsafe {
                    let v =
                        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, s.as_ptr().add(i0 * rs + j));
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(j * rows + i0), mask, v);
                }
            }
        }
    }

    /// Every tile of C: blocks of R rows, then the last rows in blocks of 4, 2 and 1.
    ///
    /// # Safety
    /// AVX-512F must be present, the sizes checked as [`super::small_product_into`] does, and
    /// `out` writable for m rows of n at stride `ors`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tiles(p: Product<'_>, out: (*mut f32, usize)) {
        let Product { dims: (m, n, k), a, a_strides: (ars, acs), b, brs, scale } = p;
        let a = (a.as_ptr(), ars, acs);
        let mut i0 = 0;
        // SAFETY (each block): its rows i0..i0 + RR are < m, inside A and C by the caller's checks.
        unsafe {
            while i0 + R <= m {
                row_block::<R>((n, k), a, b, brs, scale, out, i0);
                i0 += R;
            }
            if i0 + 4 <= m {
                row_block::<4>((n, k), a, b, brs, scale, out, i0);
                i0 += 4;
            }
            if i0 + 2 <= m {
                row_block::<2>((n, k), a, b, brs, scale, out, i0);
                i0 += 2;
            }
            if i0 < m {
                row_block::<1>((n, k), a, b, brs, scale, out, i0);
            }
        }
    }
}

/// C = s·A·B through gemm (one thread): the path without AVX-512, and the tests' reference.
///
/// # Safety
/// As [`small_product_into`], whose checks must have passed.
unsafe fn gemm_product(p: Product<'_>, (out, ors): (*mut f32, usize)) {
    let Product { dims: (m, n, k), a, a_strides: (ars, acs), b, brs, scale } = p;
    // SAFETY: A covers [m, k] with its strides and B [k, n] with rows at brs (checked), out is
    // writable for m rows of n at ors (the caller's contract); gemm with read_dst = false never
    // reads out.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            ors as isize,
            false,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            1,
            brs as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// C = s·A·B into m rows of n values at stride `ors` from `out`. Panics (a bug of the caller)
/// when A or B is too short.
///
/// # Safety
/// `out + i·ors + j` must be valid for writes for i < m, j < n, and no one else may read or write
/// those elements meanwhile.
pub(crate) unsafe fn small_product_into(p: Product<'_>, (out, ors): (*mut f32, usize)) {
    let Product { dims: (m, n, k), a, a_strides: (ars, acs), b, brs, .. } = p;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of C, writable by the contract.
            unsafe { std::ptr::write_bytes(out.add(i * ors), 0, n) };
        }
        return;
    }
    assert!((m - 1) * ars + (k - 1) * acs < a.len(), "small_product: A does not cover {m} x {k}");
    assert!((k - 1) * brs + n <= b.len() && brs >= n, "small_product: B does not cover {k} x {n}");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::level() >= 2 {
        // SAFETY: level 2 means the CPU has AVX-512F (and more); the sizes were checked above and
        // `out` is the caller's contract.
        unsafe { avx512::tiles(p, (out, ors)) };
        return;
    }
    // SAFETY: checked above; `out` is the caller's contract.
    unsafe { gemm_product(p, (out, ors)) };
}

/// [`small_product_into`] a contiguous [m, n] `out`. Panics (a bug of the caller) when a slice is
/// too short.
pub(crate) fn small_product(p: Product<'_>, out: &mut [f32]) {
    let (m, n, _) = p.dims;
    assert!(out.len() >= m * n, "small_product: out holds {} of {m} x {n}", out.len());
    // SAFETY: `out` is borrowed mutably and holds m·n values.
    unsafe { small_product_into(p, (out.as_mut_ptr(), n)) };
}

/// The transpose of the [rows, cols] block at stride `rs` of `s` into `out` ([cols, rows]
/// contiguous), so that a product by a transposed operand reads contiguous rows. Panics (a bug of
/// the caller) when `s` or `out` is too short.
pub(crate) fn transpose_into(s: &[f32], (rows, cols): (usize, usize), rs: usize, out: &mut [f32]) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((rows - 1) * rs + cols <= s.len() && rs >= cols, "transpose_into: the block is not inside s");
    assert!(out.len() >= rows * cols, "transpose_into: out holds {} of {cols} x {rows}", out.len());
    #[cfg(target_arch = "x86_64")]
    if crate::simd::level() >= 2 && i32::try_from(15 * rs).is_ok() {
        // SAFETY: AVX-512F present (level 2); the block and `out` were checked above; 15·rs fits
        // the gather's i32 offsets.
        unsafe { avx512::transpose(s, (rows, cols), rs, out) };
        return;
    }
    transpose_scalar(s, (rows, cols), rs, out);
}

/// [`transpose_into`] one element at a time: the path without AVX-512, and the tests' reference.
fn transpose_scalar(s: &[f32], (rows, cols): (usize, usize), rs: usize, out: &mut [f32]) {
    // Row j of the result gathers column j of the block: contiguous writes, reads from the few
    // cache lines of the block's rows.
    for (j, o) in out.chunks_exact_mut(rows).take(cols).enumerate() {
        for (i, o) in o.iter_mut().enumerate() {
            *o = s[i * rs + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious triple loop, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ars: usize,
        acs: usize,
        b: &[f32],
        brs: usize,
        s: f32,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k).map(|l| a[i * ars + l * acs] as f64 * b[l * brs + j] as f64).sum();
                c[i * n + j] = (s as f64 * sum) as f32;
            }
        }
        c
    }

    fn product<'a>(
        dims: (usize, usize, usize),
        a: &'a [f32],
        a_strides: (usize, usize),
        b: &'a [f32],
        brs: usize,
        scale: f32,
    ) -> Product<'a> {
        Product { dims, a, a_strides, b, brs, scale }
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104729) % 2001) as f32 - 1000.0) * 1e-3).collect()
    }

    /// Shapes of MiniLM (32 x 32 x 32), DINOv2 at 112 px (65 tokens, d = 64) and every kind of edge:
    /// the last rows in every combination of 4, 2 and 1, one or two vectors, partly masked.
    const SHAPES: [(usize, usize, usize); 11] = [
        (32, 32, 32),
        (65, 65, 64),
        (65, 64, 65),
        (1, 1, 1),
        (5, 33, 7),
        (8, 32, 1),
        (9, 70, 3),
        (17, 16, 5),
        (3, 48, 40),
        (7, 20, 9),
        (14, 17, 6),
    ];

    /// Each shape with A by rows and by columns (as attention reads P and Pᵀ), B rows padded.
    /// (m, n, k), A, A's strides, B, B's row stride.
    type Case = ((usize, usize, usize), Vec<f32>, (usize, usize), Vec<f32>, usize);

    fn cases() -> impl Iterator<Item = Case> {
        SHAPES.into_iter().flat_map(|(m, n, k)| {
            [false, true].into_iter().map(move |by_columns| {
                let a = values(m * k + 3, m + n);
                let strides = if by_columns { (1, m) } else { (k, 1) };
                let brs = n + 2;
                ((m, n, k), a, strides, values(k * brs, k), brs)
            })
        })
    }

    #[test]
    fn tiles_and_edges_equal_the_triple_loop() {
        for ((m, n, k), a, (ars, acs), b, brs) in cases() {
            let mut out = vec![f32::NAN; m * n];
            small_product(product((m, n, k), &a, (ars, acs), &b, brs, 0.5), &mut out);
            let want = naive(m, n, k, &a, ars, acs, &b, brs, 0.5);
            for (g, w) in out.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{m}x{n}x{k}: {g} vs {w}");
            }
        }
    }

    /// The AVX-512 kernel (where the CPU has it; gemm otherwise, then this compares gemm with itself)
    /// gives gemm's bits, so the one-node blocks' adapters did not change when it came in.
    #[test]
    fn the_kernel_gives_gemms_bits() {
        for ((m, n, k), a, (ars, acs), b, brs) in cases() {
            let mut fast = vec![f32::NAN; m * n];
            small_product(product((m, n, k), &a, (ars, acs), &b, brs, 0.125), &mut fast);
            let mut reference = vec![f32::NAN; m * n];
            // SAFETY: `reference` holds m x n; small_product checked A and B for the same sizes.
            unsafe { gemm_product(product((m, n, k), &a, (ars, acs), &b, brs, 0.125), (reference.as_mut_ptr(), n)) };
            assert_eq!(fast, reference, "{m}x{n}x{k}, A strides ({ars}, {acs})");
        }
    }

    #[test]
    fn a_strided_destination_gets_its_block_and_nothing_else() {
        let ((m, n, k), a, (ars, acs), b, brs) = cases().nth(8).expect("shape (9, 70, 3)");
        let ors = n + 5;
        let mut wide = vec![-7f32; m * ors];
        // SAFETY: `wide` holds m rows of ors ≥ n values.
        unsafe { small_product_into(product((m, n, k), &a, (ars, acs), &b, brs, 0.5), (wide.as_mut_ptr(), ors)) };
        let mut dense = vec![0f32; m * n];
        small_product(product((m, n, k), &a, (ars, acs), &b, brs, 0.5), &mut dense);
        for (row, want) in wide.chunks_exact(ors).zip(dense.chunks_exact(n)) {
            assert_eq!(&row[..n], want);
            assert!(row[n..].iter().all(|&v| v == -7.0));
        }
    }

    #[test]
    fn the_gathering_transpose_equals_the_scalar_one() {
        for (rows, cols, rs) in [(32, 32, 384), (65, 64, 384), (65, 65, 65), (1, 1, 1), (17, 3, 5), (16, 16, 16)] {
            let s = values((rows - 1) * rs + cols, rows);
            let (mut fast, mut slow) = (vec![f32::NAN; rows * cols], vec![f32::NAN; rows * cols]);
            transpose_into(&s, (rows, cols), rs, &mut fast);
            transpose_scalar(&s, (rows, cols), rs, &mut slow);
            assert_eq!(fast, slow, "{rows} x {cols} at {rs}");
        }
    }

    #[test]
    fn transpose_into_swaps_the_axes_of_a_strided_block() {
        let s: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut out = vec![0f32; 6];
        transpose_into(&s, (3, 2), 4, &mut out);
        assert_eq!(out, [0.0, 4.0, 8.0, 1.0, 5.0, 9.0]);
    }
}
