//! Seeded, stratified splits and subsets of a labelled set, deterministic across machines.
//!
//! Per class (in label order) the class's indices are shuffled by one stream
//! ([`DataStream::Split`](crate::rng::DataStream) or `Subset`) and cut in order:
//! validation first, then test, then train. Every returned index list is sorted ascending, so a
//! split depends only on (labels, sizes, seed); shuffle for training with
//! [`EpochOrder`](crate::EpochOrder).

use crate::error::{Error, Result};
use crate::image::class_counts;
use crate::rng::{DataStream, data_stream};

/// How much of each class to hold out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Holdout {
    /// Exactly this many of every class.
    PerClass(usize),
    /// `round(fraction * class size)` of every class; fraction in [0, 1).
    Fraction(f64),
}

/// Disjoint index lists covering the whole set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Training indices, ascending.
    pub train: Vec<usize>,
    /// Validation indices, ascending.
    pub valid: Vec<usize>,
    /// Test indices, ascending (empty for a two-way split).
    pub test: Vec<usize>,
}

/// A two-way split: `valid` held out of each class, the rest train.
pub fn holdout_split(labels: &[u8], valid: Holdout, seed: u64) -> Result<Split> {
    stratified_split(labels, valid, Holdout::PerClass(0), seed)
}

/// A three-way split: `valid` then `test` held out of each class, the rest train. Errors when a
/// class has fewer members than it must give up.
pub fn stratified_split(labels: &[u8], valid: Holdout, test: Holdout, seed: u64) -> Result<Split> {
    check_holdout("valid", valid)?;
    check_holdout("test", test)?;
    if let (Holdout::Fraction(a), Holdout::Fraction(b)) = (valid, test)
        && a + b >= 1.0
    {
        return Err(Error::invalid("valid + test", a + b, "fractions must leave some training data"));
    }
    let mut rng = data_stream(seed, DataStream::Split);
    let mut split = Split::default();
    for (class, members) in by_class(labels).into_iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        let (k_valid, k_test) = (take(valid, members.len()), take(test, members.len()));
        if k_valid + k_test > members.len() {
            return Err(Error::invalid(
                "holdout",
                format!("{k_valid} valid + {k_test} test"),
                format!("class {class} has only {} members", members.len()),
            ));
        }
        let order = rng.permutation(members.len());
        let mut shuffled = order.iter().map(|&p| members[p as usize]);
        split.valid.extend(shuffled.by_ref().take(k_valid));
        split.test.extend(shuffled.by_ref().take(k_test));
        split.train.extend(shuffled);
    }
    for part in [&mut split.train, &mut split.valid, &mut split.test] {
        part.sort_unstable();
    }
    Ok(split)
}

/// How large a training subset to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsetSize {
    /// This many of every class (a class with fewer members is an error).
    PerClass(usize),
    /// This many in all, drawn uniformly without regard to class (more than the pool is an error).
    Total(usize),
    /// The whole pool.
    All,
}

/// A seeded subset of `pool` (indices into `labels`), sorted ascending.
pub fn subset(pool: &[usize], labels: &[u8], size: SubsetSize, seed: u64) -> Result<Vec<usize>> {
    if let Some(&bad) = pool.iter().find(|&&i| i >= labels.len()) {
        return Err(Error::invalid("pool index", bad, format!("must be below {}", labels.len())));
    }
    let mut rng = data_stream(seed, DataStream::Subset);
    let mut out = match size {
        SubsetSize::All => pool.to_vec(),
        SubsetSize::Total(k) => {
            if k > pool.len() {
                return Err(Error::invalid("subset size", k, format!("the pool has only {}", pool.len())));
            }
            rng.permutation(pool.len()).iter().take(k).map(|&p| pool[p as usize]).collect()
        }
        SubsetSize::PerClass(k) => {
            let pool_labels: Vec<u8> = pool.iter().map(|&i| labels[i]).collect();
            let mut out = Vec::new();
            for (class, members) in by_class(&pool_labels).into_iter().enumerate() {
                if members.is_empty() {
                    continue;
                }
                if members.len() < k {
                    return Err(Error::invalid(
                        "subset per class",
                        k,
                        format!("class {class} has only {} in the pool", members.len()),
                    ));
                }
                let order = rng.permutation(members.len());
                out.extend(order.iter().take(k).map(|&p| pool[members[p as usize]]));
            }
            out
        }
    };
    out.sort_unstable();
    Ok(out)
}

fn check_holdout(name: &'static str, h: Holdout) -> Result<()> {
    match h {
        Holdout::Fraction(f) if !(0.0..1.0).contains(&f) => Err(Error::invalid(name, f, "fraction must be in [0, 1)")),
        _ => Ok(()),
    }
}

fn take(h: Holdout, n: usize) -> usize {
    match h {
        Holdout::PerClass(k) => k,
        Holdout::Fraction(f) => (f * n as f64).round() as usize,
    }
}

/// The indices of each label 0..=max, ascending within a class.
fn by_class(labels: &[u8]) -> Vec<Vec<usize>> {
    let classes = labels.iter().max().map_or(0, |m| usize::from(*m) + 1);
    let counts = class_counts(labels, classes);
    let mut out: Vec<Vec<usize>> = counts.iter().map(|&c| Vec::with_capacity(c)).collect();
    for (i, &l) in labels.iter().enumerate() {
        out[usize::from(l)].push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u8> {
        (0..1000).map(|i| (i * 7 % 3) as u8).collect()
    }

    #[test]
    fn split_is_stratified_disjoint_and_complete() {
        let l = labels();
        let s = stratified_split(&l, Holdout::Fraction(0.1), Holdout::PerClass(20), 3).unwrap();
        assert_eq!(s.valid.len(), 33 * 3); // round(0.1 * 334) = round(0.1 * 333) = 33
        assert_eq!(s.test.len(), 60);
        let mut all: Vec<usize> = s.train.iter().chain(&s.valid).chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(class_counts(&s.test.iter().map(|&i| l[i]).collect::<Vec<_>>(), 3), vec![20; 3]);
        assert_eq!(s, stratified_split(&l, Holdout::Fraction(0.1), Holdout::PerClass(20), 3).unwrap());
        assert_ne!(s, stratified_split(&l, Holdout::Fraction(0.1), Holdout::PerClass(20), 4).unwrap());
    }

    #[test]
    fn bad_sizes_are_errors() {
        let l = labels();
        assert!(holdout_split(&l, Holdout::PerClass(334), 0).is_err());
        assert!(holdout_split(&l, Holdout::Fraction(1.0), 0).is_err());
        assert!(holdout_split(&l, Holdout::Fraction(f64::NAN), 0).is_err());
        assert!(stratified_split(&l, Holdout::Fraction(0.5), Holdout::Fraction(0.5), 0).is_err());
        assert!(subset(&[0, 1], &l, SubsetSize::Total(3), 0).is_err());
        assert!(subset(&[0, 1], &l, SubsetSize::PerClass(2), 0).is_err());
        assert!(subset(&[5000], &l, SubsetSize::All, 0).is_err());
        assert!(holdout_split(&[], Holdout::PerClass(3), 0).unwrap().train.is_empty());
    }

    #[test]
    fn subsets_are_seeded_and_balanced() {
        let l = labels();
        let pool: Vec<usize> = (100..1000).collect();
        let s = subset(&pool, &l, SubsetSize::PerClass(10), 1).unwrap();
        assert_eq!(class_counts(&s.iter().map(|&i| l[i]).collect::<Vec<_>>(), 3), vec![10; 3]);
        assert!(s.iter().all(|i| (100..1000).contains(i)));
        assert_eq!(s, subset(&pool, &l, SubsetSize::PerClass(10), 1).unwrap());
        assert_ne!(s, subset(&pool, &l, SubsetSize::PerClass(10), 2).unwrap());
        let t = subset(&pool, &l, SubsetSize::Total(50), 1).unwrap();
        assert_eq!(t.len(), 50);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }
}
