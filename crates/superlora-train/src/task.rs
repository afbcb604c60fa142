//! A task: a frozen pretrained model plus a labelled dataset with train / validation / test
//! splits. The trainer asks it for features of a batch under the current ΔW; the head and the loss
//! are the trainer's.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use superlora_data::tokenize::{TextTokenizer, TokenBatch};
use superlora_data::{ImageSource, TextSet};
use superlora_models::adapt::{Deltas, LinearInfo};
use superlora_models::bert::mean_pool;
use superlora_models::{ImageEncoder, TextEncoder};

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

/// A model + dataset pair the trainer can fine-tune. `Sync`, because data-parallel training
/// (`TrainSettings::workers`) calls [`Task::features`] from several threads at once.
pub trait Task: Sync {
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
    /// The base model: (its `model_type`, e.g. `bert` or `dinov2`, its weights file).
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

/// An image encoder (DINOv2, ViT) on labelled images resized to `size` px and normalised as the
/// model wants; features are the encoder's pooled features.
pub struct ImageTask {
    /// The encoder.
    pub model: Box<dyn ImageEncoder>,
    /// Training images (train and validation positions index into it).
    pub train_set: Arc<dyn ImageSource>,
    /// Test images (may be the same set as `train_set`, with disjoint positions).
    pub test_set: Arc<dyn ImageSource>,
    /// Train / validation positions into `train_set`; test positions into `test_set`.
    pub splits: Splits,
    /// Input side in pixels (a multiple of the patch).
    pub size: usize,
    /// Name for logs.
    pub name: String,
    device: Device,
}

impl ImageTask {
    /// A task over loaded data.
    pub fn new(
        model: Box<dyn ImageEncoder>,
        train_set: Arc<dyn ImageSource>,
        test_set: Arc<dyn ImageSource>,
        splits: Splits,
        size: usize,
        name: &str,
        device: &Device,
    ) -> Self {
        ImageTask { model, train_set, test_set, splits, size, name: name.to_string(), device: device.clone() }
    }

    fn set(&self, s: Split) -> &dyn ImageSource {
        if s == Split::Test { self.test_set.as_ref() } else { self.train_set.as_ref() }
    }
}

impl Task for ImageTask {
    fn describe(&self) -> String {
        format!(
            "{}: {} ({} linears, {} features) at {} px; train {} / valid {} / test {}",
            self.name,
            self.model.kind(),
            self.model.linears().len(),
            self.model.feature_dim(),
            self.size,
            self.splits.train.len(),
            self.splits.valid.len(),
            self.splits.test.len()
        )
    }
    fn num_classes(&self) -> usize {
        self.train_set.classes().len()
    }
    fn feature_dim(&self) -> usize {
        self.model.feature_dim()
    }
    fn linears(&self) -> Vec<LinearInfo> {
        self.model.linears()
    }
    fn len(&self, s: Split) -> usize {
        self.splits.get(s).len()
    }
    fn base_model(&self) -> (&'static str, std::path::PathBuf) {
        (self.model.kind(), self.model.weights_path().to_path_buf())
    }
    fn class_names(&self) -> Vec<String> {
        self.train_set.classes().to_vec()
    }
    fn features(&self, s: Split, idx: &[usize], deltas: &Deltas) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        let (mean, std) = self.model.normalization();
        let images = self.set(s).batch(&pos, self.size, mean, std, &self.device)?;
        Ok(self.model.features(&images, deltas)?)
    }
    fn labels(&self, s: Split, idx: &[usize]) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        Ok(self.set(s).labels_tensor(&pos, &self.device)?)
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// A text encoder (BERT, RoBERTa, DistilBERT) on labelled texts or text pairs: features =
/// mean-pooled token states.
pub struct TextTask {
    /// The encoder.
    pub model: Box<dyn TextEncoder>,
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
        model: Box<dyn TextEncoder>,
        tokenizer: TextTokenizer,
        set: TextSet,
        splits: Splits,
        max_len: usize,
        name: &str,
        device: &Device,
    ) -> Self {
        TextTask { model, tokenizer, set, splits, max_len, name: name.to_string(), device: device.clone() }
    }

    /// Token ids, mask and (for pairs, when the model reads them) token types of `pos`.
    fn encode(&self, pos: &[usize]) -> Result<(TokenBatch, bool)> {
        let texts = self.set.texts_at(pos)?;
        Ok(match self.set.pairs_at(pos)? {
            Some(pairs) => (
                self.tokenizer.encode_pair_batch(&texts, &pairs, self.max_len, &self.device)?,
                self.model.uses_token_types(),
            ),
            None => (self.tokenizer.encode_batch(&texts, self.max_len, &self.device)?, false),
        })
    }
}

impl Task for TextTask {
    fn describe(&self) -> String {
        format!(
            "{}: {} ({} linears, width {}), up to {} tokens{}; train {} / valid {} / test {}",
            self.name,
            self.model.kind(),
            self.model.linears().len(),
            self.model.hidden_size(),
            self.max_len,
            if self.set.pairs.is_some() { ", text pairs" } else { "" },
            self.splits.train.len(),
            self.splits.valid.len(),
            self.splits.test.len()
        )
    }
    fn num_classes(&self) -> usize {
        self.set.classes.len()
    }
    fn feature_dim(&self) -> usize {
        self.model.hidden_size()
    }
    fn linears(&self) -> Vec<LinearInfo> {
        self.model.linears()
    }
    fn len(&self, s: Split) -> usize {
        self.splits.get(s).len()
    }
    fn features(&self, s: Split, idx: &[usize], deltas: &Deltas) -> Result<Tensor> {
        let pos = self.splits.map(s, idx)?;
        let (batch, types) = self.encode(&pos)?;
        let token_types = types.then_some(&batch.token_type_ids);
        let x = self.model.forward(&batch.input_ids, &batch.attention_mask, token_types, deltas)?;
        Ok(mean_pool(&x, &batch.attention_mask)?)
    }
    fn base_model(&self) -> (&'static str, std::path::PathBuf) {
        (self.model.kind(), self.model.weights_path().to_path_buf())
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
        let labels = pos
            .iter()
            .map(|&i| {
                self.set.labels.get(i).map(|&l| u32::from(l)).ok_or_else(|| {
                    Error::Data(format!("example {i} past the {} labelled texts", self.set.labels.len()))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Tensor::from_vec(labels, pos.len(), &self.device)?)
    }
    fn device(&self) -> &Device {
        &self.device
    }
}
