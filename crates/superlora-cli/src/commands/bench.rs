//! `superlora bench`: training-step throughput in the settings of the PyTorch + PEFT comparison in
//! docs/BENCHMARKS.md: MiniLM on review texts (batch 32, sequence 32) or DINOv2 ViT-S/14 on
//! Fashion-MNIST images (batch 32, 112 px), query+value adapted, AdamW, all threads. Each config
//! runs in a child process (so `peak RSS` is that config's own); the parent prints a table with
//! samples/s and the step time relative to LoRA r=8, and `--json` writes the rows for scripts
//! (scripts/bench-vs-peft.sh runs it beside tools/peft_bench.py).

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

use crate::flags::{Preset, at_least_one, batch_count, sequence_length};
use crate::runspec::{DataSource, Dataset, RunSpec, TaskSpec, build_model, build_task};
use crate::settings::InputError;

/// `superlora bench`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  # every config on MiniLM text
  superlora bench
  # DINOv2-S at 112 px, LoRA r=8 only
  superlora bench --preset vit-fmnist --configs lora-r8
  # two configs, the rows kept as JSON for a script
  superlora bench --configs lora-r8,head --json out.json
  # 3 rounds, ratios taken within each round (steadier when noisy)
  superlora bench --rounds 3
  # your own text model (a Hugging Face folder) with its own linear names
  superlora bench --model my-distilbert/ --configs lora-r8,head

Configs: lora-r8 (the reference), head, lora-r1, square2d, tucker,
kronecker, fastfood, full-qv.
SUPERLORA_DENSE_DELTA=1 trains weight-wise LoRA through the formed ΔW
instead of the factored path (to measure what the factored path saves).")]
pub struct BenchArgs {
    /// Which model and data: minilm-rt (MiniLM-L6 on Rotten Tomatoes texts) or vit-fmnist (DINOv2
    /// ViT-S/14 on Fashion-MNIST images at --image-size).
    #[arg(long, value_enum, default_value = "minilm-rt")]
    pub preset: Preset,
    /// The model: a text-encoder folder (minilm-rt: BERT, RoBERTa, DistilBERT) or an image encoder
    /// (vit-fmnist: the DINOv2 .onnx, a DINOv2 or ViT folder) [default: the preset's asset].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Adapted weights: names or dotted suffixes, comma-separated, as `train --targets` [default:
    /// the attention's query and value by the model's names, as `train`: q_lin,v_lin for
    /// DistilBERT, query,value otherwise].
    #[arg(long, value_name = "NAMES")]
    pub targets: Option<String>,
    /// Examples per step.
    #[arg(long, default_value_t = 32, value_parser = batch_count)]
    pub batch_size: usize,
    /// Tokens per example (texts with at least this many tokens, truncated to it; MiniLM has 512
    /// positions).
    #[arg(long, default_value_t = 32, value_parser = sequence_length)]
    pub seq_len: usize,
    /// Image side in pixels for vit-fmnist (a multiple of 14).
    #[arg(long, default_value_t = 112, value_parser = at_least_one)]
    pub image_size: usize,
    /// Timed steps per config (after the warm-up).
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub steps: usize,
    /// Untimed warm-up steps per config.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Rounds through the configs (each config once per round, in order). With more than one,
    /// each config's step is the median of its round medians, and its ratio to LoRA r=8 is the
    /// median of the per-round ratios, with their range: a slow spell of the machine then skews
    /// one round, not one config.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub rounds: usize,
    /// Data parallel: N single-threaded workers, each on its share of the batch (see `train
    /// --workers`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    pub workers: usize,
    /// Comma-separated configs to run (see below) [default: all].
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
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

/// The configs measured: (name, label, adapter spec; None = head only).
fn configs() -> Vec<(&'static str, &'static str, Option<AdapterSpec>)> {
    let sq = square;
    vec![
        ("lora-r8", "LoRA r=8 (reference)", Some(AdapterSpec { rank: Some(8), ..Default::default() })),
        ("head", "head only", None),
        ("lora-r1", "LoRA r=1", Some(AdapterSpec { rank: Some(1), ..Default::default() })),
        ("square2d", "square 2D G=4 lora r=8", Some(sq(4, 2, FactorKind::Lora, Some(8)))),
        ("tucker", "Tucker M=3 G=12 r=5", Some(sq(12, 3, FactorKind::Tucker, Some(5)))),
        (
            "kronecker",
            "Kronecker K=2 r=4",
            Some(AdapterSpec { kron: Some(2), ..sq(1, 2, FactorKind::Kronecker, Some(4)) }),
        ),
        (
            "fastfood",
            "dense M=1 fastfood ρ=0.01",
            Some(AdapterSpec { ratio: Some(0.01), ..sq(1, 1, FactorKind::Dense, None) }),
        ),
        ("full-qv", "full FT of the targets", Some(sq(1, 1, FactorKind::Dense, None))),
    ]
}

#[derive(Serialize, Deserialize)]
struct Measured {
    name: String,
    label: String,
    /// The model folder or file measured.
    model: String,
    /// The adapted weights (`--targets` or the model's default).
    targets: String,
    adapter_params: usize,
    median_step_ms: f64,
    samples_per_s: f64,
    peak_rss_mb: f64,
}

/// The preset's dataset, default model and input size.
fn preset_task(args: &BenchArgs) -> Result<TaskSpec> {
    let assets = superlora_data::cache_dir()?.join("assets");
    let (dataset, default_model) = match args.preset {
        Preset::MinilmRt => (Dataset::RottenTomatoes, assets.join("minilm")),
        Preset::VitFmnist => (Dataset::FashionMnist, assets.join("dinov2-onnx").join("vit_s_focus.onnx")),
    };
    Ok(TaskSpec {
        dataset: DataSource::Builtin(dataset),
        model: args.model.clone().unwrap_or(default_model),
        image_size: args.image_size,
        max_len: args.seq_len,
        train_subset: None,
        data_seed: 0,
    })
}

/// The adapted weights: --targets, or the model's query and value (`train`'s default).
fn targets(args: &BenchArgs) -> Result<String> {
    Ok(match &args.targets {
        Some(t) => t.clone(),
        None => super::train::default_targets(&preset_task(args)?.model).into(),
    })
}

fn measure(args: &BenchArgs, i: usize) -> Result<Measured> {
    let (name, label, adapter) = configs().into_iter().nth(i).context("no such bench config")?;
    let spec = RunSpec {
        preset: None,
        task: preset_task(args)?,
        targets: targets(args)?,
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
            workers: args.workers,
        },
    };
    let device = args.device.open()?;
    let task = build_task(&spec.task, &device)?;
    // Texts with at least seq_len tokens, so every example is exactly seq_len tokens long; images
    // are all the same size.
    let text = match args.preset {
        Preset::MinilmRt => task_texts(task.as_ref(), args)?,
        Preset::VitFmnist => (0..args.batch_size.min(task.len(Split::Train))).collect(),
    };
    let (adapter, targets, head) = build_model(&spec, task.as_ref())?;
    let model = Trainable { adapter: adapter.as_ref(), targets: &targets, head: &head };
    let mut opt = optimizer(&model, &spec.train)?;
    let mut times = Vec::with_capacity(args.steps);
    for s in 0..args.warmup + args.steps {
        let t = Instant::now();
        train_step(task.as_ref(), &model, &mut opt, &text, 1.0, args.workers)?;
        // CUDA runs asynchronously: the step ends when the device has finished it.
        device.synchronize()?;
        if s >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(Measured {
        name: name.to_string(),
        label: label.to_string(),
        model: spec.task.model.display().to_string(),
        targets: spec.targets.clone(),
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
    args.device.check_workers(args.workers)?;
    if let Some(i) = args.only {
        println!("{}", serde_json::to_string(&measure(args, i)?)?);
        return Ok(());
    }
    let all = configs();
    let picked: Vec<usize> = if args.configs.is_empty() {
        (0..all.len()).collect()
    } else {
        args.configs
            .iter()
            .map(|c| {
                all.iter().position(|(n, _, _)| *n == c.trim()).ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|(n, _, _)| *n).collect();
                    anyhow::Error::new(InputError(format!(
                        "--configs: no config `{c}`; the configs are {}",
                        names.join(", ")
                    )))
                })
            })
            .collect::<Result<_>>()?
    };
    let model = preset_task(args)?.model;
    let ok = match args.preset {
        Preset::MinilmRt => model.join("config.json").is_file(),
        Preset::VitFmnist => model.is_file() || model.join("config.json").is_file(),
    };
    if !ok {
        bail!(InputError(format!(
            "--model {}: not found or not a model of this preset; omit --model for the preset's asset \
             (`scripts/setup-assets.sh` fetches it)",
            model.display()
        )));
    }
    let exe = std::env::current_exe()?;
    let name = |default: &str| args.model.as_ref().map_or(default.to_string(), |m| m.display().to_string());
    let what = match args.preset {
        Preset::MinilmRt => format!(
            "{} on Rotten Tomatoes texts, batch {}, sequence {}",
            name("MiniLM-L6"),
            args.batch_size,
            args.seq_len
        ),
        Preset::VitFmnist => {
            format!("{} on Fashion-MNIST, batch {}, {} px", name("DINOv2 ViT-S/14"), args.batch_size, args.image_size)
        }
    };
    let what = format!("{what}, adapters on {}", targets(args)?);
    let threads = if args.workers > 1 {
        format!("{} single-threaded data-parallel workers", args.workers)
    } else {
        format!("{} threads", rayon_threads())
    };
    eprintln!("{what}, AdamW, {threads}; median of {} steps after {} warm-up", args.steps, args.warmup);
    let preset = match args.preset {
        Preset::MinilmRt => "minilm-rt",
        Preset::VitFmnist => "vit-fmnist",
    };
    // rounds[r][c]: config c (in `picked` order) in round r.
    let mut rounds: Vec<Vec<Measured>> = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        if args.rounds > 1 {
            eprintln!("round {} of {}", round + 1, args.rounds);
        }
        let mut row = Vec::with_capacity(picked.len());
        for &i in &picked {
            let m = run_child(args, &exe, preset, i)?;
            eprintln!("  {:<28} {:>8.1} ms/step {:>7.1} samples/s", m.label, m.median_step_ms, m.samples_per_s);
            row.push(m);
        }
        rounds.push(row);
    }
    let reference = picked.iter().position(|&i| all[i].0 == "lora-r8");
    let mut rows: Vec<Measured> = Vec::with_capacity(picked.len());
    let mut ratios: Vec<Option<(f64, f64, f64)>> = Vec::with_capacity(picked.len());
    for c in 0..picked.len() {
        let steps: Vec<f64> = rounds.iter().map(|r| r[c].median_step_ms).collect();
        let step = median(&steps);
        let first = &rounds[0][c];
        rows.push(Measured {
            name: first.name.clone(),
            label: first.label.clone(),
            model: first.model.clone(),
            targets: first.targets.clone(),
            adapter_params: first.adapter_params,
            median_step_ms: step,
            samples_per_s: args.batch_size as f64 / (step / 1e3),
            peak_rss_mb: rounds.iter().map(|r| r[c].peak_rss_mb).fold(0.0, f64::max),
        });
        ratios.push(reference.map(|rf| {
            let per_round: Vec<f64> = rounds.iter().map(|r| r[c].median_step_ms / r[rf].median_step_ms).collect();
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(0.0, f64::max);
            (median(&per_round), lo, hi)
        }));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing --json {}", path.display()))?;
    }
    let several = args.rounds > 1;
    if several {
        println!(
            "| config | adapter params | median step | samples/s | step time vs LoRA r=8 (range over {} rounds) | peak RSS |",
            args.rounds
        );
    } else {
        println!("| config | adapter params | median step | samples/s | step time vs LoRA r=8 | peak RSS |");
    }
    println!("|---|---:|---:|---:|---:|---:|");
    for (m, ratio) in rows.iter().zip(&ratios) {
        let ratio = match ratio {
            None => "—".to_string(),
            Some((mid, lo, hi)) if several => format!("{mid:.2}x ({lo:.2}–{hi:.2})"),
            Some((mid, _, _)) => format!("{mid:.2}x"),
        };
        println!(
            "| {} | {} | {:.1} ms | {:.1} | {} | {:.0} MiB |",
            m.label, m.adapter_params, m.median_step_ms, m.samples_per_s, ratio, m.peak_rss_mb
        );
    }
    Ok(())
}

/// The median of a non-empty list (the upper one of the middle two for an even count, as the
/// per-step medians are).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs config `i` in a child process and reads its row.
fn run_child(args: &BenchArgs, exe: &std::path::Path, preset: &str, i: usize) -> Result<Measured> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "--only", &i.to_string(), "--preset", preset])
        .args(["--batch-size", &args.batch_size.to_string(), "--seq-len", &args.seq_len.to_string()])
        .args(["--image-size", &args.image_size.to_string()])
        .args(["--steps", &args.steps.to_string(), "--warmup", &args.warmup.to_string()])
        .args(["--workers", &args.workers.to_string(), "--targets", &targets(args)?])
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
    serde_json::from_slice(&out.stdout).context("reading a bench child's result")
}

/// The threads candle's matmul uses: RAYON_NUM_THREADS when set, else every core.
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
