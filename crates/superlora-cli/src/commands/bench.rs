//! `superlora bench`: training-step throughput on MiniLM, the setting of the PyTorch + PEFT
//! anchor in docs/BENCHMARKS.md (LoRA r=8 on query+value, batch 32, sequence 32, AdamW, 2 threads).
//! Each config runs in a child process (so `peak RSS` is that config's own); the parent prints a
//! table with samples/s and the step time relative to LoRA r=8.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use superlora_core::{AdapterSpec, FactorKind, Fold};
use superlora_train::metrics::peak_rss_mb;
use superlora_train::schedule::Schedule;
use superlora_train::task::{Split, Task};
use superlora_train::trainer::{TrainSettings, Trainable, optimizer, train_step};

use crate::flags::{at_least_one, batch_count, sequence_length};
use crate::runspec::{DataSource, Dataset, RunSpec, TaskSpec, build_model, build_task};
use crate::settings::InputError;

/// `superlora bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// BERT folder [default: the minilm asset].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Examples per step.
    #[arg(long, default_value_t = 32, value_parser = batch_count)]
    pub batch_size: usize,
    /// Tokens per example (texts with at least this many tokens, truncated to it; MiniLM has 512
    /// positions).
    #[arg(long, default_value_t = 32, value_parser = sequence_length)]
    pub seq_len: usize,
    /// Timed steps per config (after the warm-up).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub steps: usize,
    /// Untimed warm-up steps per config.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Run only config number N (used internally: each config runs in its own process so its
    /// peak memory is its own).
    #[arg(long, hide = true)]
    pub only: Option<usize>,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// A square-fold spec: `groups` groups of order `order`, `factor` of rank `rank`.
pub fn square(groups: usize, order: usize, factor: FactorKind, rank: Option<usize>) -> AdapterSpec {
    AdapterSpec {
        fold: Some(Fold::Square),
        groups: Some(groups),
        order: Some(order),
        factor: Some(factor),
        rank,
        ..Default::default()
    }
}

/// The configs measured: (label, adapter spec; None = head only).
fn configs() -> Vec<(&'static str, Option<AdapterSpec>)> {
    let sq = square;
    vec![
        ("LoRA r=8 (reference)", Some(AdapterSpec { rank: Some(8), ..Default::default() })),
        ("head only", None),
        ("LoRA r=1", Some(AdapterSpec { rank: Some(1), ..Default::default() })),
        ("square 2D G=4 lora r=8", Some(sq(4, 2, FactorKind::Lora, Some(8)))),
        ("Tucker M=3 G=12 r=5", Some(sq(12, 3, FactorKind::Tucker, Some(5)))),
        ("Kronecker K=2 r=4", Some(AdapterSpec { kron: Some(2), ..sq(1, 2, FactorKind::Kronecker, Some(4)) })),
        ("dense M=1 fastfood ρ=0.01", Some(AdapterSpec { ratio: Some(0.01), ..sq(1, 1, FactorKind::Dense, None) })),
        ("full FT of q,v (dense M=1)", Some(sq(1, 1, FactorKind::Dense, None))),
    ]
}

#[derive(Serialize, Deserialize)]
struct Measured {
    label: String,
    adapter_params: usize,
    median_step_ms: f64,
    samples_per_s: f64,
    peak_rss_mb: f64,
}

fn measure(args: &BenchArgs, i: usize) -> Result<Measured> {
    let (label, adapter) = configs().into_iter().nth(i).context("no such bench config")?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => superlora_data::cache_dir()?.join("assets").join("minilm"),
    };
    let spec = RunSpec {
        preset: None,
        task: TaskSpec {
            dataset: DataSource::Builtin(Dataset::RottenTomatoes),
            model,
            image_size: 56,
            max_len: args.seq_len,
            train_subset: None,
            data_seed: 0,
        },
        targets: "query,value".into(),
        adapter: adapter.map(|a| a.resolve()).transpose()?,
        train: TrainSettings {
            steps: (args.steps + args.warmup) as u64,
            batch_size: args.batch_size,
            eval_batch_size: 64,
            eval_every: u64::MAX,
            eval_limit: None,
            final_eval_limit: None,
            adapter_lr: 1e-3,
            head_lr: 1e-2,
            adapter_weight_decay: 0.0,
            head_weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup: 0,
            max_grad_norm: Some(1.0),
            seed: 0,
        },
    };
    let device = args.device.open()?;
    let task = build_task(&spec.task, &device)?;
    // Texts with at least seq_len tokens, so every example is exactly seq_len tokens long.
    let text = task_texts(task.as_ref(), args)?;
    let (adapter, targets, head) = build_model(&spec, task.as_ref())?;
    let model = Trainable { adapter: adapter.as_ref(), targets: &targets, head: &head };
    let mut opt = optimizer(&model, &spec.train)?;
    let mut times = Vec::with_capacity(args.steps);
    for s in 0..args.warmup + args.steps {
        let t = Instant::now();
        train_step(task.as_ref(), &model, &mut opt, &text, 1.0)?;
        // CUDA runs asynchronously: the step ends when the device has finished it.
        device.synchronize()?;
        if s >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(Measured {
        label: label.to_string(),
        adapter_params: adapter.as_ref().map_or(0, |a| a.num_trainable()),
        median_step_ms: median * 1e3,
        samples_per_s: args.batch_size as f64 / median,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Positions in the training split of `batch_size` texts with at least `seq_len` tokens.
fn task_texts(task: &dyn Task, args: &BenchArgs) -> Result<Vec<usize>> {
    let mut picked = Vec::with_capacity(args.batch_size);
    for i in 0..task.len(Split::Train) {
        if task.token_count(Split::Train, i)? >= args.seq_len {
            picked.push(i);
            if picked.len() == args.batch_size {
                return Ok(picked);
            }
        }
    }
    bail!(InputError(format!(
        "--batch-size {} --seq-len {}: only {} training texts have {} or more tokens; give a smaller \
         --batch-size or --seq-len",
        args.batch_size,
        args.seq_len,
        picked.len(),
        args.seq_len
    )))
}

/// Runs the command.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(i) = args.only {
        println!("{}", serde_json::to_string(&measure(args, i)?)?);
        return Ok(());
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => superlora_data::cache_dir()?.join("assets").join("minilm"),
    };
    if !model.join("config.json").is_file() {
        bail!(InputError(format!(
            "--model {}: not a BERT folder (no config.json in it); omit --model for the minilm asset \
             (`scripts/setup-assets.sh minilm` fetches it)",
            model.display()
        )));
    }
    let exe = std::env::current_exe()?;
    eprintln!(
        "MiniLM-L6 on Rotten Tomatoes texts, batch {}, sequence {}, AdamW, {} threads; median of {} steps after {} warm-up",
        args.batch_size,
        args.seq_len,
        rayon_threads(),
        args.steps,
        args.warmup
    );
    let mut rows: Vec<Measured> = Vec::new();
    for i in 0..configs().len() {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--only", &i.to_string()])
            .args(["--batch-size", &args.batch_size.to_string(), "--seq-len", &args.seq_len.to_string()])
            .args(["--steps", &args.steps.to_string(), "--warmup", &args.warmup.to_string()])
            .args(["--device", &args.device.device.to_string()]);
        if let Some(m) = &args.model {
            cmd.arg("--model").arg(m);
        }
        let out = cmd.output().context("running a bench child")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr.trim().trim_start_matches("error: ");
            if out.status.code() == Some(2) {
                // The child refused the input: so does the parent, with the same exit code.
                bail!(InputError(message.to_string()));
            }
            bail!("bench config {i} failed: {message}");
        }
        let m: Measured = serde_json::from_slice(&out.stdout).context("reading a bench child's result")?;
        eprintln!("  {:<28} {:>8.1} ms/step {:>7.1} samples/s", m.label, m.median_step_ms, m.samples_per_s);
        rows.push(m);
    }
    let reference = rows[0].median_step_ms;
    println!("| config | adapter params | median step | samples/s | step time vs LoRA r=8 | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in &rows {
        println!(
            "| {} | {} | {:.1} ms | {:.1} | {:.2}x | {:.0} MiB |",
            m.label,
            m.adapter_params,
            m.median_step_ms,
            m.samples_per_s,
            m.median_step_ms / reference,
            m.peak_rss_mb
        );
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
