//! One training step of SmolLM2-135M (forward + backward of the next-token loss, LoRA r=8 on
//! q_proj/v_proj by default) and a short greedy generation, timed; run under `/usr/bin/time -v`
//! for the peak RSS:
//!
//! ```text
//! cargo run --release -p superlora-models --example llama_step -- [GGUF] [BATCH] [TOKENS] [STEPS]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, SuperLora};
use superlora_io::TargetPattern;
use superlora_models::Deltas;
use superlora_models::adapt::select;
use superlora_models::llama::{GenerateOptions, Llama};
use superlora_models::llm_tokenizer::LlmTokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/superlora/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let len: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let model = Llama::load(&path, &dev)?;
    let tok = LlmTokenizer::for_model(&path)?;
    println!(
        "loaded {} in {:.2} s ({} parameters)",
        path.display(),
        t0.elapsed().as_secs_f64(),
        model.num_parameters()
    );

    let text = "The lighthouse keeper's log records the weather twice a day: wind, swell, ships passing. ";
    let mut ids = Vec::new();
    while ids.len() < batch * len {
        ids.extend(tok.encode(text)?);
    }
    ids.truncate(batch * len);
    let ids = Tensor::from_vec(ids, (batch, len), &dev)?;
    let mask = Tensor::ones((batch, len), DType::U32, &dev)?;

    let targets = select(&model.linears(), &TargetPattern::names("q_proj,v_proj")?)?;
    let spec = AdapterSpec { rank: Some(8), ..Default::default() };
    let adapter = SuperLora::from_shapes(&targets, &spec.resolve()?, DType::F32, &dev)?;
    for (name, v) in adapter.named_vars() {
        adapter.set(&name, &Tensor::randn(0f32, 0.02, v.dims(), &dev)?)?;
    }
    println!(
        "adapter: LoRA r=8 on {} layers, {} trainable numbers",
        targets.len(),
        adapter.named_vars().iter().map(|(_, v)| v.elem_count()).sum::<usize>()
    );
    for step in 0..steps {
        let t = Instant::now();
        let tape = adapter.forward_tape()?;
        let deltas = Deltas::new(&targets, tape.deltas())?;
        let loss = model.next_token_loss(&ids, &mask, &deltas)?;
        let tf = t.elapsed().as_secs_f64();
        let grads = tape.backward(loss.backward()?)?;
        let n = adapter.named_vars().iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some()).count();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "step {step}: batch {batch} x {len}: loss {:.4}, forward {tf:.2} s, forward+backward {secs:.2} s ({:.0} tokens/s), {n} tensors with gradients",
            loss.to_scalar::<f32>()?,
            (batch * len) as f64 / secs
        );
    }

    let prompt = tok.encode("<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n")?;
    let opts = GenerateOptions { max_tokens: 64, stop_tokens: vec![], ..Default::default() };
    let g = model.generate(&prompt, &opts, &Deltas::none(), &mut |_| true)?;
    println!(
        "generation: {} prompt tokens, {} new tokens, prefill {:.2} s, {:.1} tokens/s: {:?}",
        prompt.len(),
        g.tokens.len(),
        g.prompt_secs,
        g.tokens_per_sec(),
        tok.decode(&g.tokens, false)?
    );
    Ok(())
}
