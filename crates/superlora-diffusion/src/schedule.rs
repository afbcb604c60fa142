//! The DDPM forward process (Ho et al. 2020) and its noise schedule.
//!
//! q(x_t | x_0) = N(√ᾱ_t·x_0, (1 − ᾱ_t)·I), ᾱ_t = Π_{s ≤ t} (1 − β_s), t = 0..T−1, so
//! x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε with ε ~ N(0, I). The model predicts v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0
//! (loss ‖v̂ − v‖², see `dit.rs` for why not ε), from which ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂.
//!
//! - cosine (Nichol & Dhariwal 2021): ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s)·π/2),
//!   s = 0.008, with β_t = 1 − ᾱ_{t+1}/ᾱ_t clipped to 0.999 (here ᾱ_t = ᾱ(t + 1), so x_0 is
//!   never returned noise-free);
//! - linear (Ho et al.): β from 1e-4 to 0.02 at T = 1000, both scaled by 1000/T for other T.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The β schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    /// ᾱ follows a squared cosine.
    Cosine,
    /// β rises linearly.
    Linear,
}

/// ᾱ_t for t = 0..T−1 (f64).
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    /// ᾱ_t, decreasing from near 1 to near 0.
    pub alpha_bar: Vec<f64>,
}

impl NoiseSchedule {
    /// The schedule of `kind` over `steps` = T timesteps (T ≥ 2).
    pub fn new(kind: BetaSchedule, steps: usize) -> Result<Self> {
        if steps < 2 {
            return Err(Error::setting("timesteps", steps, "the diffusion needs at least 2 timesteps"));
        }
        let t_max = steps as f64;
        let betas: Vec<f64> = match kind {
            BetaSchedule::Cosine => {
                let s = 0.008;
                let f = |t: f64| ((t / t_max + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..steps).map(|t| (1.0 - f(t as f64 + 1.0) / f(t as f64)).clamp(0.0, 0.999)).collect()
            }
            BetaSchedule::Linear => {
                let scale = 1000.0 / t_max;
                let (b0, b1) = (1e-4 * scale, (0.02 * scale).min(0.999));
                (0..steps).map(|t| b0 + (b1 - b0) * t as f64 / (t_max - 1.0)).collect()
            }
        };
        let mut acc = 1.0;
        let alpha_bar = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(NoiseSchedule { alpha_bar })
    }

    /// T.
    pub fn len(&self) -> usize {
        self.alpha_bar.len()
    }

    /// Never true (T ≥ 2).
    pub fn is_empty(&self) -> bool {
        self.alpha_bar.is_empty()
    }

    /// (√ᾱ_t, √(1 − ᾱ_t)).
    pub fn coefficients(&self, t: usize) -> (f64, f64) {
        let a = self.alpha_bar[t.min(self.alpha_bar.len() - 1)];
        (a.sqrt(), (1.0 - a).sqrt())
    }

    /// v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 for rows of `d` values (the v-prediction target).
    pub fn velocity(&self, x0: &[f32], eps: &[f32], t: &[usize], d: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(x0.len());
        for (i, &ti) in t.iter().enumerate() {
            let (a, s) = self.coefficients(ti);
            let (a, s) = (a as f32, s as f32);
            let row = i * d..(i + 1) * d;
            out.extend(x0[row.clone()].iter().zip(&eps[row]).map(|(x, e)| a * e - s * x));
        }
        out
    }

    /// x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε for rows of `d` values: `x0` and `eps` are [n·d], `t` [n].
    pub fn q_sample(&self, x0: &[f32], eps: &[f32], t: &[usize], d: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(x0.len());
        for (i, &ti) in t.iter().enumerate() {
            let (a, s) = self.coefficients(ti);
            let (a, s) = (a as f32, s as f32);
            let row = i * d..(i + 1) * d;
            out.extend(x0[row.clone()].iter().zip(&eps[row]).map(|(x, e)| a * x + s * e));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_decrease_from_one_to_zero() {
        for kind in [BetaSchedule::Cosine, BetaSchedule::Linear] {
            for steps in [50, 400, 1000] {
                let s = NoiseSchedule::new(kind, steps).unwrap();
                assert_eq!(s.len(), steps);
                assert!(s.alpha_bar[0] > 0.99 && s.alpha_bar[0] < 1.0, "{kind:?} {steps}: {}", s.alpha_bar[0]);
                assert!(s.alpha_bar[steps - 1] < 0.01, "{kind:?} {steps}: {}", s.alpha_bar[steps - 1]);
                assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]));
            }
        }
        assert!(NoiseSchedule::new(BetaSchedule::Cosine, 1).is_err());
    }

    #[test]
    fn q_sample_mixes_signal_and_noise() {
        let s = NoiseSchedule::new(BetaSchedule::Cosine, 100).unwrap();
        let (a, b) = s.coefficients(40);
        assert!((a * a + b * b - 1.0).abs() < 1e-12);
        let x = s.q_sample(&[1.0, -1.0, 0.5, 0.0], &[0.0, 0.0, 1.0, 1.0], &[40, 99], 2);
        assert!((x[0] as f64 - a).abs() < 1e-6 && (x[1] as f64 + a).abs() < 1e-6);
        let (a2, b2) = s.coefficients(99);
        assert!((x[2] as f64 - (0.5 * a2 + b2)).abs() < 1e-6);
    }
}
