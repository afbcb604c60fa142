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
}

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
  superlora plan --shapes 768x768*24 --fold natural --groups 24 --order 2 --factor lora --rank 1
  # one 768x768 weight, square fold, 12 groups, order-3 Tucker of rank 5 (8,160 parameters)
  superlora plan --shapes 768x768 --fold square --groups 12 --order 3 --factor tucker --rank 5
  # the same with a fastfood projection of ratio 0.01, as JSON
  superlora plan --shapes 768x768 --fold square --groups 4 --order 3 --factor tucker --rank 4 --ratio 0.01 --json
  # a real model's query and value weights
  superlora plan --model model.safetensors --targets query,value --fold square --factor tucker --rank 4";

/// Where the adapted weights come from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ShapeSource {
    /// Adapted weight shapes as OUTxIN[*COUNT], comma-separated, in model order,
    /// e.g. `768x768*24,3072x768*12`.
    #[arg(long, value_name = "LIST")]
    pub shapes: Option<String>,
    /// A .safetensors file, or a folder of them (only the headers are read).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

/// Adapter settings; every one is optional and overrides the same key of --config.
#[derive(Debug, Args, Default)]
pub struct AdapterArgs {
    /// TOML file with adapter settings (keys as the flags below).
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
    /// With --model: a regex that must match a whole module path (or tensor name).
    #[arg(long, value_name = "REGEX")]
    pub targets_regex: Option<String>,
    /// Adapter settings.
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Print JSON (with `trainable_params` and a `groups` array) instead of a table.
    #[arg(long)]
    pub json: bool,
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
