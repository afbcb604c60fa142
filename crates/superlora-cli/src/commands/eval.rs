//! `superlora eval`: rebuild a run from its run.json, load its latest checkpoint and score it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use superlora_train::checkpoint;
use superlora_train::task::Split;
use superlora_train::trainer::{Trainable, evaluate, restore};

use crate::runspec::{RunSpec, build_model, build_task};
use crate::settings::InputError;

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
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// `--split`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    /// The validation split.
    Valid,
    /// The test split.
    Test,
}

/// Runs the command.
pub fn run(args: &EvalArgs) -> Result<()> {
    if let Some(dir) = &args.adapter {
        return eval_adapter(dir, args);
    }
    let Some(run_dir) = &args.run else { bail!(InputError("give --run DIR or --adapter DIR".into())) };
    // A decoder run's run.json names its task.
    if let Ok(text) = std::fs::read_to_string(run_dir.join("run.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(task) = v.get("task").and_then(|t| t.as_str())
    {
        super::generate::refuse_llama_task(task, run_dir, "eval")?;
    }
    let spec = RunSpec::read(run_dir)?;
    let device = args.device.open()?;
    let Some(loaded) = checkpoint::read_latest(&run_dir.join("checkpoints"), &device)? else {
        bail!(InputError(format!("{} has no checkpoint yet", run_dir.display())));
    };
    let task = build_task(&spec.task, &device)?;
    let (adapter, targets, head) = build_model(&spec, task.as_ref())?;
    let model = Trainable { adapter: adapter.as_ref(), targets: &targets, head: &head };
    let mut vars: Vec<(String, candle_core::Var)> = adapter
        .as_ref()
        .map(|a| a.named_vars().into_iter().map(|(n, v)| (format!("adapter.{n}"), v)).collect())
        .unwrap_or_default();
    vars.extend(head.named_vars().into_iter().map(|(n, v)| (format!("head.{n}"), v)));
    restore(&vars, &loaded.params).with_context(|| format!("loading {}", loaded.path.display()))?;
    let split = match args.split {
        SplitArg::Valid => Split::Valid,
        SplitArg::Test => Split::Test,
    };
    let acc = evaluate(task.as_ref(), &model, split, spec.train.eval_batch_size, None, 1)?;
    println!(
        "{:?} accuracy {acc:.4} on {} examples (checkpoint {}, step {})",
        split,
        task.len(split),
        loaded.path.display(),
        loaded.state.step
    );
    Ok(())
}

/// `eval --adapter DIR`: rebuild the task from the adapter's own description, check that the base
/// model is the one it was trained on, load it and score it.
fn eval_adapter(dir: &std::path::Path, args: &EvalArgs) -> Result<()> {
    use superlora_train::artifact;
    let device = args.device.open()?;
    let file = artifact::read_config(dir)?;
    super::generate::refuse_llama_adapter(&file, dir, "eval")?;
    let task_spec: crate::runspec::TaskSpec = crate::runspec::task_of(&file, dir)?;
    let task = build_task(&task_spec, &device)?;
    let (kind, weights) = task.base_model();
    let sha = artifact::file_sha256(&weights)?;
    if kind != file.base_model.kind || sha != file.base_model.sha256 {
        bail!(InputError(format!(
            "{} was trained on {} {} (sha256 {}), but the model here is {kind} {} (sha256 {sha})",
            dir.display(),
            file.base_model.kind,
            file.base_model.path,
            file.base_model.sha256,
            weights.display()
        )));
    }
    let loaded = artifact::load(dir, &device)?;
    let linears = superlora_models::adapt::select(
        &task.linears(),
        &superlora_io::TargetPattern::names(
            &loaded.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(","),
        )?,
    )?;
    if linears.iter().map(|l| (&l.name, l.rows, l.cols)).ne(loaded.targets.iter().map(|t| (&t.name, t.rows, t.cols))) {
        bail!(InputError(format!("{}: its targets do not match this model's linear layers", dir.display())));
    }
    let Some(head) = &loaded.head else { bail!(InputError(format!("{} has no head to classify with", dir.display()))) };
    let model = Trainable { adapter: loaded.adapter.as_ref(), targets: &loaded.targets, head };
    let split = match args.split {
        SplitArg::Valid => Split::Valid,
        SplitArg::Test => Split::Test,
    };
    let acc = evaluate(task.as_ref(), &model, split, 64, None, 1)?;
    println!("{split:?} accuracy {acc:.4} on {} examples (adapter {})", task.len(split), dir.display());
    Ok(())
}
