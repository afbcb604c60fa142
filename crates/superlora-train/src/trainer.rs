//! The training loop, straight-line: for each step, ΔW from the adapter (a [`DeltaTape`]), the
//! task's features of a seeded batch, the head, cross-entropy, backward through the model and the
//! tape, one AdamW step. Every `eval_every` steps: validation and test accuracy, a `metrics.jsonl`
//! line and an atomic checkpoint. A non-finite loss or gradient stops the run with the last good
//! checkpoint intact; `resume` continues a killed run exactly (data order depends only on the
//! seed and the epoch, and parameters and optimizer state are restored bit for bit).
//!
//! [`DeltaTape`]: superlora_core::DeltaTape

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use superlora_core::{LayerShape, SuperLora};
use superlora_data::EpochOrder;
use superlora_models::adapt::Deltas;

use crate::checkpoint::{self, RunState};
use crate::head::{Head, correct, cross_entropy};
use crate::metrics::{EvalRecord, append_jsonl, peak_rss_mb, write_json_atomic};
use crate::optim::{AdamW, AdamWConfig, GroupSettings};
use crate::schedule::Schedule;
use crate::task::{Split, Task};
use crate::{Error, Result};

/// How to train.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Optimizer steps in total.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Evaluate (and checkpoint) every this many steps, and at the end.
    pub eval_every: u64,
    /// Evaluate on at most this many validation / test examples (None: all), except at the end.
    pub eval_limit: Option<usize>,
    /// The same cap for the final evaluation (None: the full splits).
    pub final_eval_limit: Option<usize>,
    /// Peak learning rate of the adapter.
    pub adapter_lr: f64,
    /// Peak learning rate of the head.
    pub head_lr: f64,
    /// Weight decay of the adapter.
    pub adapter_weight_decay: f64,
    /// Weight decay of the head.
    pub head_weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup: u64,
    /// Gradient clipping (global norm).
    pub max_grad_norm: Option<f64>,
    /// Seed of the data order and the head's initial values (the adapter has its own).
    pub seed: u64,
}

/// What a finished run reports (also `summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The task.
    pub task: String,
    /// Trainable adapter parameters (0 for head-only).
    pub adapter_params: usize,
    /// Trainable head parameters.
    pub head_params: usize,
    /// Steps done.
    pub steps: u64,
    /// Validation accuracy at the end.
    pub final_valid_acc: f64,
    /// Test accuracy at the end.
    pub final_test_acc: f64,
    /// Best validation accuracy, and its step.
    pub best_valid_acc: f64,
    /// Step of the best validation accuracy.
    pub best_step: u64,
    /// Test accuracy at the best validation step.
    pub test_acc_at_best: f64,
    /// Training seconds (evaluation excluded), summed over resumed sessions.
    pub train_seconds: f64,
    /// Training samples per second over the whole run.
    pub samples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// The settings.
    pub settings: serde_json::Value,
}

/// A model being trained: the adapter (None for a head-only linear probe), the weights it
/// targets (plan order) and the head.
pub struct Trainable<'a> {
    /// The adapter.
    pub adapter: Option<&'a SuperLora>,
    /// Its targets.
    pub targets: &'a [LayerShape],
    /// The head.
    pub head: &'a Head,
}

impl Trainable<'_> {
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self
            .adapter
            .map(|a| a.named_vars().into_iter().map(|(n, v)| (format!("adapter.{n}"), v)).collect())
            .unwrap_or_default();
        v.extend(self.head.named_vars().into_iter().map(|(n, var)| (format!("head.{n}"), var)));
        v
    }

    /// ΔW without a graph (for evaluation).
    fn frozen_deltas(&self) -> Result<Deltas> {
        match self.adapter {
            None => Ok(Deltas::none()),
            Some(a) => {
                let d: Vec<Tensor> = a.delta_weights()?.iter().map(Tensor::detach).collect();
                Ok(Deltas::new(self.targets, &d)?)
            }
        }
    }
}

/// Accuracy of the current parameters on (at most `limit` examples of) a split.
pub fn evaluate(task: &dyn Task, model: &Trainable, split: Split, batch: usize, limit: Option<usize>) -> Result<f64> {
    let n = limit.map_or(task.len(split), |l| l.min(task.len(split)));
    if n == 0 {
        return Ok(f64::NAN);
    }
    let deltas = model.frozen_deltas()?;
    let (w, b) = (model.head.weight.as_tensor().detach(), model.head.bias.as_tensor().detach());
    let mut right = 0usize;
    for start in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let f = task.features(split, &idx, &deltas)?.detach();
        let logits = f.matmul(&w.t()?)?.broadcast_add(&b)?;
        right += correct(&logits, &task.labels(split, &idx)?)?;
    }
    Ok(right as f64 / n as f64)
}

/// The project's step progress bar (hidden when `show` is false), resumed at `done`.
pub fn bar(total: u64, done: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_position(done);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} < {eta_precise} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Prints a line above the bar (or on stderr when the bar is hidden).
pub fn say(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() { eprintln!("{line}") } else { pb.println(line) }
}

/// What one training step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepOutput {
    /// Mean cross-entropy of the batch.
    pub loss: f64,
    /// Correct predictions in the batch.
    pub correct: usize,
}

/// One optimizer step on the training examples `idx`: ΔW (tape), features, head, cross-entropy,
/// backward through the model and the tape, AdamW with the learning rates scaled by `lr_factor`.
/// A non-finite loss or gradient is an error and changes nothing.
pub fn train_step(
    task: &dyn Task,
    model: &Trainable,
    opt: &mut AdamW,
    idx: &[usize],
    lr_factor: f64,
) -> Result<StepOutput> {
    let tape = model.adapter.map(SuperLora::forward_tape).transpose()?;
    let deltas = match &tape {
        Some(t) => Deltas::new(model.targets, t.deltas())?,
        None => Deltas::none(),
    };
    let features = task.features(Split::Train, idx, &deltas)?;
    let labels = task.labels(Split::Train, idx)?;
    let logits = model.head.forward(&features)?;
    let loss = cross_entropy(&logits, &labels)?;
    let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !loss_value.is_finite() {
        return Err(Error::NonFinite(format!("training loss is {loss_value}")));
    }
    let mut grads = loss.backward()?;
    if let Some(t) = &tape {
        grads = t.backward(grads)?;
    }
    opt.step(&grads, lr_factor)?;
    Ok(StepOutput { loss: loss_value, correct: correct(&logits.detach(), &labels)? })
}

/// The optimizer for `model`: an `adapter` group (if any) and a `head` group.
pub fn optimizer(model: &Trainable, settings: &TrainSettings) -> Result<AdamW> {
    let mut groups = vec![];
    if let Some(a) = model.adapter {
        groups.push((
            GroupSettings {
                name: "adapter".into(),
                lr: settings.adapter_lr,
                weight_decay: settings.adapter_weight_decay,
            },
            a.named_vars(),
        ));
    }
    groups.push((
        GroupSettings { name: "head".into(), lr: settings.head_lr, weight_decay: settings.head_weight_decay },
        model.head.named_vars(),
    ));
    AdamW::new(AdamWConfig { max_grad_norm: settings.max_grad_norm, ..Default::default() }, groups)
}

/// Trains `model` on `task`, writing into `out`. With `resume`, continues from the latest
/// checkpoint in `out` (whose settings must equal `settings_json`).
pub fn train(
    task: &dyn Task,
    model: &Trainable,
    settings: &TrainSettings,
    settings_json: serde_json::Value,
    out: &Path,
    resume: bool,
    show_progress: bool,
) -> Result<Summary> {
    std::fs::create_dir_all(out).map_err(|cause| Error::Io { path: out.display().to_string(), cause })?;
    let ckpt_dir = out.join("checkpoints");
    let adapter_params = model.adapter.map_or(0, SuperLora::num_trainable);
    let head_params = model.head.num_params();
    let mut opt = optimizer(model, settings)?;

    let mut state =
        RunState { step: 0, best_valid: None, test_at_best: None, elapsed_s: 0.0, settings: settings_json.clone() };
    if resume {
        match checkpoint::read_latest(&ckpt_dir, task.device())? {
            Some(loaded) => {
                if loaded.state.settings != settings_json {
                    return Err(Error::Checkpoint(format!(
                        "{} was made with different settings; resume with the same flags, or start a new run in another folder",
                        loaded.path.display()
                    )));
                }
                restore(&model.named_vars(), &loaded.params)?;
                opt.load_state(&loaded.optimizer, loaded.state.step)?;
                state = loaded.state;
                eprintln!("resuming from {} (step {})", loaded.path.display(), state.step);
            }
            None => eprintln!("--resume: no checkpoint in {} yet, starting at step 0", ckpt_dir.display()),
        }
    } else if ckpt_dir.join("latest").exists() {
        return Err(Error::Checkpoint(format!(
            "{} already holds a run; pass --resume to continue it or choose another output folder",
            out.display()
        )));
    }

    let n_train = task.len(Split::Train);
    let order = EpochOrder::new(n_train, settings.seed);
    let per_epoch = order.num_batches(settings.batch_size, true) as u64;
    if per_epoch == 0 {
        return Err(Error::Data(format!(
            "batch size {} is larger than the {n_train} training examples",
            settings.batch_size
        )));
    }
    let pb = bar(settings.steps, state.step, show_progress);
    say(&pb, &format!("{} | adapter {adapter_params} params, head {head_params} params", task.describe()));
    let metrics_path = out.join("metrics.jsonl");
    let (mut batches_epoch, mut batches): (Option<u64>, Vec<Vec<usize>>) = (None, Vec::new());
    let (mut loss_sum, mut right, mut seen, mut window_s) = (0f64, 0usize, 0usize, 0f64);
    let (mut last_valid, mut last_test) = (f64::NAN, f64::NAN);
    while state.step < settings.steps {
        let step = state.step;
        let epoch = step / per_epoch;
        if batches_epoch != Some(epoch) {
            batches = order.batches(epoch, settings.batch_size, true)?;
            batches_epoch = Some(epoch);
        }
        let idx = &batches[(step % per_epoch) as usize];
        let t0 = Instant::now();
        let factor = settings.schedule.factor(step, settings.steps, settings.warmup);
        let out = train_step(task, model, &mut opt, idx, factor).map_err(|e| match e {
            Error::NonFinite(m) => {
                pb.abandon();
                Error::NonFinite(format!(
                    "{m} at step {step}; stopped. The last good checkpoint (if any) is in {} — lower the learning rates and resume",
                    ckpt_dir.display()
                ))
            }
            other => other,
        })?;
        let loss_value = out.loss;
        let dt = t0.elapsed().as_secs_f64();
        state.step += 1;
        state.elapsed_s += dt;
        window_s += dt;
        loss_sum += loss_value * idx.len() as f64;
        right += out.correct;
        seen += idx.len();
        pb.set_position(state.step);
        pb.set_message(format!(
            "loss {:.4} acc {:.3} | {:.1} samples/s",
            loss_sum / seen as f64,
            right as f64 / seen as f64,
            seen as f64 / window_s
        ));

        if state.step.is_multiple_of(settings.eval_every) || state.step == settings.steps {
            // Intermediate evaluations may be capped; the last one always uses the full splits.
            let limit = if state.step == settings.steps { settings.final_eval_limit } else { settings.eval_limit };
            last_valid = evaluate(task, model, Split::Valid, settings.eval_batch_size, limit)?;
            last_test = evaluate(task, model, Split::Test, settings.eval_batch_size, limit)?;
            if state.best_valid.is_none_or(|(b, _)| last_valid > b) {
                state.best_valid = Some((last_valid, state.step));
                state.test_at_best = Some(last_test);
            }
            let record = EvalRecord {
                step: state.step,
                epoch: state.step as f64 / per_epoch as f64,
                train_loss: loss_sum / seen.max(1) as f64,
                train_acc: right as f64 / seen.max(1) as f64,
                valid_acc: last_valid,
                test_acc: last_test,
                adapter_params,
                head_params,
                samples_per_s: seen as f64 / window_s.max(1e-9),
                peak_rss_mb: peak_rss_mb(),
                elapsed_s: state.elapsed_s,
            };
            append_jsonl(&metrics_path, &record)?;
            say(
                &pb,
                &format!(
                    "step {:>6}  train loss {:.4} acc {:.4}  valid {:.4}  test {:.4}  {:.1} samples/s",
                    record.step,
                    record.train_loss,
                    record.train_acc,
                    record.valid_acc,
                    record.test_acc,
                    record.samples_per_s
                ),
            );
            let params: HashMap<String, Tensor> =
                model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
            let (opt_state, _) = opt.state();
            checkpoint::write(&ckpt_dir, &state, &params, &opt_state, 2)?;
            (loss_sum, right, seen, window_s) = (0.0, 0, 0, 0.0);
        }
    }
    pb.finish_and_clear();
    if last_valid.is_nan() {
        // Nothing left to train (a finished run resumed): score it as it stands.
        last_valid = evaluate(task, model, Split::Valid, settings.eval_batch_size, settings.final_eval_limit)?;
        last_test = evaluate(task, model, Split::Test, settings.eval_batch_size, settings.final_eval_limit)?;
    }
    let (best_valid_acc, best_step) = state.best_valid.unwrap_or((f64::NAN, 0));
    let total_samples = state.step as f64 * settings.batch_size as f64;
    let summary = Summary {
        task: task.describe(),
        adapter_params,
        head_params,
        steps: state.step,
        final_valid_acc: last_valid,
        final_test_acc: last_test,
        best_valid_acc,
        best_step,
        test_acc_at_best: state.test_at_best.unwrap_or(f64::NAN),
        train_seconds: state.elapsed_s,
        samples_per_s: total_samples / state.elapsed_s.max(1e-9),
        peak_rss_mb: peak_rss_mb(),
        settings: settings_json,
    };
    write_json_atomic(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Sets every named variable from `params` (shapes checked).
pub fn restore(vars: &[(String, Var)], params: &HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in vars {
        let t = params.get(name).ok_or_else(|| Error::Checkpoint(format!("checkpoint lacks `{name}`")))?;
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint(format!(
                "`{name}` has shape {:?} in the checkpoint, {:?} here",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// The folder holding the latest checkpoint of a run folder, if any.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let dir = out.join("checkpoints");
    let name = std::fs::read_to_string(dir.join("latest")).ok()?;
    Some(dir.join(name.trim()))
}
