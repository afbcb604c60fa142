//! `superlora export`: an adapter for the ecosystem.
//!
//! - `--format peft`, exact: when the adapter is weight-wise LoRA (natural fold, one group per
//!   layer, order 2, lora, identity), PEFT's `lora_A.weight` [r, d_in] = Bᵀ and `lora_B.weight`
//!   [d_out, r] = A, `lora_alpha` = α·r (PEFT scales by lora_alpha / r), keys
//!   `base_model.model.<module>.lora_{A,B}.weight`.
//! - `--format peft --rank k`, any adapter: each layer's ΔW as its best rank-k approximation
//!   (`lora_alpha` = k), the relative Frobenius error printed per layer.
//! - `--format delta`: the exact ΔW tensors, named `<module>.weight`.
//!
//! Folders are written atomically and never replace an existing one without `--force`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use superlora_core::{Factorization, Fold, Projection};
use superlora_train::artifact;
use superlora_train::checkpoint::save_tensors;
use superlora_train::lowrank::best_rank;
use superlora_train::output::{Kind, Staged, check_replace, refuse_inputs};

use crate::settings::InputError;

/// `superlora export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The adapter folder.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// PEFT: export each layer's ΔW as its best rank-K approximation (required unless the adapter
    /// is exactly weight-wise LoRA); prints the relative Frobenius error per layer.
    #[arg(long, value_name = "K")]
    pub rank: Option<usize>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `--format` of export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face PEFT LoRA: adapter_config.json + adapter_model.safetensors.
    Peft,
    /// The exact ΔW of every adapted weight, named after the weight it updates.
    Delta,
}

/// What an export folder holds (both formats): `--force` replaces only such a folder.
const EXPORT_ENTRIES: [&str; 3] = ["delta_weights.safetensors", "adapter_model.safetensors", "adapter_config.json"];

/// The PEFT key prefix of a module.
fn key(module: &str) -> String {
    format!("base_model.model.{module}")
}

/// Runs the command.
pub fn run(args: &ExportArgs) -> Result<()> {
    let device = Device::Cpu;
    let loaded = artifact::load(&args.adapter, &device)?;
    let Some(adapter) = &loaded.adapter else {
        bail!(InputError(format!("{} is head-only: nothing to export", args.adapter.display())))
    };
    if args.rank.is_some() && matches!(args.format, ExportFormat::Delta) {
        bail!(InputError("--rank applies to --format peft; --format delta writes the exact ΔW".into()));
    }
    if args.rank == Some(0) {
        bail!(InputError("--rank must be at least 1".into()));
    }
    check_replace(&args.out, args.force, Kind::Folder(&EXPORT_ENTRIES), "--out")?;
    refuse_inputs(&args.out, &[&args.adapter], "--out")?;
    let cfg = adapter.config();
    // Removed again if anything below fails; moved into place at the end.
    let staged = Staged::new(&args.out, true)?;
    let tmp = staged.path();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    match args.format {
        ExportFormat::Delta => {
            for (t, d) in loaded.targets.iter().zip(adapter.delta_weights()?) {
                tensors.insert(format!("{}.weight", t.name), d);
            }
            save_tensors(
                &tmp.join("delta_weights.safetensors"),
                &tensors,
                Some(HashMap::from([("format".into(), "superlora-delta".into())])),
            )?;
            println!("{} exact ΔW tensors written", tensors.len());
        }
        ExportFormat::Peft => {
            let exact_lora = cfg.fold == Fold::Natural
                && adapter.plan().groups.len() == loaded.targets.len()
                && matches!(cfg.factorization, Factorization::Lora { .. })
                && cfg.projection == Projection::Identity;
            let (r, alpha) = match (args.rank, exact_lora) {
                (None, true) => {
                    let Factorization::Lora { rank } = cfg.factorization else { bail!("unreachable") };
                    let named: HashMap<String, Tensor> =
                        adapter.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
                    for (g, t) in loaded.targets.iter().enumerate() {
                        let a = &named[&format!("group.{g}.lora_a")];
                        let b = &named[&format!("group.{g}.lora_b")];
                        tensors.insert(format!("{}.lora_A.weight", key(&t.name)), b.t()?.contiguous()?);
                        tensors.insert(format!("{}.lora_B.weight", key(&t.name)), a.clone());
                    }
                    println!("exact LoRA export: rank {rank}, lora_alpha {}", cfg.scale * rank as f64);
                    (rank, cfg.scale * rank as f64)
                }
                (Some(k), _) => {
                    if k == 0 {
                        bail!(InputError("--rank must be at least 1".into()));
                    }
                    println!("best rank-{k} approximation per layer (relative Frobenius error):");
                    for (t, d) in loaded.targets.iter().zip(adapter.delta_weights()?) {
                        let w: Vec<f32> = d.flatten_all()?.to_vec1()?;
                        let lr = best_rank(&w, t.rows, t.cols, k);
                        let kk = lr.rank;
                        if kk != k {
                            bail!(InputError(format!(
                                "--rank {k} exceeds layer `{}` ({}x{}); use at most {kk}",
                                t.name, t.rows, t.cols
                            )));
                        }
                        println!("  {:<50} {:.3e}", t.name, lr.relative_error);
                        tensors.insert(
                            format!("{}.lora_A.weight", key(&t.name)),
                            Tensor::from_vec(lr.a, (k, t.cols), &device)?,
                        );
                        tensors.insert(
                            format!("{}.lora_B.weight", key(&t.name)),
                            Tensor::from_vec(lr.b, (t.rows, k), &device)?,
                        );
                    }
                    (k, k as f64)
                }
                (None, false) => bail!(InputError(format!(
                    "{} is not exactly weight-wise LoRA; give --rank K to export each layer's best rank-K approximation, or use --format delta",
                    args.adapter.display()
                ))),
            };
            save_tensors(
                &tmp.join("adapter_model.safetensors"),
                &tensors,
                Some(HashMap::from([("format".into(), "pt".into())])),
            )?;
            let targets: Vec<&str> = loaded.targets.iter().map(|t| t.name.as_str()).collect();
            let config = serde_json::json!({
                "peft_type": "LORA",
                "task_type": null,
                "r": r,
                "lora_alpha": alpha,
                "lora_dropout": 0.0,
                "target_modules": targets,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
                "init_lora_weights": true,
                "modules_to_save": null,
                "layers_to_transform": null,
                "layers_pattern": null,
                "rank_pattern": {},
                "alpha_pattern": {},
                "use_rslora": false,
                "use_dora": false,
                "revision": null,
                "base_model_name_or_path": hub_path(&loaded.file.base_model.path),
            });
            std::fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&config)?)
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
    }
    staged.commit().with_context(|| format!("moving the export into {}", args.out.display()))?;
    println!("written to {}", args.out.display());
    Ok(())
}

/// What PEFT's `base_model_name_or_path` should hold: the folder `from_pretrained` loads (the
/// weights file's folder, when it holds the model's `config.json`), else the weights file itself.
fn hub_path(weights: &str) -> String {
    match std::path::Path::new(weights).parent() {
        Some(dir) if dir.join("config.json").is_file() => dir.display().to_string(),
        _ => weights.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peft_names_the_folder_from_pretrained_loads() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("model.safetensors");
        let shown = w.display().to_string();
        assert_eq!(super::hub_path(&shown), shown, "no config.json: the weights file itself");
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert_eq!(super::hub_path(&shown), dir.path().display().to_string());
    }
}
