//! Shuffle projection: a fixed random permutation of one group.
//!
//! Equation (spec §3.4): v[π(i)] = x[i] for i < N_g, ρ = 1. Computed as a gather
//! v[j] = x[src[j]] with src = π⁻¹; its gradient is the scatter g_x[src[j]] = g_v[j] (= Πᵀ).
//!
//! Symbol → variable: π⁻¹ → [`Shuffle::src`]; N_g → `src.len()`.

/// One line for `--help`.
pub const SUMMARY: &str = "A fixed random permutation per group (ratio 1).";

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{Real, run_1d};
use crate::rng::{Purpose, stream};

/// The fixed permutation of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shuffle {
    /// src[j] = π⁻¹(j): output j reads input src[j].
    pub src: Vec<u32>,
}

impl Shuffle {
    /// π from the group's own stream, stored as π⁻¹.
    pub fn generate(len: usize, seed: u64, group: usize) -> Self {
        let pi = stream(seed, group, Purpose::Shuffle).permutation(len);
        let mut src = vec![0u32; len];
        for (i, &p) in pi.iter().enumerate() {
            src[p as usize] = i as u32;
        }
        Shuffle { src }
    }

    /// v[j] = x[src[j]].
    pub fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        self.src.iter().map(|&s| x[s as usize]).collect()
    }

    /// g_x[src[j]] = g_v[j] (the scatter; Πᵀ).
    pub fn transpose<T: Real>(&self, g: &[T]) -> Vec<T> {
        let mut out = vec![T::zero(); g.len()];
        for (j, &s) in self.src.iter().enumerate() {
            out[s as usize] = g[j];
        }
        out
    }
}

/// Candle op: v = shuffle(x), backward = scatter.
pub struct ShuffleOp(pub Arc<Shuffle>);
/// Candle op: the transpose (scatter), backward = gather.
pub struct ShuffleTransposeOp(pub Arc<Shuffle>);

impl CustomOp1 for ShuffleOp {
    fn name(&self) -> &'static str {
        "superlora-shuffle"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.0.src.len();
        run_1d(self.name(), s, l, n, |x| self.0.forward(x), |x| self.0.forward(x))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&ShuffleTransposeOp(self.0.clone()))?))
    }
}

impl CustomOp1 for ShuffleTransposeOp {
    fn name(&self) -> &'static str {
        "superlora-shuffle-transpose"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.0.src.len();
        run_1d(self.name(), s, l, n, |x| self.0.transpose(x), |x| self.0.transpose(x))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&ShuffleOp(self.0.clone()))?))
    }
}
