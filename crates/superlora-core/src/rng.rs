//! Portable, seeded randomness: every random initial value and every fixed projection comes from
//! here, so the same seed gives bit-identical tensors on every machine.
//!
//! Generator: ChaCha8 (`rand_chacha`, whose output stream is documented as portable), keyed by
//! `seed` through `SeedableRng::seed_from_u64`, with one independent ChaCha *stream* per
//! (group, purpose): `stream = group << 8 | purpose`. Distributions are written out here rather
//! than taken from `rand`, whose sampling algorithms may change between versions:
//! uniform floats from the top mantissa bits, integers below n by Lemire's unbiased method,
//! permutations by Fisher–Yates, normals by Box–Muller with `libm` (pure Rust, same bits
//! everywhere).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// What a random stream is used for. The discriminant is part of the stream id: never reorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// Initial values of the trainable tensors.
    Init = 1,
    /// The permutation of a `shuffle` projection.
    Shuffle = 2,
    /// B, the ±1 diagonal of fastfood.
    FastfoodSigns = 3,
    /// Π, the permutation of fastfood.
    FastfoodPerm = 4,
    /// The Gaussian diagonal of fastfood.
    FastfoodGauss = 5,
    /// VeRA's frozen shared matrices A then B (stream of group 0: shared by every weight).
    VeraShared = 6,
    /// FourierFT's frequency positions (stream of group 0: equal shapes get equal positions).
    FourierPositions = 7,
    /// Token sampling during text generation (never part of an adapter).
    Sampling = 8,
}

/// The generator for `purpose` in group `group` under `seed`.
pub fn stream(seed: u64, group: usize, purpose: Purpose) -> Rng {
    let mut inner = ChaCha8Rng::seed_from_u64(seed);
    inner.set_stream(((group as u64) << 8) | purpose as u64);
    Rng { inner }
}

/// A seeded portable generator with the few distributions the project needs.
pub struct Rng {
    inner: ChaCha8Rng,
}

impl Rng {
    /// Next raw 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [-bound, bound).
    pub fn uniform_sym(&mut self, bound: f64) -> f64 {
        bound * (2.0 * self.uniform() - 1.0)
    }

    /// Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Standard normal by Box–Muller (the cosine branch only, one value per two uniforms).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        debug_assert!(n <= u32::MAX as usize + 1);
        let mut p: Vec<u32> = (0..n).map(|i| i as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }

    /// The first `k` entries of a uniformly random permutation of 0..n (Fisher–Yates run forward
    /// for `k` steps, so it equals `permutation`-style sampling without building all n): `k`
    /// distinct values below `n`, in draw order. `k` must be ≤ `n`.
    pub fn sample_distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        debug_assert!(k <= n);
        let mut moved: std::collections::HashMap<usize, usize> = std::collections::HashMap::with_capacity(2 * k);
        let mut out = Vec::with_capacity(k);
        for i in 0..k.min(n) {
            let j = i + self.below((n - i) as u64) as usize;
            let at_j = moved.get(&j).copied().unwrap_or(j);
            let at_i = moved.get(&i).copied().unwrap_or(i);
            moved.insert(j, at_i);
            out.push(at_j);
        }
        out
    }

    /// `n` random signs as booleans (true = −1).
    pub fn signs(&mut self, n: usize) -> Vec<bool> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let bits = self.next_u64();
            let take = (n - out.len()).min(64);
            out.extend((0..take).map(|b| (bits >> b) & 1 == 1));
        }
        out
    }
}

/// The largest `total` [`torch_randperm_prefix`] reproduces: from `u32::MAX / 20` on, torch's CPU
/// `randperm` switches to another shuffle (64-bit draws, "inside-out" Fisher–Yates).
pub const TORCH_RANDPERM_MAX: usize = (u32::MAX / 20) as usize - 1;

/// The first `k` entries of `torch.randperm(total, generator=torch.Generator().manual_seed(seed))`
/// on the CPU, bit for bit, for `total` ≤ [`TORCH_RANDPERM_MAX`]: PEFT's FourierFT draws its
/// frequency positions this way, so an adapter whose positions come from here is a PEFT FOURIERFT
/// adapter with `random_loc_seed = seed`.
///
/// torch's algorithm (ATen `randperm_cpu`, unchanged since its TH days): r = 0..total, then for
/// i in 0..total−1: z = mt19937() mod (total − i), swap r[i] and r[i + z]. The first k entries are
/// final after k swaps. Its generator is the standard 32-bit Mersenne Twister seeded with the low
/// 32 bits of `seed` ([`Mt19937`]). `None` when `total` is above the bound or `k > total`.
pub fn torch_randperm_prefix(total: usize, k: usize, seed: u64) -> Option<Vec<usize>> {
    if total > TORCH_RANDPERM_MAX || k > total {
        return None;
    }
    let mut mt = Mt19937::new(seed as u32);
    let mut r: Vec<u32> = (0..total as u32).collect();
    for i in 0..k.min(total.saturating_sub(1)) {
        let z = mt.next_u32() as usize % (total - i);
        r.swap(i, i + z);
    }
    Some(r[..k].iter().map(|&x| x as usize).collect())
}

/// The 32-bit Mersenne Twister MT19937 (Matsumoto & Nishimura 1998; C++'s `std::mt19937`, torch's
/// CPU generator), only to reproduce torch's permutations; the project's own randomness is
/// [`stream`].
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// Seeded as `std::mt19937(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.state[i] = self.state[(i + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u64> = (0..4).map(|_| stream(7, 3, Purpose::Init).next_u64()).collect();
        assert!(a.iter().all(|x| *x == a[0]));
        let mut x = stream(7, 3, Purpose::Init);
        let mut y = stream(7, 4, Purpose::Init);
        let mut z = stream(7, 3, Purpose::Shuffle);
        let mut w = stream(8, 3, Purpose::Init);
        let xs: Vec<u64> = (0..8).map(|_| x.next_u64()).collect();
        assert_ne!(xs, (0..8).map(|_| y.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| z.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| w.next_u64()).collect::<Vec<_>>());
    }

    /// The standard's check value: the 10,000th output of `std::mt19937` with its default seed
    /// 5489 is 4123659995 (C++ [rand.predef]); its first is 3499211612.
    #[test]
    fn mt19937_matches_the_standard() {
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        let last = (1..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    /// torch's own output (2.15.0, CPU; the algorithm is unchanged since torch 1.0):
    /// `torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:8]`.
    #[test]
    fn torch_randperm_prefix_matches_torch() {
        for (n, seed, want) in TORCH_RANDPERM {
            assert_eq!(torch_randperm_prefix(n, 8, seed).as_deref(), Some(&want[..]), "n = {n}, seed = {seed}");
        }
        assert_eq!(torch_randperm_prefix(5, 6, 0), None);
        assert_eq!(torch_randperm_prefix(TORCH_RANDPERM_MAX + 1, 1, 0), None);
        let full = torch_randperm_prefix(1000, 1000, 3).unwrap();
        let mut sorted = full.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }
    const TORCH_RANDPERM: [(usize, u64, [usize; 8]); 4] = [
        (147_456, 777, [96359, 50365, 131849, 102443, 146067, 129450, 139833, 89139]),
        (147_456, 0, [51884, 142755, 100661, 77040, 34203, 47894, 76483, 24639]),
        (110_592, 3, [96106, 78163, 25559, 29901, 3140, 16341, 72192, 28597]),
        (1000, 12_345_678_901, [866, 681, 425, 528, 647, 42, 662, 844]),
    ];

    /// Pins the exact bits so a dependency upgrade that changes the stream fails loudly.
    #[test]
    fn stream_bits_are_pinned() {
        let mut r = stream(0, 0, Purpose::Init);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut again = stream(0, 0, Purpose::Init);
        assert_eq!(got, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_eq!(got, PINNED.to_vec(), "ChaCha8 stream changed: adapters saved earlier would not regenerate");
    }
    const PINNED: [u64; 3] = [13937087304575520531, 13615851043850391654, 10883527568275655943];

    #[test]
    fn distributions_are_sane() {
        let mut r = stream(1, 0, Purpose::Init);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_500..10_500).contains(c)), "{counts:?}");
        let mut p = r.permutation(1000);
        p.sort_unstable();
        assert!(p.iter().enumerate().all(|(i, v)| *v as usize == i));
        let s = r.signs(1000);
        let neg = s.iter().filter(|b| **b).count();
        assert!((400..600).contains(&neg));
    }
}
