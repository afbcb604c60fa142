//! Classification training: an adapter (ΔW through a [`DeltaTape`]; none for a head-only linear
//! probe) and a linear head on a [`Task`]'s features, cross-entropy, validation and test accuracy
//! (the best validation accuracy tracked). [`train`] runs it through the one training loop,
//! [`crate::train_loop::run_loop`], which owns resume, the seeded batch order, the schedule, the
//! non-finite stop, `metrics.jsonl`, checkpoints and `summary.json`; [`train_step`] is one step of
//! it alone (benchmarks), [`evaluate`] the accuracy on a split.
//!
//! [`DeltaTape`]: superlora_core::DeltaTape

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use superlora_core::{LayerShape, SuperLora};
use superlora_models::adapt::Deltas;

use crate::head::{Head, correct, cross_entropy};
use crate::metrics::EvalRecord;
use crate::optim::{AdamW, AdamWConfig, GroupSettings};
use crate::schedule::Schedule;
use crate::task::{Split, Task};
use crate::train_loop::{
    End, Evaluation, Goal, LoopSettings, LoopTask, Point, StepResult, Tracked, Window, optimize, run_loop,
};
pub use crate::train_loop::{bar, latest_checkpoint, restore, say};
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

/// What one training step measured.
#[derive(Clone, Copy, Debug)]
pub struct StepOutput {
    /// Mean cross-entropy of the batch.
    pub loss: f64,
    /// Correct predictions in the batch.
    pub correct: usize,
}

/// The loss of one classification step on the training examples `idx`, before any backward:
/// ΔW (tape), features, head, cross-entropy; and the batch's correct predictions.
fn step_result(task: &dyn Task, model: &Trainable, idx: &[usize]) -> Result<StepResult> {
    let tape = model.adapter.map(SuperLora::training_tape).transpose()?;
    let deltas = match &tape {
        Some(t) => Deltas::from_tape(model.targets, t)?,
        None => Deltas::none(),
    };
    let features = task.features(Split::Train, idx, &deltas)?;
    let labels = task.labels(Split::Train, idx)?;
    let logits = model.head.forward(&features)?;
    let loss = cross_entropy(&logits, &labels)?;
    let hits = correct(&logits.detach(), &labels)?;
    Ok(StepResult { loss, tape, units: idx.len(), hits })
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
    let r = step_result(task, model, idx)?;
    let loss = optimize(opt, &r.loss, r.tape.as_ref(), lr_factor)?;
    Ok(StepOutput { loss, correct: r.hits })
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

/// Classification as a [`LoopTask`]: adapter + head, cross-entropy, validation and test accuracy.
struct Classify<'a> {
    task: &'a dyn Task,
    model: &'a Trainable<'a>,
    settings: &'a TrainSettings,
    settings_json: serde_json::Value,
    adapter_params: usize,
    head_params: usize,
}

impl LoopTask for Classify<'_> {
    type Error = Error;
    type Record = EvalRecord;
    type Summary = Summary;

    fn describe(&self) -> String {
        let (a, h) = (self.adapter_params, self.head_params);
        format!("{} | adapter {a} params, head {h} params", self.task.describe())
    }

    fn device(&self) -> Device {
        self.task.device().clone()
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.model.named_vars()
    }

    fn optimizer(&self) -> Result<AdamW> {
        optimizer(self.model, self.settings)
    }

    fn train_len(&self) -> usize {
        self.task.len(Split::Train)
    }

    fn step(&self, _step: u64, idx: &[usize]) -> Result<StepResult> {
        step_result(self.task, self.model, idx)
    }

    fn evaluate(&self, at: &Point) -> Result<Evaluation<EvalRecord>> {
        // Intermediate evaluations may be capped; the last one always uses the full splits.
        let s = self.settings;
        let limit = if at.is_final { s.final_eval_limit } else { s.eval_limit };
        let valid = evaluate(self.task, self.model, Split::Valid, s.eval_batch_size, limit)?;
        let test = evaluate(self.task, self.model, Split::Test, s.eval_batch_size, limit)?;
        let r = EvalRecord {
            step: at.step,
            epoch: at.epoch,
            train_loss: at.window.loss().unwrap_or(0.0),
            train_acc: at.window.accuracy(),
            valid_acc: valid,
            test_acc: test,
            adapter_params: self.adapter_params,
            head_params: self.head_params,
            samples_per_s: at.window.rate(),
            peak_rss_mb: at.peak_rss_mb,
            elapsed_s: at.elapsed_s,
        };
        let line = format!(
            "step {:>6}  train loss {:.4} acc {:.4}  valid {:.4}  test {:.4}  {:.1} samples/s",
            r.step, r.train_loss, r.train_acc, r.valid_acc, r.test_acc, r.samples_per_s
        );
        let tracked = Some(Tracked { value: valid, goal: Goal::Higher, companion: Some(test) });
        Ok(Evaluation { record: r, line, tracked })
    }

    fn summary(&self, end: &End<EvalRecord>) -> Summary {
        let (best_valid_acc, best_step) = end.state.best_valid.unwrap_or((f64::NAN, 0));
        Summary {
            task: self.task.describe(),
            adapter_params: self.adapter_params,
            head_params: self.head_params,
            steps: end.state.step,
            final_valid_acc: end.last.valid_acc,
            final_test_acc: end.last.test_acc,
            best_valid_acc,
            best_step,
            test_acc_at_best: end.state.test_at_best.unwrap_or(f64::NAN),
            train_seconds: end.state.elapsed_s,
            samples_per_s: end.examples_per_s,
            peak_rss_mb: end.peak_rss_mb,
            settings: self.settings_json.clone(),
        }
    }

    fn progress(&self, w: &Window) -> String {
        let loss = w.loss().unwrap_or(f64::NAN);
        format!("loss {loss:.4} acc {:.3} | {:.1} samples/s", w.accuracy(), w.rate())
    }
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
    let s = LoopSettings {
        steps: settings.steps,
        batch_size: settings.batch_size,
        eval_every: settings.eval_every,
        schedule: settings.schedule,
        warmup: settings.warmup,
        seed: settings.seed,
        keep: 2,
        settings_json: settings_json.clone(),
        show_progress,
    };
    let c = Classify {
        task,
        model,
        settings,
        settings_json,
        adapter_params: model.adapter.map_or(0, SuperLora::num_trainable),
        head_params: model.head.num_params(),
    };
    run_loop(&c, &s, out, resume)
}
