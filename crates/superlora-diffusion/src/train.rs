//! The DDPM training loop, straight-line, for both stages:
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
//! Every `eval_every` steps (and at step 0 of a fresh run, and at the end): the held-out loss
//! ([`crate::data::heldout_loss`]), one `metrics.jsonl` line, an atomic checkpoint
//! (`superlora_train::checkpoint`, the newest two kept). A non-finite loss or gradient stops the
//! run with the last checkpoint intact.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use superlora_core::{LayerShape, SuperLora};
use superlora_data::EpochOrder;
use superlora_models::adapt::Deltas;
use superlora_train::checkpoint::{self, RunState};
use superlora_train::metrics::{append_jsonl, peak_rss_mb, write_json_atomic};
use superlora_train::optim::{AdamW, AdamWConfig, GroupSettings};
use superlora_train::schedule::Schedule;

use crate::data::{self, Splits};
use crate::dit::{Dit, Mode};
use crate::{Error, Result, io_err, seeds};
use superlora_train::trainer::{bar, say};

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

/// Trains `trainee` of `model` on `data.train`, writing `metrics.jsonl`, `checkpoints/` and
/// `summary.json` into `out`. With `resume`, continues from the latest checkpoint (whose settings
/// must equal `settings_json`); without it, an existing checkpoint is an error.
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
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let ckpt_dir = out.join("checkpoints");
    let vars = trainee.named_vars(model);
    let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let group = match trainee {
        Trainee::Base => "base",
        Trainee::Adapter { .. } => "adapter",
    };
    let raw: Vec<(String, Var)> = match trainee {
        Trainee::Base => model.named_vars(),
        Trainee::Adapter { adapter, .. } => adapter.named_vars(),
    };
    let mut opt = AdamW::new(
        AdamWConfig { max_grad_norm: s.max_grad_norm, ..Default::default() },
        vec![(GroupSettings { name: group.into(), lr: s.lr, weight_decay: s.weight_decay }, raw)],
    )?;
    let mut state =
        RunState { step: 0, best_valid: None, test_at_best: None, elapsed_s: 0.0, settings: settings_json.clone() };
    let mut resumed = false;
    if resume {
        if let Some(loaded) = checkpoint::read_latest(&ckpt_dir, model.device())? {
            if loaded.state.settings != settings_json {
                return Err(Error::Run(format!(
                    "{} was made with different settings; resume with the same flags, or use --force to start over",
                    loaded.path.display()
                )));
            }
            superlora_train::trainer::restore(&vars, &loaded.params)?;
            opt.load_state(&loaded.optimizer, loaded.state.step)?;
            state = loaded.state;
            resumed = true;
            eprintln!("resuming from {} (step {})", loaded.path.display(), state.step);
        }
    } else if ckpt_dir.join("latest").exists() {
        return Err(Error::Run(format!(
            "{} already holds a run; pass --resume to continue it or --force to start over",
            out.display()
        )));
    }

    let order = EpochOrder::new(data.train.n, s.seed);
    let per_epoch = order.num_batches(s.batch_size, true) as u64;
    if per_epoch == 0 {
        return Err(Error::setting(
            "batch-size",
            s.batch_size,
            format!("larger than the {} training images", data.train.n),
        ));
    }
    let metrics = out.join("metrics.jsonl");
    let pb = bar(s.steps, state.step, show_progress);
    say(
        &pb,
        &format!("{} training images, {} held out | {trainable} trainable parameters", data.train.n, data.heldout.n),
    );
    let evaluate = |step: u64, train_loss: Option<f64>, seen: usize, window: f64, elapsed: f64| -> Result<Record> {
        let heldout =
            data::heldout_loss(model, &trainee.eval_deltas()?, &data.heldout, s.heldout_limit, s.eval_batch_size)?;
        if !(heldout.v.is_finite() && heldout.eps.is_finite()) {
            pb.abandon();
            return Err(Error::NonFinite(format!(
                "held-out loss is {} at step {step}; stopped without writing a checkpoint or a result. \
                 The last good checkpoint (if any) is in {} — lower --lr and resume, or start over with --force",
                heldout.v,
                ckpt_dir.display()
            )));
        }
        Ok(Record {
            step,
            epoch: step as f64 / per_epoch as f64,
            train_loss,
            heldout_loss: heldout.v,
            heldout_eps_loss: heldout.eps,
            trainable_params: trainable,
            samples_per_s: if window > 0.0 { seen as f64 / window } else { 0.0 },
            peak_rss_mb: peak_rss_mb(),
            elapsed_s: elapsed,
        })
    };
    let mut last: Option<Record> = None;
    if !resumed && state.step == 0 {
        let r = evaluate(0, None, 0, 0.0, 0.0)?;
        say(&pb, &format!("step      0  held-out loss {:.4}", r.heldout_loss));
        append_jsonl(&metrics, &r)?;
        last = Some(r);
    }
    let (mut batches_epoch, mut batches): (Option<u64>, Vec<Vec<usize>>) = (None, Vec::new());
    let (mut loss_sum, mut seen, mut window) = (0f64, 0usize, 0f64);
    while state.step < s.steps {
        let step = state.step;
        let epoch = step / per_epoch;
        if batches_epoch != Some(epoch) {
            batches = order.batches(epoch, s.batch_size, true)?;
            batches_epoch = Some(epoch);
        }
        let idx = &batches[(step % per_epoch) as usize];
        let t0 = Instant::now();
        let (loss, tape) = step_loss(model, &trainee, &data.train, idx, step, s)?;
        let lv = f64::from(loss.to_scalar::<f32>()?);
        let stop = |m: String| {
            pb.abandon();
            Error::NonFinite(format!(
                "{m} at step {step}; stopped. The last good checkpoint (if any) is in {} — lower --lr and resume",
                ckpt_dir.display()
            ))
        };
        if !lv.is_finite() {
            return Err(stop(format!("training loss is {lv}")));
        }
        let mut grads = loss.backward()?;
        if let Some(t) = &tape {
            grads = t.backward(grads)?;
        }
        let factor = s.schedule.factor(step, s.steps, s.warmup);
        opt.step(&grads, factor).map_err(|e| match e {
            superlora_train::Error::NonFinite(m) => stop(m),
            other => other.into(),
        })?;
        let dt = t0.elapsed().as_secs_f64();
        state.step += 1;
        state.elapsed_s += dt;
        window += dt;
        loss_sum += lv * idx.len() as f64;
        seen += idx.len();
        pb.set_position(state.step);
        pb.set_message(format!("loss {:.4} | {:.1} images/s", loss_sum / seen as f64, seen as f64 / window));
        if state.step.is_multiple_of(s.eval_every) || state.step == s.steps {
            let r = evaluate(state.step, Some(loss_sum / seen.max(1) as f64), seen, window, state.elapsed_s)?;
            append_jsonl(&metrics, &r)?;
            say(
                &pb,
                &format!(
                    "step {:>6}  train loss {:.4}  held-out loss {:.4}  {:.1} images/s",
                    r.step,
                    r.train_loss.unwrap_or(f64::NAN),
                    r.heldout_loss,
                    r.samples_per_s
                ),
            );
            let params: HashMap<String, Tensor> =
                vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            if let Some((name, bad)) = crate::first_non_finite(params.iter().map(|(n, t)| (n.as_str(), t)))? {
                return Err(stop(format!("`{name}` holds {bad} NaN or infinite values")));
            }
            let (opt_state, _) = opt.state();
            checkpoint::write(&ckpt_dir, &state, &params, &opt_state, 2)?;
            (loss_sum, seen, window) = (0.0, 0, 0.0);
            last = Some(r);
        }
    }
    pb.finish_and_clear();
    let last = match last {
        Some(r) => r,
        None => evaluate(state.step, None, 0, 0.0, state.elapsed_s)?,
    };
    let summary = Summary {
        steps: state.step,
        trainable_params: trainable,
        final_heldout_loss: last.heldout_loss,
        final_heldout_eps_loss: last.heldout_eps_loss,
        final_train_loss: last.train_loss,
        train_seconds: state.elapsed_s,
        samples_per_s: state.step as f64 * s.batch_size as f64 / state.elapsed_s.max(1e-9),
        peak_rss_mb: peak_rss_mb(),
        settings: settings_json,
    };
    write_json_atomic(&out.join("summary.json"), &summary)?;
    Ok(summary)
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
