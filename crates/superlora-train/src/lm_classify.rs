//! Classification with a decoder LLM by its next-token prediction (`train --task lm-classify`):
//! each text is put into a prompt template ("Review: {text}\nSentiment:"), and each class has a
//! label word that is one token (" rotten", " fresh"). The model's class is the label word with
//! the highest next-token log-probability after the prompt,
//!
//!   ŷ = argmax_k log p(w_k | prompt) = argmax_k z_k,   z = lm_head(h_last)[w_1..w_K],
//!
//! (the softmax over the vocabulary shares one normaliser, so ranking the label words' logits z is
//! ranking their log-probabilities). Training minimises the cross-entropy of the true class over
//! the label words' logits, −log softmax(z)_y. The base model (no adapter) scored this way is the
//! zero-shot baseline ([`zero_shot`]). [`train_lm_classify`] runs it through [`run_loop`].

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use superlora_core::{LayerShape, SuperLora};
use superlora_models::adapt::Deltas;
use superlora_models::llama::{Llama, cross_entropy};

use crate::lm::{adapter_named_vars, adapter_optimizer};
use crate::optim::AdamW;
use crate::train_loop::{End, Evaluation, Goal, LoopSettings, LoopTask, Point, StepResult, Tracked, Window, run_loop};
use crate::{Error, Result};

pub use crate::lm::LmSettings;

/// Prompts (token ids) and their classes.
#[derive(Clone, Debug, Default)]
pub struct PromptSet {
    /// The tokenized prompt of each example (template filled with its text).
    pub prompts: Vec<Vec<u32>>,
    /// Class of each example, `< label_ids.len()`.
    pub labels: Vec<usize>,
}

/// Train / validation / test prompts and the label words' token ids (one per class).
#[derive(Clone, Debug, Default)]
pub struct PromptData {
    /// Training examples.
    pub train: PromptSet,
    /// Validation examples.
    pub valid: PromptSet,
    /// Test examples.
    pub test: PromptSet,
    /// Token id of each class's label word.
    pub label_ids: Vec<u32>,
}

/// The label words' logits [B, K] at each prompt's last token (differentiable in the adapter).
pub fn label_logits(model: &Llama, deltas: &Deltas, prompts: &[&Vec<u32>], label_ids: &[u32]) -> Result<Tensor> {
    let device = model.device();
    let b = prompts.len();
    let l = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    if b == 0 || l == 0 {
        return Err(Error::Data("an empty batch of prompts, or an empty prompt".into()));
    }
    let (mut ids, mut mask, mut last) = (Vec::with_capacity(b * l), Vec::with_capacity(b * l), Vec::with_capacity(b));
    for (i, p) in prompts.iter().enumerate() {
        ids.extend_from_slice(p);
        ids.extend(std::iter::repeat_n(0u32, l - p.len()));
        mask.extend(std::iter::repeat_n(1u32, p.len()));
        mask.extend(std::iter::repeat_n(0u32, l - p.len()));
        last.push((i * l + p.len() - 1) as u32);
    }
    let ids = Tensor::from_vec(ids, (b, l), device)?;
    let mask = Tensor::from_vec(mask, (b, l), device)?;
    let hidden = model.forward_hidden(&ids, &mask, deltas)?;
    let h = model.config().hidden_size;
    // [B·L, H] → the last real position of each row [B, H] → logits [B, V] → label columns [B, K].
    let picked = hidden.reshape((b * l, h))?.index_select(&Tensor::from_vec(last, b, device)?, 0)?;
    let logits = model.lm_head(&picked)?;
    let labels = Tensor::from_slice(label_ids, label_ids.len(), device)?;
    Ok(logits.index_select(&labels, 1)?)
}

/// Accuracy of `model` + `deltas` on (at most `limit` of) `set`, `batch_size` prompts at a time
/// (NaN when there are none).
pub fn accuracy(
    model: &Llama,
    deltas: &Deltas,
    set: &PromptSet,
    label_ids: &[u32],
    batch_size: usize,
    limit: Option<usize>,
) -> Result<f64> {
    let n = limit.map_or(set.prompts.len(), |l| l.min(set.prompts.len()));
    let mut hits = 0usize;
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(n);
        let rows: Vec<&Vec<u32>> = set.prompts[start..end].iter().collect();
        let z: Vec<Vec<f32>> = label_logits(model, deltas, &rows, label_ids)?.detach().to_vec2()?;
        hits += z.iter().zip(&set.labels[start..end]).filter(|(row, y)| argmax(row) == Some(**y)).count();
    }
    Ok(if n == 0 { f64::NAN } else { hits as f64 / n as f64 })
}

/// Index of the largest value (the first of ties); None for an empty or all-NaN row.
fn argmax(row: &[f32]) -> Option<usize> {
    row.iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// The base model's accuracy (no adapter) on the validation and test examples.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct ZeroShot {
    /// Validation accuracy.
    pub valid_acc: f64,
    /// Test accuracy.
    pub test_acc: f64,
}

/// The zero-shot baseline: the base model scores (at most `limit` of) the validation and test
/// prompts.
pub fn zero_shot(model: &Llama, data: &PromptData, batch_size: usize, limit: Option<usize>) -> Result<ZeroShot> {
    let none = Deltas::none();
    Ok(ZeroShot {
        valid_acc: accuracy(model, &none, &data.valid, &data.label_ids, batch_size, limit)?,
        test_acc: accuracy(model, &none, &data.test, &data.label_ids, batch_size, limit)?,
    })
}

/// One evaluation (a `metrics.jsonl` line).
#[derive(Clone, Debug, Serialize)]
pub struct ClassifyRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss since the previous evaluation (0 at step 0).
    pub train_loss: f64,
    /// Training accuracy since the previous evaluation.
    pub train_acc: f64,
    /// Validation accuracy.
    pub valid_acc: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Training examples per second since the previous evaluation.
    pub samples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// Training seconds so far.
    pub elapsed_s: f64,
}

/// What a finished run reports (also `summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct ClassifySummary {
    /// The task.
    pub task: String,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Steps done.
    pub steps: u64,
    /// The base model's accuracy (the baseline), on the same examples as the final evaluation.
    pub zero_shot: ZeroShot,
    /// Validation accuracy at the end.
    pub final_valid_acc: f64,
    /// Test accuracy at the end.
    pub final_test_acc: f64,
    /// Best validation accuracy.
    pub best_valid_acc: f64,
    /// Its step.
    pub best_step: u64,
    /// Test accuracy at the best validation step.
    pub test_acc_at_best: f64,
    /// Training seconds (evaluation excluded), over resumed sessions.
    pub train_seconds: f64,
    /// Training examples per second over the whole run.
    pub samples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// The settings.
    pub settings: serde_json::Value,
}

/// A decoder LLM with an adapter being trained to classify by label words.
pub struct LmClassify<'a> {
    /// The frozen model.
    pub model: &'a Llama,
    /// The adapter.
    pub adapter: &'a SuperLora,
    /// Its targets (plan order).
    pub targets: &'a [LayerShape],
    /// The prompts and label words.
    pub data: &'a PromptData,
    /// The settings.
    pub settings: &'a LmSettings,
    /// The base model's accuracy (see [`zero_shot`]).
    pub zero_shot: ZeroShot,
    /// The run's settings as JSON (checkpoints, summary).
    pub settings_json: serde_json::Value,
}

impl LoopTask for LmClassify<'_> {
    type Error = Error;
    type Record = ClassifyRecord;
    type Summary = ClassifySummary;

    fn describe(&self) -> String {
        let d = self.data;
        format!(
            "lm-classify on {} | {} classes | prompts: {} train, {} valid, {} test | adapter {} params",
            self.model.source().display(),
            d.label_ids.len(),
            d.train.prompts.len(),
            d.valid.prompts.len(),
            d.test.prompts.len(),
            self.adapter.num_trainable()
        )
    }

    fn device(&self) -> Device {
        self.model.device().clone()
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        adapter_named_vars(self.adapter)
    }

    fn optimizer(&self) -> Result<AdamW> {
        adapter_optimizer(self.adapter, self.settings)
    }

    fn train_len(&self) -> usize {
        self.data.train.prompts.len()
    }

    fn step(&self, _step: u64, idx: &[usize]) -> Result<StepResult> {
        let t = &self.data.train;
        let rows: Vec<&Vec<u32>> = idx.iter().filter_map(|&i| t.prompts.get(i)).collect();
        let ys: Vec<u32> = idx.iter().filter_map(|&i| t.labels.get(i)).map(|&y| y as u32).collect();
        let tape = self.adapter.training_tape()?;
        let deltas = Deltas::from_tape(self.targets, &tape)?;
        let z = label_logits(self.model, &deltas, &rows, &self.data.label_ids)?;
        let zs: Vec<Vec<f32>> = z.detach().to_vec2()?;
        let hits = zs.iter().zip(&ys).filter(|(row, y)| argmax(row) == Some(**y as usize)).count();
        let targets = Tensor::from_vec(ys, rows.len(), self.model.device())?;
        let loss = cross_entropy(&z, &targets)?.mean_all()?;
        Ok(StepResult { loss, parts: vec![], tape: Some(tape), units: rows.len(), hits })
    }

    fn evaluate(&self, at: &Point) -> Result<Evaluation<ClassifyRecord>> {
        let s = self.settings;
        let limit = if at.is_final { s.final_eval_limit } else { s.eval_limit };
        let d: Vec<Tensor> = self.adapter.delta_weights()?.iter().map(Tensor::detach).collect();
        let deltas = Deltas::new(self.targets, &d)?;
        let ids = &self.data.label_ids;
        let valid = accuracy(self.model, &deltas, &self.data.valid, ids, s.eval_batch_size, limit)?;
        let test = accuracy(self.model, &deltas, &self.data.test, ids, s.eval_batch_size, limit)?;
        let r = ClassifyRecord {
            step: at.step,
            epoch: at.epoch,
            train_loss: at.window.loss().unwrap_or(0.0),
            train_acc: at.window.accuracy(),
            valid_acc: valid,
            test_acc: test,
            adapter_params: self.adapter.num_trainable(),
            samples_per_s: at.window.rate(),
            peak_rss_mb: at.peak_rss_mb,
            elapsed_s: at.elapsed_s,
        };
        let line = format!(
            "step {:>6}  train loss {:.4}  train acc {:.4}  valid acc {:.4}  test acc {:.4}  {:.1} samples/s",
            r.step, r.train_loss, r.train_acc, r.valid_acc, r.test_acc, r.samples_per_s
        );
        let tracked = Some(Tracked { value: valid, goal: Goal::Higher, companion: Some(test) });
        Ok(Evaluation { record: r, line, tracked })
    }

    fn summary(&self, end: &End<ClassifyRecord>) -> ClassifySummary {
        let (best_valid_acc, best_step) = end.state.best_valid.unwrap_or((f64::NAN, 0));
        ClassifySummary {
            task: self.describe(),
            adapter_params: self.adapter.num_trainable(),
            steps: end.state.step,
            zero_shot: self.zero_shot,
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
        format!("loss {:.4} | acc {:.3} | {:.1} samples/s", w.loss().unwrap_or(f64::NAN), w.accuracy(), w.rate())
    }
}

/// Trains `task` into `out` (with `resume`, from its latest checkpoint).
pub fn train_lm_classify(task: &LmClassify, out: &Path, resume: bool, show_progress: bool) -> Result<ClassifySummary> {
    let s = task.settings;
    let ls = LoopSettings {
        steps: s.steps,
        batch_size: s.batch_size,
        eval_every: s.eval_every,
        schedule: s.schedule,
        warmup: s.warmup,
        seed: s.seed,
        keep: 2,
        settings_json: task.settings_json.clone(),
        show_progress,
    };
    run_loop(task, &ls, out, resume)
}

/// Fills `template`'s `{text}` with `text` (every occurrence).
pub fn fill_template(template: &str, text: &str) -> String {
    template.replace("{text}", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -3.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(fill_template("Review: {text}\nSentiment:", "good"), "Review: good\nSentiment:");
    }
}
