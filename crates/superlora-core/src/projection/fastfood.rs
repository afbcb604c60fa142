//! Fastfood projection (Le, Sarlós & Smola 2013, as used for intrinsic dimension by Li et al.
//! 2018 and Aghajanyan et al. 2021): a fixed, structured random linear map R^d → R^D applied in
//! O(Lh log Lh) time and O(Lh) memory, never as a matrix.
//!
//! Equation (spec §3.4), with Lh = 2^⌈log2 D⌉:
//!
//! ```text
//!   F(x) = ( H · diag(G) · Π · H · diag(B) · pad_Lh(x) )[0..D] / sqrt(D · Σ G_i²)
//!   Fᵀ(g) = ( diag(B) · H · Πᵀ · diag(G) · H · pad_Lh(g) )[0..d] / sqrt(D · Σ G_i²)
//! ```
//!
//! Symbol → variable: d = n_g → [`Fastfood::d`]; D = N_g → [`Fastfood::big_d`]; Lh →
//! [`Fastfood::padded`]; B ∈ {±1}^Lh → [`Fastfood::signs`] (true = −1); Π (a gather,
//! (Πy)[i] = y[perm[i]]) → [`Fastfood::perm`]; G ~ N(0,1)^Lh → [`Fastfood::gauss`];
//! 1/sqrt(D·ΣG²) → [`Fastfood::scale`]; H → [`super::wht`] (unnormalised, in place).
//!
//! B, Π and G come from three independent ChaCha streams of the group (see [`crate::rng`]); G is
//! drawn in f64 and stored rounded to f32, and both the f32 and the f64 kernels use those exact
//! f32 values, so the two precisions implement the same matrix.
//!
//! ## Applying Π without random access
//!
//! Π is a uniformly random permutation of Lh, and a plain gather y[perm[i]] over tens of MiB is a
//! cache and TLB miss per element (measured ~10 ns each here, 5x the rest of the transform). So
//! Π is applied in two cache-friendly passes precomputed once (the permutation itself is
//! unchanged): with the output cut into blocks of b entries (the Hadamard fill chunk, 2^14..2^16),
//! pass 1 appends each value to its destination block's staging area (≤ Lh/b concurrent
//! sequential write streams); pass 2 scatters each block's values to their place inside the block
//! (an L2-resident window), fused with the fill of the second Hadamard transform.
//!
//! Pass 1 is fused into the last step of the first transform: the Hadamard column stages run on
//! panels of columns copied to a scratch ([`super::wht`]), and each finished panel goes straight
//! to the staging areas instead of being copied back. Values are staged in that "panel order"
//! (panel by panel, row by row inside a panel), so each panel sends one run of values to every
//! block. The tables list, per panel, each run's scratch positions and its first staging position
//! ([`Runs`]), so pass 1 writes the staging buffer run after run, sequentially, and only the
//! L2-resident scratch is addressed at random (a scatter by one staging slot per value stalled on
//! its stores: 256 interleaved write streams). `local[k]` is where staged value k lands inside
//! its block.
//!
//! The transpose runs the two passes in reverse: pass 2 as a gather inside each block, pass 1 as
//! the load of the column stages of its second transform. Both of its transforms run column
//! stages first, then row stages (H_n = H_n1 ⊗ H_n2: the two sets commute): the first loads its
//! panels straight from g and does its row stages block by block in an L2 copy that the gather
//! then reads, so that transform's result is never written back. The same butterflies in another
//! order: the transpose equals the reference up to rounding, not bit for bit; the forward is bit
//! for bit. With a single block (Lh ≤ 2^14) pass 1 is the identity.
//!
//! Rows of the Lh/2^14 x 2^14 view that are known zero (pad(x) past d in the forward) are neither
//! transformed nor read, and rows of a result that are not kept (z past d in the transpose) are
//! neither stored nor transformed.
//!
//! ## Small inputs (d ≤ 2^17, Lh > 2^14): no staging at all
//!
//! With h = 2^⌈log2 d⌉, H_Lh = H_(Lh/h) ⊗ H_h and pad(x) is zero past its first h entries, so the
//! first transform is a[j] = (H_h x)[j mod h]: the forward computes that one short vector and
//! gathers out[i] = head[perm[i] mod h]·G_i·scale straight into the second transform's fill (bit
//! for bit the full path). The transpose keeps z[0..d] only, and H[k, j] = H_h[k, j mod h] for
//! k < h: it folds u = Πᵀ·diag(G)·a onto h entries (a scatter-add into a cache-resident vector,
//! f64, fixed chunks summed in order) and transforms those.

/// One line for `--help`.
pub const SUMMARY: &str = "Fastfood random expansion from ceil(ratio * N_g) values (ratio in (0, 1]).";

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::wht::{
    PaddedFrom, PanelIo, Panels, ROW, XPanel, columns_with, fill_len, load_rows, rows, rows_fill_upto, store_rows, wht,
    wht_fill, wht_fill_new,
};
use super::{Real, SyncPtr, buffers, run_1d};
use crate::rng::{Purpose, stream};

/// Largest input (rounded up to a power of two) that takes the small-input shortcut: 512 KiB of
/// f32, inside a 2 MiB L2.
const MAX_HEAD: usize = 1 << 17;
/// Fewest entries per parallel task of the transpose's small-input fold.
const SUM_CHUNK: usize = 1 << 18;
/// Most parallel tasks (and partial sums) of that fold.
const FOLD_TASKS: usize = 16;
/// Elements between staging blocks (one 64-byte line of f32).
const STAGING_PAD: usize = 16;

/// The fixed data of one group's fastfood transform.
#[derive(Clone, Debug)]
pub struct Fastfood {
    /// d = n_g, input length.
    pub d: usize,
    /// D = N_g, output length.
    pub big_d: usize,
    /// Lh = 2^⌈log2 D⌉.
    pub padded: usize,
    /// B: true where B_i = −1. Length Lh.
    pub signs: Vec<bool>,
    /// Π as a gather: (Πy)[i] = y[perm[i]]. A permutation of 0..Lh.
    pub perm: Vec<u32>,
    /// G, length Lh.
    pub gauss: Vec<f32>,
    /// 1 / sqrt(D · Σ G_i²), computed in f64 from the stored f32 values of G.
    pub scale: f64,
    /// Block length b of the two-pass permutation.
    block: usize,
    /// Distance between blocks in the staging buffer: b plus one cache line when there are several
    /// blocks, so the write streams of pass 1 do not all map to the same cache sets.
    stride: usize,
    /// The two-pass permutation's tables, built on first use: inputs of d ≤ 2^17 entries (the
    /// few-parameter configs fastfood is for) never need them when Lh > 2^14.
    staging: OnceLock<Staging>,
}

/// The fixed parts of a transform define it; the lazily built tables do not.
impl PartialEq for Fastfood {
    fn eq(&self, other: &Self) -> bool {
        (self.d, self.big_d, &self.signs, &self.perm, &self.gauss)
            == (other.d, other.big_d, &other.signs, &other.perm, &other.gauss)
    }
}

/// The tables of the two-pass permutation (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Staging {
    /// The runs of pass 1 (empty with a single block, where pass 1 is the identity).
    runs: Runs,
    /// local[k]: offset inside its block where staged value k lands.
    local: Vec<u16>,
    /// G·scale (f32) in staging order: staged_gauss[k] belongs to destination block·b + local[k].
    staged_gauss_scaled: Vec<f32>,
}

/// Pass 1 as runs: each column panel p sends one run of values to every block b, stored at
/// consecutive staging positions from `base[p·blocks + b]`; the run lists its values' scratch
/// positions q (increasing) in `order[p·len + runs[p·(blocks+1) + b] ..][.. run length]`. So
/// pass 1 writes (forward) or reads (transpose) the staging buffer run by run, sequentially, and
/// only the L2-resident panel scratch is addressed at random.
#[derive(Clone, Debug, Default)]
struct Runs {
    /// Blocks (destinations) per panel.
    blocks: usize,
    /// Scratch positions, panel by panel, run by run.
    order: Vec<u32>,
    /// Run starts into each panel's part of `order`: blocks + 1 per panel.
    start: Vec<u32>,
    /// Staging position of each run's first value: blocks per panel.
    base: Vec<u32>,
}

impl Runs {
    /// Panel p's run for block b: (its scratch positions, its first staging position).
    #[inline(always)]
    fn run(&self, len: usize, p: usize, b: usize) -> (&[u32], usize) {
        let at = p * (self.blocks + 1) + b;
        let (s, e) = (self.start[at] as usize, self.start[at + 1] as usize);
        (&self.order[p * len + s..p * len + e], self.base[p * self.blocks + b] as usize)
    }
}

impl Fastfood {
    /// Draws B, Π and G of group `group` under `seed` for a map from `d` to `big_d` values.
    pub fn generate(d: usize, big_d: usize, seed: u64, group: usize) -> Self {
        let padded = big_d.next_power_of_two();
        let signs = stream(seed, group, Purpose::FastfoodSigns).signs(padded);
        let perm = stream(seed, group, Purpose::FastfoodPerm).permutation(padded);
        let mut g = stream(seed, group, Purpose::FastfoodGauss);
        let gauss: Vec<f32> = (0..padded).map(|_| g.normal() as f32).collect();
        Self::assemble(d, big_d, signs, perm, gauss)
    }

    /// Builds the transform from saved parts, checking every invariant (lengths, permutation,
    /// finite non-degenerate G). Used when a reader loads projection tensors from a file.
    pub fn from_parts(
        d: usize,
        big_d: usize,
        signs: Vec<bool>,
        perm: Vec<u32>,
        gauss: Vec<f32>,
    ) -> Result<Self, String> {
        let padded = big_d.next_power_of_two();
        if d == 0 || d > big_d {
            return Err(format!("input length d = {d} must be in 1..={big_d}"));
        }
        if signs.len() != padded || perm.len() != padded || gauss.len() != padded {
            return Err(format!(
                "B, Π and G must each have Lh = {padded} entries, got {}, {}, {}",
                signs.len(),
                perm.len(),
                gauss.len()
            ));
        }
        let mut seen = vec![false; padded];
        for &p in &perm {
            let p = p as usize;
            if p >= padded || seen[p] {
                return Err("Π is not a permutation".into());
            }
            seen[p] = true;
        }
        if gauss.iter().any(|g| !g.is_finite()) {
            return Err("G has a non-finite entry".into());
        }
        if gauss.iter().all(|g| *g == 0.0) {
            return Err("G is all zeros".into());
        }
        Ok(Self::assemble(d, big_d, signs, perm, gauss))
    }

    /// Computes the scale and the two-pass permutation tables; the parts are trusted.
    fn assemble(d: usize, big_d: usize, signs: Vec<bool>, perm: Vec<u32>, gauss: Vec<f32>) -> Self {
        let padded = big_d.next_power_of_two();
        let sum_sq: f64 = gauss.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
        let scale = 1.0 / (big_d as f64 * sum_sq).sqrt();
        let block = fill_len(padded);
        let stride = if padded > block { block + STAGING_PAD } else { block };
        Fastfood { d, big_d, padded, signs, perm, gauss, scale, block, stride, staging: OnceLock::new() }
    }

    /// The staging tables, built on first call.
    fn staging(&self) -> &Staging {
        self.staging.get_or_init(|| self.build_staging())
    }

    /// Builds the staging tables: each block receives exactly `block` values (Π is a bijection),
    /// staged in panel order (natural order with a single block, where there are no column
    /// stages).
    fn build_staging(&self) -> Staging {
        let (padded, block, stride) = (self.padded, self.block, self.stride);
        let blocks = padded / block;
        let staged_len = self.staged_len();
        let mut inv = vec![0u32; padded];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p as usize] = i as u32;
        }
        let mut local = vec![0u16; staged_len];
        let mut staged_gauss_scaled = vec![0f32; staged_len];
        if blocks == 1 {
            for (k, &i) in inv.iter().enumerate() {
                local[k] = i as u16;
                staged_gauss_scaled[k] = self.diag_at::<f32>(i as usize);
            }
            return Staging { runs: Runs::default(), local, staged_gauss_scaled };
        }
        let geo = Panels::of(padded);
        let (len, panels) = (geo.len(), padded / geo.len());
        let mut runs = Runs {
            blocks,
            order: vec![0u32; padded],
            start: Vec::with_capacity(panels * (blocks + 1)),
            base: Vec::with_capacity(panels * blocks),
        };
        // cursor[b]: the next free staging position of block b.
        let mut cursor: Vec<usize> = (0..blocks).map(|b| b * stride).collect();
        let (mut dest, mut count, mut next) = (vec![0u32; len], vec![0usize; blocks], vec![0usize; blocks]);
        for p in 0..panels {
            count.fill(0);
            for (q, dst) in dest.iter_mut().enumerate() {
                *dst = inv[geo.source(p, q)];
                count[*dst as usize / block] += 1;
            }
            let mut at = 0;
            for b in 0..blocks {
                runs.start.push(at as u32);
                runs.base.push(cursor[b] as u32);
                next[b] = at;
                at += count[b];
            }
            runs.start.push(at as u32);
            for (q, &i) in dest.iter().enumerate() {
                let (i, b) = (i as usize, i as usize / block);
                runs.order[p * len + next[b]] = q as u32;
                next[b] += 1;
                let k = cursor[b];
                cursor[b] += 1;
                local[k] = (i % block) as u16;
                staged_gauss_scaled[k] = self.diag_at::<f32>(i);
            }
        }
        Staging { runs, local, staged_gauss_scaled }
    }

    /// G_i·scale in the kernel's precision: the f64 product, rounded once for f32.
    #[inline(always)]
    fn diag_at<T: Real>(&self, i: usize) -> T {
        diag_of(self.gauss[i], self.scale)
    }

    /// F(x): `x` has d entries, the result D.
    ///
    /// a ← H·diag(B)·pad(x) (fill fused with the transform); staging ← pass 1 of Π over a;
    /// out ← H·(pass 2 of Π, times G·scale) (fill fused again); keep the first D.
    ///
    /// # Panics
    /// If `x` does not have d entries (the candle op checks the length first).
    pub fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        self.forward_with(x, true)
    }

    /// [`Self::forward`], with the small-input shortcut allowed or not (tests compare the two).
    fn forward_with<T: Real>(&self, x: &[T], shortcut: bool) -> Vec<T> {
        assert_eq!(x.len(), self.d, "fastfood forward: x must have d entries");
        let (d, signs, block) = (self.d, &self.signs, self.block);
        let fill = |off: usize, chunk: &mut [T]| {
            let n = chunk.len().min(d.saturating_sub(off));
            let (head, tail) = chunk.split_at_mut(n);
            for ((o, &v), &s) in head.iter_mut().zip(&x[off..off + n]).zip(&signs[off..off + n]) {
                *o = v.signed(s);
            }
            tail.fill(T::zero());
        };
        if let Some(h) = self.head_len().filter(|_| shortcut) {
            // pad(x) is zero outside its first h entries, and H_Lh = H_(Lh/h) ⊗ H_h, so
            // a = H·diag(B)·pad(x) is H_h of those h entries repeated Lh/h times (the later
            // stages add and subtract zeros): a[j] = head[j mod h], and Π's gather reads that one
            // cache-resident vector.
            let mut head = vec![T::zero(); h];
            fill(0, &mut head);
            wht(&mut head);
            // h is a power of two: j mod h is j & (h − 1) (a division per entry cost more than
            // the rest of this pass).
            let (perm, mask) = (&self.perm, h - 1);
            let (head, scale) = (&head[..=mask], self.scale);
            let out = wht_fill_new(self.padded, |off, chunk: &mut [T]| {
                let range = off..off + chunk.len();
                // Slices zipped rather than indexed: no bounds checks and no reloads of the
                // tables' pointers per entry (the output could alias them for all LLVM knows).
                for ((o, &j), &g) in chunk.iter_mut().zip(&perm[range.clone()]).zip(&self.gauss[range]) {
                    *o = head[j as usize & mask] * diag_of::<T>(g, scale);
                }
            });
            return self.truncated(out);
        }
        let st = self.staging();
        // With a single block (Lh ≤ b) pass 1 is the identity: read `a` directly.
        let mut a = buffers::take::<T>(self.padded);
        let staged = if self.padded == block {
            wht_fill(&mut a, fill);
            a
        } else {
            // pad(x) is zero past d: the rows past the chunks that hold x are zero before and
            // after their row stages, so they are neither transformed nor read (the panels'
            // loads fill them with zeros).
            let mut staged = buffers::take::<T>(self.staged_len());
            let rows = self.rows_holding(self.d);
            rows_fill_upto(&mut a, rows * ROW, fill);
            let stage = Stage { runs: &st.runs, staged: SyncPtr(staged.as_mut_ptr()), len: staged.len(), rows };
            columns_with(&mut a, &stage);
            buffers::give(a);
            staged
        };
        let staged_ref = &staged;
        let stride = self.stride;
        let out = wht_fill_new(self.padded, |off, chunk: &mut [T]| {
            debug_assert_eq!(chunk.len(), block);
            let s0 = off / block * stride;
            let s1 = s0 + chunk.len();
            let gauss = &st.staged_gauss_scaled[s0..s1];
            for ((&v, &dst), &g) in staged_ref[s0..s1].iter().zip(&st.local[s0..s1]).zip(gauss) {
                let dst = dst as usize;
                chunk[dst] = v * T::fastfood_diag(self, g, off + dst);
            }
        });
        buffers::give(staged);
        self.truncated(out)
    }

    /// The shortcut's length h = 2^⌈log2 d⌉ when it applies: h ≤ [`MAX_HEAD`] (a vector that
    /// stays in cache) and Lh > 2^14 (smaller transforms keep the plain path).
    fn head_len(&self) -> Option<usize> {
        let h = self.d.next_power_of_two();
        (h <= MAX_HEAD && self.padded > ROW && h < self.padded).then_some(h)
    }

    /// The first D entries of a length-Lh result.
    fn truncated<T>(&self, mut out: Vec<T>) -> Vec<T> {
        out.truncate(self.big_d);
        out.shrink_to_fit();
        out
    }

    /// Fᵀ(g): `g` has D entries, the result d.
    ///
    /// a ← H·pad(g); staging ← G·scale times pass 2 of Π reversed (a gather inside each block);
    /// z ← H·(pass 1 reversed: each panel loaded from its runs); the result is diag(B)·z[0..d].
    ///
    /// # Panics
    /// If `g` does not have D entries (the candle op checks the length first).
    pub fn transpose<T: Real>(&self, g: &[T]) -> Vec<T> {
        self.transpose_with(g, true)
    }

    /// [`Self::transpose`], with the small-input shortcut allowed or not (tests compare the two).
    fn transpose_with<T: Real>(&self, g: &[T], shortcut: bool) -> Vec<T> {
        assert_eq!(g.len(), self.big_d, "fastfood transpose: g must have D entries");
        let block = self.block;
        // a ← H·pad(g) in two halves (H_n = H_n1 ⊗ H_n2: the two sets of stages commute): the
        // column stages here, loading g straight into the panels; the row stages later, block by
        // block in an L2-resident copy, right before that block is read in random order (the
        // result a is never written back).
        let mut a = buffers::take::<T>(self.padded);
        if self.padded > ROW {
            columns_with(&mut a, &PaddedFrom(g));
        } else {
            let (head, tail) = a.split_at_mut(g.len());
            head.copy_from_slice(g);
            tail.fill(T::zero());
        }
        let a = a;
        // Block `off..off + block` of a, row stages done, in `copy`.
        let block_of = |off: usize, copy: &mut Vec<T>| {
            copy.clear();
            copy.extend_from_slice(&a[off..off + block]);
            rows(copy);
        };
        if let Some(h) = self.head_len().filter(|_| shortcut) {
            // Only z[0..d] is kept, and for k < h, H[k, j] = H_h[k, j mod h]: z[0..h] is H_h of
            // u folded onto h entries, where u = Πᵀ·diag(G)·a. So scatter-add G_i·a_i onto
            // perm[i] mod h of one cache-resident vector (in f64, over fixed chunks summed in
            // order: the same result on any number of threads), then transform those h entries.
            let (perm, mask) = (&self.perm, h - 1);
            // At most FOLD_TASKS partial vectors (h f64 each), however long Lh is; the chunking
            // depends on Lh only, never on the thread count.
            let len = (self.padded / FOLD_TASKS).max(SUM_CHUNK);
            let partials: Vec<Vec<f64>> = (0..self.padded.div_ceil(len))
                .into_par_iter()
                .map_init(Vec::new, |copy: &mut Vec<T>, c| {
                    let mut acc = vec![0f64; h];
                    let acc_h = &mut acc[..=mask];
                    let scale = self.scale;
                    // len is a multiple of the block (both powers of two, len ≥ block).
                    for off in (c * len..((c + 1) * len).min(self.padded)).step_by(block) {
                        block_of(off, copy);
                        let range = off..off + block;
                        for ((&v, &j), &g) in copy.iter().zip(&perm[range.clone()]).zip(&self.gauss[range]) {
                            acc_h[j as usize & mask] += (v * diag_of::<T>(g, scale)).to_f64();
                        }
                    }
                    acc
                })
                .collect();
            buffers::give(a);
            let mut head: Vec<T> =
                (0..h).map(|c| T::from_f64(partials.iter().fold(0.0, |sum, p| sum + p[c]))).collect();
            wht(&mut head);
            return head[..self.d].iter().zip(&self.signs).map(|(&v, &s)| v.signed(s)).collect();
        }
        let st = self.staging();
        let mut staged = buffers::take::<T>(self.staged_len());
        let stride = self.stride;
        staged.par_chunks_mut(stride).enumerate().for_each_init(Vec::new, |copy: &mut Vec<T>, (b, chunk)| {
            let (off, s0) = (b * block, b * stride);
            block_of(off, copy);
            let (local, gauss) = (&st.local[s0..s0 + block], &st.staged_gauss_scaled[s0..s0 + block]);
            for ((o, &l), &g) in chunk[..block].iter_mut().zip(local).zip(gauss) {
                let l = l as usize;
                *o = copy[l] * T::fastfood_diag(self, g, off + l);
            }
        });
        buffers::give(a);
        // With a single block pass 1 is the identity and `staged` already is z's input.
        let z = if self.padded == block {
            wht_fill(&mut staged, |_, _| {});
            staged
        } else {
            // Column stages first, each panel loaded straight from the staging areas, then the
            // row stages (H_n = H_n1 ⊗ H_n2: the two sets of stages commute).
            // Only z[..d] is kept: the panels store, and the row stages transform, only the
            // rows that hold it.
            let mut z = buffers::take::<T>(self.padded);
            let rows = self.rows_holding(self.d);
            columns_with(&mut z, &Unstage { runs: &st.runs, staged: &staged, rows });
            rows_fill_upto(&mut z, rows * ROW, |_, _| {});
            buffers::give(staged);
            z
        };
        let mut out = Vec::with_capacity(self.d);
        z[..self.d]
            .par_iter()
            .zip(self.signs[..self.d].par_iter())
            .map(|(&v, &s)| v.signed(s))
            .collect_into_vec(&mut out);
        buffers::give(z);
        out
    }

    /// Rows of the Lh/2^14 x 2^14 view that the row stages process to cover entries 0..n: whole
    /// chunks of [`fill_len`] (n > 2^14 only).
    fn rows_holding(&self, n: usize) -> usize {
        n.next_multiple_of(fill_len(self.padded)).min(self.padded) / ROW
    }

    /// Length of the staging buffer (blocks x stride).
    fn staged_len(&self) -> usize {
        self.padded / self.block * self.stride
    }
}

/// G_i·scale in precision T from G_i and the scale: the f64 product, rounded once for f32.
#[inline(always)]
fn diag_of<T: Real>(g: f32, scale: f64) -> T {
    T::from_f64(f64::from(g) * scale)
}

/// Pass 1 of Π fused into the column stages of the forward's first transform: each finished panel
/// is written to the staging areas run by run (see [`Runs`]).
struct Stage<'a, T> {
    runs: &'a Runs,
    staged: SyncPtr<T>,
    len: usize,
    /// Rows of x that hold values (the others are zero).
    rows: usize,
}

impl<T: Real> PanelIo<T> for Stage<'_, T> {
    fn load(&self, x: &XPanel<'_, T>, geo: Panels, _p: usize, scratch: &mut [T]) {
        load_rows(x, geo, self.rows, scratch);
    }
    fn store(&self, _x: &XPanel<'_, T>, geo: Panels, p: usize, scratch: &[T]) {
        for b in 0..self.runs.blocks {
            let (order, at) = self.runs.run(geo.len(), p, b);
            assert!(at + order.len() <= self.len, "staging run out of range");
            // SAFETY: the run lies inside the staging buffer (checked above). Runs never overlap:
            // block b's runs take consecutive positions from its own area, panel after panel
            // (`build_staging`), and panel p writes only its own runs, so no other task writes
            // these elements during the pass, nothing reads the staging buffer, and this slice
            // lives only inside this iteration.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.staged.get().add(at), order.len()) };
            for (o, &q) in dst.iter_mut().zip(order) {
                *o = scratch[q as usize];
            }
        }
    }
}

/// Pass 1 of Π reversed, fused into the column stages of the transpose's second transform: panel
/// p is loaded from its runs of the staging areas (see [`Runs`]).
struct Unstage<'a, T> {
    runs: &'a Runs,
    staged: &'a [T],
    /// Rows of the result that are wanted (the others are not stored).
    rows: usize,
}

impl<T: Real> PanelIo<T> for Unstage<'_, T> {
    fn load(&self, _x: &XPanel<'_, T>, geo: Panels, p: usize, scratch: &mut [T]) {
        for b in 0..self.runs.blocks {
            let (order, at) = self.runs.run(geo.len(), p, b);
            for (&v, &q) in self.staged[at..at + order.len()].iter().zip(order) {
                scratch[q as usize] = v;
            }
        }
    }
    fn store(&self, x: &XPanel<'_, T>, geo: Panels, _p: usize, scratch: &[T]) {
        store_rows(x, geo, self.rows, scratch);
    }
}

/// Candle op: v = F(x); backward applies Fᵀ.
pub struct FastfoodOp(pub Arc<Fastfood>);
/// Candle op: Fᵀ(g); backward applies F.
pub struct FastfoodTransposeOp(pub Arc<Fastfood>);

impl CustomOp1 for FastfoodOp {
    fn name(&self) -> &'static str {
        "superlora-fastfood"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        run_1d(self.name(), s, l, self.0.d, |x| self.0.forward(x), |x| self.0.forward(x))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&FastfoodTransposeOp(self.0.clone()))?))
    }
}

impl CustomOp1 for FastfoodTransposeOp {
    fn name(&self) -> &'static str {
        "superlora-fastfood-transpose"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        run_1d(self.name(), s, l, self.0.big_d, |x| self.0.transpose(x), |x| self.0.transpose(x))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&FastfoodOp(self.0.clone()))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With d ≤ 2^17 both directions skip most of one Hadamard transform and the staging. The
    /// forward must equal the full path bit for bit (for inputs without −0.0, whose sign the
    /// full path may turn to +0.0); the transpose sums in another order (f64), so it must agree
    /// to f32 rounding, and it must not depend on the number of threads.
    #[test]
    fn small_input_shortcuts_equal_the_full_path() {
        let mut r = crate::rng::stream(9, 0, crate::rng::Purpose::Init);
        for (d, big_d) in [(1usize, 20_000usize), (777, 70_001), (ROW, 1 << 18), (20_000, 1 << 18)] {
            let f = Fastfood::generate(d, big_d, 21, d);
            let x: Vec<f32> = (0..d).map(|_| r.normal() as f32).collect();
            let g: Vec<f32> = (0..big_d).map(|_| r.normal() as f32).collect();
            let (fast, full) = (f.forward_with(&x, true), f.forward_with(&x, false));
            assert!(
                fast.len() == full.len() && fast.iter().zip(&full).all(|(p, q)| p.to_bits() == q.to_bits()),
                "F d={d} D={big_d}"
            );
            assert!(f.staging.get().is_some(), "the full path builds the tables");
            let (fast, full) = (f.transpose_with(&g, true), f.transpose_with(&g, false));
            let norm = full.iter().map(|v| v * v).sum::<f32>().sqrt() / (d as f32).sqrt();
            let worst = fast.iter().zip(&full).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
            assert!(
                fast.len() == full.len() && worst <= 1e-5 * norm,
                "Fᵀ d={d} D={big_d}: max |Δ| {worst} vs rms {norm}"
            );
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let single = one.install(|| f.transpose_with(&g, true));
            assert!(single.iter().zip(&fast).all(|(p, q)| p.to_bits() == q.to_bits()), "Fᵀ thread count d={d}");
        }
    }

    #[test]
    fn small_input_forward_needs_no_staging_tables() {
        let f = Fastfood::generate(93, 1 << 20, 3, 0);
        let x = vec![1.0f32; 93];
        let g = vec![1.0f32; 1 << 20];
        let _ = (f.forward(&x), f.transpose(&g));
        assert!(f.staging.get().is_none());
    }
}
