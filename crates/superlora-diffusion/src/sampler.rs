//! DDIM sampling (Song et al. 2021) with classifier-free guidance (Ho & Salimans 2022).
//!
//! Timesteps τ_S > … > τ_1 evenly spaced over 0..T−1 (τ_i = ⌊(i−1)·T/S⌋, S = `steps`). At each τ
//! with predecessor τ' (ᾱ_{τ'} = 1 after the last step):
//!   ε = ε_uncond + w·(ε_cond − ε_uncond)      (w = `guidance`; w = 1 is the conditional model,
//!                                               w = 0 the unconditional one);
//!   x̂_0 = clip((x_τ − √(1−ᾱ_τ)·ε)/√ᾱ_τ, −1, 1);
//!   ε ← (x_τ − √ᾱ_τ·x̂_0)/√(1−ᾱ_τ)             (re-derived from the clipped x̂_0, as GLIDE does:
//!                                               keeps guided samples on the data range);
//!   σ = η·√((1−ᾱ_{τ'})/(1−ᾱ_τ))·√(1 − ᾱ_τ/ᾱ_{τ'});
//!   x_{τ'} = √ᾱ_{τ'}·x̂_0 + √(1−ᾱ_{τ'}−σ²)·ε + σ·z.
//! η = 0 is deterministic DDIM; η = 1 is DDPM's ancestral sampler on the sub-sequence. x_T and
//! every z of sample i come from its own stream ([`crate::seeds::sample`]), so a sample does not
//! depend on the batch it was drawn in.

use candle_core::Tensor;
use superlora_models::adapt::Deltas;

use crate::dit::{Dit, Mode};
use crate::{Error, Result, seeds};

/// Largest |guidance scale| (published guidance scales stay below about 20; far beyond, ε
/// overflows f32).
pub const MAX_GUIDANCE: f64 = 100.0;
/// Most values (images x pixels) one call generates: 1 GiB of f32 (342,000 images of 28x28).
pub const MAX_SAMPLE_VALUES: usize = 1 << 28;

/// Checks that `images` images of `pixels` values may be generated in one call (before anything
/// is allocated for them); `flag` names the setting that counts the images.
pub fn check_count(images: usize, pixels: usize, flag: &str) -> Result<()> {
    if images.saturating_mul(pixels) > MAX_SAMPLE_VALUES {
        return Err(Error::setting(
            flag,
            images,
            format!(
                "{images} images of {pixels} pixels exceed the {MAX_SAMPLE_VALUES} values one call may generate: \
                 at most {} images",
                MAX_SAMPLE_VALUES / pixels.max(1)
            ),
        ));
    }
    Ok(())
}

/// How to sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleSettings {
    /// DDIM steps S (1..=T).
    pub steps: usize,
    /// Guidance scale w.
    pub guidance: f64,
    /// η (0: deterministic).
    pub eta: f64,
    /// Seed of x_T and the noise.
    pub seed: u64,
    /// Images per model call (the guided call runs twice as many rows).
    pub batch: usize,
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings { steps: 50, guidance: 2.0, eta: 0.0, seed: 0, batch: 100 }
    }
}

/// The DDIM timesteps, from the noisiest down.
pub fn timesteps(t_max: usize, steps: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..steps).map(|i| i * t_max / steps).collect();
    v.dedup();
    v.reverse();
    v
}

/// Generates one image per entry of `labels` (classes 0..classes−1): [n, pixels] in [−1, 1].
/// `progress` is called with the number of images finished.
pub fn sample(
    model: &Dit,
    deltas: &Deltas,
    labels: &[u32],
    s: &SampleSettings,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    let cfg = model.config();
    if let Some(l) = labels.iter().find(|&&l| l as usize >= cfg.classes) {
        return Err(Error::setting("class", l, format!("below {}", cfg.classes)));
    }
    check_count(labels.len(), cfg.pixels(), "images")?;
    let rows_per_image = if s.guidance == 0.0 || s.guidance == 1.0 { 1 } else { 2 };
    cfg.check_batch(s.batch.min(labels.len()).max(1), rows_per_image, "batch-size")?;
    let schedule = cfg.noise_schedule()?;
    let null = cfg.classes as u32;
    let mut eps = |x: &[f32], tau: usize, y: &[u32]| -> Result<Vec<f32>> {
        let xt = Tensor::from_vec(x.to_vec(), (y.len(), cfg.pixels()), model.device())?;
        guided_eps(model, deltas, &xt, tau, y, null, s.guidance)
    };
    ddim(&schedule.alpha_bar, cfg.pixels(), labels, s, &mut eps, progress)
}

/// An ε-model for [`ddim`]: (x [b·pixels], τ, labels [b]) → ε [b·pixels].
pub type EpsFn<'a> = dyn FnMut(&[f32], usize, &[u32]) -> Result<Vec<f32>> + 'a;

/// The DDIM loop of the module docs for any ε-model: `eps(x [b·pixels], τ, labels [b])` returns
/// the (already guided) ε [b·pixels]. `alpha_bar` is ᾱ_t for t = 0..T−1.
pub fn ddim(
    alpha_bar: &[f64],
    pixels: usize,
    labels: &[u32],
    s: &SampleSettings,
    eps: &mut EpsFn<'_>,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    let t_max = alpha_bar.len();
    if s.steps == 0 || s.steps > t_max {
        return Err(Error::setting("steps", s.steps, format!("DDIM steps must be in 1..={t_max}")));
    }
    if !(s.guidance.is_finite() && s.guidance.abs() <= MAX_GUIDANCE) {
        return Err(Error::setting(
            "guidance",
            s.guidance,
            format!("must be a finite number in [-{MAX_GUIDANCE}, {MAX_GUIDANCE}]"),
        ));
    }
    if s.batch == 0 {
        return Err(Error::setting("batch-size", 0, "at least 1 image per call"));
    }
    if pixels == 0 {
        return Err(Error::setting("pixels", 0, "images need at least one pixel"));
    }
    check_count(labels.len(), pixels, "images")?;
    if !(0.0..=1.0).contains(&s.eta) {
        return Err(Error::setting("eta", s.eta, "must be in [0, 1]"));
    }
    let taus = timesteps(t_max, s.steps);
    let d = pixels;
    let mut out = Vec::with_capacity(labels.len() * d);
    for (chunk_i, chunk) in labels.chunks(s.batch.max(1)).enumerate() {
        let b = chunk.len();
        let first = chunk_i * s.batch.max(1);
        let mut rngs: Vec<_> = (0..b).map(|j| seeds::sample(s.seed, first + j)).collect();
        let mut x: Vec<f32> = rngs.iter_mut().flat_map(|r| seeds::normals(r, d)).collect();
        for (k, &tau) in taus.iter().enumerate() {
            let e = eps(&x, tau, chunk)?;
            if e.len() != x.len() {
                return Err(Error::setting("ε", e.len(), format!("the ε-model must return {} values", x.len())));
            }
            let a_t = alpha_bar[tau];
            let a_prev = taus.get(k + 1).map_or(1.0, |&p| alpha_bar[p]);
            let sigma = s.eta * ((1.0 - a_prev) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_prev).max(0.0).sqrt();
            let dir = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt();
            for ((xr, er), rng) in x.chunks_exact_mut(d).zip(e.chunks_exact(d)).zip(rngs.iter_mut()) {
                let z = if sigma > 0.0 { seeds::normals(rng, d) } else { vec![0.0; d] };
                for ((xv, &ev), &zv) in xr.iter_mut().zip(er).zip(&z) {
                    let (x, e) = (f64::from(*xv), f64::from(ev));
                    let x0 = ((x - (1.0 - a_t).sqrt() * e) / a_t.sqrt()).clamp(-1.0, 1.0);
                    // ε re-derived from the clipped x̂_0 (GLIDE's "clipped model output").
                    let e = if a_t < 1.0 { (x - a_t.sqrt() * x0) / (1.0 - a_t).sqrt() } else { e };
                    *xv = (a_prev.sqrt() * x0 + dir * e + sigma * f64::from(zv)) as f32;
                }
            }
        }
        out.extend(x.iter().map(|v| v.clamp(-1.0, 1.0)));
        progress(first + b);
    }
    Ok(out)
}

/// ε_uncond + w·(ε_cond − ε_uncond) at timestep `tau` for rows `x` [b, pixels] of classes `y`.
fn guided_eps(model: &Dit, deltas: &Deltas, x: &Tensor, tau: usize, y: &[u32], null: u32, w: f64) -> Result<Vec<f32>> {
    let b = y.len();
    let t = vec![tau; b];
    let eps = if w == 1.0 {
        model.forward(x, &t, y, deltas, Mode::Frozen)?
    } else if w == 0.0 {
        model.forward(x, &t, &vec![null; b], deltas, Mode::Frozen)?
    } else {
        let both = Tensor::cat(&[x, x], 0)?;
        let mut labels = y.to_vec();
        labels.extend(std::iter::repeat_n(null, b));
        let e = model.forward(&both, &vec![tau; 2 * b], &labels, deltas, Mode::Frozen)?;
        let (c, u) = (e.narrow(0, 0, b)?, e.narrow(0, b, b)?);
        (&u + ((c - &u)? * w)?)?
    };
    Ok(eps.flatten_all()?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the exact ε of a point mass at x* (ε = (x_t − √ᾱ_t·x*)/√(1 − ᾱ_t)), DDIM must land on
    /// x* from any start, for any number of steps and any η.
    #[test]
    fn ddim_with_the_exact_epsilon_of_a_point_mass_returns_the_point() {
        let ab = crate::NoiseSchedule::new(crate::BetaSchedule::Cosine, 100).unwrap().alpha_bar;
        let target = [0.5f32, -0.25, 0.9, -1.0];
        for (steps, eta) in [(1, 0.0), (7, 0.0), (100, 0.0), (10, 1.0)] {
            let s = SampleSettings { steps, guidance: 1.0, eta, seed: 3, batch: 2 };
            let mut eps = |x: &[f32], t: usize, _: &[u32]| -> Result<Vec<f32>> {
                let (a, b) = (ab[t].sqrt(), (1.0 - ab[t]).sqrt());
                Ok(x.iter()
                    .enumerate()
                    .map(|(i, &v)| ((f64::from(v) - a * f64::from(target[i % 4])) / b) as f32)
                    .collect())
            };
            let out = ddim(&ab, 4, &[0, 1, 2], &s, &mut eps, &mut |_| {}).unwrap();
            for (i, v) in out.iter().enumerate() {
                assert!((v - target[i % 4]).abs() < 1e-4, "steps {steps}, η {eta}: {v} vs {}", target[i % 4]);
            }
        }
    }

    /// Guidance makes ε overshoot (here 2x the exact ε of a point mass at 0.5, as w = 2 does when
    /// the unconditional ε is 0). With ε re-derived from the clipped x̂_0 the sampler still lands
    /// on the point; carrying the unclipped ε into the update (the first version of this sampler)
    /// ended 0.6 away on average and drew noise instead of digits on the real base model.
    #[test]
    fn an_overshooting_epsilon_is_tamed_by_the_clipped_prediction() {
        let ab = crate::NoiseSchedule::new(crate::BetaSchedule::Cosine, 100).unwrap().alpha_bar;
        let s = SampleSettings { steps: 10, guidance: 1.0, eta: 0.0, seed: 7, batch: 64 };
        let mut eps = |x: &[f32], t: usize, _: &[u32]| -> Result<Vec<f32>> {
            let (a, b) = (ab[t].sqrt(), (1.0 - ab[t]).sqrt());
            Ok(x.iter().map(|&v| (2.0 * (f64::from(v) - a * 0.5) / b) as f32).collect())
        };
        let labels = vec![0u32; 256];
        let out = ddim(&ab, 4, &labels, &s, &mut eps, &mut |_| {}).unwrap();
        let mean_err = out.iter().map(|v| f64::from((v - 0.5).abs())).sum::<f64>() / out.len() as f64;
        assert!(mean_err < 0.05, "mean |x − x*| = {mean_err}");
    }

    /// A NaN or huge guidance, zero pixels (a base whose config had `image = 0` panicked here with
    /// "chunk size must be non-zero") and more images than memory holds are refused.
    #[test]
    fn out_of_range_settings_are_refused_before_sampling() {
        let ab = crate::NoiseSchedule::new(crate::BetaSchedule::Cosine, 10).unwrap().alpha_bar;
        let ok = SampleSettings { steps: 2, guidance: 2.0, eta: 0.0, seed: 0, batch: 4 };
        let mut eps = |x: &[f32], _: usize, _: &[u32]| -> Result<Vec<f32>> { Ok(vec![0.0; x.len()]) };
        ddim(&ab, 4, &[0, 1], &ok, &mut eps, &mut |_| {}).unwrap();
        ddim(&ab, 4, &[0, 1], &SampleSettings { guidance: -MAX_GUIDANCE, ..ok }, &mut eps, &mut |_| {}).unwrap();
        for (s, pixels, n, want) in [
            (SampleSettings { guidance: f64::NAN, ..ok }, 4, 2, "`guidance`"),
            (SampleSettings { guidance: 1e6, ..ok }, 4, 2, "`guidance`"),
            (SampleSettings { eta: f64::NAN, ..ok }, 4, 2, "`eta`"),
            (SampleSettings { steps: 11, ..ok }, 4, 2, "`steps`"),
            (SampleSettings { batch: 0, ..ok }, 4, 2, "`batch-size`"),
            (ok, 0, 2, "`pixels` = 0"),
            (ok, 1 << 20, 1 << 9, "`images`"),
        ] {
            let labels = vec![0u32; n];
            let e = ddim(&ab, pixels, &labels, &s, &mut eps, &mut |_| {}).unwrap_err();
            assert!(e.is_input() && e.to_string().contains(want), "{e}");
        }
        check_count(MAX_SAMPLE_VALUES / 784, 784, "images").unwrap();
        let e = check_count(100_000_000, 784, "per-class").unwrap_err().to_string();
        assert!(e.contains("`per-class` = 100000000") && e.contains("at most"), "{e}");
        assert!(check_count(usize::MAX, usize::MAX, "images").is_err());
    }

    #[test]
    fn timesteps_are_even_and_descending() {
        assert_eq!(timesteps(10, 5), vec![8, 6, 4, 2, 0]);
        assert_eq!(timesteps(400, 1), vec![0]);
        let t = timesteps(400, 50);
        assert_eq!((t.len(), t[0], t[49]), (50, 392, 0));
        assert_eq!(timesteps(4, 4), vec![3, 2, 1, 0]);
    }
}
