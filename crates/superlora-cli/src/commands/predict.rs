//! `superlora predict`: load an adapter folder and its base model (checked by sha256), classify
//! the inputs, print the top classes with their probabilities.

use std::path::PathBuf;

use anyhow::{Result, bail};
use candle_core::{D, Tensor};
use clap::Args;
use superlora_models::adapt::Deltas;
use superlora_models::bert::mean_pool;
use superlora_train::artifact;

use crate::flags::at_least_one;
use crate::runspec::{DataSource, Encoder, TaskSpec};
use crate::settings::InputError;

/// `superlora predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The adapter folder (e.g. <run>/adapter).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Image files (PNG or JPEG; grey or colour, any size) for an image adapter, or texts for a
    /// text adapter.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// How many classes to list per input.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub top: usize,
    /// Print one JSON object per input (class, all probabilities, and the feature vector the head
    /// reads: the pooled sentence embedding, or the image features) instead of a table line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: crate::flags::DeviceFlag,
}

/// Runs the command.
pub fn run(args: &PredictArgs) -> Result<()> {
    let device = args.device.open()?;
    let file = artifact::read_config(&args.adapter)?;
    super::generate::refuse_llama_adapter(&file, &args.adapter, "predict")?;
    let spec: TaskSpec = crate::runspec::task_of(&file, &args.adapter)?;
    let encoder = Encoder::load(&spec, &device)?;
    let weights = encoder.weights_path();
    let pairs = match &spec.dataset {
        DataSource::Files(f) => f.text_pair_column.is_some(),
        DataSource::Builtin(_) => false,
    };
    let sha = artifact::file_sha256(&weights)?;
    if sha != file.base_model.sha256 {
        bail!(InputError(format!(
            "{} was trained on {} (sha256 {}), but {} has sha256 {sha}",
            args.adapter.display(),
            file.base_model.path,
            file.base_model.sha256,
            weights.display()
        )));
    }
    let loaded = artifact::load(&args.adapter, &device)?;
    if loaded.head.is_none() && !args.json {
        bail!(InputError(format!(
            "{} has no head to classify with; pass --json to print the features only",
            args.adapter.display()
        )));
    }
    let classes = file.head.as_ref().map(|h| h.classes.clone()).unwrap_or_default();
    let deltas = match &loaded.adapter {
        Some(a) => {
            let d: Vec<Tensor> = a.delta_weights()?.iter().map(Tensor::detach).collect();
            Deltas::new(&loaded.targets, &d)?
        }
        None => Deltas::none(),
    };
    for input in &args.inputs {
        let features = match &encoder {
            Encoder::Image(model) => {
                let path = std::path::Path::new(input);
                if !path.exists() {
                    bail!(InputError(format!("`{input}`: no such file (this adapter classifies image files)")));
                }
                if !path.is_file() {
                    bail!(InputError(format!("`{input}` is not a file (this adapter classifies image files)")));
                }
                let image = superlora_data::load_rgb(path)?;
                let (mean, std) = model.normalization();
                let images = superlora_data::to_tensor_rgb(&[&image], spec.image_size, mean, std, &device)?;
                model.features(&images, &deltas)?
            }
            Encoder::Text(model, tok) => {
                if looks_like_image_path(input) {
                    eprintln!(
                        "note: `{input}` looks like an image file name, but this adapter classifies texts; it is \
                         classified as the text itself"
                    );
                }
                let (batch, types) = if pairs {
                    let Some((a, b)) = input.split_once('\t') else {
                        bail!(InputError(format!(
                            "`{input}`: this adapter classifies text pairs; give each input as FIRST<TAB>SECOND"
                        )));
                    };
                    (tok.encode_pair_batch(&[a], &[b], spec.max_len, &device)?, model.uses_token_types())
                } else {
                    (tok.encode_batch(&[input.as_str()], spec.max_len, &device)?, false)
                };
                let token_types = types.then_some(&batch.token_type_ids);
                let x = model.forward(&batch.input_ids, &batch.attention_mask, token_types, &deltas)?;
                mean_pool(&x, &batch.attention_mask)?
            }
        };
        let Some(head) = &loaded.head else {
            let embedding: Vec<f32> = features.flatten_all()?.to_vec1()?;
            println!(
                "{}",
                serde_json::json!({"input": input, "class": null, "probabilities": null, "features": embedding})
            );
            continue;
        };
        let logits = head.forward(&features.detach())?.detach();
        let probs: Vec<f32> = softmax(&logits)?.flatten_all()?.to_vec1()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
        if args.json {
            let embedding: Vec<f32> = features.flatten_all()?.to_vec1()?;
            let probabilities: serde_json::Map<String, serde_json::Value> =
                (0..probs.len()).map(|i| (name(i), serde_json::json!(probs[i]))).collect();
            println!(
                "{}",
                serde_json::json!({"input": input, "class": name(order[0]), "probabilities": probabilities, "features": embedding})
            );
            continue;
        }
        let top: Vec<String> =
            order.iter().take(args.top.max(1)).map(|&i| format!("{} {:.3}", name(i), probs[i])).collect();
        println!("{input}\t{}\t[{}]", name(order[0]), top.join(", "));
    }
    Ok(())
}

fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// A single word ending in an image extension that names an existing file: probably meant as an image.
fn looks_like_image_path(input: &str) -> bool {
    let lower = input.to_ascii_lowercase();
    !input.contains(char::is_whitespace)
        && [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e))
        && std::path::Path::new(input).is_file()
}
