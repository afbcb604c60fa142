//! Asset-backed tests of the Rotten Tomatoes loader and its fixed split.

mod common;

use common::{assert_partition, labels_at, need, timed};
use superlora_data::image::class_counts;
use superlora_data::text::{FILE, default_split, load_rotten_tomatoes_file};

#[test]
fn rotten_tomatoes_counts_and_duplicates() {
    let path = need("asset", superlora_data::asset_file("rotten-tomatoes", FILE));
    let (set, stats) = timed("rotten-tomatoes", || load_rotten_tomatoes_file(&path));
    eprintln!("rotten-tomatoes stats: {stats:?}");
    assert_eq!((stats.fresh, stats.rotten, stats.plot), (7_403, 5_405, 1_097));
    // The file repeats 55 texts (56 extra rows), never with opposite labels.
    assert_eq!((stats.duplicates, stats.conflicting), (56, 0));
    assert_eq!(set.texts.len(), 7_403 + 5_405 - 56);
    assert_eq!(set.classes, vec!["rotten", "fresh"]);
    let counts = class_counts(&set.labels, 2);
    eprintln!("rotten-tomatoes kept: rotten {} fresh {}", counts[0], counts[1]);
    assert_eq!(counts.iter().sum::<usize>(), set.texts.len());
    // Quoted fields keep their commas, apostrophes and line breaks (141 reviews span lines);
    // none is empty.
    assert!(set.texts.iter().all(|t| !t.trim().is_empty()));
    assert!(set.texts.iter().filter(|t| t.contains(',')).count() > 7_000);
    assert!(set.texts.iter().any(|t| t.contains('\'')));
    assert!(set.texts.iter().any(|t| t.contains('\n')));
    assert_eq!(set.texts[0], "A three-hour cinema master class.");
    let mut sorted: Vec<&String> = set.texts.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), set.texts.len());
}

#[test]
fn rotten_tomatoes_split_is_fixed_stratified_and_disjoint() {
    let set = need("rotten-tomatoes", superlora_data::load_rotten_tomatoes());
    let s = need("split", default_split(&set, 0));
    assert_partition(&[&s.train, &s.valid, &s.test], set.texts.len());
    let total = class_counts(&set.labels, 2);
    for part in [&s.valid, &s.test] {
        let c = class_counts(&labels_at(&set.labels, part), 2);
        for k in 0..2 {
            assert_eq!(c[k], (total[k] as f64 * 0.1).round() as usize);
        }
    }
    eprintln!("rotten-tomatoes split sizes: train {} valid {} test {}", s.train.len(), s.valid.len(), s.test.len());
    assert_eq!(s, need("split", default_split(&set, 0)));
    assert_ne!(s.test, need("split", default_split(&set, 1)).test);
    assert_eq!(s.test[..3], PINNED_TEST, "the fixed split changed");
    let texts = need("texts", set.texts_at(&s.test[..2]));
    assert_eq!(texts.len(), 2);
}

const PINNED_TEST: [usize; 3] = [21, 34, 53];
