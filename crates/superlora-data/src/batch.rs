//! [`EpochOrder`]: a seeded shuffle per epoch, cut into batches.
//!
//! Epoch `e`'s order is a permutation drawn from the stream keyed by (seed, e)
//! ([`DataStream::Epoch`]), so any epoch can be recomputed alone (resuming a run needs no state).

use crate::error::{Error, Result};
use crate::rng::{DataStream, data_stream};

/// The indices to visit, reshuffled each epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochOrder {
    pool: Vec<usize>,
    seed: u64,
}

impl EpochOrder {
    /// Shuffles the positions `0..n`.
    pub fn new(n: usize, seed: u64) -> Self {
        Self::over((0..n).collect(), seed)
    }

    /// Shuffles the given indices (e.g. a training split or subset).
    pub fn over(pool: Vec<usize>, seed: u64) -> Self {
        EpochOrder { pool, seed }
    }

    /// How many indices an epoch visits.
    pub fn len(&self) -> usize {
        self.pool.len()
    }

    /// True when there is nothing to visit.
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// The pool in epoch `epoch`'s order.
    pub fn epoch(&self, epoch: u64) -> Vec<usize> {
        let perm = data_stream(self.seed, DataStream::Epoch(epoch)).permutation(self.pool.len());
        perm.iter().map(|&p| self.pool[p as usize]).collect()
    }

    /// Epoch `epoch` cut into batches of `batch_size`; the last, shorter batch is dropped when
    /// `drop_last`. Errors on a zero batch size.
    pub fn batches(&self, epoch: u64, batch_size: usize, drop_last: bool) -> Result<Vec<Vec<usize>>> {
        batches(&self.epoch(epoch), batch_size, drop_last)
    }

    /// The number of batches per epoch.
    pub fn num_batches(&self, batch_size: usize, drop_last: bool) -> usize {
        match (batch_size, drop_last) {
            (0, _) => 0,
            (b, true) => self.pool.len() / b,
            (b, false) => self.pool.len().div_ceil(b),
        }
    }
}

/// `order` cut into consecutive batches of `batch_size` (the last one shorter unless dropped).
pub fn batches(order: &[usize], batch_size: usize, drop_last: bool) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(Error::invalid("batch size", 0, "must be at least 1"));
    }
    Ok(order.chunks(batch_size).filter(|c| !drop_last || c.len() == batch_size).map(<[usize]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_seeded_permutations() {
        let order = EpochOrder::new(100, 9);
        let e0 = order.epoch(0);
        let mut sorted = e0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(e0, EpochOrder::new(100, 9).epoch(0));
        assert_ne!(e0, order.epoch(1));
        assert_ne!(e0, EpochOrder::new(100, 10).epoch(0));
    }

    #[test]
    fn batches_cover_the_epoch() {
        let order = EpochOrder::over((10..20).collect(), 1);
        let b = order.batches(2, 4, false).unwrap();
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(b.concat(), order.epoch(2));
        assert_eq!(order.batches(2, 4, true).unwrap().len(), 2);
        assert_eq!((order.num_batches(4, false), order.num_batches(4, true)), (3, 2));
        assert!(order.batches(0, 0, false).is_err());
        assert!(EpochOrder::new(0, 1).batches(0, 3, false).unwrap().is_empty());
    }
}
