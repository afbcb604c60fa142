//! Causal-LM fine-tuning of a decoder ([`Llama`]) with an adapter: the texts are tokenized and cut
//! into fixed-length chunks ([`chunk_tokens`]), split into train / validation / test chunks by a
//! seeded shuffle ([`split_chunks`]), and trained with the mean next-token cross-entropy
//! ([`Llama::next_token_loss`], which never holds the [B, L, V] logits). Evaluation is the
//! held-out perplexity `exp(Σ nll / tokens predicted)` of the validation and test chunks (lower
//! is better; the best validation perplexity is tracked; the base model's, [`base_perplexity`],
//! is the baseline), and throughput is in tokens predicted
//! per second. [`train_lm`] runs it through the one training loop, [`run_loop`].

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use superlora_core::{LayerShape, SuperLora};
use superlora_data::rng::{DataStream, data_stream};
use superlora_models::adapt::Deltas;
use superlora_models::llama::Llama;

use crate::optim::{AdamW, AdamWConfig, GroupSettings};
use crate::schedule::Schedule;
use crate::train_loop::{End, Evaluation, Goal, LoopSettings, LoopTask, Point, StepResult, Tracked, Window, run_loop};
use crate::{Error, Result};

/// Token chunks of at most `len` tokens (at least 2 each: a chunk must predict something), cut
/// from the concatenated `texts` (each text's tokens followed by `separator`, if any). The last
/// chunk may be shorter.
pub fn chunk_tokens(texts: &[Vec<u32>], separator: Option<u32>, len: usize) -> Vec<Vec<u32>> {
    let mut all: Vec<u32> = Vec::new();
    for t in texts {
        all.extend_from_slice(t);
        all.extend(separator);
    }
    all.chunks(len.max(2)).filter(|c| c.len() >= 2).map(<[u32]>::to_vec).collect()
}

/// Train / validation / test chunks.
#[derive(Clone, Debug, Default)]
pub struct LmData {
    /// Training chunks.
    pub train: Vec<Vec<u32>>,
    /// Validation chunks.
    pub valid: Vec<Vec<u32>>,
    /// Test chunks.
    pub test: Vec<Vec<u32>>,
}

/// Splits `chunks` by a shuffle seeded by `seed`: `fraction` of them (at least one each when
/// there are 3 or more) for validation and as many for test, the rest for training.
pub fn split_chunks(chunks: Vec<Vec<u32>>, fraction: f64, seed: u64) -> Result<LmData> {
    let n = chunks.len();
    if n < 3 {
        return Err(Error::Data(format!(
            "the text makes {n} chunk(s); at least 3 are needed (train, validation, test): give more text or a \
             shorter --max-len"
        )));
    }
    let held = ((n as f64 * fraction).round() as usize).max(1);
    if 2 * held >= n {
        return Err(Error::Data(format!(
            "{n} chunks are too few to hold out {held} for validation and {held} for test"
        )));
    }
    let perm = data_stream(seed, DataStream::Split).permutation(n);
    let mut slots: Vec<Option<Vec<u32>>> = chunks.into_iter().map(Some).collect();
    let mut take = |range: std::ops::Range<usize>| -> Vec<Vec<u32>> {
        let mut idx: Vec<usize> = perm[range].iter().map(|&i| i as usize).collect();
        idx.sort_unstable();
        idx.into_iter().filter_map(|i| slots[i].take()).collect()
    };
    let valid = take(0..held);
    let test = take(held..2 * held);
    let train = take(2 * held..n);
    Ok(LmData { train, valid, test })
}

/// How to train a causal LM.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmSettings {
    /// Optimizer steps in total.
    pub steps: u64,
    /// Chunks per step.
    pub batch_size: usize,
    /// Chunks per evaluation batch.
    pub eval_batch_size: usize,
    /// Evaluate (and checkpoint) every this many steps, and at the end.
    pub eval_every: u64,
    /// Evaluate on at most this many validation / test chunks (None: all), except at the end.
    pub eval_limit: Option<usize>,
    /// The same cap for the final evaluation (None: all).
    pub final_eval_limit: Option<usize>,
    /// Peak learning rate of the adapter.
    pub adapter_lr: f64,
    /// Weight decay of the adapter.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup: u64,
    /// Gradient clipping (global norm).
    pub max_grad_norm: Option<f64>,
    /// Seed of the batch order.
    pub seed: u64,
}

/// One evaluation (a `metrics.jsonl` line).
#[derive(Clone, Debug, Serialize)]
pub struct LmRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss (nats per token) since the previous evaluation (0 at step 0).
    pub train_loss: f64,
    /// Validation perplexity.
    pub valid_ppl: f64,
    /// Test perplexity.
    pub test_ppl: f64,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Training tokens predicted per second since the previous evaluation.
    pub tokens_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// Training seconds so far.
    pub elapsed_s: f64,
}

/// The base model's perplexity (no adapter) on the validation and test chunks.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct BasePerplexity {
    /// Validation perplexity.
    pub valid_ppl: f64,
    /// Test perplexity.
    pub test_ppl: f64,
}

/// The baseline: the base model's perplexity on (at most `limit` of) the validation and test
/// chunks.
pub fn base_perplexity(
    model: &Llama,
    data: &LmData,
    batch_size: usize,
    limit: Option<usize>,
) -> Result<BasePerplexity> {
    let none = Deltas::none();
    Ok(BasePerplexity {
        valid_ppl: perplexity(model, &none, &data.valid, batch_size, limit)?,
        test_ppl: perplexity(model, &none, &data.test, batch_size, limit)?,
    })
}

/// What a finished run reports (also `summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct LmSummary {
    /// The task.
    pub task: String,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Steps done.
    pub steps: u64,
    /// The base model's perplexity (the baseline), on the same chunks as the final evaluation.
    pub base: BasePerplexity,
    /// Validation perplexity at the end.
    pub final_valid_ppl: f64,
    /// Test perplexity at the end.
    pub final_test_ppl: f64,
    /// Best validation perplexity.
    pub best_valid_ppl: f64,
    /// Its step.
    pub best_step: u64,
    /// Test perplexity at the best validation step.
    pub test_ppl_at_best: f64,
    /// Training seconds (evaluation excluded), over resumed sessions.
    pub train_seconds: f64,
    /// Training tokens predicted per second over the whole run.
    pub tokens_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// The settings.
    pub settings: serde_json::Value,
}

/// Right-padded ids and mask [B, L] (u32) of `rows`, and the tokens they predict.
fn batch(rows: &[&Vec<u32>], device: &Device) -> Result<(Tensor, Tensor, usize)> {
    let l = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::with_capacity(rows.len() * l), Vec::with_capacity(rows.len() * l));
    let mut predicted = 0;
    for r in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(0u32, l - r.len()));
        mask.extend(std::iter::repeat_n(1u32, r.len()));
        mask.extend(std::iter::repeat_n(0u32, l - r.len()));
        predicted += r.len().saturating_sub(1);
    }
    let shape = (rows.len(), l);
    Ok((Tensor::from_vec(ids, shape, device)?, Tensor::from_vec(mask, shape, device)?, predicted))
}

/// Perplexity of `model` + `deltas` on (at most `limit` of) `chunks`, `batch_size` at a time
/// (NaN when there are none).
pub fn perplexity(
    model: &Llama,
    deltas: &Deltas,
    chunks: &[Vec<u32>],
    batch_size: usize,
    limit: Option<usize>,
) -> Result<f64> {
    let n = limit.map_or(chunks.len(), |l| l.min(chunks.len()));
    let (mut sum, mut count) = (0.0f64, 0usize);
    for start in (0..n).step_by(batch_size.max(1)) {
        let rows: Vec<&Vec<u32>> = chunks[start..(start + batch_size.max(1)).min(n)].iter().collect();
        let (ids, mask, predicted) = batch(&rows, model.device())?;
        let nll: Vec<Vec<f32>> = model.next_token_nll(&ids, &mask, deltas)?.detach().to_vec2()?;
        for (r, row) in rows.iter().zip(&nll) {
            sum += row.iter().take(r.len().saturating_sub(1)).map(|&x| f64::from(x)).sum::<f64>();
        }
        count += predicted;
    }
    Ok(if count == 0 { f64::NAN } else { (sum / count as f64).exp() })
}

/// A causal LM with an adapter being trained.
pub struct CausalLm<'a> {
    /// The frozen model.
    pub model: &'a Llama,
    /// The adapter.
    pub adapter: &'a SuperLora,
    /// Its targets (plan order).
    pub targets: &'a [LayerShape],
    /// The chunks.
    pub data: &'a LmData,
    /// The settings.
    pub settings: &'a LmSettings,
    /// The base model's perplexity (see [`base_perplexity`]).
    pub base: BasePerplexity,
    /// The run's settings as JSON (checkpoints, summary).
    pub settings_json: serde_json::Value,
}

impl CausalLm<'_> {
    fn frozen_deltas(&self) -> Result<Deltas> {
        let d: Vec<Tensor> = self.adapter.delta_weights()?.iter().map(Tensor::detach).collect();
        Ok(Deltas::new(self.targets, &d)?)
    }
}

impl LoopTask for CausalLm<'_> {
    type Error = Error;
    type Record = LmRecord;
    type Summary = LmSummary;

    fn describe(&self) -> String {
        let d = self.data;
        format!(
            "causal-lm on {} | chunks: {} train, {} valid, {} test | adapter {} params",
            self.model.source().display(),
            d.train.len(),
            d.valid.len(),
            d.test.len(),
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
        self.data.train.len()
    }

    fn step(&self, _step: u64, idx: &[usize]) -> Result<StepResult> {
        let rows: Vec<&Vec<u32>> = idx.iter().filter_map(|&i| self.data.train.get(i)).collect();
        let (ids, mask, predicted) = batch(&rows, self.model.device())?;
        let tape = self.adapter.training_tape()?;
        let deltas = Deltas::from_tape(self.targets, &tape)?;
        let loss = self.model.next_token_loss(&ids, &mask, &deltas)?;
        Ok(StepResult { loss, parts: vec![], tape: Some(tape), units: predicted, hits: 0 })
    }

    fn evaluate(&self, at: &Point) -> Result<Evaluation<LmRecord>> {
        let s = self.settings;
        let limit = if at.is_final { s.final_eval_limit } else { s.eval_limit };
        let deltas = self.frozen_deltas()?;
        let valid = perplexity(self.model, &deltas, &self.data.valid, s.eval_batch_size, limit)?;
        let test = perplexity(self.model, &deltas, &self.data.test, s.eval_batch_size, limit)?;
        let r = LmRecord {
            step: at.step,
            epoch: at.epoch,
            train_loss: at.window.loss().unwrap_or(0.0),
            valid_ppl: valid,
            test_ppl: test,
            adapter_params: self.adapter.num_trainable(),
            tokens_per_s: at.window.rate(),
            peak_rss_mb: at.peak_rss_mb,
            elapsed_s: at.elapsed_s,
        };
        let line = format!(
            "step {:>6}  train loss {:.4}  valid ppl {:.3}  test ppl {:.3}  {:.1} tokens/s",
            r.step, r.train_loss, r.valid_ppl, r.test_ppl, r.tokens_per_s
        );
        let tracked = Some(Tracked { value: valid, goal: Goal::Lower, companion: Some(test) });
        Ok(Evaluation { record: r, line, tracked })
    }

    fn summary(&self, end: &End<LmRecord>) -> LmSummary {
        let (best_valid_ppl, best_step) = end.state.best_valid.unwrap_or((f64::NAN, 0));
        let tokens = end.state.step as f64 * self.settings.batch_size as f64 * self.mean_predicted();
        LmSummary {
            task: self.describe(),
            adapter_params: self.adapter.num_trainable(),
            steps: end.state.step,
            base: self.base,
            final_valid_ppl: end.last.valid_ppl,
            final_test_ppl: end.last.test_ppl,
            best_valid_ppl,
            best_step,
            test_ppl_at_best: end.state.test_at_best.unwrap_or(f64::NAN),
            train_seconds: end.state.elapsed_s,
            tokens_per_s: tokens / end.state.elapsed_s.max(1e-9),
            peak_rss_mb: end.peak_rss_mb,
            settings: self.settings_json.clone(),
        }
    }

    fn progress(&self, w: &Window) -> String {
        format!("loss {:.4} | {:.1} tokens/s", w.loss().unwrap_or(f64::NAN), w.rate())
    }
}

impl CausalLm<'_> {
    /// Mean tokens a training chunk predicts.
    fn mean_predicted(&self) -> f64 {
        let t = &self.data.train;
        t.iter().map(|c| c.len().saturating_sub(1)).sum::<usize>() as f64 / t.len().max(1) as f64
    }
}

/// Trains `task` into `out` (with `resume`, from its latest checkpoint).
pub fn train_lm(task: &CausalLm, out: &Path, resume: bool, show_progress: bool) -> Result<LmSummary> {
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

/// The checkpointed tensors of a decoder run: the adapter's, under `adapter.` (shared by the
/// causal-LM and lm-classify tasks).
pub(crate) fn adapter_named_vars(adapter: &SuperLora) -> Vec<(String, Var)> {
    adapter.named_vars().into_iter().map(|(n, v)| (format!("adapter.{n}"), v)).collect()
}

/// AdamW over the adapter alone, from the decoder settings (shared by both decoder tasks).
pub(crate) fn adapter_optimizer(adapter: &SuperLora, s: &LmSettings) -> Result<AdamW> {
    let group = GroupSettings { name: "adapter".into(), lr: s.adapter_lr, weight_decay: s.weight_decay };
    AdamW::new(
        AdamWConfig { max_grad_norm: s.max_grad_norm, ..Default::default() },
        vec![(group, adapter.named_vars())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_split_are_fixed_length_seeded_and_disjoint() {
        let texts = vec![(0..50).collect::<Vec<u32>>(), (100..130).collect()];
        let chunks = chunk_tokens(&texts, Some(999), 8);
        assert_eq!(chunks.len(), 11);
        assert!(chunks[..10].iter().all(|c| c.len() == 8));
        assert_eq!(chunks[6][2], 999);
        let a = split_chunks(chunks.clone(), 0.1, 3).unwrap();
        let b = split_chunks(chunks.clone(), 0.1, 3).unwrap();
        assert_eq!((a.train.len(), a.valid.len(), a.test.len()), (9, 1, 1));
        assert_eq!(a.valid, b.valid);
        let mut all: Vec<Vec<u32>> = a.train.iter().chain(&a.valid).chain(&a.test).cloned().collect();
        all.sort();
        let mut want = chunks;
        want.sort();
        assert_eq!(all, want);
        assert!(split_chunks(vec![vec![1, 2]; 2], 0.1, 0).is_err());
    }
}
