//! The random streams of the diffusion experiment, all from `superlora_core::rng::stream(seed,
//! group, Purpose::Init)` (ChaCha8, portable: same bits on every machine).
//!
//! Group ranges (never renumber: they are part of the reproducibility contract), far from the small
//! group indices adapters use (0..G) and from the data streams near `usize::MAX`:
//! - `MODEL + k`: initial value of the model's k-th tensor (in [`crate::Dit::named_vars`] order);
//! - `STEP + s`: the labels dropped, timesteps and noise of training step s;
//! - `HELDOUT + i`: the fixed timestep and noise of held-out example i (seed fixed to 0, so every
//!   run and config is scored on the same noise);
//! - `SAMPLE + i`: x_T and the per-step noise of generated sample i;
//! - `CLASSIFIER + k`: the classifier's initial values.

use superlora_core::rng::{Purpose, Rng, stream};

const MODEL: usize = 1 << 40;
const STEP: usize = 2 << 40;
const HELDOUT: usize = 3 << 40;
const SAMPLE: usize = 4 << 40;
const CLASSIFIER: usize = 5 << 40;

/// Init stream of the model's tensor `k`.
pub fn model_init(seed: u64, k: usize) -> Rng {
    stream(seed, MODEL + k, Purpose::Init)
}

/// Stream of training step `step`.
pub fn train_step(seed: u64, step: u64) -> Rng {
    stream(seed, STEP + step as usize, Purpose::Init)
}

/// Stream of held-out example `i` (seed 0 always).
pub fn heldout(i: usize) -> Rng {
    stream(0, HELDOUT + i, Purpose::Init)
}

/// Stream of generated sample `i`.
pub fn sample(seed: u64, i: usize) -> Rng {
    stream(seed, SAMPLE + i, Purpose::Init)
}

/// Init stream of the classifier's tensor `k`.
pub fn classifier_init(seed: u64, k: usize) -> Rng {
    stream(seed, CLASSIFIER + k, Purpose::Init)
}

/// `n` standard normals as f32.
pub fn normals(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_distinct_and_reproducible() {
        let first = |mut r: Rng| r.next_u64();
        let xs = [
            first(model_init(1, 0)),
            first(train_step(1, 0)),
            first(heldout(0)),
            first(sample(1, 0)),
            first(classifier_init(1, 0)),
            first(stream(1, 0, Purpose::Init)),
        ];
        for i in 0..xs.len() {
            for j in 0..i {
                assert_ne!(xs[i], xs[j], "{i} {j}");
            }
        }
        assert_eq!(first(train_step(3, 7)), first(train_step(3, 7)));
    }
}
