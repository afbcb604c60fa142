//! The one training loop ([`run_loop`]) driven by a tiny synthetic task: linear regression whose
//! weight is a SuperLoRA ΔW (LoRA r = 1, backward through the `DeltaTape`) plus a plain bias.
//! A run stopped at step k and resumed ends with bit-identical parameters to an uninterrupted one;
//! a NaN loss stops with the error and leaves the previous checkpoint; `metrics.jsonl` gets a line
//! at each evaluation (step 0 of a fresh run included, when the task asks), best metric tracked.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape, SuperLora};
use superlora_train::Error;
use superlora_train::optim::{AdamW, AdamWConfig, GroupSettings};
use superlora_train::schedule::Schedule;
use superlora_train::train_loop::{
    End, Evaluation, Goal, LoopSettings, LoopTask, Point, StepResult, Tracked, latest_checkpoint, run_loop,
};

const N: usize = 20;
const IN: usize = 4;
const OUT: usize = 3;

struct Regression {
    adapter: SuperLora,
    bias: Var,
    x: Tensor,
    y: Tensor,
    /// Step whose loss is NaN.
    nan_at: Option<u64>,
}

#[derive(Serialize)]
struct Line {
    step: u64,
    train_loss: Option<f64>,
    heldout_mse: f64,
}

#[derive(Serialize)]
struct Summary {
    steps: u64,
    final_mse: f64,
    best: Option<(f64, u64)>,
}

impl Regression {
    fn new(nan_at: Option<u64>) -> Regression {
        let dev = Device::Cpu;
        let targets = vec![LayerShape::new("w", OUT, IN)];
        let spec = AdapterSpec {
            fold: Some(Fold::Natural),
            factor: Some(FactorKind::Lora),
            rank: Some(1),
            seed: Some(3),
            ..Default::default()
        };
        let adapter = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        let bias = Var::zeros(OUT, DType::F32, &dev).unwrap();
        let xs: Vec<f32> = (0..N * IN).map(|i| ((i * 7 % 11) as f32 / 5.0 - 1.0).sin()).collect();
        let x = Tensor::from_vec(xs, (N, IN), &dev).unwrap();
        let w = Tensor::new(&[[0.5f32, -1.0, 0.25, 2.0], [1.0, 0.0, -0.5, 0.75], [-1.5, 0.5, 1.0, 0.0]], &dev).unwrap();
        let y = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&Tensor::new(&[0.1f32, -0.2, 0.3], &dev).unwrap());
        Regression { adapter, bias, x, y: y.unwrap(), nan_at }
    }

    fn params(&self) -> Vec<(String, Vec<u32>)> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| {
                let bits = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (n, bits.into_iter().map(f32::to_bits).collect())
            })
            .collect()
    }

    fn mse(&self, w: &Tensor, idx: &[usize]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), &Device::Cpu)?;
        let (x, y) = (self.x.index_select(&ids, 0)?, self.y.index_select(&ids, 0)?);
        let pred = x.matmul(&w.t()?)?.broadcast_add(self.bias.as_tensor())?;
        (pred - y)?.sqr()?.mean_all()
    }
}

impl LoopTask for Regression {
    type Error = Error;
    type Record = Line;
    type Summary = Summary;

    fn describe(&self) -> String {
        format!("regression, {} parameters", self.adapter.num_trainable() + OUT)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> =
            self.adapter.named_vars().into_iter().map(|(n, v)| (format!("adapter.{n}"), v)).collect();
        v.push(("bias".into(), self.bias.clone()));
        v
    }
    fn optimizer(&self) -> superlora_train::Result<AdamW> {
        let g = |name: &str, lr| GroupSettings { name: name.into(), lr, weight_decay: 0.01 };
        AdamW::new(
            AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() },
            vec![
                (g("adapter", 0.05), self.adapter.named_vars()),
                (g("bias", 0.02), vec![("bias".into(), self.bias.clone())]),
            ],
        )
    }
    fn train_len(&self) -> usize {
        N
    }
    fn step(&self, step: u64, idx: &[usize]) -> superlora_train::Result<StepResult> {
        let tape = self.adapter.forward_tape()?;
        let mut loss = self.mse(&tape.deltas()[0], idx)?;
        if self.nan_at == Some(step) {
            loss = (loss * f64::NAN)?;
        }
        Ok(StepResult { loss, parts: vec![], tape: Some(tape), units: idx.len(), hits: 0 })
    }
    fn evaluate(&self, at: &Point) -> superlora_train::Result<Evaluation<Line>> {
        let w = self.adapter.delta_weights()?[0].detach();
        let all: Vec<usize> = (0..N).collect();
        let mse = f64::from(self.mse(&w, &all)?.to_scalar::<f32>()?);
        let record = Line { step: at.step, train_loss: at.window.loss(), heldout_mse: mse };
        let line = format!("step {} held-out mse {mse:.4}", at.step);
        Ok(Evaluation { record, line, tracked: Some(Tracked { value: mse, goal: Goal::Lower, companion: None }) })
    }
    fn summary(&self, end: &End<Line>) -> Summary {
        Summary { steps: end.state.step, final_mse: end.last.heldout_mse, best: end.state.best_valid }
    }
    fn eval_at_start(&self) -> bool {
        true
    }
}

fn settings() -> LoopSettings {
    LoopSettings {
        steps: 12,
        batch_size: 4,
        eval_every: 4,
        schedule: Schedule::Cosine,
        warmup: 2,
        seed: 7,
        keep: 2,
        settings_json: serde_json::json!({"steps": 12}),
        show_progress: false,
    }
}

fn lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn steps(out: &Path) -> Vec<u64> {
    lines(out).iter().map(|l| l["step"].as_u64().unwrap()).collect()
}

#[test]
fn a_stopped_run_resumes_bit_identically_and_a_nan_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let whole_dir = dir.path().join("whole");
    let whole = Regression::new(None);
    let s = run_loop(&whole, &settings(), &whole_dir, false).unwrap();
    assert_eq!(s.steps, 12);
    assert_eq!(steps(&whole_dir), [0, 4, 8, 12]);
    let m = lines(&whole_dir);
    assert!(m[0]["train_loss"].is_null() && m[1]["train_loss"].is_f64(), "{m:?}");
    let first = m[0]["heldout_mse"].as_f64().unwrap();
    let last = m[3]["heldout_mse"].as_f64().unwrap();
    assert!(last < first, "the loss went {first} -> {last}");
    // Lower is better: the best is the smallest held-out mse written, at its step.
    let (best, at) = s.best.unwrap();
    let min = m.iter().skip(1).map(|l| l["heldout_mse"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(best, min);
    assert_eq!(m.iter().find(|l| l["heldout_mse"].as_f64() == Some(min)).unwrap()["step"].as_u64(), Some(at));
    assert!(whole_dir.join("summary.json").exists());

    // NaN at step 9 (0-based): stopped with the error, the checkpoint of step 8 left as latest.
    let killed_dir = dir.path().join("killed");
    let killed = Regression::new(Some(9));
    let e = run_loop(&killed, &settings(), &killed_dir, false).err().expect("stopped");
    let text = e.to_string();
    assert!(matches!(e, Error::NonFinite(_)), "{text}");
    assert!(text.contains("at step 9") && text.contains("lower the learning rates and resume"), "{text}");
    assert!(latest_checkpoint(&killed_dir).unwrap().ends_with("ckpt-00000008"));
    assert!(!killed_dir.join("summary.json").exists());
    assert_eq!(steps(&killed_dir), [0, 4, 8]);

    // Without --resume the folder is refused; with other settings the resume is refused.
    let fresh = Regression::new(None);
    let e = run_loop(&fresh, &settings(), &killed_dir, false).err().expect("refused");
    assert!(matches!(e, Error::Checkpoint(_)) && e.to_string().contains("--resume"), "{e}");
    let other = LoopSettings { settings_json: serde_json::json!({"steps": 13}), ..settings() };
    let e = run_loop(&fresh, &other, &killed_dir, true).err().expect("refused");
    assert!(e.to_string().contains("different settings"), "{e}");

    // Resumed by a fresh process (new initial values, restored from step 8): identical bits.
    let s = run_loop(&fresh, &settings(), &killed_dir, true).unwrap();
    assert_eq!(s.steps, 12);
    assert_eq!(fresh.params(), whole.params(), "resumed run ends with different parameters");
    assert_eq!(steps(&killed_dir), [0, 4, 8, 12]);
    assert_eq!(lines(&killed_dir)[3]["heldout_mse"], lines(&whole_dir)[3]["heldout_mse"]);

    // A finished run resumed trains nothing, writes no line, and is scored as it stands.
    let again = Regression::new(None);
    let s = run_loop(&again, &settings(), &killed_dir, true).unwrap();
    assert_eq!((s.steps, s.final_mse), (12, last));
    assert_eq!(steps(&killed_dir), [0, 4, 8, 12]);
}

#[test]
fn a_batch_larger_than_the_training_set_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = LoopSettings { batch_size: N + 1, ..settings() };
    let e = run_loop(&Regression::new(None), &s, dir.path(), false).err().expect("refused");
    assert!(matches!(e, Error::Data(_)) && e.to_string().contains("larger than the 20"), "{e}");
}
