//! The training loop on synthetic images (no assets): the loss goes down, a run stopped halfway
//! and resumed ends with exactly the tensors of an uninterrupted one, an existing run is not
//! overwritten, and sampling is deterministic and independent of the batch.

mod common;

use candle_core::Device;
use superlora_diffusion::data::Splits;
use superlora_diffusion::sampler::{SampleSettings, sample};
use superlora_diffusion::train::{Record, TrainSettings, Trainee, train};
use superlora_diffusion::{Dit, DitConfig};
use superlora_models::adapt::Deltas;
use superlora_train::schedule::Schedule;

fn settings(steps: u64) -> TrainSettings {
    TrainSettings {
        steps,
        batch_size: 16,
        lr: 3e-3,
        weight_decay: 0.0,
        schedule: Schedule::Constant,
        warmup: 0,
        max_grad_norm: Some(1.0),
        label_dropout: 0.1,
        eval_every: 10,
        heldout_limit: 20,
        eval_batch_size: 20,
        seed: 0,
    }
}

fn splits() -> Splits {
    Splits { train: common::bars(80, 0), heldout: common::bars(20, 1) }
}

fn bytes(m: &Dit) -> Vec<(String, Vec<f32>)> {
    m.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect()
}

fn config() -> DitConfig {
    DitConfig { width: 16, depth: 1, heads: 2, mlp: 16, timesteps: 50, freq_dim: 8, ..DitConfig::default() }
}

#[test]
fn pretraining_lowers_the_loss_and_resumes_exactly() {
    let dev = Device::Cpu;
    let data = splits();
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({"test": 1});

    let full = Dit::new(config(), 0, &dev).unwrap();
    let s =
        train(&full, Trainee::Base, &data, &settings(30), json.clone(), &dir.path().join("a"), false, false).unwrap();
    let lines: Vec<Record> = std::fs::read_to_string(dir.path().join("a/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().map(|r| r.step).collect::<Vec<_>>(), vec![0, 10, 20, 30]);
    assert!(lines[0].train_loss.is_none());
    assert!(lines.iter().all(|r| r.heldout_loss.is_finite()));
    assert!(lines[3].heldout_loss < lines[0].heldout_loss, "{lines:?}");
    assert!(lines[3].train_loss.unwrap() < lines[1].train_loss.unwrap(), "{lines:?}");
    assert_eq!(s.trainable_params, full.num_params());

    // Stop after 10 steps (a killed run), then resume to 30 with the same settings.
    let half = Dit::new(config(), 0, &dev).unwrap();
    let out = dir.path().join("b");
    let mut first = settings(30);
    first.steps = 10;
    train(&half, Trainee::Base, &data, &first, json.clone(), &out, false, false).unwrap();
    // The checkpoint holds the settings of the first session; pretend it was the same run.
    let resumed = Dit::new(config(), 0, &dev).unwrap();
    let err = train(&resumed, Trainee::Base, &data, &settings(30), json.clone(), &out, false, false).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let other = serde_json::json!({"test": 2});
    let err = train(&resumed, Trainee::Base, &data, &settings(30), other, &out, true, false).unwrap_err();
    assert!(err.to_string().contains("different settings"), "{err}");
    train(&resumed, Trainee::Base, &data, &settings(30), json, &out, true, false).unwrap();
    assert_eq!(bytes(&resumed), bytes(&full), "resumed run differs from the uninterrupted one");
}

#[test]
fn sampling_is_deterministic_and_batch_independent() {
    let m = common::tiny_model(5);
    let labels = [0u32, 3, 9, 3, 1];
    let s = SampleSettings { steps: 5, guidance: 2.0, eta: 0.0, seed: 4, batch: 5 };
    let a = sample(&m, &Deltas::none(), &labels, &s, &mut |_| {}).unwrap();
    let b = sample(&m, &Deltas::none(), &labels, &SampleSettings { batch: 2, ..s }, &mut |_| {}).unwrap();
    assert_eq!(a.len(), 5 * 784);
    assert!(a.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max < 1e-4, "batching changed a sample by {max}");
    let c = sample(&m, &Deltas::none(), &labels, &SampleSettings { seed: 5, ..s }, &mut |_| {}).unwrap();
    assert_ne!(a, c);
    let e = sample(&m, &Deltas::none(), &labels, &SampleSettings { eta: 1.0, ..s }, &mut |_| {}).unwrap();
    assert!(e.iter().all(|v| v.is_finite()));
    assert!(sample(&m, &Deltas::none(), &[10], &s, &mut |_| {}).is_err());
    assert!(sample(&m, &Deltas::none(), &labels, &SampleSettings { steps: 51, ..s }, &mut |_| {}).is_err());
}
