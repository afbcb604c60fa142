//! The random streams behind every seeded data choice (splits, subsets, epoch orders).
//!
//! They come from `superlora_core::rng::stream(seed, group, Purpose::Init)` with group indices
//! counted down from `usize::MAX`, far from the small group indices adapters use, so a data
//! stream never equals an adapter's initialisation stream under the same seed. Each kind of
//! choice has its own group, and epoch `e` of an [`EpochOrder`](crate::EpochOrder) has its own.
//! The exact indices are part of the reproducibility contract: never renumber them.

use superlora_core::rng::{Purpose, Rng, stream};

/// What a data stream is drawn for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataStream {
    /// A train/validation(/test) split ([`crate::split`]).
    Split,
    /// A training subset ([`crate::split::subset`]).
    Subset,
    /// The order of epoch `e` ([`crate::EpochOrder`]).
    Epoch(u64),
}

/// Groups below this are left to epochs (`EPOCH_TOP - e`); the fixed kinds sit above it.
const EPOCH_TOP: usize = usize::MAX - 1024;

/// The group index `kind` uses (part of the reproducibility contract).
pub fn group(kind: DataStream) -> usize {
    match kind {
        DataStream::Split => usize::MAX - 1,
        DataStream::Subset => usize::MAX - 2,
        DataStream::Epoch(e) => EPOCH_TOP - usize::try_from(e).unwrap_or(usize::MAX).min(EPOCH_TOP / 2),
    }
}

/// The generator for `kind` under `seed`.
pub fn data_stream(seed: u64, kind: DataStream) -> Rng {
    stream(seed, group(kind), Purpose::Init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_kind_and_epoch() {
        let first = |k| data_stream(5, k).next_u64();
        let xs = [
            first(DataStream::Split),
            first(DataStream::Subset),
            first(DataStream::Epoch(0)),
            first(DataStream::Epoch(1)),
            stream(5, 0, Purpose::Init).next_u64(),
        ];
        for i in 0..xs.len() {
            for j in 0..i {
                assert_ne!(xs[i], xs[j], "{i} {j}");
            }
        }
        assert_eq!(first(DataStream::Epoch(3)), first(DataStream::Epoch(3)));
    }
}
