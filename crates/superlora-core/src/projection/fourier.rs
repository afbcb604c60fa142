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
//! Symbol → variable: x → the group's `dense` tensor [n]; (u_k, v_k) → [`Fourier::positions`]
//! (flat u_k·C + v_k, PEFT's `indices` before its split into rows and columns).
//!
//! Frequencies: the first n entries of a uniformly random permutation of 0..R·C (PEFT's
//! `randperm(R·C)[:n]`, with the portable generator: stream (seed, group 0,
//! [`Purpose::FourierPositions`]); like PEFT, weights of equal shape get equal frequencies).
//!
//! Fast path, exact and with no FFT dependency: only the distinct rows U and columns V of the
//! chosen frequencies matter, so with S the |U| x |V| spectrum restricted to them,
//! ΔW = [cos | −sin](R x 2|U|) · [S·cos_V ; S·sin_V](2|U| x C) / (R·C): a gather and two
//! matmuls through candle's autograd (2·|U|·|V|·C + 2·R·|U|·C multiply-adds; the trig tables
//! are fixed, cached per dtype and device). Its transpose (for tests) is the same chain reversed.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::config::{Factorization, Fold};
use crate::error::{Error, Result};
use crate::rng::{Purpose, stream};

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
    if count > rows * cols {
        return Err(Error::config(
            "count",
            count,
            format!("weight {group} is {rows}x{cols}: a fourier count cannot exceed d_out·d_in = {}", rows * cols),
        ));
    }
    Ok(count)
}

/// The fixed frequencies of one weight, and the tables of the fast path.
#[derive(Debug)]
pub struct Fourier {
    /// R = d_out.
    pub rows: usize,
    /// C = d_in.
    pub cols: usize,
    /// Flat frequency u_k·C + v_k of coefficient k, in draw order.
    pub positions: Vec<usize>,
    /// Distinct rows U, ascending.
    us: Vec<usize>,
    /// Distinct columns V, ascending.
    vs: Vec<usize>,
    /// Flat index in the |U| x |V| restricted spectrum of coefficient k.
    slot: Vec<u32>,
    /// For each slot of the restricted spectrum, 1 + the coefficient there, or 0.
    gather: Vec<u32>,
    tables: Mutex<Vec<Tables>>,
}

#[derive(Clone, Debug)]
struct Tables {
    dtype: DType,
    device: Device,
    /// [cos | −sin](2π·i·U/R) / (R·C), R x 2|U|.
    left: Tensor,
    /// [cos | sin](2π·V·j/C), |V| x 2C.
    right: Tensor,
    gather: Tensor,
    slot: Tensor,
}

impl PartialEq for Fourier {
    fn eq(&self, other: &Self) -> bool {
        (self.rows, self.cols, &self.positions) == (other.rows, other.cols, &other.positions)
    }
}

/// cos and sin of 2π·(a·b mod m)/m, reduced exactly on integers first.
pub fn twiddle(a: usize, b: usize, m: usize) -> (f64, f64) {
    let k = ((a as u128 * b as u128) % m as u128) as f64;
    let t = 2.0 * std::f64::consts::PI * k / m as f64;
    (t.cos(), t.sin())
}

impl Fourier {
    /// The `n` frequencies of a `rows` x `cols` weight under `seed`.
    pub fn generate(rows: usize, cols: usize, n: usize, seed: u64) -> Self {
        let positions = stream(seed, 0, Purpose::FourierPositions).sample_distinct(rows * cols, n.min(rows * cols));
        Self::from_positions(rows, cols, positions)
    }

    /// From given flat frequencies (all below rows·cols, distinct).
    pub fn from_positions(rows: usize, cols: usize, positions: Vec<usize>) -> Self {
        let mut us: Vec<usize> = positions.iter().map(|p| p / cols).collect();
        let mut vs: Vec<usize> = positions.iter().map(|p| p % cols).collect();
        us.sort_unstable();
        us.dedup();
        vs.sort_unstable();
        vs.dedup();
        let mut gather = vec![0u32; us.len() * vs.len()];
        let slot: Vec<u32> = positions
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let a = us.binary_search(&(p / cols)).unwrap_or(0);
                let b = vs.binary_search(&(p % cols)).unwrap_or(0);
                let s = a * vs.len() + b;
                gather[s] = k as u32 + 1;
                s as u32
            })
            .collect();
        Fourier { rows, cols, positions, us, vs, slot, gather, tables: Mutex::new(Vec::new()) }
    }

    fn tables(&self, dtype: DType, device: &Device) -> Result<Tables> {
        let mut cache = self.tables.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = cache.iter().find(|t| t.dtype == dtype && t.device.same_device(device)) {
            return Ok(t.clone());
        }
        let (r, c, nu, nv) = (self.rows, self.cols, self.us.len(), self.vs.len());
        let norm = 1.0 / (r as f64 * c as f64);
        let mut left = vec![0.0; r * 2 * nu];
        for i in 0..r {
            for (a, &u) in self.us.iter().enumerate() {
                let (cs, sn) = twiddle(i, u, r);
                left[i * 2 * nu + a] = cs * norm;
                left[i * 2 * nu + nu + a] = -sn * norm;
            }
        }
        let mut right = vec![0.0; nv * 2 * c];
        for (b, &v) in self.vs.iter().enumerate() {
            for j in 0..c {
                let (cs, sn) = twiddle(v, j, c);
                right[b * 2 * c + j] = cs;
                right[b * 2 * c + c + j] = sn;
            }
        }
        let to = |v: Vec<f64>, shape: (usize, usize)| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
        };
        let t = Tables {
            dtype,
            device: device.clone(),
            left: to(left, (r, 2 * nu))?,
            right: to(right, (nv, 2 * c))?,
            gather: Tensor::from_vec(self.gather.clone(), self.gather.len(), &Device::Cpu)?.to_device(device)?,
            slot: Tensor::from_vec(self.slot.clone(), self.slot.len(), &Device::Cpu)?.to_device(device)?,
        };
        cache.push(t.clone());
        Ok(t)
    }

    /// v = Re(IDFT2(F(x))) flattened row-major (R·C values, α not applied), with autograd.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let t = self.tables(x.dtype(), x.device())?;
        let (nu, nv, c) = (self.us.len(), self.vs.len(), self.cols);
        let padded = Tensor::cat(&[&Tensor::zeros(1, x.dtype(), x.device())?, &x.flatten_all()?], 0)?;
        let s = padded.index_select(&t.gather, 0)?.reshape((nu, nv))?;
        let y = s.matmul(&t.right)?; // |U| x 2C
        let z = Tensor::cat(&[&y.narrow(1, 0, c)?, &y.narrow(1, c, c)?], 0)?; // 2|U| x C
        Ok(t.left.matmul(&z)?.flatten_all()?)
    }

    /// The transpose: g (R·C values) → n values, with autograd.
    pub fn apply_transpose(&self, g: &Tensor) -> Result<Tensor> {
        let t = self.tables(g.dtype(), g.device())?;
        let nu = self.us.len();
        let p = t.left.t()?.matmul(&g.reshape((self.rows, self.cols))?)?; // 2|U| x C
        let p = Tensor::cat(&[&p.narrow(0, 0, nu)?, &p.narrow(0, nu, nu)?], 1)?; // |U| x 2C
        let q = p.matmul(&t.right.t()?)?.flatten_all()?; // |U|·|V|
        Ok(q.index_select(&t.slot, 0)?)
    }
}
