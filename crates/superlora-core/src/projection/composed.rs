//! The projections composed from candle's ordinary ops, for devices the custom ops do not run on
//! (CUDA): every op used here has a backward in candle, so autograd gives each one's transpose
//! without any code of ours, and the same graph runs on any device. Slower than the CPU kernels
//! (the fixed index and sign/Gaussian tables are uploaded to the device on each call); the CPU
//! tests in this file check that they equal the custom ops, values and gradients.
//!
//! - shuffle: v = x[src] (`index_select`), Πᵀ(g) = g[π];
//! - fastfood: F(x) = (H·diag(G)·Π·H·diag(B)·pad(x))[..D]·scale, H an unnormalised
//!   Walsh–Hadamard transform in log2 Lh butterfly stages (`reshape`/`narrow`/`cat`), Π an
//!   `index_select` by `perm`; Fᵀ the same chain reversed;
//! - fourier: ΔW[i, j] = 1/(R·C)·Σ_k x_k·cos(2π(u_k·i/R + v_k·j/C)) =
//!   ((C_u ⊙ x)·C_vᵀ − (S_u ⊙ x)·S_vᵀ)/(R·C), with C_u[i, k] = cos(2π·u_k·i/R),
//!   S_u[i, k] = sin(2π·u_k·i/R) and likewise C_v, S_v: two matmuls, O(n·R·C).

use candle_core::{Device, Tensor};

use super::fastfood::Fastfood;
use super::fourier::Fourier;
use super::shuffle::Shuffle;
use crate::error::Result;

fn index(idx: &[u32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(idx, idx.len(), device)?)
}

/// The inverse of a permutation given as a gather table.
fn inverse(perm: &[u32]) -> Vec<u32> {
    let mut inv = vec![0u32; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as u32;
    }
    inv
}

/// v[j] = x[src[j]] on a 1-D tensor.
pub fn shuffle(s: &Shuffle, x: &Tensor) -> Result<Tensor> {
    Ok(x.index_select(&index(&s.src, x.device())?, 0)?)
}

/// The transpose of [`shuffle`]: g_x[src[j]] = g_v[j], i.e. g_x = g_v[π].
pub fn shuffle_transpose(s: &Shuffle, g: &Tensor) -> Result<Tensor> {
    Ok(g.index_select(&index(&inverse(&s.src), g.device())?, 0)?)
}

/// The unnormalised Walsh–Hadamard transform (Sylvester order, as [`super::wht`]) of a 1-D tensor
/// whose length is a power of two: log2 n stages of (a, b) ↦ (a + b, a − b).
pub fn hadamard(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let mut y = x.clone();
    let mut h = 1;
    while h < n {
        let z = y.reshape((n / (2 * h), 2, h))?;
        let (a, b) = (z.narrow(1, 0, 1)?, z.narrow(1, 1, 1)?);
        y = Tensor::cat(&[(&a + &b)?, (&a - &b)?], 1)?.reshape(n)?;
        h *= 2;
    }
    Ok(y)
}

/// B as ±1 and G, in the dtype and on the device of `like`.
fn fastfood_tables(f: &Fastfood, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let signs: Vec<f32> = f.signs.iter().map(|&neg| if neg { -1.0 } else { 1.0 }).collect();
    let (dev, dt) = (like.device(), like.dtype());
    let b = Tensor::from_slice(&signs, f.padded, dev)?.to_dtype(dt)?;
    let g = Tensor::from_slice(&f.gauss, f.padded, dev)?.to_dtype(dt)?;
    Ok((b, g))
}

/// Zero-pads a 1-D tensor to `len`.
fn pad_to(x: &Tensor, len: usize) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(if n < len { x.pad_with_zeros(0, 0, len - n)? } else { x.clone() })
}

/// F(x) for a 1-D tensor of d values → D values.
pub fn fastfood(f: &Fastfood, x: &Tensor) -> Result<Tensor> {
    let (b, g) = fastfood_tables(f, x)?;
    let y = hadamard(&pad_to(x, f.padded)?.mul(&b)?)?;
    let y = y.index_select(&index(&f.perm, x.device())?, 0)?;
    let y = hadamard(&y.mul(&g)?)?;
    Ok((y.narrow(0, 0, f.big_d)? * f.scale)?)
}

/// Fᵀ(g) for a 1-D tensor of D values → d values.
pub fn fastfood_transpose(f: &Fastfood, g: &Tensor) -> Result<Tensor> {
    let (b, gauss) = fastfood_tables(f, g)?;
    let y = hadamard(&pad_to(g, f.padded)?)?.mul(&gauss)?;
    let y = y.index_select(&index(&inverse(&f.perm), g.device())?, 0)?;
    let y = hadamard(&y)?.mul(&b)?;
    Ok((y.narrow(0, 0, f.d)? * f.scale)?)
}

/// cos and sin of 2π·freq·i/len for i < len (rows) and each frequency (columns): [len, n] each,
/// computed in f64, in the dtype and on the device of `like`.
fn trig(freqs: &[usize], len: usize, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = freqs.len();
    let (mut c, mut s) = (Vec::with_capacity(len * n), Vec::with_capacity(len * n));
    for i in 0..len {
        for &u in freqs {
            // (u·i) mod len keeps the angle exact for large products.
            let a = 2.0 * std::f64::consts::PI * ((u * i) % len.max(1)) as f64 / len as f64;
            c.push(a.cos());
            s.push(a.sin());
        }
    }
    let (dev, dt) = (like.device(), like.dtype());
    Ok((Tensor::from_vec(c, (len, n), dev)?.to_dtype(dt)?, Tensor::from_vec(s, (len, n), dev)?.to_dtype(dt)?))
}

/// The four tables of a FourierFT weight: C_u, S_u [R, n] and C_v, S_v [C, n].
fn fourier_tables(f: &Fourier, like: &Tensor) -> Result<[Tensor; 4]> {
    let cols = f.cols.max(1);
    let us: Vec<usize> = f.positions.iter().map(|p| p / cols).collect();
    let vs: Vec<usize> = f.positions.iter().map(|p| p % cols).collect();
    let (cu, su) = trig(&us, f.rows, like)?;
    let (cv, sv) = trig(&vs, f.cols, like)?;
    Ok([cu, su, cv, sv])
}

/// Re(IDFT2) of n coefficients x at their frequencies: R·C values, row-major.
pub fn fourier(f: &Fourier, x: &Tensor) -> Result<Tensor> {
    let [cu, su, cv, sv] = fourier_tables(f, x)?;
    let xr = x.reshape((1, f.n()))?;
    let w = (cu.broadcast_mul(&xr)?.matmul(&cv.t()?)? - su.broadcast_mul(&xr)?.matmul(&sv.t()?)?)?;
    Ok((w.reshape(f.rows * f.cols)? / (f.rows * f.cols) as f64)?)
}

/// The transpose of [`fourier`]: R·C values g ↦ n values, Σ_ij g[i, j]·(C_u[i,k]·C_v[j,k] −
/// S_u[i,k]·S_v[j,k])/(R·C).
pub fn fourier_transpose(f: &Fourier, g: &Tensor) -> Result<Tensor> {
    let [cu, su, cv, sv] = fourier_tables(f, g)?;
    let g2 = g.reshape((f.rows, f.cols))?;
    // Σ_j g[i, j]·C_v[j, k] → [R, n], then ⊙ C_u and Σ_i.
    let c = g2.matmul(&cv)?.mul(&cu)?.sum(0)?;
    let s = g2.matmul(&sv)?.mul(&su)?.sum(0)?;
    Ok(((c - s)? / (f.rows * f.cols) as f64)?)
}

#[cfg(test)]
mod tests {
    //! The oracle comparison: each composed projection against the custom CPU op, values and
    //! gradients, in f32 and f64 (runs on the CPU, so in CI).
    use std::sync::Arc;

    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::projection::fastfood::{FastfoodOp, FastfoodTransposeOp};
    use crate::projection::fourier::{FourierOp, FourierTransposeOp};
    use crate::projection::shuffle::{ShuffleOp, ShuffleTransposeOp};
    use crate::projection::wht;

    fn ramp(n: usize, dt: DType) -> Tensor {
        let v: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64 - 50.0) / 17.0).collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap().to_dtype(dt).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// max |a − b| / max |b|: fails on any element that is off relative to the tensor's scale.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn tol(dt: DType) -> f64 {
        if dt == DType::F64 { 1e-12 } else { 1e-5 }
    }

    /// Values of fast(x) vs composed(x), and the gradient of Σ w ⊙ op(x) with respect to x.
    fn check(n_in: usize, n_out: usize, fast: &dyn Fn(&Tensor) -> Tensor, composed: &dyn Fn(&Tensor) -> Tensor) {
        for dt in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&ramp(n_in, dt)).unwrap();
            let w = ramp(n_out + 3, dt).narrow(0, 3, n_out).unwrap();
            let (yf, yc) = (fast(x.as_tensor()), composed(x.as_tensor()));
            assert_eq!(yf.dims(), &[n_out]);
            assert_eq!(yc.dims(), &[n_out]);
            let r = rel(&yc, &yf);
            assert!(r < tol(dt), "{dt:?}: values differ by {r:e}");
            let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (yc * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (gf, gc) = (gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
            let r = rel(gc, gf);
            assert!(r < tol(dt), "{dt:?}: gradients differ by {r:e}");
        }
    }

    #[test]
    fn hadamard_matches_the_in_place_kernel() {
        for n in [1usize, 2, 8, 64, 1024] {
            let x = ramp(n, DType::F64);
            let mut v = values(&x);
            wht::wht(&mut v);
            let fast = Tensor::from_vec(v, n, &Device::Cpu).unwrap();
            assert!(rel(&hadamard(&x).unwrap(), &fast) < 1e-12, "n = {n}");
        }
    }

    #[test]
    fn shuffle_matches_the_custom_op() {
        let s = Arc::new(Shuffle::generate(300, 7, 2));
        check(300, 300, &|x| x.apply_op1(ShuffleOp(s.clone())).unwrap(), &|x| shuffle(&s, x).unwrap());
        check(300, 300, &|x| x.apply_op1(ShuffleTransposeOp(s.clone())).unwrap(), &|x| {
            shuffle_transpose(&s, x).unwrap()
        });
    }

    #[test]
    fn fastfood_matches_the_custom_op() {
        // D not a power of two (padding), d < D, and a D large enough for several staging blocks.
        for (d, big_d) in [(5, 7), (40, 100), (1000, 1000), (3000, 70_000)] {
            let f = Arc::new(Fastfood::generate(d, big_d, 11, 1));
            check(d, big_d, &|x| x.apply_op1(FastfoodOp(f.clone())).unwrap(), &|x| fastfood(&f, x).unwrap());
            check(big_d, d, &|x| x.apply_op1(FastfoodTransposeOp(f.clone())).unwrap(), &|x| {
                fastfood_transpose(&f, x).unwrap()
            });
        }
    }

    #[test]
    fn fourier_matches_the_custom_op() {
        for (rows, cols, n) in [(6, 10, 5), (24, 16, 40), (48, 64, 200)] {
            let f = Arc::new(Fourier::generate(rows, cols, n, 3));
            check(n, rows * cols, &|x| x.apply_op1(FourierOp(f.clone())).unwrap(), &|x| fourier(&f, x).unwrap());
            check(rows * cols, n, &|x| x.apply_op1(FourierTransposeOp(f.clone())).unwrap(), &|x| {
                fourier_transpose(&f, x).unwrap()
            });
        }
    }

    /// The tests above must be able to fail: a composed path with a wrong table is caught.
    #[test]
    fn a_wrong_permutation_is_caught() {
        let s = Shuffle::generate(50, 7, 2);
        let mut wrong = s.clone();
        wrong.src.swap(0, 1);
        let x = ramp(50, DType::F64);
        let fast = x.apply_op1(ShuffleOp(Arc::new(s))).unwrap();
        assert!(rel(&shuffle(&wrong, &x).unwrap(), &fast) > 1e-3);
    }
}
