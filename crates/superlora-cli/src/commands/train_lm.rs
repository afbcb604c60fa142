//! `superlora train --task causal-lm`: fine-tune a decoder LLM (a Llama `.gguf` file or Hugging
//! Face folder) on the user's text with an adapter. The text is a `.txt` file, or the text column
//! of a CSV / TSV / JSONL file, or the built-in `rotten-tomatoes` reviews (rows joined by the
//! end-of-sequence token); it is tokenized and cut
//! into chunks of --max-len tokens, and a seeded 10% of the chunks is held out for validation and
//! as many for test (--data-seed). Reports the held-out perplexity, and the base model's as the
//! baseline (`summary.json`: `base`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde::Serialize;
use superlora_core::{AdapterConfig, SuperLora};
use superlora_models::llama::Llama;
use superlora_models::llm_tokenizer::LlmTokenizer;
use superlora_train::lm::{CausalLm, LmSettings, base_perplexity, chunk_tokens, split_chunks, train_lm};
use superlora_train::schedule::Schedule;

use super::generate::llama_weights_file;
use super::train::{TableFormatArg, TrainArgs, adapter_slug};
use crate::flags::ScheduleArg;
use crate::rundir;
use crate::settings::{InputError, resolve_adapter};

/// What `train` trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskKind {
    /// A classification head (and adapter) on an encoder's features.
    #[default]
    Classify,
    /// Next-token prediction on text with a decoder LLM (reports held-out perplexity).
    CausalLm,
    /// Classification with a decoder LLM: a prompt template around each text, one label word
    /// per class, the class whose word is the likeliest next token (reports accuracy).
    LmClassify,
}

/// The built-in text: every review of Rotten Tomatoes (the lm-classify dataset), one row each.
const BUILTIN: &str = "rotten-tomatoes";

/// Tokens per chunk without --max-len.
const DEFAULT_CHUNK: usize = 128;
/// Share of the chunks held out for validation, and again for test.
const HELD_OUT: f64 = 0.1;

/// The run's settings (`run.json`, and the adapter's `task`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct LmRunSpec {
    task: String,
    model: PathBuf,
    data: PathBuf,
    format: Option<String>,
    text_column: String,
    max_len: usize,
    data_seed: u64,
    targets: String,
    adapter: AdapterConfig,
    train: LmSettings,
}

/// The flags causal-lm does not use, refused by name.
fn refuse_classify_flags(args: &TrainArgs) -> Result<()> {
    let given = [
        ("--preset", args.preset.is_some()),
        ("--head-only", args.head_only),
        ("--head-lr", args.head_lr.is_some()),
        ("--head-weight-decay", args.head_weight_decay.is_some()),
        ("--label-column", args.label_column.is_some()),
        ("--text-pair-column", args.text_pair_column.is_some()),
        ("--image-size", args.image_size.is_some()),
        ("--train-subset", args.train_subset.is_some()),
        ("--valid", args.valid.is_some()),
        ("--test", args.test.is_some()),
        ("--prompt-template", args.prompt_template.is_some()),
        ("--label-words", args.label_words.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
        bail!(InputError(format!(
            "{flag} does not apply to --task causal-lm (it trains an adapter on next-token prediction; validation and \
             test chunks are held out of --data by --data-seed)"
        )));
    }
    Ok(())
}

/// The texts of `path`: a whole `.txt` file, or the `column` of each row of a table.
fn read_texts(path: &Path, format: Option<TableFormatArg>, column: &str) -> Result<(Vec<String>, bool)> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let format = match (format, ext.as_deref()) {
        (Some(f), _) => f,
        (None, Some("txt" | "text" | "md")) => {
            let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            return Ok((vec![s], false));
        }
        (None, Some("csv")) => TableFormatArg::Csv,
        (None, Some("tsv")) => TableFormatArg::Tsv,
        (None, Some("jsonl" | "ndjson")) => TableFormatArg::Jsonl,
        _ => bail!(InputError(format!(
            "--data {}: for causal-lm give a .txt file, or a .csv / .tsv / .jsonl with a --text-column (or --format)",
            path.display()
        ))),
    };
    let missing = || InputError(format!("{}: no `{column}` column; pick the text with --text-column", path.display()));
    let mut texts = Vec::new();
    match format {
        TableFormatArg::Csv | TableFormatArg::Tsv => {
            let tsv = format == TableFormatArg::Tsv;
            let mut r = csv::ReaderBuilder::new()
                .delimiter(if tsv { b'\t' } else { b',' })
                .quoting(!tsv)
                .from_path(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let at = r.headers()?.iter().position(|h| h == column).ok_or_else(missing)?;
            for row in r.records() {
                let row = row.with_context(|| format!("reading {}", path.display()))?;
                texts.push(row.get(at).unwrap_or_default().to_string());
            }
        }
        TableFormatArg::Jsonl => {
            let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            for (i, line) in s.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
                match v.get(column) {
                    Some(serde_json::Value::String(t)) => texts.push(t.clone()),
                    Some(_) => bail!(InputError(format!("{}:{}: `{column}` is not a string", path.display(), i + 1))),
                    None => bail!(missing()),
                }
            }
        }
    }
    Ok((texts, true))
}

/// Runs `train --task causal-lm`.
pub fn run(args: &TrainArgs) -> Result<()> {
    refuse_classify_flags(args)?;
    let model_path = decoder_model(args, "causal-lm")?;
    let data = args.data.as_deref().map(PathBuf::from).ok_or_else(|| {
        InputError(
            "--task causal-lm needs --data: rotten-tomatoes, a .txt file, or a CSV / TSV / JSONL of texts".into(),
        )
    })?;
    let builtin = data == Path::new(BUILTIN);
    if !builtin && !data.is_file() {
        bail!(InputError(format!(
            "--data {}: no such file; give `{BUILTIN}` (its reviews), a .txt file, or a CSV / TSV / JSONL of texts",
            data.display()
        )));
    }
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    let data = if builtin { data } else { absolute(&data)? };
    let adapter_cfg = resolve_adapter(&args.adapter)?;
    let targets = llama_targets(args);
    let max_len = args.max_len.unwrap_or(DEFAULT_CHUNK);
    if max_len < 2 {
        bail!(InputError(format!("--max-len {max_len}: a chunk needs at least 2 tokens")));
    }
    let text_column = args.text_column.clone().unwrap_or_else(|| "text".into());
    let data_seed = args.data_seed.unwrap_or(0);

    let device = Device::Cpu;
    let tok = LlmTokenizer::for_model(&model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let (texts, rows) = if builtin {
        (superlora_data::load_rotten_tomatoes()?.texts, true)
    } else {
        read_texts(&data, args.format, &text_column)?
    };
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect::<Result<_, _>>()?;
    let chunks = chunk_tokens(&ids, if rows { tok.eos } else { None }, max_len);
    let split =
        split_chunks(chunks, HELD_OUT, data_seed).map_err(|e| InputError(format!("--data {}: {e}", data.display())))?;

    let settings = lm_settings(args, split.train.len())?;
    let spec = LmRunSpec {
        task: "causal-lm".into(),
        model: model_path.clone(),
        data: data.clone(),
        format: args.format.map(|f| format!("{f:?}").to_lowercase()),
        text_column,
        max_len,
        data_seed,
        targets: targets.clone(),
        adapter: adapter_cfg.clone(),
        train: settings.clone(),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = data.file_stem().map_or_else(|| "text".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(format!("lm-{stem}-{}-s{}", adapter_slug(Some(&adapter_cfg)), settings.seed))
    });
    let (_lock, resuming) = open_run(args, &out, &spec)?;
    let (model, shapes, adapter) = load_adapted(&model_path, &targets, &adapter_cfg, &device)?;
    if !resuming {
        let run_json = out.join("run.json");
        std::fs::write(&run_json, serde_json::to_string_pretty(&spec)?)
            .with_context(|| format!("writing {}", run_json.display()))?;
    }
    eprintln!(
        "adapter: {} on {} weights ({} entries) → {} trainable parameters",
        adapter_slug(Some(&adapter_cfg)),
        shapes.len(),
        adapter.plan().total_entries,
        adapter.num_trainable()
    );
    let base = base_perplexity(&model, &split, settings.eval_batch_size, settings.final_eval_limit)?;
    eprintln!("base model: valid ppl {:.3}  test ppl {:.3}", base.valid_ppl, base.test_ppl);
    let task = CausalLm {
        model: &model,
        adapter: &adapter,
        targets: &shapes,
        data: &split,
        settings: &settings,
        base,
        settings_json: serde_json::to_value(&spec)?,
    };
    let summary = train_lm(&task, &out, args.resume, !args.no_progress)?;

    save_adapter(args, &model_path, &adapter_cfg, &shapes, &adapter, serde_json::to_value(&spec)?, &out)?;
    println!(
        "final test perplexity {:.3} (base model {:.3}; best validation {:.3} at step {}, test there {:.3}); adapter {} parameters; {:.1} s, {:.1} tokens/s; {}",
        summary.final_test_ppl,
        summary.base.test_ppl,
        summary.best_valid_ppl,
        summary.best_step,
        summary.test_ppl_at_best,
        summary.adapter_params,
        summary.train_seconds,
        summary.tokens_per_s,
        out.display()
    );
    Ok(())
}

/// The absolute path of --model (which must exist) for the decoder `task`; also checks
/// --adapter-lr.
pub(super) fn decoder_model(args: &TrainArgs, task: &str) -> Result<PathBuf> {
    let model_path = args.model.clone().ok_or_else(|| {
        InputError(format!(
            "--task {task} needs --model: `{BUILTIN_MODEL}`, a Llama .gguf file or a Hugging Face Llama folder"
        ))
    })?;
    let model_path = builtin_decoder(&model_path)?;
    if let Some(v) = args.adapter_lr
        && !(v.is_finite() && v > 0.0)
    {
        bail!(InputError(format!("--adapter-lr = {v}: a learning rate must be a positive number")));
    }
    std::path::absolute(&model_path).with_context(|| format!("resolving {}", model_path.display()))
}

/// The name of the built-in decoder: SmolLM2-135M-Instruct's GGUF in the asset cache.
pub(crate) const BUILTIN_MODEL: &str = "smollm2";

/// `--model`: a path, or `smollm2` (where no such file or folder exists) for the packaged
/// SmolLM2-135M-Instruct GGUF, whose absence names the set-up command.
pub(crate) fn builtin_decoder(model: &Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    if model == Path::new(BUILTIN_MODEL) {
        return Ok(superlora_data::asset_file(BUILTIN_MODEL, "SmolLM2-135M-Instruct.Q4_1.gguf")?);
    }
    bail!(InputError(format!(
        "--model {}: no such file or folder (give `{BUILTIN_MODEL}` for the packaged SmolLM2-135M-Instruct, a Llama \
         .gguf file or a Hugging Face Llama folder)",
        model.display()
    )))
}

/// The decoder tasks' training settings from the flags; `train_len` examples (or chunks) give
/// --epochs its steps.
pub(super) fn lm_settings(args: &TrainArgs, train_len: usize) -> Result<LmSettings> {
    let batch_size = args.batch_size.unwrap_or(8);
    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => (e * (train_len / batch_size).max(1) as f64).ceil().max(1.0) as u64,
        (None, None) => 300,
    };
    if let Some(w) = args.warmup
        && w > steps
    {
        bail!(InputError(format!("--warmup {w} is longer than the {steps} steps; give at most {steps}")));
    }
    Ok(LmSettings {
        steps,
        batch_size,
        eval_batch_size: args.eval_batch_size.unwrap_or(8),
        eval_every: args.eval_every.unwrap_or(100),
        eval_limit: args.eval_limit,
        final_eval_limit: args.final_eval_limit,
        adapter_lr: args.adapter_lr.unwrap_or(1e-3),
        weight_decay: args.weight_decay.unwrap_or(0.0),
        schedule: match args.schedule {
            Some(ScheduleArg::Constant) => Schedule::Constant,
            Some(ScheduleArg::Linear) => Schedule::Linear,
            Some(ScheduleArg::Cosine) | None => Schedule::Cosine,
        },
        warmup: args.warmup.unwrap_or(steps / 20),
        max_grad_norm: match args.max_grad_norm {
            Some(x) if x <= 0.0 => None,
            Some(x) => Some(x),
            None => Some(1.0),
        },
        seed: args.adapter.seed.unwrap_or(0),
    })
}

/// The run folder `out`, locked: refuses a run that exists without --resume / --force, and a
/// resume with other settings than `spec`. Returns the lock and whether a run is resumed.
pub(super) fn open_run<S>(args: &TrainArgs, out: &Path, spec: &S) -> Result<(rundir::RunDirLock, bool)>
where
    S: PartialEq + serde::de::DeserializeOwned,
{
    let run_json = out.join("run.json");
    if !args.force && !args.resume && run_json.exists() {
        bail!(InputError(format!(
            "{} already holds a run; continue it with --resume, start over with --force, or pick another --out",
            out.display()
        )));
    }
    let lock = rundir::lock(out, args.force)?;
    let resuming = args.resume && run_json.exists();
    if resuming {
        let text = std::fs::read_to_string(&run_json).with_context(|| format!("reading {}", run_json.display()))?;
        let previous: S = serde_json::from_str(&text).with_context(|| format!("reading {}", run_json.display()))?;
        if previous != *spec {
            bail!(InputError(format!(
                "{} was started with different settings (see its run.json); resume with the same flags",
                out.display()
            )));
        }
    }
    Ok((lock, resuming))
}

/// The targets of the decoder tasks: --targets-regex, --targets, or `q_proj,v_proj`.
pub(super) fn llama_targets(args: &TrainArgs) -> String {
    match (&args.targets, &args.targets_regex) {
        (_, Some(re)) => format!("re:{re}"),
        (Some(t), None) => t.clone(),
        (None, None) => "q_proj,v_proj".into(),
    }
}

/// The model at `model_path`, the weights `targets` selects and a fresh adapter over them.
pub(super) fn load_adapted(
    model_path: &Path,
    targets: &str,
    adapter_cfg: &AdapterConfig,
    device: &Device,
) -> Result<(Llama, Vec<superlora_core::LayerShape>, SuperLora)> {
    let model = Llama::load(model_path, device).with_context(|| format!("loading {}", model_path.display()))?;
    let pattern = match targets.strip_prefix("re:") {
        Some(re) => superlora_io::targets::TargetPattern::regex(re)?,
        None => superlora_io::targets::TargetPattern::names(targets)?,
    };
    let shapes = superlora_models::adapt::select(&model.linears(), &pattern)?;
    let adapter = SuperLora::from_shapes(&shapes, adapter_cfg, DType::F32, device)?;
    Ok((model, shapes, adapter))
}

/// Writes `<out>/adapter` (the adapter file of a Llama base at `model_path`; `task` is the run's
/// settings).
pub(super) fn save_adapter(
    args: &TrainArgs,
    model_path: &Path,
    adapter_cfg: &AdapterConfig,
    shapes: &[superlora_core::LayerShape],
    adapter: &SuperLora,
    task: serde_json::Value,
    out: &Path,
) -> Result<()> {
    use superlora_train::artifact::{self, AdapterFile, BaseModel, Rules, Target};
    let weights = llama_weights_file(model_path);
    let file = AdapterFile {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        adapter: Some(adapter_cfg.clone()),
        targets: shapes.iter().map(|t| Target { name: t.name.clone(), rows: t.rows, cols: t.cols }).collect(),
        rules: Rules::current(),
        base_model: BaseModel {
            kind: "llama".into(),
            path: weights.display().to_string(),
            sha256: artifact::file_sha256(&weights)?,
        },
        head: None,
        trainable_params: adapter.num_trainable(),
        head_params: 0,
        projection_saved: args.save_projection,
        task,
    };
    let dir = out.join("adapter");
    artifact::save(&dir, &file, Some(adapter), None, true).with_context(|| format!("writing {}", dir.display()))?;
    eprintln!("adapter written to {}", dir.display());
    Ok(())
}
