//! FourierFT projection (Gao et al., ICML 2024; PEFT's `FOURIERFT`): per adapted weight
//! (d_out = R rows, d_in = C columns), n trainable spectral coefficients x_k sit at n fixed
//! random frequencies (u_k, v_k) of an R x C spectrum F, and
//!
//! ΔW = α · Re(IDFT2(F)),  i.e.  ΔW[i, j] = α/(R·C) · Σ_k x_k · cos(2π(u_k·i/R + v_k·j/C)),
//!
//! exactly PEFT's `torch.fft.ifft2(dense_spectrum).real * scaling` (ifft2 carries the 1/(R·C)).
//! Trainable: n per weight, n · L in all.
//!
//! Settings: `projection = fourier` with `count` = n (1 ≤ n ≤ d_out·d_in), natural fold with one
//! group per weight (no `groups`), `factor = dense` of order 1 (the n coefficients; the default
//! once `projection = fourier`), ratio 1. α is the adapter's `scale`, default [`DEFAULT_SCALE`] =
//! 150 (PEFT's default `scaling`) for this projection.
//!
//! Symbol → variable: x → the group's `dense` tensor (n values); (u_k, v_k) → [`Fourier::positions`]
//! (flat u_k·C + v_k, PEFT's `indices` before its split into rows and columns).
//!
//! Frequencies: exactly PEFT's, `torch.randperm(R·C, generator=manual_seed(seed))[:n]` with
//! `random_loc_seed` = the adapter's seed, reproduced bit for bit by
//! [`torch_randperm_prefix`] (MT19937 + torch's Fisher–Yates, pinned against torch's own output);
//! like PEFT, weights of equal shape get equal frequencies. So a FourierFT adapter goes to and comes
//! from PEFT's FOURIERFT exactly (`superlora export --format peft`, `superlora import`).
//!
//! Fast path: a candle custom op. Forward: scatter x into a complex R x C grid, inverse FFT of
//! the rows that hold a coefficient (length C), inverse FFT of every column (length R), keep the
//! real part / (R·C). Backward (the transpose, g ↦ Re(FFT2(g))[u_k, v_k] / (R·C)): FFT of every
//! column, FFT of the rows that hold a coefficient, gather. O(R·C·log(R·C)) either way, with
//! `rustfft` (pure Rust, any length, SIMD; the direct sum would cost n·R·C and a separable
//! matmul form measured 50–200 ms per 384²–768² weight for forward + backward).

/// One line for `--help`.
pub const SUMMARY: &str = "FourierFT: per weight, --count coefficients at fixed random frequencies, dW = scale * Re(IDFT2) (natural fold, dense factor; scale defaults to 150).";

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::{Real, run_1d};

use crate::config::{Factorization, Fold};
use crate::error::{Error, Result};
use crate::rng::{Purpose, TORCH_RANDPERM_MAX, stream, torch_randperm_prefix};

/// PEFT's default FourierFT `scaling` α, the default `scale` of `projection = fourier`.
pub const DEFAULT_SCALE: f64 = 150.0;

/// Checks the settings FourierFT needs; returns the count n.
pub fn check_settings(
    fold: Fold,
    groups: Option<usize>,
    factorization: &Factorization,
    ratio: Option<f64>,
    count: Option<usize>,
) -> Result<usize> {
    if fold != Fold::Natural {
        return Err(Error::config(
            "fold",
            fold,
            "`projection = fourier` takes a 2-D DFT of each weight: use `fold = natural` (square folds are not supported)",
        ));
    }
    if let Some(g) = groups {
        return Err(Error::config("groups", g, "`projection = fourier` has one group per weight: drop `groups`"));
    }
    if *factorization != Factorization::Dense {
        return Err(Error::config(
            "factor",
            factor_name(factorization),
            "`projection = fourier` trains the spectral coefficients themselves: use `factor = dense` (the default)",
        ));
    }
    if let Some(r) = ratio.filter(|r| *r != 1.0) {
        return Err(Error::config(
            "ratio",
            r,
            "`projection = fourier` takes `count` coefficients per weight, not a ratio",
        ));
    }
    match count {
        None => Err(Error::config(
            "count",
            "unset",
            "`projection = fourier` needs `count`, the spectral coefficients per weight (FourierFT's n, e.g. 1000)",
        )),
        Some(0) => Err(Error::config("count", 0, "must be at least 1")),
        Some(c) => Ok(c),
    }
}

fn factor_name(f: &Factorization) -> &'static str {
    match f {
        Factorization::Dense => "dense",
        Factorization::Lora { .. } => "lora",
        Factorization::Tucker { .. } => "tucker",
        Factorization::Kronecker { .. } => "kronecker",
        Factorization::Vera { .. } => "vera",
    }
}

/// n for one group: the count, which may not exceed d_out·d_in of the weight.
pub fn check_count(count: usize, natural_shape: Option<(usize, usize)>, group: usize) -> Result<usize> {
    let Some((rows, cols)) = natural_shape else {
        return Err(Error::config("fold", "square", "`projection = fourier` needs `fold = natural`"));
    };
    if rows * cols > TORCH_RANDPERM_MAX {
        return Err(Error::config(
            "projection",
            "fourier",
            format!(
                "weight {group} is {rows}x{cols}: FourierFT draws its frequencies as torch's randperm \
                 does (PEFT compatibility), which this project reproduces for d_out·d_in ≤ {TORCH_RANDPERM_MAX}"
            ),
        ));
    }
    if count > rows * cols {
        return Err(Error::config(
            "count",
            count,
            format!("weight {group} is {rows}x{cols}: a fourier count cannot exceed d_out·d_in = {}", rows * cols),
        ));
    }
    Ok(count)
}

/// The fixed frequencies of one weight, and its FFT plans.
pub struct Fourier {
    /// R = d_out.
    pub rows: usize,
    /// C = d_in.
    pub cols: usize,
    /// Flat frequency u_k·C + v_k of coefficient k, in draw order.
    pub positions: Vec<usize>,
    /// Distinct rows u that hold a coefficient, ascending.
    us: Vec<usize>,
    inverse_row: Arc<dyn Fft<f64>>,
    inverse_col: Arc<dyn Fft<f64>>,
    forward_row: Arc<dyn Fft<f64>>,
    forward_col: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for Fourier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fourier")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("positions", &self.positions.len())
            .finish()
    }
}

impl PartialEq for Fourier {
    fn eq(&self, other: &Self) -> bool {
        (self.rows, self.cols, &self.positions) == (other.rows, other.cols, &other.positions)
    }
}

impl Fourier {
    /// The `n` frequencies of a `rows` x `cols` weight under `seed`: PEFT's, bit for bit
    /// (`torch.randperm(rows·cols, generator=manual_seed(seed))[:n]`). A shape above
    /// [`TORCH_RANDPERM_MAX`] entries (refused by [`check_count`]) falls back to the project's own
    /// stream so that this never fails.
    pub fn generate(rows: usize, cols: usize, n: usize, seed: u64) -> Self {
        let n = n.min(rows * cols);
        let positions = torch_randperm_prefix(rows * cols, n, seed)
            .unwrap_or_else(|| stream(seed, 0, Purpose::FourierPositions).sample_distinct(rows * cols, n));
        Self::from_positions(rows, cols, positions)
    }

    /// From given flat frequencies (distinct, below rows·cols).
    pub fn from_positions(rows: usize, cols: usize, positions: Vec<usize>) -> Self {
        let mut us: Vec<usize> = positions.iter().map(|p| p / cols.max(1)).collect();
        us.sort_unstable();
        us.dedup();
        let mut planner = FftPlanner::<f64>::new();
        Fourier {
            rows,
            cols,
            positions,
            us,
            inverse_row: planner.plan_fft_inverse(cols),
            inverse_col: planner.plan_fft_inverse(rows),
            forward_row: planner.plan_fft_forward(cols),
            forward_col: planner.plan_fft_forward(rows),
        }
    }

    /// n.
    pub fn n(&self) -> usize {
        self.positions.len()
    }

    /// Column FFTs of a row-major R x C grid (through a transposed copy, so every FFT is contiguous).
    fn columns(&self, grid: &mut [Complex<f64>], fft: &Arc<dyn Fft<f64>>) {
        let (r, c) = (self.rows, self.cols);
        let mut t = vec![Complex::new(0.0, 0.0); r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = grid[i * c + j];
            }
        }
        fft.process(&mut t);
        for j in 0..c {
            for i in 0..r {
                grid[i * c + j] = t[j * r + i];
            }
        }
    }

    /// v = Re(IDFT2(x at the frequencies)), R·C values row-major (α not applied).
    pub fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        let (r, c) = (self.rows, self.cols);
        let mut grid = vec![Complex::new(0.0, 0.0); r * c];
        for (k, &p) in self.positions.iter().enumerate() {
            grid[p] = Complex::new(x[k].to_f64(), 0.0);
        }
        for &u in &self.us {
            self.inverse_row.process(&mut grid[u * c..(u + 1) * c]);
        }
        self.columns(&mut grid, &self.inverse_col);
        let norm = 1.0 / (r as f64 * c as f64);
        grid.iter().map(|z| T::from_f64(z.re * norm)).collect()
    }

    /// The transpose: g (R·C values) ↦ Re(FFT2(g))[u_k, v_k] / (R·C), n values.
    pub fn transpose<T: Real>(&self, g: &[T]) -> Vec<T> {
        let (r, c) = (self.rows, self.cols);
        let mut grid: Vec<Complex<f64>> = g.iter().map(|v| Complex::new(v.to_f64(), 0.0)).collect();
        self.columns(&mut grid, &self.forward_col);
        for &u in &self.us {
            self.forward_row.process(&mut grid[u * c..(u + 1) * c]);
        }
        let norm = 1.0 / (r as f64 * c as f64);
        self.positions.iter().map(|&p| T::from_f64(grid[p].re * norm)).collect()
    }

    /// v = F(x) on a 1-D tensor of n values, with autograd (the op's backward is the transpose).
    pub fn apply(self: &Arc<Self>, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(FourierOp(self.clone()))?)
    }

    /// Fᵀ(g) on a 1-D tensor of R·C values, with autograd.
    pub fn apply_transpose(self: &Arc<Self>, g: &Tensor) -> Result<Tensor> {
        Ok(g.flatten_all()?.contiguous()?.apply_op1(FourierTransposeOp(self.clone()))?)
    }
}

/// Candle op: v = Re(IDFT2(x)), backward = the transpose.
pub struct FourierOp(pub Arc<Fourier>);
/// Candle op: the transpose, backward = the forward.
pub struct FourierTransposeOp(pub Arc<Fourier>);

impl CustomOp1 for FourierOp {
    fn name(&self) -> &'static str {
        "superlora-fourier"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        run_1d(self.name(), s, l, self.0.n(), |x| self.0.forward(x), |x| self.0.forward(x))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.flatten_all()?.contiguous()?.apply_op1_no_bwd(&FourierTransposeOp(self.0.clone()))?))
    }
}

impl CustomOp1 for FourierTransposeOp {
    fn name(&self) -> &'static str {
        "superlora-fourier-transpose"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let len = self.0.rows * self.0.cols;
        run_1d(self.name(), s, l, len, |g| self.0.transpose(g), |g| self.0.transpose(g))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&FourierOp(self.0.clone()))?))
    }
}
