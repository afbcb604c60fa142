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
//! 1/sqrt(D·ΣG²) → [`Fastfood::scale`]; H → [`super::wht::wht`] (unnormalised, in place).
//!
//! B, Π and G come from three independent ChaCha streams of the group (see [`crate::rng`]); G is
//! drawn in f64 and stored rounded to f32, and both the f32 and the f64 kernels use those exact
//! f32 values, so the two precisions implement the same matrix.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Real, run_1d, wht::wht};
use crate::rng::{Purpose, stream};

/// Elements per parallel work item of the elementwise and permutation passes.
const CHUNK: usize = 1 << 14;

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
    /// G_i · scale rounded to f32: the f32 kernel's diagonal.
    gauss_scaled: Vec<f32>,
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

    /// Computes the scale and the f32 diagonal; the parts are trusted.
    fn assemble(d: usize, big_d: usize, signs: Vec<bool>, perm: Vec<u32>, gauss: Vec<f32>) -> Self {
        let sum_sq: f64 = gauss.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
        let scale = 1.0 / (big_d as f64 * sum_sq).sqrt();
        let gauss_scaled = gauss.iter().map(|&g| (f64::from(g) * scale) as f32).collect();
        Fastfood { d, big_d, padded: big_d.next_power_of_two(), signs, perm, gauss, scale, gauss_scaled }
    }

    /// F(x): `x` has d entries, the result D.
    pub fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        let lh = self.padded;
        let gs = T::scaled_diag(&self.gauss, &self.gauss_scaled, self.scale);
        // buf = diag(B) · pad(x)
        let mut buf = vec![T::zero(); lh];
        buf[..self.d]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(self.signs[..self.d].par_chunks(CHUNK))
            .for_each(|((o, xi), si)| {
                for ((o, &v), &s) in o.iter_mut().zip(xi).zip(si) {
                    *o = if s { -v } else { v };
                }
            });
        wht(&mut buf);
        // out = diag(G·scale) · Π · buf
        let mut out = vec![T::zero(); lh];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let base = c * CHUNK;
            for (k, o) in o.iter_mut().enumerate() {
                let i = base + k;
                *o = buf[self.perm[i] as usize] * gs[i];
            }
        });
        drop(buf);
        wht(&mut out);
        out.truncate(self.big_d);
        out
    }

    /// Fᵀ(g): `g` has D entries, the result d.
    pub fn transpose<T: Real>(&self, g: &[T]) -> Vec<T> {
        let lh = self.padded;
        let gs = T::scaled_diag(&self.gauss, &self.gauss_scaled, self.scale);
        let mut buf = vec![T::zero(); lh];
        buf[..self.big_d].par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(o, i)| o.copy_from_slice(i));
        wht(&mut buf);
        // z = Πᵀ · diag(G·scale) · buf, i.e. z[perm[i]] = G_i·scale·buf[i] (a scatter)
        let mut z = vec![T::zero(); lh];
        let zp = ScatterPtr(z.as_mut_ptr());
        buf.par_chunks(CHUNK).enumerate().for_each(move |(c, b)| {
            let base = c * CHUNK;
            for (k, &v) in b.iter().enumerate() {
                let i = base + k;
                let dst = self.perm[i] as usize;
                // SAFETY: `perm` is a permutation of 0..lh (checked in `from_parts`), so every
                // `dst` is in bounds and written by exactly one iteration of one task.
                unsafe { *zp.get().add(dst) = v * gs[i] };
            }
        });
        drop(buf);
        wht(&mut z);
        z.truncate(self.d);
        z.par_chunks_mut(CHUNK).zip(self.signs[..self.d].par_chunks(CHUNK)).for_each(|(o, si)| {
            for (o, &s) in o.iter_mut().zip(si) {
                if s {
                    *o = -*o;
                }
            }
        });
        z
    }
}

#[derive(Clone, Copy)]
struct ScatterPtr<T>(*mut T);
impl<T> ScatterPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: the scatter writes each element from exactly one task (Π is a permutation).
unsafe impl<T: Send> Send for ScatterPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for ScatterPtr<T> {}

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
