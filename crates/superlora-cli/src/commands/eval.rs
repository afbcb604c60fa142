//! `superlora eval`: rebuild a run from its run.json, load its latest checkpoint and score it.

use anyhow::{Context, Result, bail};
use candle_core::Device;
use superlora_train::checkpoint;
use superlora_train::task::Split;
use superlora_train::trainer::{Trainable, evaluate, restore};

use crate::args::{EvalArgs, SplitArg};
use crate::runspec::{RunSpec, build_model, build_task};
use crate::settings::InputError;

/// Runs the command.
pub fn run(args: &EvalArgs) -> Result<()> {
    let spec = RunSpec::read(&args.run)?;
    let device = Device::Cpu;
    let Some(loaded) = checkpoint::read_latest(&args.run.join("checkpoints"), &device)? else {
        bail!(InputError(format!("{} has no checkpoint yet", args.run.display())));
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
    let acc = evaluate(task.as_ref(), &model, split, spec.train.eval_batch_size, None)?;
    println!(
        "{:?} accuracy {acc:.4} on {} examples (checkpoint {}, step {})",
        split,
        task.len(split),
        loaded.path.display(),
        loaded.state.step
    );
    Ok(())
}
