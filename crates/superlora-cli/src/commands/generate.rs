//! `superlora generate`: text from a decoder LLM (a Llama-architecture `.gguf` file or Hugging
//! Face folder), optionally with a trained adapter's ΔW, streamed to stdout token by token.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use superlora_models::adapt::Deltas;
use superlora_models::llama::{GenerateOptions, Llama, Sampling};
use superlora_models::llm_tokenizer::{ChatMessage, LlmTokenizer, chat_prompt};
use superlora_train::artifact;

use crate::flags::at_least_one;
use crate::settings::InputError;

/// `superlora generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model: a Llama-architecture `.gguf` file, a Hugging Face Llama folder, or `smollm2`
    /// (the packaged SmolLM2-135M-Instruct, `scripts/setup-assets.sh smollm2`).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// An adapter folder trained on this model (`superlora train --task causal-lm`): its ΔW is
    /// added to the weights.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Most new tokens.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub max_tokens: usize,
    /// Sample at this temperature (> 0) instead of greedy decoding.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Sample from the smallest set of tokens whose probability reaches P, in (0, 1] [default: 1
    /// when sampling].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// Seed of the sampling (the same seed gives the same text) [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Wrap the prompt in the model's chat format (one user message) and answer as the assistant.
    #[arg(long)]
    pub chat: bool,
    /// Score the prompt instead of generating: write its token ids and each token's
    /// log-probability given the tokens before it (`{"ids": [..], "logprobs": [..]}`, one fewer
    /// log-probability than ids) to FILE as JSON, e.g. to compare with another implementation.
    #[arg(long, value_name = "FILE")]
    pub logprobs: Option<PathBuf>,
    /// The text to continue (or, with --chat, the user's message).
    #[arg(value_name = "PROMPT")]
    pub prompt: String,
}

/// The file whose sha256 identifies a Llama model: the `.gguf` (or `.safetensors`) itself, or a
/// folder's `model.safetensors`.
pub fn llama_weights_file(model: &Path) -> PathBuf {
    if model.is_dir() { model.join("model.safetensors") } else { model.to_path_buf() }
}

/// The decoding rule the flags ask for.
fn sampling(args: &GenerateArgs) -> Result<Sampling> {
    if args.temperature.is_none() && args.top_p.is_none() {
        if args.seed.is_some() {
            eprintln!("note: --seed only matters when sampling (--temperature / --top-p); decoding greedily");
        }
        return Ok(Sampling::Greedy);
    }
    let temperature = args.temperature.unwrap_or(1.0);
    let top_p = args.top_p.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature > 0.0) {
        bail!(InputError(format!("--temperature {temperature}: must be > 0 (leave it out for greedy decoding)")));
    }
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        bail!(InputError(format!("--top-p {top_p}: must be in (0, 1]")));
    }
    Ok(Sampling::TopP { temperature, top_p, seed: args.seed.unwrap_or(0) })
}

/// Refuses an adapter of a Llama decoder in `command` (eval, predict: they score classifiers),
/// pointing at what to use instead.
pub fn refuse_llama_adapter(file: &artifact::AdapterFile, dir: &Path, command: &str) -> Result<()> {
    refuse_llama_task(&file.base_model.kind, dir, command)
}

/// [`refuse_llama_adapter`] by the model kind or run task `what` (`llama`, `causal-lm`,
/// `lm-classify`).
pub fn refuse_llama_task(what: &str, dir: &Path, command: &str) -> Result<()> {
    if matches!(what, "llama" | "causal-lm" | "lm-classify") {
        bail!(InputError(format!(
            "{} belongs to a Llama decoder; `{command}` scores encoder classifiers. Use `superlora generate \
             --model MODEL --adapter DIR PROMPT` for text (--logprobs FILE scores a text), and the run's \
             summary.json / metrics.jsonl for its held-out perplexity or accuracy",
            dir.display()
        )));
    }
    Ok(())
}

/// ΔW of the adapter folder `dir`, checked to belong to the model at `model`.
pub fn llama_deltas(dir: &Path, model: &Path, device: &Device) -> Result<Deltas> {
    let file = artifact::read_config(dir)?;
    if file.base_model.kind != "llama" {
        bail!(InputError(format!(
            "{} adapts a `{}` model, not a Llama decoder; use `superlora predict` for it",
            dir.display(),
            file.base_model.kind
        )));
    }
    let weights = llama_weights_file(model);
    let sha = artifact::file_sha256(&weights)?;
    if sha != file.base_model.sha256 {
        bail!(InputError(format!(
            "{} was trained on {} (sha256 {}), but {} has sha256 {sha}",
            dir.display(),
            file.base_model.path,
            file.base_model.sha256,
            weights.display()
        )));
    }
    let loaded = artifact::load(dir, device).with_context(|| format!("reading the adapter {}", dir.display()))?;
    Ok(match &loaded.adapter {
        Some(a) => {
            let d: Vec<Tensor> = a.delta_weights()?.iter().map(Tensor::detach).collect();
            Deltas::new(&loaded.targets, &d)?
        }
        None => Deltas::none(),
    })
}

/// Writes log p(ids[t+1] | ids[..=t]) of the prompt to `file` (`--logprobs`).
fn write_logprobs(model: &Llama, ids: &[u32], deltas: &Deltas, file: &Path) -> Result<()> {
    if ids.len() < 2 {
        bail!(InputError("--logprobs needs a prompt of at least 2 tokens".into()));
    }
    let t = Tensor::from_slice(ids, (1, ids.len()), model.device())?;
    let mask = Tensor::ones((1, ids.len()), candle_core::DType::U32, model.device())?;
    let nll: Vec<f32> = model.next_token_nll(&t, &mask, deltas)?.detach().squeeze(0)?.to_vec1()?;
    let lp: Vec<f64> = nll.iter().map(|&x| -f64::from(x)).collect();
    let json = serde_json::json!({ "ids": ids, "logprobs": lp });
    std::fs::write(file, serde_json::to_string(&json)?).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("{} log-probabilities of {} tokens written to {}", lp.len(), ids.len(), file.display());
    Ok(())
}

/// Runs the command.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = Device::Cpu;
    let sampling = sampling(args)?;
    let model_path = super::train_lm::builtin_decoder(&args.model)?;
    let tok = LlmTokenizer::for_model(&model_path)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let text =
        if args.chat { chat_prompt(&[ChatMessage::new("user", &args.prompt)], true) } else { args.prompt.clone() };
    let prompt = tok.encode(&text)?;
    if prompt.is_empty() {
        bail!(InputError("the prompt is empty: give some text to continue".into()));
    }
    let model = Llama::load(&model_path, &device).with_context(|| format!("loading {}", model_path.display()))?;
    let ctx = model.config().max_position_embeddings;
    if prompt.len() >= ctx {
        bail!(InputError(format!(
            "the prompt is {} tokens long, but the model's context is {ctx} tokens (prompt and output together, \
             at least one new token): shorten the prompt",
            prompt.len()
        )));
    }
    let deltas = match &args.adapter {
        Some(dir) => llama_deltas(dir, &model_path, &device)?,
        None => Deltas::none(),
    };
    if let Some(file) = &args.logprobs {
        return write_logprobs(&model, &prompt, &deltas, file);
    }
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        stop_tokens: tok.eos.into_iter().collect(),
        use_cache: true,
    };
    let mut out = std::io::stdout().lock();
    let mut tokens: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut failure: Option<anyhow::Error> = None;
    // Decodes everything generated so far and prints what is new, holding back an incomplete
    // UTF-8 sequence (a character split over tokens) until it is complete.
    let mut emit = |tokens: &[u32], last: bool| -> Result<()> {
        let s = tok.decode(tokens, true)?;
        if !last && s.ends_with('\u{FFFD}') {
            return Ok(());
        }
        if s.len() > printed && s.is_char_boundary(printed) {
            out.write_all(&s.as_bytes()[printed..])?;
            out.flush()?;
            printed = s.len();
        }
        Ok(())
    };
    let generation = model.generate(&prompt, &opts, &deltas, &mut |t| {
        tokens.push(t);
        match emit(&tokens, false) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.context("writing the generated text"));
    }
    emit(&tokens, true)?;
    println!();
    eprintln!(
        "{} tokens ({:?}); prompt {} tokens in {:.2} s; {:.1} tokens/s",
        generation.tokens.len(),
        generation.stop,
        prompt.len(),
        generation.prompt_secs,
        generation.tokens_per_sec()
    );
    Ok(())
}
