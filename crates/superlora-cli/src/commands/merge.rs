//! `superlora merge` / `unmerge`: W ± ΔW written into a copy of the base weights file.
//!
//! Every tensor keeps its name, dtype and order; only the targeted `<module>.weight` tensors
//! change (they must be f32). The file is written to a hidden temporary beside `--out`, checked,
//! and moved into place only if the check passes; it never replaces an existing file without
//! `--force`, and never the base weights, the `--merged` input or a file of the adapter. `merge`
//! checks by building the model from the merged file and comparing its features with the unmerged
//! model (base + ΔW at run time) on real inputs from the adapter's test split; `unmerge` compares
//! the restored weights with the base. Either fails, writing nothing, above the tolerance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use safetensors::tensor::TensorView;
use superlora_models::adapt::Deltas;
use superlora_train::artifact::{self, Loaded};
use superlora_train::output::{Kind, Staged, check_replace, refuse_inputs};
use superlora_train::task::Split;

use crate::flags::tolerance;
use crate::runspec::{Encoder, TaskSpec, build_task, model_dir};
use crate::settings::InputError;

/// `superlora merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter folder.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Output .safetensors file; for an adapter of a Llama decoder, an output folder (a Hugging
    /// Face model: model.safetensors, config.json, tokenizer.json).
    #[arg(long, value_name = "FILE|DIR")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Largest accepted difference between merged and unmerged outputs, divided by their largest
    /// magnitude when that is above 1 (relative), else as is (absolute).
    #[arg(long, default_value_t = 1e-4, value_parser = tolerance)]
    pub tolerance: f64,
}

/// `superlora unmerge`.
#[derive(Debug, Args)]
pub struct UnmergeArgs {
    /// The adapter folder whose ΔW was merged.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// The merged .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub merged: PathBuf,
    /// Output .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Largest accepted difference to the base weights, divided by their largest magnitude when
    /// that is above 1 (relative), else as is (absolute).
    #[arg(long, default_value_t = 1e-5, value_parser = tolerance)]
    pub tolerance: f64,
}

/// Examples compared between the merged and the unmerged model.
const CHECK_EXAMPLES: usize = 8;

/// The adapter, its task description and the base weights file (identity checked).
fn open(adapter: &Path) -> Result<(Loaded, TaskSpec, PathBuf)> {
    let file = artifact::read_config(adapter)?;
    let spec: TaskSpec = crate::runspec::task_of(&file, adapter)?;
    let weights = Encoder::load(&spec, &Device::Cpu)?.weights_path();
    if weights.extension().is_some_and(|e| e == "json") {
        bail!(InputError(format!(
            "{} is a sharded checkpoint ({}); merge writes one safetensors file and reads one: merge into a \
             single-file copy of the model (transformers: `save_pretrained(dir, max_shard_size=\"100GB\")`)",
            spec.model.display(),
            weights.display()
        )));
    }
    let sha = artifact::file_sha256(&weights)?;
    if sha != file.base_model.sha256 {
        bail!(InputError(format!(
            "{} was trained on {} (sha256 {}), but {} has sha256 {sha}",
            adapter.display(),
            file.base_model.path,
            file.base_model.sha256,
            weights.display()
        )));
    }
    let loaded = artifact::load(adapter, &Device::Cpu)?;
    if loaded.adapter.is_none() {
        bail!(InputError(format!("{} is head-only: there is no ΔW to merge", adapter.display())));
    }
    Ok((loaded, spec, weights))
}

/// ΔW by weight name (`<module>.weight`), f32, as row-major values.
fn deltas_by_weight(loaded: &Loaded) -> Result<HashMap<String, Vec<f32>>> {
    let a = loaded.adapter.as_ref().context("no adapter")?;
    let d = a.delta_weights()?;
    loaded
        .targets
        .iter()
        .zip(d)
        .map(|(t, d)| {
            let values = d.flatten_all()?.to_vec1::<f32>()?;
            if values.iter().any(|v| !v.is_finite()) {
                bail!(InputError(format!(
                    "the adapter's ΔW for `{}` is not finite (NaN or beyond f32): its tensors or scale are broken",
                    t.name
                )));
            }
            Ok((format!("{}.weight", t.name), values))
        })
        .collect()
}

/// Refuses an `--out` that is one of the inputs (`base` weights, the `merged` file) or lies inside
/// the adapter folder: replacing it would destroy what the adapter and its checks rely on.
fn check_out(out: &Path, force: bool, adapter: &Path, inputs: &[&Path]) -> Result<()> {
    check_replace(out, force, Kind::Safetensors("superlora"), "--out")?;
    let all: Vec<&Path> = std::iter::once(adapter).chain(inputs.iter().copied()).collect();
    Ok(refuse_inputs(out, &all, "--out")?)
}

/// Writes a copy of `src` with `sign`·ΔW added to the targeted weights into a staged temporary
/// beside `out` (moved into place only when the caller commits it); returns it and how many
/// weights changed.
fn write_with(
    src: &Path,
    out: &Path,
    deltas: &HashMap<String, Vec<f32>>,
    sign: f32,
    note: &str,
) -> Result<(Staged, usize)> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", src.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let mut changed: HashMap<String, Vec<u8>> = HashMap::new();
    let mut found = 0usize;
    for (name, view) in st.tensors() {
        // A BERT file may prefix every name with `bert.`.
        let key = name.strip_prefix("bert.").unwrap_or(&name);
        let Some(d) = deltas.get(key).or_else(|| deltas.get(&name)) else { continue };
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(InputError(format!("`{name}` is {:?}; merging supports f32 weights", view.dtype())));
        }
        let w: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if w.len() != d.len() {
            bail!(InputError(format!("`{name}` has {} values, its ΔW {}", w.len(), d.len())));
        }
        let merged: Vec<u8> = w.iter().zip(d).flat_map(|(w, d)| (w + sign * d).to_le_bytes()).collect();
        changed.insert(name.clone(), merged);
        found += 1;
    }
    if found != deltas.len() {
        bail!(InputError(format!(
            "{} holds only {found} of the adapter's {} targeted weights",
            src.display(),
            deltas.len()
        )));
    }
    let mut views: Vec<(String, TensorView)> = Vec::new();
    for (name, view) in st.tensors() {
        let v = match changed.get(&name) {
            Some(data) => TensorView::new(view.dtype(), view.shape().to_vec(), data)?,
            None => view,
        };
        views.push((name, v));
    }
    let mut metadata = meta.metadata().clone().unwrap_or_default();
    metadata.insert("superlora".into(), note.into());
    let staged = Staged::new(out, false)?;
    // In memory, then std's write: created with the user's umask (serialize_to_file leaves 0600).
    let bytes = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("serializing {}", staged.path().display()))?;
    std::fs::write(staged.path(), bytes).with_context(|| format!("writing {}", staged.path().display()))?;
    Ok((staged, found))
}

/// Runs `merge`.
pub fn run(args: &MergeArgs) -> Result<()> {
    let file = artifact::read_config(&args.adapter)?;
    if file.base_model.kind == "llama" {
        return super::merge_llama::run(args, &file);
    }
    check_out(&args.out, args.force, &args.adapter, &[])?;
    let (loaded, spec, weights) = open(&args.adapter)?;
    check_out(&args.out, args.force, &args.adapter, &[&weights])?;
    let deltas = deltas_by_weight(&loaded)?;
    let (staged, n) =
        write_with(&weights, &args.out, &deltas, 1.0, &format!("merged W + ΔW of {}", args.adapter.display()))?;
    eprintln!("{n} weights merged; checking the merged model before writing {}", args.out.display());
    // Same features from the merged file as from base + ΔW, on real test inputs.
    let device = Device::Cpu;
    let task = build_task(&spec, &device)?;
    let idx: Vec<usize> = (0..CHECK_EXAMPLES.min(task.len(Split::Test))).collect();
    let d: Vec<Tensor> = loaded.adapter.as_ref().context("no adapter")?.delta_weights()?;
    let unmerged = task.features(Split::Test, &idx, &Deltas::new(&loaded.targets, &d)?)?;
    let mut merged_spec = spec.clone();
    // A Hugging Face folder needs its config.json (and tokenizer.json, preprocessor_config.json)
    // beside the weights: a temporary folder with copies of them and of the merged weights,
    // removed when dropped. A bare DINOv2 file is checked as it is.
    let base_dir = model_dir(&spec.model);
    let check_dir = if base_dir.join("config.json").is_file() {
        let check_dir = Staged::new(&args.out.with_file_name("superlora-merge-check"), true)?;
        let dir = check_dir.path().to_path_buf();
        for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
            if base_dir.join(f).is_file() {
                std::fs::copy(base_dir.join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
            }
        }
        std::fs::copy(staged.path(), dir.join("model.safetensors"))
            .with_context(|| format!("copying {}", staged.path().display()))?;
        merged_spec.model = dir;
        Some(check_dir)
    } else {
        merged_spec.model = staged.path().to_path_buf();
        None
    };
    let merged_task = build_task(&merged_spec, &device)?;
    let merged = merged_task.features(Split::Test, &idx, &Deltas::none())?;
    drop(check_dir);
    let diff = max_abs(&(merged - &unmerged)?)?;
    let scale = nan_max(max_abs(&unmerged)?, 1.0);
    println!(
        "max |merged − unmerged| over the features of {} test examples: {diff:.3e} (relative {:.3e}, tolerance {:.1e})",
        idx.len(),
        diff / scale,
        args.tolerance
    );
    if (diff / scale).is_nan() || diff / scale > args.tolerance {
        bail!(
            "merged and unmerged outputs differ by {:.3e} (relative), above the tolerance {:.1e}; {} was not written",
            diff / scale,
            args.tolerance,
            args.out.display()
        );
    }
    staged.commit().with_context(|| format!("moving the merged weights into {}", args.out.display()))?;
    println!("{}: written", args.out.display());
    Ok(())
}

/// Runs `unmerge`.
pub fn unmerge(args: &UnmergeArgs) -> Result<()> {
    check_out(&args.out, args.force, &args.adapter, &[&args.merged])?;
    let (loaded, _spec, weights) = open(&args.adapter)?;
    check_out(&args.out, args.force, &args.adapter, &[&weights, &args.merged])?;
    let deltas = deltas_by_weight(&loaded)?;
    let (staged, n) = write_with(
        &args.merged,
        &args.out,
        &deltas,
        -1.0,
        &format!("unmerged W + ΔW − ΔW of {}", args.adapter.display()),
    )?;
    // Compare every targeted weight with the base.
    let base = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let back = candle_core::safetensors::load(staged.path(), &Device::Cpu)?;
    let (mut worst, mut scale) = (0f64, 1f64);
    for name in deltas.keys() {
        let key = if base.contains_key(name) { name.clone() } else { format!("bert.{name}") };
        let (a, b) = (&base[&key], &back[&key]);
        worst = nan_max(worst, max_abs(&(a - b)?)?);
        scale = nan_max(scale, max_abs(a)?);
    }
    println!("{n} weights restored; max |restored − base| = {worst:.3e} (relative {:.3e})", worst / scale);
    if (worst / scale).is_nan() || worst / scale > args.tolerance {
        bail!(InputError(format!(
            "restored weights differ from the base by {:.3e} (relative), above {:.1e}; {} was not written \
             (is --merged a merge of this adapter?)",
            worst / scale,
            args.tolerance,
            args.out.display()
        )));
    }
    staged.commit().with_context(|| format!("moving the restored weights into {}", args.out.display()))?;
    println!("{}: written", args.out.display());
    Ok(())
}

/// The largest |entry| of `t`, NaN when any entry is NaN (candle's `max` skips NaN).
fn max_abs(t: &Tensor) -> Result<f64> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().fold(0f64, |m, &x| nan_max(m, f64::from(x.abs()))))
}

/// `max` that keeps NaN (f64::max drops it).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}
