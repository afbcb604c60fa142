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
    /// Data parallel: each step's batch (and each evaluation batch) is cut into this many
    /// contiguous shares, one thread each, and their gradients are summed before AdamW. 1 (the
    /// default, left out of the saved settings) is the plain single-graph step. More than one changes
    /// the adapter in its last bits (the gradient is summed in another order), never with the
    /// thread count: the same seed and `workers` give the same bytes. For speed, run each worker
    /// single-threaded (`RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1`, which `superlora train
    /// --workers` sets) with one worker per core.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `idx` cut into at most `workers` contiguous shares, sizes differing by at most one, none empty.
pub fn shares(idx: &[usize], workers: usize) -> Vec<&[usize]> {
    let w = workers.clamp(1, idx.len().max(1));
    let (base, extra) = (idx.len() / w, idx.len() % w);
    let mut out = Vec::with_capacity(w);
    let mut start = 0;
    for i in 0..w {
        let len = base + usize::from(i < extra);
        if len > 0 {
            out.push(&idx[start..start + len]);
        }
        start += len;
    }
    out
}

/// `f` on each share of `idx` (see [`shares`]), each on its own worker (one share: this thread);
/// the results in share order.
fn on_shares<T: Send>(idx: &[usize], workers: usize, f: impl Fn(&[usize]) -> Result<T> + Sync) -> Result<Vec<T>> {
    let parts = shares(idx, workers);
    crate::parallel::on_workers(parts.len(), |i| f(parts[i]))?.into_iter().collect()
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

/// Accuracy of the current parameters on (at most `limit` examples of) a split; each batch is cut
/// into `workers` shares computed on their own threads.
pub fn evaluate(
    task: &dyn Task,
    model: &Trainable,
    split: Split,
    batch: usize,
    limit: Option<usize>,
    workers: usize,
) -> Result<f64> {
    let n = limit.map_or(task.len(split), |l| l.min(task.len(split)));
    if n == 0 {
        return Ok(f64::NAN);
    }
    let deltas = model.frozen_deltas()?;
    let (w, b) = (model.head.weight.as_tensor().detach(), model.head.bias.as_tensor().detach());
    let mut right = 0usize;
    for start in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let counts = on_shares(&idx, workers, |share| {
            let f = task.features(split, share, &deltas)?.detach();
            let logits = f.matmul(&w.t()?)?.broadcast_add(&b)?;
            correct(&logits, &task.labels(split, share)?)
        })?;
        right += counts.iter().sum::<usize>();
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
/// ΔW (tape, once), then features, head and cross-entropy of each of `workers` shares of the batch
/// on its own thread; and the batch's correct predictions. With one share the loss is the batch
/// mean; with several, `parts` holds each share's mean weighted by its size over the batch's.
fn step_result(task: &dyn Task, model: &Trainable, idx: &[usize], workers: usize) -> Result<StepResult> {
    let tape = crate::parallel::on_all(workers, || model.adapter.map(SuperLora::training_tape).transpose())??;
    let deltas = match &tape {
        Some(t) => Deltas::from_tape(model.targets, t)?,
        None => Deltas::none(),
    };
    let n = idx.len() as f64;
    let mut shares = on_shares(idx, workers, |share| {
        let features = task.features(Split::Train, share, &deltas)?;
        let labels = task.labels(Split::Train, share)?;
        let logits = model.head.forward(&features)?;
        let loss = cross_entropy(&logits, &labels)?;
        let hits = correct(&logits.detach(), &labels)?;
        let loss = if workers > 1 { loss.affine(share.len() as f64 / n, 0.0)? } else { loss };
        Ok((loss, hits))
    })?;
    let hits = shares.iter().map(|(_, h)| h).sum();
    let (loss, parts) = if shares.len() == 1 {
        (shares.remove(0).0, vec![])
    } else {
        let parts: Vec<Tensor> = shares.into_iter().map(|(l, _)| l).collect();
        let mut total = parts[0].detach();
        for p in &parts[1..] {
            total = (total + p.detach())?;
        }
        (total, parts)
    };
    Ok(StepResult { loss, parts, tape, units: idx.len(), hits })
}

/// One optimizer step on the training examples `idx`: ΔW (tape), features, head, cross-entropy,
/// backward through the model and the tape, AdamW with the learning rates scaled by `lr_factor`;
/// `workers` shares of the batch in parallel (see [`TrainSettings::workers`]).
/// A non-finite loss or gradient is an error and changes nothing.
pub fn train_step(
    task: &dyn Task,
    model: &Trainable,
    opt: &mut AdamW,
    idx: &[usize],
    lr_factor: f64,
    workers: usize,
) -> Result<StepOutput> {
    let r = step_result(task, model, idx, workers)?;
    let loss = optimize(opt, &r, lr_factor)?;
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
        step_result(self.task, self.model, idx, self.settings.workers)
    }

    fn evaluate(&self, at: &Point) -> Result<Evaluation<EvalRecord>> {
        // Intermediate evaluations may be capped; the last one always uses the full splits.
        let s = self.settings;
        let limit = if at.is_final { s.final_eval_limit } else { s.eval_limit };
        let valid = evaluate(self.task, self.model, Split::Valid, s.eval_batch_size, limit, s.workers)?;
        let test = evaluate(self.task, self.model, Split::Test, s.eval_batch_size, limit, s.workers)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train_loop::backward_parts;
    use candle_core::DType;
    use superlora_models::adapt::LinearInfo;

    /// Fixed features (a seeded pattern) and labels, no encoder: the head alone is trained, which is
    /// enough to see how the shares' losses are weighted and their gradients merged.
    struct Fixed {
        x: Tensor,
        y: Vec<u32>,
        device: Device,
    }

    impl Task for Fixed {
        fn describe(&self) -> String {
            "fixed features".into()
        }
        fn num_classes(&self) -> usize {
            3
        }
        fn feature_dim(&self) -> usize {
            self.x.dim(1).unwrap()
        }
        fn linears(&self) -> Vec<LinearInfo> {
            vec![]
        }
        fn len(&self, _split: Split) -> usize {
            self.y.len()
        }
        fn features(&self, _split: Split, idx: &[usize], _deltas: &Deltas) -> crate::Result<Tensor> {
            let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            Ok(self.x.index_select(&Tensor::new(ids, &self.device)?, 0)?)
        }
        fn labels(&self, _split: Split, idx: &[usize]) -> crate::Result<Tensor> {
            let ys: Vec<u32> = idx.iter().map(|&i| self.y[i]).collect();
            Ok(Tensor::new(ys, &self.device)?)
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn base_model(&self) -> (&'static str, std::path::PathBuf) {
            ("none", std::path::PathBuf::new())
        }
        fn class_names(&self) -> Vec<String> {
            vec!["a".into(), "b".into(), "c".into()]
        }
    }

    /// The oracle of data parallel: one backward of the whole batch's mean loss. Shares of 6, 5
    /// and 5 (unequal, so a missing size weighting would show) give the same loss and the same
    /// head gradients up to summation order.
    #[test]
    fn data_parallel_gradients_match_one_backward_of_the_whole_batch() {
        let device = Device::Cpu;
        let (n, f) = (16, 8);
        let x: Vec<f32> = (0..n * f).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let task = Fixed {
            x: Tensor::from_vec(x, (n, f), &device).unwrap(),
            y: (0..n).map(|i| (i * 7 % 3) as u32).collect(),
            device: device.clone(),
        };
        let head = Head::new(f, 3, 5, DType::F32, &device).unwrap();
        let model = Trainable { adapter: None, targets: &[], head: &head };
        let idx: Vec<usize> = (0..n).collect();
        let one = step_result(&task, &model, &idx, 1).unwrap();
        assert!(one.parts.is_empty());
        let g1 = one.loss.backward().unwrap();
        let three = step_result(&task, &model, &idx, 3).unwrap();
        assert_eq!(three.parts.len(), 3);
        assert_eq!((three.units, three.hits), (one.units, one.hits));
        let l1 = one.loss.to_scalar::<f32>().unwrap();
        let l3 = three.loss.to_scalar::<f32>().unwrap();
        assert!((l1 - l3).abs() <= 1e-6 * l1.abs(), "loss {l1} vs {l3}");
        let g3 = backward_parts(&three.parts).unwrap();
        for v in [&head.weight, &head.bias] {
            let a = g1.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = g3.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-6 * scale, "gradient {p} vs {q}");
            }
        }
    }

    #[test]
    fn shares_are_contiguous_balanced_and_never_empty() {
        let idx: Vec<usize> = (10..26).collect();
        let cut = |w| shares(&idx, w).iter().map(|s| s.len()).collect::<Vec<_>>();
        assert_eq!(cut(1), vec![16]);
        assert_eq!(cut(2), vec![8, 8]);
        assert_eq!(cut(3), vec![6, 5, 5]);
        assert_eq!(cut(40), vec![1; 16]);
        assert_eq!(shares(&idx, 3).concat(), idx);
        assert!(shares(&[], 2).is_empty());
    }

    #[test]
    fn settings_leave_one_worker_out_of_the_saved_json() {
        let s = TrainSettings {
            steps: 1,
            batch_size: 2,
            eval_batch_size: 2,
            eval_every: 1,
            eval_limit: None,
            final_eval_limit: None,
            adapter_lr: 1e-3,
            head_lr: 1e-2,
            adapter_weight_decay: 0.0,
            head_weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup: 0,
            max_grad_norm: None,
            seed: 0,
            workers: 1,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("workers").is_none(), "{json}");
        let back: TrainSettings = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        let two = serde_json::to_value(TrainSettings { workers: 2, ..s }).unwrap();
        assert_eq!(two["workers"], 2);
    }
}
