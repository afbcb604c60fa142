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
//! pass 1 reads the source in order and appends each value to its destination block's
//! staging area (≤ Lh/b concurrent sequential write streams); pass 2 scatters each block's
//! values to their place inside the block (an L2-resident window), fused with the fill of the
//! second Hadamard transform. `slot[j]` is where source j is staged, `local[k]` where staged
//! value k lands inside its block. The transpose runs the same two passes in reverse.

/// One line for `--help`.
pub const SUMMARY: &str = "Fastfood random expansion from ceil(ratio * N_g) values (ratio in (0, 1]).";

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::wht::{fill_len, wht_fill};
use super::{Real, SyncPtr, buffers, run_1d};
use crate::rng::{Purpose, stream};

/// Sources per parallel task of the staging scatter.
const SCATTER_CHUNK: usize = 1 << 14;
/// Elements between staging blocks (one 64-byte line of f32).
const STAGING_PAD: usize = 16;

/// The fixed data of one group's fastfood transform.
#[derive(Clone, Debug, PartialEq)]
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
    /// slot[j]: staging position of source j.
    slot: Vec<u32>,
    /// local[k]: offset inside its block where staged value k lands.
    local: Vec<u16>,
    /// G·scale (f32) in staging order: staged_gauss[k] belongs to destination block·b + local[k].
    staged_gauss_scaled: Vec<f32>,
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
        let blocks = padded / block;
        let stride = if blocks > 1 { block + STAGING_PAD } else { block };
        let staged_len = blocks * stride;
        let mut inv = vec![0u32; padded];
        for (i, &p) in perm.iter().enumerate() {
            inv[p as usize] = i as u32;
        }
        // Each block receives exactly `block` values (Π is a bijection); stage them in source order.
        let mut cursor = vec![0usize; blocks];
        let mut slot = vec![0u32; padded];
        let mut local = vec![0u16; staged_len];
        let mut staged_gauss_scaled = vec![0f32; staged_len];
        for (j, &i) in inv.iter().enumerate() {
            let i = i as usize;
            let b = i / block;
            let k = b * stride + cursor[b];
            cursor[b] += 1;
            slot[j] = k as u32;
            local[k] = (i % block) as u16;
            staged_gauss_scaled[k] = (f64::from(gauss[i]) * scale) as f32;
        }
        Fastfood { d, big_d, padded, signs, perm, gauss, scale, block, stride, slot, local, staged_gauss_scaled }
    }

    /// G_i·scale in the kernel's precision, for staged value k landing at destination i.
    #[inline(always)]
    fn diag<T: Real>(&self, k: usize, i: usize) -> T {
        T::fastfood_diag(self, k, i)
    }

    /// The f32 diagonal of staged value k.
    #[inline(always)]
    pub(crate) fn staged_diag_f32(&self, k: usize) -> f32 {
        self.staged_gauss_scaled[k]
    }

    /// F(x): `x` has d entries, the result D.
    ///
    /// a ← H·diag(B)·pad(x) (fill fused with the transform); staging ← pass 1 of Π over a;
    /// out ← H·(pass 2 of Π, times G·scale) (fill fused again); keep the first D.
    pub fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        let (d, signs, block) = (self.d, &self.signs, self.block);
        let mut a = buffers::take::<T>(self.padded);
        wht_fill(&mut a, |off, chunk| {
            for (k, o) in chunk.iter_mut().enumerate() {
                let i = off + k;
                *o = if i < d { x[i].signed(signs[i]) } else { T::zero() };
            }
        });
        // With a single block (Lh ≤ b) pass 1 is the identity: read `a` directly.
        let staged = if self.padded == block {
            a
        } else {
            let mut staged = buffers::take::<T>(self.staged_len());
            self.stage(&a, &mut staged);
            buffers::give(a);
            staged
        };
        let mut out = buffers::fresh::<T>(self.padded);
        let staged_ref = &staged;
        let stride = self.stride;
        wht_fill(&mut out, |off, chunk| {
            debug_assert_eq!(chunk.len(), block);
            let s0 = off / block * stride;
            let s1 = s0 + chunk.len();
            for (k, (&v, &dst)) in staged_ref[s0..s1].iter().zip(&self.local[s0..s1]).enumerate() {
                let dst = dst as usize;
                chunk[dst] = v * self.diag::<T>(s0 + k, off + dst);
            }
        });
        buffers::give(staged);
        out.truncate(self.big_d);
        out.shrink_to_fit();
        out
    }

    /// Fᵀ(g): `g` has D entries, the result d.
    ///
    /// a ← H·pad(g); staging ← G·scale times pass 2 of Π reversed (a gather inside each block);
    /// z ← H·(pass 1 reversed: z[j] = staging[slot[j]]); the result is diag(B)·z[0..d].
    pub fn transpose<T: Real>(&self, g: &[T]) -> Vec<T> {
        let (big_d, block) = (self.big_d, self.block);
        let mut a = buffers::take::<T>(self.padded);
        wht_fill(&mut a, |off, chunk| {
            for (k, o) in chunk.iter_mut().enumerate() {
                let i = off + k;
                *o = if i < big_d { g[i] } else { T::zero() };
            }
        });
        let mut staged = buffers::take::<T>(self.staged_len());
        let stride = self.stride;
        staged.par_chunks_mut(stride).enumerate().for_each(|(b, chunk)| {
            let (off, s0) = (b * block, b * stride);
            for (k, o) in chunk[..block].iter_mut().enumerate() {
                let src = off + self.local[s0 + k] as usize;
                *o = a[src] * self.diag::<T>(s0 + k, src);
            }
        });
        buffers::give(a);
        // With a single block pass 1 is the identity and `staged` already is z's input.
        let z = if self.padded == block {
            wht_fill(&mut staged, |_, _| {});
            staged
        } else {
            let mut z = buffers::take::<T>(self.padded);
            let staged_ref = &staged;
            wht_fill(&mut z, |off, chunk| {
                for (k, o) in chunk.iter_mut().enumerate() {
                    *o = staged_ref[self.slot[off + k] as usize];
                }
            });
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

    /// Length of the staging buffer (blocks x stride).
    fn staged_len(&self) -> usize {
        self.padded / self.block * self.stride
    }

    /// Pass 1 of Π: staged[slot[j]] = a[j], reading `a` in order.
    fn stage<T: Real>(&self, a: &[T], staged: &mut [T]) {
        assert_eq!(staged.len(), self.staged_len(), "staging buffer length");
        let dst = SyncPtr(staged.as_mut_ptr());
        a.par_chunks(SCATTER_CHUNK).enumerate().for_each(move |(c, src)| {
            let base = c * SCATTER_CHUNK;
            for (k, &v) in src.iter().enumerate() {
                let s = self.slot[base + k] as usize;
                // SAFETY: `slot` is injective into 0..staged_len (built in `assemble` from a checked
                // permutation: one distinct staging position per source, each < blocks x stride),
                // and `staged` has staged_len entries, so every write is in bounds and no two
                // writes (in this task or another) touch the same element.
                unsafe { *dst.get().add(s) = v };
            }
        });
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
