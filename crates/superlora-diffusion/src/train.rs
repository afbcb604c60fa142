//! DDPM training, for both stages:
//! - pretraining ([`Trainee::Base`]): every base tensor is trained ([`Mode::TrainBase`]);
//! - transfer ([`Trainee::Adapter`]): the base is frozen ([`Mode::Frozen`], no gradient computed
//!   for it) and only the SuperLoRA adapter's tensors are trained, ΔW through a `DeltaTape`.
//!
//! Step s (all randomness from [`crate::seeds::train_step`]`(seed, s)`, so a resumed run draws
//! exactly what an uninterrupted one would): a batch from the seeded epoch order; each label
//! replaced by the null class with probability p (`label_dropout`, classifier-free guidance);
//! t ~ U{0..T−1}; ε ~ N(0, I); x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε; loss = mean (v̂(x_t, t, y) − v)² with
//! v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 (v-prediction; ε̂ follows from v̂, see `dit.rs`);
//! AdamW with warm-up + schedule and global-norm clipping.
//!
//! [`train`] runs this through the one training loop ([`superlora_train::run_loop`]), which owns
//! resume, the batch order, the schedule, the non-finite stop, checkpoints and `summary.json`.
//! Every `eval_every` steps (and at step 0 of a fresh run, and at the end): the held-out loss
//! ([`crate::data::heldout_loss`]), one `metrics.jsonl` line, an atomic checkpoint
//! (`superlora_train::checkpoint`, the newest two kept). A non-finite loss, gradient or weight stops
//! the run with the last checkpoint intact.
//!
//! Also here: [`save_base`] / [`load_base`], the pretrained model's file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use superlora_core::{LayerShape, SuperLora};
use superlora_models::adapt::Deltas;
use superlora_train::checkpoint;
use superlora_train::optim::{AdamW, AdamWConfig, GroupSettings};
use superlora_train::schedule::Schedule;
use superlora_train::train_loop::{
    End, Evaluation, LoopSettings, LoopTask, Point, Refusal, StepResult, Window, Wording, run_loop,
};

use crate::data::{self, Splits};
use crate::dit::{Dit, Mode};
use crate::{Error, Result, seeds};

/// How to train (saved in `run.json`; a resume must present the same).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Schedule after the warm-up.
    pub schedule: Schedule,
    /// Warm-up steps.
    pub warmup: u64,
    /// Global gradient-norm clipping (None: off).
    pub max_grad_norm: Option<f64>,
    /// Probability of replacing a label by the null class.
    pub label_dropout: f64,
    /// Evaluate and checkpoint every this many steps (and at the end).
    pub eval_every: u64,
    /// Held-out images scored per evaluation.
    pub heldout_limit: usize,
    /// Images per evaluation batch.
    pub eval_batch_size: usize,
    /// Seed of the data order, label dropout, timesteps and noise.
    pub seed: u64,
}

impl TrainSettings {
    /// Checks the values; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::setting("batch-size", 0, "at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::setting("lr", self.lr, "a finite number > 0"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::setting("weight-decay", self.weight_decay, "a finite number ≥ 0"));
        }
        if let Some(g) = self.max_grad_norm
            && !(g.is_finite() && g > 0.0)
        {
            return Err(Error::setting("max-grad-norm", g, "a finite number > 0 (0 turns clipping off)"));
        }
        if self.eval_batch_size == 0 {
            return Err(Error::setting("eval-batch-size", 0, "at least 1"));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return Err(Error::setting("label-dropout", self.label_dropout, "in [0, 1)"));
        }
        if self.eval_every == 0 {
            return Err(Error::setting("eval-every", 0, "at least 1"));
        }
        if self.heldout_limit == 0 {
            return Err(Error::setting("heldout", 0, "at least 1 held-out image"));
        }
        Ok(())
    }
}

/// What is trained.
#[derive(Clone, Copy)]
pub enum Trainee<'a> {
    /// Every base tensor.
    Base,
    /// Only the adapter, over `targets` (plan order).
    Adapter {
        /// The adapter.
        adapter: &'a SuperLora,
        /// Its targets.
        targets: &'a [LayerShape],
    },
}

impl Trainee<'_> {
    /// The trained tensors, named `base.<tensor>` or `adapter.<tensor>`.
    pub fn named_vars(&self, model: &Dit) -> Vec<(String, Var)> {
        let (prefix, vars) = match self {
            Trainee::Base => ("base", model.named_vars()),
            Trainee::Adapter { adapter, .. } => ("adapter", adapter.named_vars()),
        };
        vars.into_iter().map(|(n, v)| (format!("{prefix}.{n}"), v)).collect()
    }

    /// ΔW without a graph (none for the base).
    pub fn eval_deltas(&self) -> Result<Deltas> {
        match self {
            Trainee::Base => Ok(Deltas::none()),
            Trainee::Adapter { adapter, targets } => {
                let d: Vec<Tensor> = adapter.delta_weights()?.iter().map(Tensor::detach).collect();
                Ok(Deltas::new(targets, &d)?)
            }
        }
    }
}

/// One `metrics.jsonl` line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Optimizer steps done.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss since the previous line (None at step 0).
    pub train_loss: Option<f64>,
    /// Held-out denoising loss (the training objective, v MSE).
    pub heldout_loss: f64,
    /// Held-out ε MSE (the same predictions read as ε̂).
    pub heldout_eps_loss: f64,
    /// Trained scalars.
    pub trainable_params: usize,
    /// Training images per second since the previous line.
    pub samples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// Training seconds so far (evaluation excluded).
    pub elapsed_s: f64,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Steps done.
    pub steps: u64,
    /// Trained scalars.
    pub trainable_params: usize,
    /// Held-out loss (v MSE) at the end.
    pub final_heldout_loss: f64,
    /// Held-out ε MSE at the end.
    pub final_heldout_eps_loss: f64,
    /// Training loss of the last window.
    pub final_train_loss: Option<f64>,
    /// Training seconds (evaluation excluded), over resumed sessions.
    pub train_seconds: f64,
    /// Training images per second over the run.
    pub samples_per_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
    /// The settings.
    pub settings: serde_json::Value,
}

/// The loss of step `step` on the training images `idx` (graph attached), and the adapter's tape.
pub fn step_loss(
    model: &Dit,
    trainee: &Trainee,
    set: &superlora_data::ImageSet,
    idx: &[usize],
    step: u64,
    s: &TrainSettings,
) -> Result<(Tensor, Option<superlora_core::DeltaTape>)> {
    let cfg = model.config();
    let d = cfg.pixels();
    let null = cfg.classes as u32;
    let mut rng = seeds::train_step(s.seed, step);
    let labels: Vec<u32> =
        data::labels(set, idx).into_iter().map(|l| if rng.uniform() < s.label_dropout { null } else { l }).collect();
    let t: Vec<usize> = idx.iter().map(|_| rng.below(cfg.timesteps as u64) as usize).collect();
    let eps = seeds::normals(&mut rng, idx.len() * d);
    let x0 = data::pixels(set, idx)?;
    let schedule = cfg.noise_schedule()?;
    let xt = schedule.q_sample(&x0, &eps, &t, d);
    let v = schedule.velocity(&x0, &eps, &t, d);
    let dev = model.device();
    let xt = Tensor::from_vec(xt, (idx.len(), d), dev)?;
    let v = Tensor::from_vec(v, (idx.len(), d), dev)?;
    let (tape, deltas, mode) = match trainee {
        Trainee::Base => (None, Deltas::none(), Mode::TrainBase),
        Trainee::Adapter { adapter, targets } => {
            let tape = adapter.forward_tape()?;
            let deltas = Deltas::new(targets, tape.deltas())?;
            (Some(tape), deltas, Mode::Frozen)
        }
    };
    let pred = model.predict_v(&xt, &t, &labels, &deltas, mode)?;
    Ok(((pred - v)?.sqr()?.mean_all()?, tape))
}

/// DDPM training as a [`LoopTask`].
struct Ddpm<'a> {
    model: &'a Dit,
    trainee: Trainee<'a>,
    data: &'a Splits,
    s: &'a TrainSettings,
    settings_json: serde_json::Value,
    trainable: usize,
}

impl LoopTask for Ddpm<'_> {
    type Error = Error;
    type Record = Record;
    type Summary = Summary;

    fn describe(&self) -> String {
        let (n, held) = (self.data.train.n, self.data.heldout.n);
        format!("{n} training images, {held} held out | {} trainable parameters", self.trainable)
    }

    fn device(&self) -> candle_core::Device {
        self.model.device().clone()
    }

    fn named_vars(&self) -> Vec<(String, Var)> {
        self.trainee.named_vars(self.model)
    }

    fn optimizer(&self) -> Result<AdamW> {
        let (group, raw) = match self.trainee {
            Trainee::Base => ("base", self.model.named_vars()),
            Trainee::Adapter { adapter, .. } => ("adapter", adapter.named_vars()),
        };
        let s = self.s;
        Ok(AdamW::new(
            AdamWConfig { max_grad_norm: s.max_grad_norm, ..Default::default() },
            vec![(GroupSettings { name: group.into(), lr: s.lr, weight_decay: s.weight_decay }, raw)],
        )?)
    }

    fn train_len(&self) -> usize {
        self.data.train.n
    }

    fn step(&self, step: u64, idx: &[usize]) -> Result<StepResult> {
        let (loss, tape) = step_loss(self.model, &self.trainee, &self.data.train, idx, step, self.s)?;
        Ok(StepResult { loss, parts: vec![], tape, units: idx.len(), hits: 0 })
    }

    fn evaluate(&self, at: &Point) -> Result<Evaluation<Record>> {
        let s = self.s;
        let deltas = self.trainee.eval_deltas()?;
        let heldout = data::heldout_loss(self.model, &deltas, &self.data.heldout, s.heldout_limit, s.eval_batch_size)?;
        if !(heldout.v.is_finite() && heldout.eps.is_finite()) {
            return Err(Error::NonFinite(format!(
                "held-out loss is {} at step {}; stopped without writing a checkpoint or a result. \
                 The last good checkpoint (if any) is in {} — lower --lr and resume, or start over with --force",
                heldout.v,
                at.step,
                at.checkpoints.display()
            )));
        }
        let r = Record {
            step: at.step,
            epoch: at.epoch,
            train_loss: at.window.loss(),
            heldout_loss: heldout.v,
            heldout_eps_loss: heldout.eps,
            trainable_params: self.trainable,
            samples_per_s: at.window.rate(),
            peak_rss_mb: at.peak_rss_mb,
            elapsed_s: at.elapsed_s,
        };
        let line = match r.train_loss {
            None => format!("step {:>6}  held-out loss {:.4}", r.step, r.heldout_loss),
            Some(train) => format!(
                "step {:>6}  train loss {train:.4}  held-out loss {:.4}  {:.1} images/s",
                r.step, r.heldout_loss, r.samples_per_s
            ),
        };
        Ok(Evaluation { record: r, line, tracked: None })
    }

    fn summary(&self, end: &End<Record>) -> Summary {
        Summary {
            steps: end.state.step,
            trainable_params: self.trainable,
            final_heldout_loss: end.last.heldout_loss,
            final_heldout_eps_loss: end.last.heldout_eps_loss,
            final_train_loss: end.last.train_loss,
            train_seconds: end.state.elapsed_s,
            samples_per_s: end.examples_per_s,
            peak_rss_mb: end.peak_rss_mb,
            settings: self.settings_json.clone(),
        }
    }

    fn eval_at_start(&self) -> bool {
        true
    }

    fn progress(&self, w: &Window) -> String {
        format!("loss {:.4} | {:.1} images/s", w.loss().unwrap_or(f64::NAN), w.rate())
    }

    fn wording(&self) -> Wording {
        Wording { lower: "--lr", start_over: "use --force to start over", elsewhere: "--force to start over" }
    }

    fn refuse(&self, kind: Refusal, message: String) -> Error {
        match kind {
            Refusal::SettingsDiffer | Refusal::RunExists => Error::Run(message),
            Refusal::NonFinite => Error::NonFinite(message),
            Refusal::BatchTooLarge { batch, examples } => {
                Error::setting("batch-size", batch, format!("larger than the {examples} training images"))
            }
        }
    }
}

/// Trains `trainee` of `model` on `data.train` through the one training loop
/// ([`superlora_train::run_loop`]), writing `metrics.jsonl`, `checkpoints/` and `summary.json`
/// into `out`. With `resume`, continues from the latest checkpoint (whose settings must equal
/// `settings_json`); without it, an existing checkpoint is an error.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Dit,
    trainee: Trainee,
    data: &Splits,
    s: &TrainSettings,
    settings_json: serde_json::Value,
    out: &Path,
    resume: bool,
    show_progress: bool,
) -> Result<Summary> {
    s.validate()?;
    model.config().check_batch(s.batch_size, 1, "batch-size")?;
    model.config().check_batch(s.eval_batch_size.min(s.heldout_limit), 1, "eval-batch-size")?;
    let loop_settings = LoopSettings {
        steps: s.steps,
        batch_size: s.batch_size,
        eval_every: s.eval_every,
        schedule: s.schedule,
        warmup: s.warmup,
        seed: s.seed,
        keep: 2,
        settings_json: settings_json.clone(),
        show_progress,
    };
    let trainable = trainee.named_vars(model).iter().map(|(_, v)| v.elem_count()).sum();
    let task = Ddpm { model, trainee, data, s, settings_json, trainable };
    run_loop(&task, &loop_settings, out, resume)
}

/// Metadata `format` of a base model file.
pub const BASE_FORMAT: &str = "superlora-dit";

/// Writes the model's tensors with its config (and `extra` metadata) to `path`, atomically.
/// A model with a NaN or infinite value is refused (nothing is written).
pub fn save_base(path: &Path, model: &Dit, extra: &[(&str, String)]) -> Result<()> {
    let tensors = model.tensors();
    if let Some((name, bad)) = crate::first_non_finite(tensors.iter().map(|(n, t)| (n.as_str(), t)))? {
        return Err(Error::NonFinite(format!(
            "tensor `{name}` holds {bad} NaN or infinite values; {} not written",
            path.display()
        )));
    }
    let mut meta = HashMap::from([
        ("format".to_string(), BASE_FORMAT.to_string()),
        ("config".to_string(), serde_json::to_string(model.config()).map_err(|e| Error::File(e.to_string()))?),
    ]);
    for (k, v) in extra {
        meta.insert((*k).to_string(), v.clone());
    }
    let staged = superlora_train::output::Staged::new(path, false)?;
    checkpoint::save_tensors(staged.path(), &tensors, Some(meta))?;
    Ok(staged.commit()?)
}

/// Reads a model written by [`save_base`], with its metadata. The config is checked (every size
/// positive and within the bounds of [`crate::dit`]) before anything is allocated from it, and a
/// tensor holding NaN or an infinity is refused.
pub fn load_base(path: &Path, device: &candle_core::Device) -> Result<(Dit, HashMap<String, String>)> {
    let meta = crate::classifier::read_metadata(path)?;
    let bad = |what: String| {
        Error::File(format!("{}: {what} (write one with `superlora diffusion pretrain`)", path.display()))
    };
    if meta.get("format").map(String::as_str) != Some(BASE_FORMAT) {
        return Err(bad("not a diffusion base model (metadata `format` is not superlora-dit)".into()));
    }
    let config: crate::DitConfig = meta
        .get("config")
        .ok_or_else(|| bad("metadata `config` is missing".into()))
        .and_then(|c| serde_json::from_str(c).map_err(|e| bad(format!("metadata `config` is invalid: {e}"))))?;
    config.validate().map_err(|e| bad(format!("metadata `config`: {e}")))?;
    let tensors = checkpoint::load_tensors(path, device)?;
    let model = Dit::from_tensors(config, &tensors, device).map_err(|e| bad(e.to_string()))?;
    Ok((model, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DitConfig;

    fn tiny() -> DitConfig {
        DitConfig { width: 16, depth: 1, heads: 2, mlp: 16, freq_dim: 8, timesteps: 50, ..DitConfig::default() }
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            steps: 1,
            batch_size: 4,
            lr: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup: 0,
            max_grad_norm: Some(1.0),
            label_dropout: 0.1,
            eval_every: 1,
            heldout_limit: 4,
            eval_batch_size: 4,
            seed: 0,
        }
    }

    /// A base file with `config` (JSON text) as its metadata and the tensors of a tiny model.
    fn write_base(path: &Path, config: &str, tensors: &HashMap<String, Tensor>) {
        let meta = HashMap::from([
            ("format".to_string(), BASE_FORMAT.to_string()),
            ("config".to_string(), config.to_string()),
        ]);
        checkpoint::save_tensors(path, tensors, Some(meta)).unwrap();
    }

    #[test]
    fn a_base_whose_config_has_a_zero_or_huge_size_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let dev = candle_core::Device::Cpu;
        let m = Dit::new(tiny(), 0, &dev).unwrap();
        let good = serde_json::to_value(tiny()).unwrap();
        let path = dir.path().join("base.safetensors");
        for (key, value, want) in [
            ("image", 0usize, "`image` = 0"),
            ("image", 100_000, "`image` = 100000"),
            ("depth", 1_000_000_000, "`depth` = 1000000000"),
            ("image", 114_688, "`image` = 114688"),
            ("mlp", usize::MAX, "`mlp`"),
        ] {
            let mut c = good.clone();
            c[key] = serde_json::json!(value);
            write_base(&path, &c.to_string(), &m.tensors());
            let e = load_base(&path, &dev).err().expect("refused");
            let text = e.to_string();
            assert!(e.is_input(), "{text}");
            assert!(text.contains(&path.display().to_string()) && text.contains(want), "{text}");
        }
        write_base(&path, &good.to_string(), &m.tensors());
        load_base(&path, &dev).unwrap();
    }

    #[test]
    fn a_base_holding_nan_is_neither_written_nor_read() {
        let dir = tempfile::tempdir().unwrap();
        let dev = candle_core::Device::Cpu;
        let m = Dit::new(tiny(), 0, &dev).unwrap();
        let mut t = m.tensors();
        t.insert("patch.bias".into(), Tensor::from_vec(vec![f32::NAN; 16], 16, &dev).unwrap());
        let path = dir.path().join("nan.safetensors");
        write_base(&path, &serde_json::to_string(&tiny()).unwrap(), &t);
        let e = load_base(&path, &dev).err().expect("refused");
        assert!(e.is_input(), "{e}");
        assert!(
            e.to_string().contains("`patch.bias` holds 16 NaN") && e.to_string().contains("nan.safetensors"),
            "{e}"
        );

        let (_, v) = m.named_vars().into_iter().find(|(n, _)| n == "patch.bias").unwrap();
        v.set(&Tensor::from_vec(vec![f32::INFINITY; 16], 16, &dev).unwrap()).unwrap();
        let out = dir.path().join("out.safetensors");
        let e = save_base(&out, &m, &[]).unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)) && e.to_string().contains("patch.bias"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn non_finite_or_negative_optimiser_settings_are_refused() {
        let s = settings();
        s.validate().unwrap();
        for (bad, name) in [
            (TrainSettings { weight_decay: f64::NAN, ..s.clone() }, "weight-decay"),
            (TrainSettings { weight_decay: -1.0, ..s.clone() }, "weight-decay"),
            (TrainSettings { weight_decay: f64::INFINITY, ..s.clone() }, "weight-decay"),
            (TrainSettings { lr: -1.0, ..s.clone() }, "lr"),
            (TrainSettings { lr: f64::NAN, ..s.clone() }, "lr"),
            (TrainSettings { max_grad_norm: Some(f64::NAN), ..s.clone() }, "max-grad-norm"),
            (TrainSettings { label_dropout: f64::NAN, ..s.clone() }, "label-dropout"),
            (TrainSettings { eval_batch_size: 0, ..s.clone() }, "eval-batch-size"),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.is_input() && e.to_string().starts_with(&format!("`{name}`")), "{e}");
        }
    }

    fn bars(n: usize) -> superlora_data::ImageSet {
        let images: Vec<u8> = (0..n * 784).map(|i| ((i * 37) % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        superlora_data::ImageSet::new(images, labels, 28, 28, (0..10).map(|d| d.to_string()).collect(), "t").unwrap()
    }

    /// `--weight-decay NaN` used to train one step, turn every weight into NaN, report success and
    /// let the CLI write a NaN base; a run whose weights blow up must stop before writing anything.
    #[test]
    fn a_run_whose_weights_stop_being_finite_fails_without_a_result() {
        let dev = candle_core::Device::Cpu;
        let data = Splits { train: bars(8), heldout: bars(4) };
        let dir = tempfile::tempdir().unwrap();
        let m = Dit::new(tiny(), 0, &dev).unwrap();
        let s = TrainSettings { weight_decay: f64::NAN, ..settings() };
        let e = train(&m, Trainee::Base, &data, &s, serde_json::json!({}), &dir.path().join("a"), false, false)
            .expect_err("refused");
        assert!(e.to_string().contains("weight-decay"), "{e}");
        let s = TrainSettings { lr: 1e30, ..settings() };
        let out = dir.path().join("b");
        let e = train(&m, Trainee::Base, &data, &s, serde_json::json!({}), &out, false, false).expect_err("stopped");
        assert!(matches!(e, Error::NonFinite(_)), "{e}");
        assert!(!out.join("summary.json").exists() && !out.join("checkpoints/latest").exists());
    }

    #[test]
    fn a_batch_the_model_cannot_hold_is_refused_before_training() {
        let dev = candle_core::Device::Cpu;
        let data = Splits { train: bars(8), heldout: bars(4) };
        let dir = tempfile::tempdir().unwrap();
        let m = Dit::new(tiny(), 0, &dev).unwrap();
        let s = TrainSettings { batch_size: tiny().max_batch() + 1, ..settings() };
        let e = train(&m, Trainee::Base, &data, &s, serde_json::json!({}), &dir.path().join("a"), false, false)
            .expect_err("refused");
        assert!(e.is_input() && e.to_string().contains("`batch-size`"), "{e}");
        assert!(!dir.path().join("a").exists());
    }
}
