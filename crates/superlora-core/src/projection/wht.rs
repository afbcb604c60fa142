//! The unnormalised Walsh–Hadamard transform, in place, O(n log n), never a matrix.
//!
//! Equation: y = H_n x with H_n[i][j] = (−1)^popcount(i & j), n = 2^k (natural "Hadamard" order,
//! no 1/√n). H_n is symmetric, so the transform is its own transpose.
//!
//! Symbol → variable: n → `x.len()`; the butterfly stage of span h pairs x[i] and x[i + h].
//!
//! Fast path ([`wht`]): the stages h = 1, 2, 4, …, n/2 in that order, exactly the butterflies of
//! the textbook loop ([`wht_reference`]), so the two agree bit for bit; only the memory order
//! changes:
//! - stages with h < 2^11 run on 2^11-element blocks that stay in L1;
//! - for n > 2^14 the vector is viewed as an n1 x n2 matrix (n2 = 2^14): H_n = H_n1 ⊗ H_n2, so
//!   H_n2 runs on every row (rows in parallel) and then H_n1 runs down the columns in panels of
//!   w columns, each copied to a contiguous scratch that stays in L2 (panels in parallel, each
//!   panel does all log2(n1) stages, then is copied back);
//! - two stages at a time (radix 4) where possible, to halve loads and stores.

use rayon::prelude::*;

use super::{Real, SyncPtr};

/// Elements per L1-resident block.
const L1_BLOCK: usize = 1 << 11;
/// Row length of the two-level split.
pub(crate) const ROW: usize = 1 << 14;
/// Elements per `fill` call of [`wht_fill`] (a multiple of ROW; 256 KiB of f32 stays in L2).
const FILL: usize = 1 << 16;
/// Elements of one column panel (stays in a 1 MiB L2 with room to spare).
const PANEL: usize = 1 << 16;

/// In-place unnormalised Walsh–Hadamard transform of a power-of-two-length slice.
///
/// # Panics
/// If `x.len()` is not a power of two (callers pad first; this is an internal invariant).
pub fn wht<T: Real>(x: &mut [T]) {
    wht_fill(x, |_, _| {});
}

/// Length of the chunks [`wht_fill`] hands to its `fill` for a vector of length `n`: n/4 kept
/// between one Hadamard row (2^14) and [`FILL`], so small vectors still give each thread work,
/// and at most n.
pub fn fill_len(n: usize) -> usize {
    (n / 4).clamp(ROW, FILL).min(n)
}

/// [`wht`] of the vector that `fill` writes: `fill(offset, chunk)` must write every entry of
/// `chunk` = x[offset..offset + chunk.len()], for chunks of [`fill_len`]`(x.len())` entries; each chunk is filled right before its row stages run, while it is in cache, which
/// saves a pass over memory (and lets a fresh allocation be first touched by a write).
///
/// # Panics
/// If `x.len()` is not a power of two.
pub fn wht_fill<T: Real>(x: &mut [T], fill: impl Fn(usize, &mut [T]) + Sync) {
    rows_fill(x, fill);
    let n = x.len();
    if n > ROW {
        columns(x, &Plain);
    }
}

/// [`wht_fill`] into a new vector of length `n`: each chunk is zeroed while in cache and then
/// handed to `fill`, so the allocation costs no separate zeroing pass over memory (as `vec![0; n]`
/// does when the allocator reuses freed memory) and no page is touched before its chunk.
pub fn wht_fill_new<T: Real>(n: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    assert!(n.is_power_of_two(), "wht needs a power-of-two length, got {n}");
    let mut v: Vec<T> = Vec::with_capacity(n);
    super::buffers::advise_huge_spare(&mut v);
    let len = fill_len(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(len).enumerate().for_each(|(c, chunk)| {
        for e in chunk.iter_mut() {
            e.write(T::zero());
        }
        // SAFETY: every element of `chunk` was initialised by the loop above, and MaybeUninit<T>
        // has the same layout as T.
        let chunk = unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<T>(), chunk.len()) };
        fill(c * len, chunk);
        for r in chunk.chunks_mut(ROW) {
            row(r);
        }
    });
    // SAFETY: the n elements of spare capacity were all initialised by the chunks above (the
    // chunks of spare_capacity_mut()[..n] cover it), and the capacity is at least n.
    unsafe { v.set_len(n) };
    if n > ROW {
        columns(&mut v, &Plain);
    }
    v
}

/// The row stages (every stage with span < [`ROW`]) of the vector that `fill` writes, chunk by
/// chunk (see [`wht_fill`]): I_n1 ⊗ H_n2 for n > ROW (every stage of span < ROW), and all of H_n
/// for n ≤ ROW.
pub(crate) fn rows_fill<T: Real>(x: &mut [T], fill: impl Fn(usize, &mut [T]) + Sync) {
    rows_fill_upto(x, x.len(), fill);
}

/// [`rows_fill`] on the chunks that hold x[..upto] only (the caller knows the other rows are zero
/// or does not want them); `fill` sees only those chunks.
pub(crate) fn rows_fill_upto<T: Real>(x: &mut [T], upto: usize, fill: impl Fn(usize, &mut [T]) + Sync) {
    let n = x.len();
    assert!(n.is_power_of_two(), "wht needs a power-of-two length, got {n}");
    if n <= ROW {
        fill(0, x);
        row(x);
        return;
    }
    let len = fill_len(n);
    let upto = upto.next_multiple_of(len).min(n);
    x[..upto].par_chunks_mut(len).enumerate().for_each(|(c, chunk)| {
        fill(c * len, chunk);
        for r in chunk.chunks_exact_mut(ROW) {
            row(r);
        }
    });
}

/// The rows x columns view of the column stages for a vector of length n > [`ROW`]: n1 rows of
/// n2 = ROW entries, cut into panels of w columns. Panel p, scratch position q = r·w + c holds
/// x[r·n2 + p·w + c]; the "panel order" of x is p·(n1·w) + q.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Panels {
    /// Rows.
    pub n1: usize,
    /// Row length.
    pub n2: usize,
    /// Columns per panel.
    pub w: usize,
}

impl Panels {
    /// The panel geometry of a length-n vector (n > ROW, a power of two).
    pub fn of(n: usize) -> Self {
        let (n1, n2) = (n / ROW, ROW);
        Panels { n1, n2, w: (PANEL / n1).clamp(8, n2) }
    }
    /// Entries per panel.
    pub fn len(&self) -> usize {
        self.n1 * self.w
    }
    /// Index into x of panel p's scratch position q.
    #[inline(always)]
    pub fn source(&self, p: usize, q: usize) -> usize {
        (q / self.w) * self.n2 + p * self.w + q % self.w
    }
}

/// How a column pass reads its panels from x and where it puts the results.
pub(crate) trait PanelIo<T>: Sync {
    /// Fills `scratch` (n1·w entries) with panel `p`'s input; `x` gives this panel's columns of
    /// the vector the pass runs on.
    fn load(&self, x: &XPanel<'_, T>, geo: Panels, p: usize, scratch: &mut [T]);
    /// Takes panel `p`'s transformed `scratch`; `x` is writable for this panel's columns only.
    fn store(&self, x: &XPanel<'_, T>, geo: Panels, p: usize, scratch: &[T]);
}

/// Access to one panel's columns of the vector of a column pass.
pub(crate) struct XPanel<'a, T> {
    base: SyncPtr<T>,
    p: usize,
    _x: std::marker::PhantomData<&'a mut [T]>,
}

impl<T: Copy> XPanel<'_, T> {
    /// Offset into x of row r's first column of this panel.
    fn offset(&self, geo: Panels, r: usize) -> usize {
        assert!(r < geo.n1 && geo.w * (self.p + 1) <= geo.n2, "panel row out of range");
        r * geo.n2 + self.p * geo.w
    }

    /// Copies row r's w columns of this panel into `dst` (w entries).
    pub fn read_row(&self, geo: Panels, r: usize, dst: &mut [T]) {
        assert_eq!(dst.len(), geo.w, "panel row length");
        let at = self.offset(geo, r);
        // SAFETY: row r < n1 and columns p·w..(p+1)·w ≤ n2 lie inside x (n1·n2 elements, the
        // geometry `columns` built from x's length). Each XPanel is handed to the one task that
        // owns panel p and panels own disjoint column ranges, so only this task touches these
        // elements during the pass; the slice lives only inside this call, and `dst` is a
        // scratch buffer, never a slice of x.
        let src = unsafe { std::slice::from_raw_parts(self.base.get().add(at).cast_const(), geo.w) };
        dst.copy_from_slice(src);
    }

    /// Asks the CPU to start loading row r's w columns of this panel (nothing when r ≥ n1). The
    /// rows of a panel are 64 KiB apart, a stride the hardware prefetchers do not follow, so
    /// without this every row's read waits for memory on its own.
    #[inline(always)]
    pub fn prefetch_row(&self, geo: Panels, r: usize) {
        if r >= geo.n1 {
            return;
        }
        // Row r's columns of this panel lie inside x (see `read_row`).
        prefetch_lines(self.base.get().cast_const().wrapping_add(self.offset(geo, r)), geo.w);
    }

    /// Writes row r's w columns of this panel from `src` (w entries).
    pub fn write_row(&self, geo: Panels, r: usize, src: &[T]) {
        assert_eq!(src.len(), geo.w, "panel row length");
        let at = self.offset(geo, r);
        // SAFETY: as in `read_row`: in bounds, only this task touches panel p's columns, the slice
        // lives only inside this call, and `src` is a scratch buffer, never a slice of x.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.base.get().add(at), geo.w) };
        dst.copy_from_slice(src);
    }
}

/// Rows of a panel requested ahead of the one being read ([`XPanel::prefetch_row`]).
pub(crate) const PREFETCH_ROWS: usize = 16;

/// Asks for the cache lines of the `n` values from `ptr` (a hint: never faults, changes no value).
#[inline(always)]
fn prefetch_lines<T>(ptr: *const T, n: usize) {
    let ptr = ptr.cast::<u8>();
    for line in (0..n * std::mem::size_of::<T>()).step_by(64) {
        prefetch(ptr.wrapping_add(line));
    }
}

/// A hint to start loading the cache line at `ptr` into L1; never faults, changes no value.
#[inline(always)]
fn prefetch(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address, and reads nothing
    // into the program.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// The plain column pass: load copies the panel out of x, store copies it back.
pub(crate) struct Plain;

impl<T: Real> PanelIo<T> for Plain {
    fn load(&self, x: &XPanel<'_, T>, geo: Panels, _p: usize, scratch: &mut [T]) {
        load_rows(x, geo, geo.n1, scratch);
    }
    fn store(&self, x: &XPanel<'_, T>, geo: Panels, _p: usize, scratch: &[T]) {
        store_rows(x, geo, geo.n1, scratch);
    }
}

/// A column pass whose input is `src` zero-padded to x's length, loaded straight from `src` (x's
/// contents are not read); the results are stored in x.
pub(crate) struct PaddedFrom<'a, T>(pub &'a [T]);

impl<T: Real> PanelIo<T> for PaddedFrom<'_, T> {
    fn load(&self, _x: &XPanel<'_, T>, geo: Panels, p: usize, scratch: &mut [T]) {
        let src = self.0;
        let start = |r: usize| r * geo.n2 + p * geo.w;
        for (r, dst) in scratch.chunks_exact_mut(geo.w).enumerate() {
            // Rows 64 KiB apart: ask for the row PREFETCH_ROWS ahead (see `XPanel::prefetch_row`).
            let ahead = start(r + PREFETCH_ROWS);
            if ahead < src.len() {
                prefetch_lines(src[ahead..].as_ptr(), geo.w);
            }
            let at = start(r).min(src.len());
            let n = (src.len() - at).min(geo.w);
            dst[..n].copy_from_slice(&src[at..at + n]);
            dst[n..].fill(T::zero());
        }
    }
    fn store(&self, x: &XPanel<'_, T>, geo: Panels, _p: usize, scratch: &[T]) {
        store_rows(x, geo, geo.n1, scratch);
    }
}

/// The row stages (every stage of span < [`ROW`]) of a contiguous stretch of whole rows (or of a
/// vector no longer than one row), in place: the other half of [`columns_with`].
pub(crate) fn rows<T: Real>(x: &mut [T]) {
    for r in x.chunks_mut(ROW) {
        row(r);
    }
}

/// Loads the panel's first `rows` rows from x into `scratch` and zeroes the rest (rows known to be
/// zero, which x need not hold).
pub(crate) fn load_rows<T: Real>(x: &XPanel<'_, T>, geo: Panels, rows: usize, scratch: &mut [T]) {
    let rows = rows.min(geo.n1);
    for r in 0..PREFETCH_ROWS.min(rows) {
        x.prefetch_row(geo, r);
    }
    let (head, tail) = scratch.split_at_mut(rows * geo.w);
    for (r, dst) in head.chunks_exact_mut(geo.w).enumerate() {
        if r + PREFETCH_ROWS < rows {
            x.prefetch_row(geo, r + PREFETCH_ROWS);
        }
        x.read_row(geo, r, dst);
    }
    tail.fill(T::zero());
}

/// Stores the panel's first `rows` rows from `scratch` into x (the others are not wanted).
pub(crate) fn store_rows<T: Real>(x: &XPanel<'_, T>, geo: Panels, rows: usize, scratch: &[T]) {
    for (r, src) in scratch.chunks_exact(geo.w).take(rows).enumerate() {
        x.write_row(geo, r, src);
    }
}

/// The column stages of a length-n vector (n > ROW): H_n1 down the columns of the n1 x n2
/// row-major view, panel by panel (see [`columns`]), with `io` moving each panel in and out.
pub(crate) fn columns_with<T: Real>(x: &mut [T], io: &impl PanelIo<T>) {
    let n = x.len();
    assert!(n.is_power_of_two() && n > ROW, "column stages need a power-of-two length > {ROW}, got {n}");
    columns(x, io);
}

/// The textbook radix-2 loop: the obviously correct twin of [`wht`].
pub fn wht_reference<T: Real>(x: &mut [T]) {
    let n = x.len();
    assert!(n.is_power_of_two(), "wht needs a power-of-two length, got {n}");
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
}

/// All stages of a contiguous block of length ≤ ROW: those inside each L1-sized block, then the
/// rest.
fn row<T: Real>(x: &mut [T]) {
    let n = x.len();
    let b = n.min(L1_BLOCK);
    for blk in x.chunks_exact_mut(b) {
        stages_widest(blk, 1);
    }
    stages_widest(x, b);
}

/// [`stages`] compiled for AVX-512, for AVX2 and for the baseline, the widest this CPU has
/// ([`crate::simd::level`]). Only add and subtract run in the butterflies, so every version gives
/// the same bits (test `every_vector_width_gives_the_same_bits`).
fn stages_widest<T: Real>(x: &mut [T], h_from: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        fn v4<T: Real>(x: &mut [T], h_from: usize) {
            stages(x, h_from)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v3<T: Real>(x: &mut [T], h_from: usize) {
            stages(x, h_from)
        }
        match crate::simd::level() {
            // SAFETY: the CPU has every feature v4 is compiled for (`level` checked them).
            2 => return unsafe { v4(x, h_from) },
            // SAFETY: the CPU has AVX2 and FMA (`level` checked them).
            1 => return unsafe { v3(x, h_from) },
            _ => {}
        }
    }
    stages(x, h_from)
}

/// Stages h = `h_from`, 2·h_from, …, len/2 on a contiguous slice.
#[inline(always)]
fn stages<T: Real>(x: &mut [T], h_from: usize) {
    let n = x.len();
    let mut h = h_from;
    if h == 1 && n >= 8 {
        for c in x.chunks_exact_mut(8) {
            radix8(c);
        }
        h = 8;
    }
    while h < n {
        if 4 * h <= n {
            for c in x.chunks_exact_mut(4 * h) {
                let (a, rest) = c.split_at_mut(h);
                let (b, rest) = rest.split_at_mut(h);
                let (cc, d) = rest.split_at_mut(h);
                butterfly4(a, b, cc, d);
            }
            h *= 4;
        } else {
            for c in x.chunks_exact_mut(2 * h) {
                let (a, b) = c.split_at_mut(h);
                butterfly2(a, b);
            }
            h *= 2;
        }
    }
}

/// Stages 1, 2, 4 of an 8-element chunk.
#[inline(always)]
fn radix8<T: Real>(c: &mut [T]) {
    let mut v = [T::zero(); 8];
    v.copy_from_slice(&c[..8]);
    for h in [1usize, 2, 4] {
        for i in (0..8).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (v[j], v[j + h]);
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
    }
    c[..8].copy_from_slice(&v);
}

/// One stage of span h on rows a (first half) and b (second half).
#[inline(always)]
fn butterfly2<T: Real>(a: &mut [T], b: &mut [T]) {
    for (u, v) in a.iter_mut().zip(b.iter_mut()) {
        let (p, q) = (*u, *v);
        *u = p + q;
        *v = p - q;
    }
}

/// Stages h then 2h on quarters a, b, c, d (same operations, same order as two radix-2 stages).
#[inline(always)]
fn butterfly4<T: Real>(a: &mut [T], b: &mut [T], c: &mut [T], d: &mut [T]) {
    let n = a.len().min(b.len()).min(c.len()).min(d.len());
    for i in 0..n {
        let (p, q, r, s) = (a[i], b[i], c[i], d[i]);
        let (p1, q1, r1, s1) = (p + q, p - q, r + s, r - s);
        a[i] = p1 + r1;
        c[i] = p1 - r1;
        b[i] = q1 + s1;
        d[i] = q1 - s1;
    }
}

/// H_n1 down the columns of the n1 x n2 row-major matrix `x`, panel by panel: each panel of w
/// columns is moved to a contiguous n1 x w scratch (rows w apart instead of n2 — a power-of-two
/// stride of 64 KiB would map every row to the same cache sets and thrash L1 and L2), transformed
/// there (the column stages are the flat stages h = w, 2w, …), and handed to `io.store`.
fn columns<T: Real>(x: &mut [T], io: &impl PanelIo<T>) {
    let geo = Panels::of(x.len());
    let panels = geo.n2 / geo.w;
    let base = SyncPtr(x.as_mut_ptr());
    (0..panels).into_par_iter().for_each_init(
        || vec![T::zero(); geo.len()],
        move |scratch, p| {
            let xp = XPanel { base, p, _x: std::marker::PhantomData };
            io.load(&xp, geo, p, scratch);
            stages_widest(scratch, geo.w);
            io.store(&xp, geo, p, scratch);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_equals_reference_bit_for_bit() {
        let mut r = crate::rng::stream(3, 0, crate::rng::Purpose::Init);
        for k in (0..=17).chain([20]) {
            let n = 1usize << k;
            let x: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
            let (mut a, mut b) = (x.clone(), x);
            wht(&mut a);
            wht_reference(&mut b);
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "n = {n}");
        }
    }

    /// The baseline, AVX2 and AVX-512 versions of the stages (those this CPU has) give the same
    /// bits, in f32 and f64, rows and column panels both (n = 2^20 has 64 rows of 2^14).
    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let mut r = crate::rng::stream(8, 0, crate::rng::Purpose::Init);
        let x: Vec<f64> = (0..1 << 20).map(|_| r.normal()).collect();
        let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let run = |level: u8| {
            crate::simd::set_cap(level);
            let (mut a, mut b) = (x.clone(), x32.clone());
            wht(&mut a);
            wht(&mut b);
            (a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let baseline = run(0);
        for level in [1, 2] {
            assert!(run(level) == baseline, "version {level} differs from the baseline");
        }
        crate::simd::set_cap(u8::MAX);
        let mut reference = x32.clone();
        wht_reference(&mut reference);
        assert!(reference.iter().map(|v| v.to_bits()).eq(baseline.1), "the baseline differs from the reference");
        println!("SIMD level of this CPU: {}", crate::simd::level());
    }

    #[test]
    fn filled_new_vector_equals_in_place_bit_for_bit() {
        let mut r = crate::rng::stream(5, 0, crate::rng::Purpose::Init);
        for k in [3usize, 14, 15, 18] {
            let n = 1usize << k;
            let x: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
            let fill = |off: usize, chunk: &mut [f32]| chunk.copy_from_slice(&x[off..off + chunk.len()]);
            let mut a = vec![0f32; n];
            wht_fill(&mut a, fill);
            let b = wht_fill_new(n, fill);
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "n = {n}");
        }
    }

    #[test]
    fn columns_first_equals_reference() {
        let mut r = crate::rng::stream(6, 0, crate::rng::Purpose::Init);
        for k in [15usize, 17, 20] {
            let n = 1usize << k;
            let x: Vec<f64> = (0..n).map(|_| r.normal()).collect();
            let (mut a, mut b) = (x.clone(), x);
            columns_with(&mut a, &Plain);
            rows_fill(&mut a, |_, _| {});
            wht_reference(&mut b);
            let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-9 * (n as f64).sqrt(), "n = {n}: max |Δ| = {worst}");
        }
    }

    #[test]
    fn panel_order_visits_every_index_once() {
        for k in [15usize, 17, 24] {
            let n = 1usize << k;
            let geo = Panels::of(n);
            let mut seen = vec![false; n];
            for t in 0..n {
                let j = geo.source(t / geo.len(), t % geo.len());
                assert!(!seen[j], "n = {n}: index {j} visited twice");
                seen[j] = true;
            }
        }
    }

    #[test]
    fn twice_is_n_times_identity() {
        let mut r = crate::rng::stream(4, 0, crate::rng::Purpose::Init);
        let n = 1 << 16;
        let x: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mut y = x.clone();
        wht(&mut y);
        wht(&mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a * n as f64 - b).abs() < 1e-9 * n as f64);
        }
    }
}
