//! The fixed projections F_g: R^{n_g} → R^{N_g} (spec §3 step 4). Never trained, regenerated
//! from the seed, one independent instance per group.
//!
//! - identity (ρ = 1): v = x;
//! - [`shuffle`] (ρ = 1): v[π(i)] = x[i];
//! - [`fastfood`] (0 < ρ ≤ 1): v = F x, an O(L log L) structured random matrix;
//! - [`fourier`] (FourierFT, per weight): v = Re(IDFT2) of n coefficients at fixed frequencies.
//!
//! All three non-trivial projections are candle custom ops with their own backward (the transpose)
//! on the CPU; on other devices (CUDA) [`composed`] builds the same maps from candle's ordinary
//! differentiable ops (its tests check the two agree, values and gradients).

pub(crate) mod buffers;
pub mod composed;
pub mod fastfood;
pub mod fourier;
pub mod shuffle;
pub mod wht;

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Layout, Tensor};

use crate::error::Result;
use crate::plan::{GroupPlan, ProjectionPlan};
use fastfood::Fastfood;
use shuffle::Shuffle;

/// One line for `--help` about the identity projection.
pub const IDENTITY_SUMMARY: &str = "No projection (ratio 1).";

/// Float types the projection kernels run on.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
    + 'static
{
    /// 0.
    fn zero() -> Self;
    /// Nearest value to `v`.
    fn from_f64(v: f64) -> Self;
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// Fastfood's diagonal entry G_i·scale for a staged value landing at destination `i`, whose
    /// entry of the precomputed f32 table (in staging order) is `staged`: f32 takes `staged`,
    /// f64 recomputes G_i·scale in f64.
    fn fastfood_diag(ff: &Fastfood, staged: f32, i: usize) -> Self;
    /// `self`, negated where `negative` (branch-free: flips the sign bit).
    fn signed(self, negative: bool) -> Self;
    /// The pool of reusable work buffers of this type.
    fn pool() -> &'static buffers::Pool<Self>;
}

static POOL_F32: buffers::Pool<f32> = buffers::Pool::new();
static POOL_F64: buffers::Pool<f64> = buffers::Pool::new();

impl Real for f32 {
    fn zero() -> Self {
        0.0
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn fastfood_diag(_: &Fastfood, staged: f32, _: usize) -> Self {
        staged
    }
    #[inline(always)]
    fn signed(self, negative: bool) -> Self {
        f32::from_bits(self.to_bits() ^ (u32::from(negative) << 31))
    }
    fn pool() -> &'static buffers::Pool<Self> {
        &POOL_F32
    }
}

impl Real for f64 {
    fn zero() -> Self {
        0.0
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn fastfood_diag(ff: &Fastfood, _: f32, i: usize) -> Self {
        f64::from(ff.gauss[i]) * ff.scale
    }
    #[inline(always)]
    fn signed(self, negative: bool) -> Self {
        f64::from_bits(self.to_bits() ^ (u64::from(negative) << 63))
    }
    fn pool() -> &'static buffers::Pool<Self> {
        &POOL_F64
    }
}

/// The projection of one group, ready to apply.
#[derive(Clone, Debug)]
pub enum GroupProjection {
    /// v = x.
    Identity,
    /// v[π(i)] = x[i].
    Shuffle(Arc<Shuffle>),
    /// v = F x.
    Fastfood(Arc<Fastfood>),
    /// v = Re(IDFT2(x at fixed frequencies)).
    Fourier(Arc<fourier::Fourier>),
}

impl GroupProjection {
    /// Regenerates the projection of `group` from `seed`.
    pub fn new(group: &GroupPlan, seed: u64) -> Self {
        match group.projection {
            ProjectionPlan::Identity => GroupProjection::Identity,
            ProjectionPlan::Shuffle => {
                GroupProjection::Shuffle(Arc::new(Shuffle::generate(group.len, seed, group.index)))
            }
            ProjectionPlan::Fastfood { .. } => {
                GroupProjection::Fastfood(Arc::new(Fastfood::generate(group.n, group.len, seed, group.index)))
            }
            ProjectionPlan::Fourier { rows, cols } => {
                GroupProjection::Fourier(Arc::new(fourier::Fourier::generate(rows, cols, group.n, seed)))
            }
        }
    }

    /// Applies F to a 1-D tensor of length n_g, with autograd.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if !x.device().is_cpu() {
            return match self {
                GroupProjection::Identity => Ok(x.clone()),
                GroupProjection::Shuffle(s) => composed::shuffle(s, x),
                GroupProjection::Fastfood(f) => composed::fastfood(f, x),
                GroupProjection::Fourier(f) => composed::fourier(f, &x.flatten_all()?),
            };
        }
        Ok(match self {
            GroupProjection::Identity => x.clone(),
            GroupProjection::Shuffle(s) => x.contiguous()?.apply_op1(shuffle::ShuffleOp(s.clone()))?,
            GroupProjection::Fastfood(f) => x.contiguous()?.apply_op1(fastfood::FastfoodOp(f.clone()))?,
            GroupProjection::Fourier(f) => f.apply(x)?,
        })
    }

    /// Applies Fᵀ to a 1-D tensor of length N_g, with autograd.
    pub fn apply_transpose(&self, g: &Tensor) -> Result<Tensor> {
        if !g.device().is_cpu() {
            return match self {
                GroupProjection::Identity => Ok(g.clone()),
                GroupProjection::Shuffle(s) => composed::shuffle_transpose(s, g),
                GroupProjection::Fastfood(f) => composed::fastfood_transpose(f, g),
                GroupProjection::Fourier(f) => composed::fourier_transpose(f, &g.flatten_all()?),
            };
        }
        Ok(match self {
            GroupProjection::Identity => g.clone(),
            GroupProjection::Shuffle(s) => g.contiguous()?.apply_op1(shuffle::ShuffleTransposeOp(s.clone()))?,
            GroupProjection::Fastfood(f) => g.contiguous()?.apply_op1(fastfood::FastfoodTransposeOp(f.clone()))?,
            GroupProjection::Fourier(f) => f.apply_transpose(g)?,
        })
    }
}

/// Runs `f32`/`f64` kernel `f` on a contiguous 1-D CPU storage of `expect` elements.
pub(crate) fn run_1d(
    op: &str,
    storage: &CpuStorage,
    layout: &Layout,
    expect: usize,
    f32_kernel: impl FnOnce(&[f32]) -> Vec<f32>,
    f64_kernel: impl FnOnce(&[f64]) -> Vec<f64>,
) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
    let n = layout.shape().elem_count();
    if layout.shape().rank() != 1 || n != expect {
        candle_core::bail!("{op}: expected a 1-D tensor of {expect} values, got shape {:?}", layout.shape());
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous");
    };
    let (out, len) = match storage {
        CpuStorage::F32(v) => {
            let o = f32_kernel(&v[start..end]);
            let l = o.len();
            (CpuStorage::F32(o), l)
        }
        CpuStorage::F64(v) => {
            let o = f64_kernel(&v[start..end]);
            let l = o.len();
            (CpuStorage::F64(o), l)
        }
        other => candle_core::bail!(
            "{op}: supports f32 and f64, got {:?}",
            candle_core::backend::BackendStorage::dtype(other)
        ),
    };
    Ok((out, candle_core::Shape::from(len)))
}

/// A raw pointer that may cross threads, for the two kernels whose parallel tasks write pairwise
/// disjoint elements of one buffer (the Hadamard column panels, the fastfood staging scatter);
/// each use states why its writes are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only handed to tasks that access pairwise disjoint elements (see each use).
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

/// True for the dtypes the projections support.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}
