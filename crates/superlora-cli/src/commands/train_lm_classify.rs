//! `superlora train --task lm-classify`: classify texts with a decoder LLM (a Llama `.gguf` file or
//! Hugging Face folder) by the next-token log-probability of one label word per class after a
//! prompt template, and fine-tune an adapter on it (cross-entropy over the label words' logits).
//! The data is the built-in `rotten-tomatoes` or the user's CSV / TSV / JSONL of labelled texts,
//! split 80 / 10 / 10 per class by --data-seed. The base model's zero-shot accuracy is the
//! baseline, in `summary.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use serde::Serialize;
use superlora_core::AdapterConfig;
use superlora_data::{Holdout, SubsetSize, TextColumns, TextSet};
use superlora_models::llm_tokenizer::LlmTokenizer;
use superlora_train::lm::LmSettings;
use superlora_train::lm_classify::{LmClassify, PromptData, PromptSet, fill_template, train_lm_classify, zero_shot};

use super::train::{TrainArgs, adapter_slug};
use super::train_lm::{decoder_model, llama_targets, lm_settings, load_adapted, open_run, save_adapter};
use crate::settings::{InputError, resolve_adapter};

/// The template of `--data rotten-tomatoes` without --prompt-template.
const RT_TEMPLATE: &str = "Review: {text}\nSentiment:";

/// The run's settings (`run.json`, and the adapter's `task`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct ClassifyRunSpec {
    task: String,
    model: PathBuf,
    data: String,
    format: Option<String>,
    text_column: String,
    label_column: String,
    prompt_template: String,
    classes: Vec<String>,
    label_words: Vec<String>,
    max_len: Option<usize>,
    data_seed: u64,
    train_subset: Option<usize>,
    targets: String,
    adapter: AdapterConfig,
    train: LmSettings,
}

/// The flags lm-classify does not use, refused by name.
fn refuse_flags(args: &TrainArgs) -> Result<()> {
    let given = [
        ("--preset", args.preset.is_some()),
        ("--head-only", args.head_only),
        ("--head-lr", args.head_lr.is_some()),
        ("--head-weight-decay", args.head_weight_decay.is_some()),
        ("--text-pair-column", args.text_pair_column.is_some()),
        ("--image-size", args.image_size.is_some()),
        ("--valid", args.valid.is_some()),
        ("--test", args.test.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
        bail!(InputError(format!(
            "{flag} does not apply to --task lm-classify (it trains an adapter that makes the label words likelier; \
             validation and test examples are held out of --data by --data-seed)"
        )));
    }
    Ok(())
}

/// The labelled texts of `--data` and the default template.
fn read_set(args: &TrainArgs, data: &str) -> Result<(TextSet, Option<&'static str>)> {
    if data == "rotten-tomatoes" {
        return Ok((superlora_data::load_rotten_tomatoes()?, Some(RT_TEMPLATE)));
    }
    let path = Path::new(data);
    if !path.is_file() {
        bail!(InputError(format!(
            "--data {data}: no such file; give `rotten-tomatoes` or a CSV / TSV / JSONL of labelled texts"
        )));
    }
    let columns = TextColumns {
        text: args.text_column.clone().unwrap_or_else(|| "text".into()),
        pair: None,
        label: args.label_column.clone().unwrap_or_else(|| "label".into()),
    };
    let format = args.format.map(|f| match f {
        super::train::TableFormatArg::Csv => superlora_data::TableFormat::Csv,
        super::train::TableFormatArg::Tsv => superlora_data::TableFormat::Tsv,
        super::train::TableFormatArg::Jsonl => superlora_data::TableFormat::Jsonl,
    });
    let set = superlora_data::load_text_table(path, &columns, format)
        .map_err(|e| InputError(format!("--data {data}: {e}")))?;
    Ok((set, None))
}

/// The label words of --label-words (comma-separated, taken as written, spaces included), or
/// `" <class>"` per class; each must be one token of `tok`. Returns the words and their ids.
fn label_words(args: &TrainArgs, classes: &[String], tok: &LlmTokenizer) -> Result<(Vec<String>, Vec<u32>)> {
    let words: Vec<String> = match &args.label_words {
        Some(w) => w.split(',').map(str::to_string).collect(),
        None => classes.iter().map(|c| format!(" {c}")).collect(),
    };
    if words.len() != classes.len() {
        bail!(InputError(format!(
            "--label-words gives {} word(s) for {} classes; give one per class, in this order: {}",
            words.len(),
            classes.len(),
            classes.join(", ")
        )));
    }
    let mut ids = Vec::with_capacity(words.len());
    let mut bad = Vec::new();
    for w in &words {
        let t = tok.encode(w)?;
        match t.as_slice() {
            [id] => ids.push(*id),
            _ => {
                let pieces: Vec<String> =
                    t.iter().map(|&i| tok.decode(&[i], false).map(|s| format!("{s:?}"))).collect::<Result<_, _>>()?;
                bad.push(format!("{w:?} is {} tokens [{}]", t.len(), pieces.join(", ")));
            }
        }
    }
    if !bad.is_empty() {
        bail!(InputError(format!(
            "label words must be single tokens of the model's vocabulary: {}; pick other words (a leading space \
             often makes one token: \" good\")",
            bad.join("; ")
        )));
    }
    let mut seen = ids.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != ids.len() {
        bail!(InputError(format!("--label-words {words:?}: two classes share a label word")));
    }
    Ok((words, ids))
}

/// Runs `train --task lm-classify`.
pub fn run(args: &TrainArgs) -> Result<()> {
    refuse_flags(args)?;
    let model_path = decoder_model(args, "lm-classify")?;
    let data = args.data.clone().ok_or_else(|| {
        InputError("--task lm-classify needs --data: rotten-tomatoes, or a CSV / TSV / JSONL of labelled texts".into())
    })?;
    let data = if data == "rotten-tomatoes" {
        data
    } else {
        std::path::absolute(&data).with_context(|| format!("resolving {data}"))?.display().to_string()
    };
    let adapter_cfg = resolve_adapter(&args.adapter)?;
    let targets = llama_targets(args);
    let data_seed = args.data_seed.unwrap_or(0);

    let (set, default_template) = read_set(args, &data)?;
    let template = match (&args.prompt_template, default_template) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) => bail!(InputError(
            "--task lm-classify on your own data needs --prompt-template, e.g. \"Review: {text}\\nSentiment:\"".into()
        )),
    };
    if !template.contains("{text}") {
        bail!(InputError(format!(
            "--prompt-template {template:?} has no {{text}}: write {{text}} where each example's text goes"
        )));
    }
    let tok = LlmTokenizer::for_model(&model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let (words, label_ids) = label_words(args, &set.classes, &tok)?;

    let split =
        superlora_data::stratified_split(&set.labels, Holdout::Fraction(0.1), Holdout::Fraction(0.1), data_seed)
            .map_err(|e| InputError(format!("--data {data}: {e}")))?;
    let train_idx = match args.train_subset {
        Some(n) => superlora_data::subset(&split.train, &set.labels, SubsetSize::Total(n), data_seed)
            .map_err(|e| InputError(format!("--train-subset {n}: {e}")))?,
        None => split.train,
    };
    let prompts = |idx: &[usize]| -> Result<PromptSet> {
        let mut s = PromptSet::default();
        for &i in idx {
            s.prompts.push(tok.encode(&fill_template(&template, &set.texts[i]))?);
            s.labels.push(usize::from(set.labels[i]));
        }
        Ok(s)
    };
    let prompt_data = PromptData {
        train: prompts(&train_idx)?,
        valid: prompts(&split.valid)?,
        test: prompts(&split.test)?,
        label_ids,
    };

    let device = Device::Cpu;
    let (model, shapes, adapter) = load_adapted(&model_path, &targets, &adapter_cfg, &device)?;
    let context = model.config().max_position_embeddings;
    let limit = args.max_len.map_or(context, |m| m.min(context));
    for (name, s) in [("train", &prompt_data.train), ("validation", &prompt_data.valid), ("test", &prompt_data.test)] {
        if let Some((i, p)) = s.prompts.iter().enumerate().find(|(_, p)| p.len() > limit) {
            bail!(InputError(format!(
                "{name} example {i}: its prompt is {} tokens, longer than the {} of {limit} tokens; shorten the text \
                 or the template",
                p.len(),
                if limit == context { "model's context" } else { "--max-len" }
            )));
        }
    }

    let settings = lm_settings(args, prompt_data.train.prompts.len())?;
    let spec = ClassifyRunSpec {
        task: "lm-classify".into(),
        model: model_path.clone(),
        data: data.clone(),
        format: args.format.map(|f| format!("{f:?}").to_lowercase()),
        text_column: args.text_column.clone().unwrap_or_else(|| "text".into()),
        label_column: args.label_column.clone().unwrap_or_else(|| "label".into()),
        prompt_template: template,
        classes: set.classes.clone(),
        label_words: words,
        max_len: args.max_len,
        data_seed,
        train_subset: args.train_subset,
        targets,
        adapter: adapter_cfg.clone(),
        train: settings.clone(),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = Path::new(&data).file_stem().map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(format!("lmcls-{stem}-{}-s{}", adapter_slug(Some(&adapter_cfg)), settings.seed))
    });
    let (_lock, resuming) = open_run(args, &out, &spec)?;
    if !resuming {
        let run_json = out.join("run.json");
        std::fs::write(&run_json, serde_json::to_string_pretty(&spec)?)
            .with_context(|| format!("writing {}", run_json.display()))?;
    }
    eprintln!(
        "adapter: {} on {} weights ({} entries) → {} trainable parameters; label words {:?}",
        adapter_slug(Some(&adapter_cfg)),
        shapes.len(),
        adapter.plan().total_entries,
        adapter.num_trainable(),
        spec.label_words
    );
    let base = zero_shot(&model, &prompt_data, settings.eval_batch_size, settings.final_eval_limit)?;
    eprintln!("zero-shot (base model): valid acc {:.4}  test acc {:.4}", base.valid_acc, base.test_acc);
    let task = LmClassify {
        model: &model,
        adapter: &adapter,
        targets: &shapes,
        data: &prompt_data,
        settings: &settings,
        zero_shot: base,
        settings_json: serde_json::to_value(&spec)?,
    };
    let summary = train_lm_classify(&task, &out, args.resume, !args.no_progress)?;
    save_adapter(args, &model_path, &adapter_cfg, &shapes, &adapter, serde_json::to_value(&spec)?, &out)?;
    println!(
        "final test accuracy {:.4} (zero-shot {:.4}; best validation {:.4} at step {}, test there {:.4}); adapter {} \
         parameters; {:.1} s, {:.1} samples/s; {}",
        summary.final_test_acc,
        summary.zero_shot.test_acc,
        summary.best_valid_acc,
        summary.best_step,
        summary.test_acc_at_best,
        summary.adapter_params,
        summary.train_seconds,
        summary.samples_per_s,
        out.display()
    );
    Ok(())
}
