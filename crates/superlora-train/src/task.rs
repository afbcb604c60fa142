//! A task: a frozen pretrained model plus a labelled dataset with train / validation / test
//! splits. The trainer asks it for features of a batch under the current ΔW; the head and the loss
//! are the trainer's.

use candle_core::{Device, Tensor};
use superlora_data::tokenize::TextTokenizer;
use superlora_data::{ImageSet, TextSet};
use superlora_models::adapt::{Deltas, LinearInfo};
use superlora_models::bert::{Bert, mean_pool};
use superlora_models::vit::Vit;

use crate::{Error, Result};

/// Which part of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Used for gradient steps.
    Train,
    /// Used to choose (learning rates, the best step); never for reporting.
    Valid,
    /// Reported.
    Test,
}

/// A model + dataset pair the trainer can fine-tune.
pub trait Task {
    /// One line for logs.
    fn describe(&self) -> String;
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Width of the features the head reads.
    fn feature_dim(&self) -> usize;
    /// The model's linear layers in module order (adapter targets are chosen among them).
    fn linears(&self) -> Vec<LinearInfo>;
    /// Examples in a split.
    fn len(&self, split: Split) -> usize;
    /// Features [B, F] of the examples `idx` (positions within the split) under `deltas`.
    fn features(&self, split: Split, idx: &[usize], deltas: &Deltas) -> Result<Tensor>;
    /// Labels [B] (u32) of the examples `idx`.
    fn labels(&self, split: Split, idx: &[usize]) -> Result<Tensor>;
    /// The device the model runs on.
    fn device(&self) -> &Device;
    /// The base model: (`bert` | `dinov2`, its weights file).
    fn base_model(&self) -> (&'static str, std::path::PathBuf);
    /// Class names, by label.
    fn class_names(&self) -> Vec<String>;
    /// Tokens of example `i` of a split before truncation (text tasks; images have none).
    fn token_count(&self, _split: Split, _i: usize) -> Result<usize> {
        Ok(0)
    }
}

/// Index lists of the three splits, into one underlying set.
#[derive(Clone, Debug)]
pub struct Splits {
    /// Train positions.
    pub train: Vec<usize>,
    /// Validation positions.
    pub valid: Vec<usize>,
    /// Test positions.
    pub test: Vec<usize>,
}

impl Splits {
    fn get(&self, s: Split) -> &[usize] {
        match s {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    fn map(&self, s: Split, idx: &[usize]) -> Result<Vec<usize>> {
        let base = self.get(s);
        idx.iter()
            .map(|&i| {
                base.get(i)
                    .copied()
                    .ok_or_else(|| Error::Data(format!("index {i} past the {s:?} split ({})", base.len())))
            })
            .collect()
    }
}

/// DINOv2 ViT on grey images resized to `size` px: features = [CLS, mean patch].
pub struct ImageTask {
    /// The encoder.
    pub model: Vit,
    /// Training images (train and validation positions index into it).
    pub train_set: ImageSet,
    /// Test images.
    pub test_set: ImageSet,
    /// Train / validation positions into `train_set`; test positions into `test_set`.
    pub splits: Splits,
    /// Input side in pixels (a multiple of 14).
    pub size: usize,
    /// Name for logs.
    pub name: String,
    device: Device,
}

impl ImageTask {
    /// A task over loaded data.
    pub fn new(
        model: Vit,
        train_set: ImageSet,
        test_set: ImageSet,
        splits: Splits,
        size: usize,
        name: &str,
        device: &Device,
    ) -> Self {
        ImageTask { model, train_set, test_set, splits, size, name: name.to_string(), device: device.clone() }
    }

    fn set(&self, s: Split) -> &ImageSet {
        if s == Split::Test { &self.test_set } else { &self.train_set }
    }
}

impl Task for ImageTask {
    fn describe(&self) -> String {
        format!(
            "{}: DINOv2 ViT ({} layers, width {}) at {} px; train {} / valid {} / test {}",
            self.name,
            self.model.config.layers,
            self.model.config.hidden,
            self.size,
            self.splits.train.len(),
            self.splits.valid.len(),
            self.splits.test.len()
        )
    }
    fn num_classes(&self) -> usize {
        self.train_set.classes.len()
    }
    fn feature_dim(&self) -> usize {
        2 * self.model.config.hidden
    }
    fn linears(&self) -> Vec<LinearInfo> {
        self.model.linears()
    }
    fn len(&self, s: Split) -> usize {
        self.splits.get(s).len()
    }
    fn base_model(&self) -> (&'static str, std::path::PathBuf) {
        ("dinov2", self.model.weights_path.clone())
    }
    fn class_names(&self) -> Vec<String> {
        self.train_set.classes.clone()
    }
    fn features(&self, s: Split, idx: &[usize], deltas: &Deltas) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        let images = superlora_data::preprocess::to_tensor(self.set(s), &pos, self.size, &self.device)?;
        Ok(self.model.features(&images, deltas)?)
    }
    fn labels(&self, s: Split, idx: &[usize]) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        Ok(superlora_data::preprocess::labels_tensor(self.set(s), &pos, &self.device)?)
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// A BERT encoder on labelled texts: features = mean-pooled token states.
pub struct TextTask {
    /// The encoder.
    pub model: Bert,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// All texts (the splits index into it).
    pub set: TextSet,
    /// Positions of each split.
    pub splits: Splits,
    /// Longest token sequence (longer texts are truncated).
    pub max_len: usize,
    /// Name for logs.
    pub name: String,
    device: Device,
}

impl TextTask {
    /// A task over loaded data.
    pub fn new(
        model: Bert,
        tokenizer: TextTokenizer,
        set: TextSet,
        splits: Splits,
        max_len: usize,
        name: &str,
        device: &Device,
    ) -> Self {
        TextTask { model, tokenizer, set, splits, max_len, name: name.to_string(), device: device.clone() }
    }
}

impl Task for TextTask {
    fn describe(&self) -> String {
        format!(
            "{}: BERT ({} layers, width {}), up to {} tokens; train {} / valid {} / test {}",
            self.name,
            self.model.config.num_hidden_layers,
            self.model.config.hidden_size,
            self.max_len,
            self.splits.train.len(),
            self.splits.valid.len(),
            self.splits.test.len()
        )
    }
    fn num_classes(&self) -> usize {
        self.set.classes.len()
    }
    fn feature_dim(&self) -> usize {
        self.model.config.hidden_size
    }
    fn linears(&self) -> Vec<LinearInfo> {
        self.model.linears()
    }
    fn len(&self, s: Split) -> usize {
        self.splits.get(s).len()
    }
    fn features(&self, s: Split, idx: &[usize], deltas: &Deltas) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        let texts = self.set.texts_at(&pos)?;
        let batch = self.tokenizer.encode_batch(&texts, self.max_len, &self.device)?;
        let x = self.model.forward(&batch.input_ids, &batch.attention_mask, deltas)?;
        Ok(mean_pool(&x, &batch.attention_mask)?)
    }
    fn base_model(&self) -> (&'static str, std::path::PathBuf) {
        ("bert", self.model.weights_path.clone())
    }
    fn class_names(&self) -> Vec<String> {
        self.set.classes.clone()
    }
    fn token_count(&self, s: Split, i: usize) -> Result<usize> {
        let pos = self.splits.map(s, &[i])?;
        let text = self.set.texts_at(&pos)?;
        Ok(self.tokenizer.encode(text[0], usize::MAX)?.len())
    }
    fn labels(&self, s: Split, idx: &[usize]) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        let labels: Vec<u32> = pos.iter().map(|&i| u32::from(self.set.labels[i])).collect();
        Ok(Tensor::from_vec(labels, pos.len(), &self.device)?)
    }
    fn device(&self) -> &Device {
        &self.device
    }
}
