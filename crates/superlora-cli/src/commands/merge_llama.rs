//! `superlora merge` of an adapter of a Llama decoder: W + ΔW written as a Hugging Face model
//! folder (`model.safetensors` with Hugging Face names and layout, f32; `config.json`;
//! `tokenizer.json`), which transformers' `LlamaForCausalLM.from_pretrained(dir)` and every
//! command taking a Llama `--model` load. Before the folder is moved into place, the merged
//! model is loaded back from it and its logits on a fixed text are compared with the base model
//! plus ΔW at run time; above the tolerance nothing is written.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use superlora_models::adapt::Deltas;
use superlora_models::llama::Llama;
use superlora_models::llm_tokenizer::LlmTokenizer;
use superlora_train::artifact::AdapterFile;
use superlora_train::output::{Kind, Staged, check_replace, refuse_inputs};

use super::generate::llama_deltas;
use super::merge::MergeArgs;
use crate::settings::InputError;

/// What a merged Llama folder holds: `--force` replaces only such a folder.
const ENTRIES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// The text whose logits the self-check compares.
const CHECK_TEXT: &str = "The lighthouse keeper counted the lamp oil carefully, because the light could not go dark.";

/// Runs `merge` for the adapter `file` of a Llama model.
pub fn run(args: &MergeArgs, file: &AdapterFile) -> Result<()> {
    let model_path = std::path::PathBuf::from(&file.base_model.path);
    // The adapter records the weights file; a folder's model is the folder.
    let model_path = if model_path.file_name().is_some_and(|n| n == "model.safetensors") {
        model_path.parent().map(std::path::Path::to_path_buf).unwrap_or(model_path)
    } else {
        model_path
    };
    if !model_path.exists() {
        bail!(InputError(format!(
            "{}: the adapter's base model {} is missing (SmolLM2: `scripts/setup-assets.sh smollm2`)",
            args.adapter.display(),
            model_path.display()
        )));
    }
    check_replace(&args.out, args.force, Kind::Folder(&ENTRIES), "--out")?;
    refuse_inputs(&args.out, &[&args.adapter, &model_path], "--out")?;
    let device = Device::Cpu;
    let deltas = llama_deltas(&args.adapter, &model_path, &device)?;
    let model = Llama::load(&model_path, &device).with_context(|| format!("loading {}", model_path.display()))?;
    let tok = LlmTokenizer::for_model(&model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;

    let staged = Staged::new(&args.out, true)?;
    let dir = staged.path().to_path_buf();
    let tensors: HashMap<String, Tensor> = model.hf_tensors(&deltas)?.into_iter().collect();
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("superlora".to_string(), format!("merged W + ΔW of {}", args.adapter.display())),
    ]);
    let weights = dir.join("model.safetensors");
    let bytes = safetensors::serialize(&tensors, Some(meta)).context("serializing the merged weights")?;
    std::fs::write(&weights, bytes).with_context(|| format!("writing {}", weights.display()))?;
    let config = model.config().hf_config_json(tok.bos, tok.eos);
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    tok.save_json(&dir.join("tokenizer.json"))?;
    eprintln!("{} weights merged; checking the merged model before writing {}", deltas.len(), args.out.display());

    // The merged folder, loaded as any user's, against base + ΔW at run time.
    let ids = tok.encode(CHECK_TEXT)?;
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &device)?;
    let mask = Tensor::ones((1, n), DType::U32, &device)?;
    let unmerged = model.logits(&ids, &mask, &deltas)?;
    drop(model);
    let merged_model = Llama::load(&dir, &device).with_context(|| format!("loading back {}", dir.display()))?;
    let merged = merged_model.logits(&ids, &mask, &Deltas::none())?;
    let diff = (merged - &unmerged)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = unmerged.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
    let rel = f64::from(diff / scale);
    println!(
        "max |merged − unmerged| over the logits of {n} tokens: {diff:.3e} (relative {rel:.3e}, tolerance {:.1e})",
        args.tolerance
    );
    if rel.is_nan() || rel > args.tolerance {
        bail!(
            "merged and unmerged logits differ by {rel:.3e} (relative), above the tolerance {:.1e}; {} was not \
             written",
            args.tolerance,
            args.out.display()
        );
    }
    staged.commit().with_context(|| format!("moving the merged model into {}", args.out.display()))?;
    println!(
        "{}: written (model.safetensors, config.json, tokenizer.json; transformers: \
         LlamaForCausalLM.from_pretrained)",
        args.out.display()
    );
    Ok(())
}
