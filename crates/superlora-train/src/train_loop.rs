//! The one training loop every task runs ([`run_loop`]), generic over a [`LoopTask`]: the task
//! says what is trained, computes one step's loss and evaluates; the loop owns, once, everything
//! around that:
//! - a fresh run refuses a folder that already holds one; `resume` restores the latest checkpoint
//!   (its settings must equal the run's), parameters and optimizer state bit for bit;
//! - the batch order of each epoch, seeded ([`EpochOrder`]: it depends only on the seed and the
//!   epoch, so a resumed run sees exactly the batches an uninterrupted one would);
//! - each step: the task's loss (graph attached, with the adapter's [`DeltaTape`] if any), a stop
//!   on a non-finite loss, backward through the graph and then the tape, one AdamW step with the
//!   learning rates scaled by the schedule (warm-up included);
//! - every `eval_every` steps and at the end (and at step 0 of a fresh run if the task asks):
//!   the task's evaluation, best-metric tracking, one `metrics.jsonl` line, an atomic checkpoint
//!   (the newest `keep` kept);
//! - a NaN or infinite loss, gradient or parameter stops the run with the last good checkpoint
//!   intact and says to lower the learning rates and resume;
//! - the progress bar ([`bar`], [`say`]), throughput over a window, peak RSS, `summary.json`.
//!
//! [`DeltaTape`]: superlora_core::DeltaTape

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use superlora_core::DeltaTape;
use superlora_data::EpochOrder;

use crate::checkpoint::{self, RunState};
use crate::metrics::{append_jsonl, peak_rss_mb, write_json_atomic};
use crate::optim::AdamW;
use crate::schedule::Schedule;
use crate::{Error, Result};

/// What the loop needs to know of a run's settings.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Optimizer steps in total.
    pub steps: u64,
    /// Training examples per step.
    pub batch_size: usize,
    /// Evaluate (and checkpoint) every this many steps, and at the end.
    pub eval_every: u64,
    /// Learning-rate schedule after the warm-up.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup: u64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Checkpoints kept (the newest).
    pub keep: usize,
    /// The run's settings as JSON, saved with every checkpoint; a resume must present the same.
    pub settings_json: serde_json::Value,
    /// Show the progress bar (else lines go to stderr).
    pub show_progress: bool,
}

/// One training step as the task computed it, before any backward.
pub struct StepResult {
    /// The loss, reduced to a scalar, graph attached (without `parts`: the backward runs on it).
    pub loss: Tensor,
    /// Data parallel: the loss of each worker's share of the batch, weighted so that they sum to
    /// `loss`. When there are several, the backward runs on each on its own thread and their
    /// gradients are summed in order (see [`backward_parts`]); `loss` then only gives the value.
    pub parts: Vec<Tensor>,
    /// The adapter's tape when ΔW came from [`superlora_core::SuperLora::forward_tape`]: its
    /// backward runs after the graph's.
    pub tape: Option<DeltaTape>,
    /// What the loss averages over and throughput counts (samples, images, tokens).
    pub units: usize,
    /// Units predicted right (for a training accuracy; 0 where it means nothing).
    pub hits: usize,
}

/// The training steps since the previous evaluation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    /// Σ loss · units.
    pub loss_sum: f64,
    /// Units seen.
    pub units: usize,
    /// Units predicted right.
    pub hits: usize,
    /// Training seconds.
    pub seconds: f64,
}

impl Window {
    /// Mean training loss (None when empty).
    pub fn loss(&self) -> Option<f64> {
        (self.units > 0).then(|| self.loss_sum / self.units as f64)
    }

    /// Training accuracy (0 when empty).
    pub fn accuracy(&self) -> f64 {
        self.hits as f64 / self.units.max(1) as f64
    }

    /// Units per second (0 when empty).
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.units as f64 / self.seconds } else { 0.0 }
    }
}

/// Where an evaluation happens.
#[derive(Clone, Debug)]
pub struct Point<'a> {
    /// Optimizer steps done.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// The run's last evaluation (the full splits where evaluations are otherwise capped).
    pub is_final: bool,
    /// The training steps since the previous evaluation (empty at step 0, and when a finished
    /// run is scored again).
    pub window: Window,
    /// Training seconds so far (evaluation excluded), over resumed sessions.
    pub elapsed_s: f64,
    /// Peak resident memory so far, MiB.
    pub peak_rss_mb: f64,
    /// The run's checkpoint folder (for messages).
    pub checkpoints: &'a Path,
}

/// Whether a larger or a smaller metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Accuracy and the like.
    Higher,
    /// Losses, perplexity.
    Lower,
}

/// The metric the loop tracks the best of (saved as `best_valid`, `test_at_best` in the
/// checkpoints' `state.json`).
#[derive(Clone, Copy, Debug)]
pub struct Tracked {
    /// The value (validation accuracy, held-out perplexity, ...).
    pub value: f64,
    /// Which way is better.
    pub goal: Goal,
    /// A second number remembered at the best step (the test accuracy).
    pub companion: Option<f64>,
}

/// What an evaluation produced.
pub struct Evaluation<R> {
    /// The `metrics.jsonl` line.
    pub record: R,
    /// The line printed above the progress bar.
    pub line: String,
    /// The metric whose best is tracked (None: no tracking).
    pub tracked: Option<Tracked>,
}

/// What a finished run hands the task for its `summary.json`.
pub struct End<'a, R> {
    /// The final progress (step, best metric, training seconds, settings).
    pub state: &'a RunState,
    /// The last evaluation's record.
    pub last: &'a R,
    /// Training examples per second over the whole run (steps × batch size / training seconds).
    pub examples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
}

/// The problems the loop itself refuses or stops on; the task turns them into its own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `resume` found a checkpoint made with other settings.
    SettingsDiffer,
    /// A fresh run into a folder that holds one.
    RunExists,
    /// A NaN or infinite loss, gradient or parameter.
    NonFinite,
    /// The batch is larger than the training set.
    BatchTooLarge {
        /// The batch size.
        batch: usize,
        /// The training examples.
        examples: usize,
    },
}

/// How the loop's messages name the way out, in the words of the task's command line.
#[derive(Clone, Copy, Debug)]
pub struct Wording {
    /// What to lower after a divergence ("the learning rates").
    pub lower: &'static str,
    /// The other way than a same-flags resume ("start a new run in another folder").
    pub start_over: &'static str,
    /// The other way than `--resume` into a folder holding a run ("choose another output folder").
    pub elsewhere: &'static str,
}

impl Default for Wording {
    fn default() -> Self {
        Wording {
            lower: "the learning rates",
            start_over: "start a new run in another folder",
            elsewhere: "choose another output folder",
        }
    }
}

/// A task the loop trains: classification (adapter + head), DDPM denoising, next-token
/// prediction, ...
pub trait LoopTask {
    /// The task's error; the loop's own (checkpoints, optimizer) convert into it.
    type Error: From<Error>;
    /// One `metrics.jsonl` line.
    type Record: Serialize;
    /// `summary.json`.
    type Summary: Serialize;

    /// The line printed when training starts (task, sizes, trainable parameters).
    fn describe(&self) -> String;
    /// Where the tensors live (checkpoints are read onto it).
    fn device(&self) -> Device;
    /// What is trained and checkpointed, with unique names (`adapter.<name>`, `head.<name>`).
    fn named_vars(&self) -> Vec<(String, Var)>;
    /// A fresh optimizer over [`LoopTask::named_vars`]' tensors, in groups with their rates.
    fn optimizer(&self) -> std::result::Result<AdamW, Self::Error>;
    /// Training examples (the seeded epoch order shuffles `0..train_len()`).
    fn train_len(&self) -> usize;
    /// The loss of step `step` on the training examples `idx` (randomness of the step seeded by
    /// `step`, so a resumed run draws what an uninterrupted one would). The loop checks it,
    /// runs the backward (graph, then tape) and the optimizer step.
    fn step(&self, step: u64, idx: &[usize]) -> std::result::Result<StepResult, Self::Error>;
    /// Scores the current parameters.
    fn evaluate(&self, at: &Point) -> std::result::Result<Evaluation<Self::Record>, Self::Error>;
    /// `summary.json` of a finished run.
    fn summary(&self, end: &End<Self::Record>) -> Self::Summary;

    /// Evaluate (and write a line) at step 0 of a fresh run.
    fn eval_at_start(&self) -> bool {
        false
    }
    /// The message on the progress bar.
    fn progress(&self, w: &Window) -> String {
        format!("loss {:.4} | {:.1} samples/s", w.loss().unwrap_or(f64::NAN), w.rate())
    }
    /// The words of the loop's messages.
    fn wording(&self) -> Wording {
        Wording::default()
    }
    /// The task's error for a problem of the loop, `message` saying what happened and what to do.
    fn refuse(&self, kind: Refusal, message: String) -> Self::Error {
        match kind {
            Refusal::SettingsDiffer | Refusal::RunExists => Error::Checkpoint(message),
            Refusal::NonFinite => Error::NonFinite(message),
            Refusal::BatchTooLarge { .. } => Error::Data(message),
        }
        .into()
    }
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

/// The backward and update of one step: refuses a non-finite loss (changing nothing), runs the
/// backward through the graph (each of `r.parts` on its own thread when there are several) and then
/// the tape, and one optimizer step with the learning rates scaled by `lr_factor` (a non-finite
/// gradient is an error and changes nothing). Returns the loss.
pub fn optimize(opt: &mut AdamW, r: &StepResult, lr_factor: f64) -> Result<f64> {
    let value = r.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(Error::NonFinite(format!("training loss is {value}")));
    }
    let mut grads = if r.parts.len() > 1 { backward_parts(&r.parts)? } else { r.loss.backward()? };
    // The tape and AdamW on as many threads as there were workers (see `parallel::on_all`).
    crate::parallel::on_all(r.parts.len(), || -> Result<()> {
        if let Some(t) = &r.tape {
            grads = t.backward(grads)?;
        }
        opt.step(&grads, lr_factor)?;
        Ok(())
    })??;
    Ok(value)
}

/// The gradients of `Σ parts`: each part's backward on its own worker ([`crate::parallel`]),
/// then the stores merged in order, so the sum is the same on every run and machine. A tensor two
/// parts share (a trainable variable, ΔW from the tape) gets the sum of both gradients; it differs
/// from one backward of the summed loss only in the order of that last addition.
pub fn backward_parts(parts: &[Tensor]) -> Result<candle_core::backprop::GradStore> {
    let mut stores = crate::parallel::on_workers(parts.len(), |i| parts[i].backward())?.into_iter();
    let Some(first) = stores.next() else {
        return Err(Error::Optim("data parallel backward of no parts".into()));
    };
    let mut merged = first?;
    for g in stores {
        merged.extend(g?)?;
    }
    Ok(merged)
}

/// The first of `tensors` holding a NaN or an infinity: its name and how many such values.
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Option<(String, usize)>> {
    for (name, t) in tensors {
        let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Ok(Some((name.to_string(), bad)));
        }
    }
    Ok(None)
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

/// Trains `task` for `s.steps` steps, writing `metrics.jsonl`, `checkpoints/` and `summary.json`
/// into `out`. With `resume`, continues from the latest checkpoint in `out` (whose settings must
/// equal `s.settings_json`); without it, a folder holding a checkpoint is refused.
pub fn run_loop<T: LoopTask>(
    task: &T,
    s: &LoopSettings,
    out: &Path,
    resume: bool,
) -> std::result::Result<T::Summary, T::Error> {
    let words = task.wording();
    std::fs::create_dir_all(out).map_err(|cause| Error::Io { path: out.display().to_string(), cause })?;
    let ckpt_dir = out.join("checkpoints");
    let vars = task.named_vars();
    let mut opt = task.optimizer()?;

    let mut state =
        RunState { step: 0, best_valid: None, test_at_best: None, elapsed_s: 0.0, settings: s.settings_json.clone() };
    let mut resumed = false;
    if resume {
        match checkpoint::read_latest(&ckpt_dir, &task.device())? {
            Some(loaded) => {
                if loaded.state.settings != s.settings_json {
                    let m = format!(
                        "{} was made with different settings; resume with the same flags, or {}",
                        loaded.path.display(),
                        words.start_over
                    );
                    return Err(task.refuse(Refusal::SettingsDiffer, m));
                }
                restore(&vars, &loaded.params)?;
                opt.load_state(&loaded.optimizer, loaded.state.step)?;
                state = loaded.state;
                resumed = true;
                eprintln!("resuming from {} (step {})", loaded.path.display(), state.step);
            }
            None => eprintln!("--resume: no checkpoint in {} yet, starting at step 0", ckpt_dir.display()),
        }
    } else if ckpt_dir.join("latest").exists() {
        let m = format!("{} already holds a run; pass --resume to continue it or {}", out.display(), words.elsewhere);
        return Err(task.refuse(Refusal::RunExists, m));
    }

    let n_train = task.train_len();
    let order = EpochOrder::new(n_train, s.seed);
    let per_epoch = order.num_batches(s.batch_size, true) as u64;
    if per_epoch == 0 {
        let m = format!("batch size {} is larger than the {n_train} training examples", s.batch_size);
        return Err(task.refuse(Refusal::BatchTooLarge { batch: s.batch_size, examples: n_train }, m));
    }
    let pb = Abandon(bar(s.steps, state.step, s.show_progress));
    let pb = &pb.0;
    say(pb, &task.describe());
    let metrics = out.join("metrics.jsonl");
    let point = |state: &RunState, window: Window| Point {
        step: state.step,
        epoch: state.step as f64 / per_epoch as f64,
        is_final: state.step == s.steps,
        window,
        elapsed_s: state.elapsed_s,
        peak_rss_mb: peak_rss_mb(),
        checkpoints: &ckpt_dir,
    };
    let mut last = None;
    if task.eval_at_start() && !resumed {
        let e = task.evaluate(&point(&state, Window::default()))?;
        say(pb, &e.line);
        append_jsonl(&metrics, &e.record)?;
        last = Some(e.record);
    }
    let (mut batches_epoch, mut batches): (Option<u64>, Vec<Vec<usize>>) = (None, Vec::new());
    let mut window = Window::default();
    while state.step < s.steps {
        let step = state.step;
        let epoch = step / per_epoch;
        if batches_epoch != Some(epoch) {
            batches = order.batches(epoch, s.batch_size, true).map_err(Error::from)?;
            batches_epoch = Some(epoch);
        }
        let idx = &batches[(step % per_epoch) as usize];
        let stop = |m: String| {
            task.refuse(
                Refusal::NonFinite,
                format!(
                    "{m} at step {step}; stopped. The last good checkpoint (if any) is in {} — lower {} and resume",
                    ckpt_dir.display(),
                    words.lower
                ),
            )
        };
        let t0 = Instant::now();
        let r = task.step(step, idx)?;
        let factor = s.schedule.factor(step, s.steps, s.warmup);
        let loss = optimize(&mut opt, &r, factor).map_err(|e| match e {
            Error::NonFinite(m) => stop(m),
            other => other.into(),
        })?;
        let dt = t0.elapsed().as_secs_f64();
        state.step += 1;
        state.elapsed_s += dt;
        window.seconds += dt;
        window.loss_sum += loss * r.units as f64;
        window.units += r.units;
        window.hits += r.hits;
        pb.set_position(state.step);
        pb.set_message(task.progress(&window));

        if state.step.is_multiple_of(s.eval_every) || state.step == s.steps {
            let params: HashMap<String, Tensor> =
                vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            if let Some((name, bad)) = first_non_finite(params.iter().map(|(n, t)| (n.as_str(), t)))? {
                return Err(stop(format!("`{name}` holds {bad} NaN or infinite values")));
            }
            let e = task.evaluate(&point(&state, window))?;
            if let Some(t) = e.tracked {
                let better = |b: f64| match t.goal {
                    Goal::Higher => t.value > b,
                    Goal::Lower => t.value < b,
                };
                if state.best_valid.is_none_or(|(b, _)| better(b)) {
                    state.best_valid = Some((t.value, state.step));
                    state.test_at_best = t.companion;
                }
            }
            append_jsonl(&metrics, &e.record)?;
            say(pb, &e.line);
            let (opt_state, _) = opt.state();
            checkpoint::write(&ckpt_dir, &state, &params, &opt_state, s.keep)?;
            window = Window::default();
            last = Some(e.record);
        }
    }
    pb.finish_and_clear();
    let last = match last {
        Some(r) => r,
        // Nothing trained in this session (a finished run resumed): score it as it stands.
        None => task.evaluate(&Point { is_final: true, ..point(&state, Window::default()) })?.record,
    };
    let end = End {
        state: &state,
        last: &last,
        examples_per_s: state.step as f64 * s.batch_size as f64 / state.elapsed_s.max(1e-9),
        peak_rss_mb: peak_rss_mb(),
    };
    let summary = task.summary(&end);
    write_json_atomic(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Leaves the progress bar where it stopped when the loop returns early (an error).
struct Abandon(ProgressBar);

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.0.abandon();
        }
    }
}
