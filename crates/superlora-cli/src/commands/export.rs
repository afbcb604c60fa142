//! `superlora export`: an adapter for the ecosystem.
//!
//! - `--format peft`, exact: when the adapter is weight-wise LoRA (natural fold, one group per
//!   layer, order 2, lora, identity), PEFT's `lora_A.weight` [r, d_in] = Bᵀ and `lora_B.weight`
//!   [d_out, r] = A, `lora_alpha` = α·r (PEFT scales by lora_alpha / r), keys
//!   `base_model.model.<module>.lora_{A,B}.weight`.
//! - `--format peft --rank k`, any adapter: each layer's ΔW as its best rank-k approximation
//!   (`lora_alpha` = k), the relative Frobenius error printed per layer.
//! - `--format peft` of a VeRA adapter, exact: PEFT's VERA with the projections saved
//!   (`base_model.vera_A` / `vera_B` = our shared A_max / B_max, f32), per module
//!   `vera_lambda_b` = α·b and `vera_lambda_d` = d (PEFT's VeRA has no scale, so α is folded into b).
//! - `--format peft` of a FourierFT adapter, exact: PEFT's FOURIERFT, per module
//!   `fourierft_spectrum` = our n coefficients, `scaling` = α, `random_loc_seed` = our seed (PEFT
//!   regenerates the frequency positions with torch's `randperm` from it, and ours are drawn the
//!   same way: [`superlora_core::rng::torch_randperm_prefix`]).
//! - `--format delta`: the exact ΔW tensors, named `<module>.weight`.
//!
//! Folders are written atomically and never replace an existing one without `--force`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use superlora_core::factor::vera;
use superlora_core::{FactorPlan, Factorization, Fold, LayerShape, Projection, SuperLora};
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
    /// Hugging Face PEFT (LoRA; VeRA / FourierFT exactly for such adapters): adapter_config.json + adapter_model.safetensors.
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
            let is_vera = matches!(cfg.factorization, Factorization::Vera { .. });
            let is_fourier = matches!(cfg.projection, Projection::Fourier { .. });
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
                (None, false) if is_fourier => {
                    let Projection::Fourier { count } = cfg.projection else { bail!("unreachable") };
                    fourier_tensors(adapter, &loaded.targets, &mut tensors)?;
                    println!(
                        "exact FourierFT export: n_frequency {count}, scaling {}, random_loc_seed {}",
                        cfg.scale, cfg.seed
                    );
                    (count, cfg.scale)
                }
                (None, false) if is_vera => {
                    let Factorization::Vera { rank } = cfg.factorization else { bail!("unreachable") };
                    vera_tensors(adapter, &loaded.targets, &mut tensors)?;
                    println!(
                        "exact VeRA export: rank {rank}, α = {} folded into vera_lambda_b, shared vera_A/vera_B saved",
                        cfg.scale
                    );
                    (rank, 1.0)
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
            let base = hub_path(&loaded.file.base_model.path);
            let config = if is_vera && args.rank.is_none() {
                vera_config(r, cfg.seed, &targets, &base)
            } else if is_fourier && args.rank.is_none() {
                fourier_config(r, alpha, cfg.seed, &targets, &base)
            } else {
                serde_json::json!({
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
                "base_model_name_or_path": base,
                })
            };
            std::fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&config)?)
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
    }
    staged.commit().with_context(|| format!("moving the export into {}", args.out.display()))?;
    println!("written to {}", args.out.display());
    Ok(())
}

/// PEFT VeRA tensors of a VeRA adapter: per target `vera_lambda_b` = α·b (α folded in: PEFT's
/// VeRA has no scale) and `vera_lambda_d` = d, and the shared `base_model.vera_A` (r x max d_in)
/// and `base_model.vera_B` (max d_out x r), the very f32 matrices our adapter runs with.
fn vera_tensors(adapter: &SuperLora, targets: &[LayerShape], out: &mut HashMap<String, Tensor>) -> Result<()> {
    let cfg = adapter.config();
    let named: HashMap<String, Tensor> =
        adapter.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let mut shared_dims = None;
    for (g, (t, group)) in targets.iter().zip(&adapter.plan().groups).enumerate() {
        let FactorPlan::Vera { rank, shared_rows, shared_cols, seed, .. } = group.factor else {
            bail!("group {g} of a vera adapter is not a vera factor")
        };
        shared_dims = Some((seed, rank, shared_rows, shared_cols));
        let b = named[&format!("group.{g}.{}", vera::B_NAME)].to_dtype(DType::F32)?;
        let b = (b * cfg.scale)?;
        let d = named[&format!("group.{g}.{}", vera::D_NAME)].to_dtype(DType::F32)?;
        out.insert(format!("{}.vera_lambda_b", key(&t.name)), b);
        out.insert(format!("{}.vera_lambda_d", key(&t.name)), d);
    }
    let Some((seed, rank, rows, cols)) = shared_dims else { bail!("a vera adapter without weights") };
    let (a, b) = vera::shared(seed, rank, rows, cols, DType::F32, &Device::Cpu)?;
    out.insert("base_model.vera_A".into(), a);
    out.insert("base_model.vera_B".into(), b);
    Ok(())
}

/// PEFT FourierFT tensors of a FourierFT adapter: per target `fourierft_spectrum` = our n
/// coefficients (the group's `dense`), unchanged: PEFT's ΔW = ifft2(spectrum at its positions).real
/// · scaling is ours with scaling = α, and its positions (torch's randperm from
/// `random_loc_seed`) are the ones our FourierFT draws from the same seed.
fn fourier_tensors(adapter: &SuperLora, targets: &[LayerShape], out: &mut HashMap<String, Tensor>) -> Result<()> {
    let named: HashMap<String, Tensor> =
        adapter.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    for (g, t) in targets.iter().enumerate() {
        let x = named
            .get(&format!("group.{g}.{}", superlora_core::factor::dense::NAME))
            .with_context(|| format!("group {g} of a FourierFT adapter has no coefficients"))?;
        out.insert(format!("{}.fourierft_spectrum", key(&t.name)), x.to_dtype(DType::F32)?.flatten_all()?);
    }
    Ok(())
}

/// PEFT's FourierFT `adapter_config.json`: `random_loc_seed` is our seed, from which PEFT draws
/// the same frequency positions as ours.
fn fourier_config(n: usize, scaling: f64, seed: u64, targets: &[&str], base: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "FOURIERFT",
        "task_type": null,
        "n_frequency": n,
        "scaling": scaling,
        "random_loc_seed": seed,
        "target_modules": targets,
        "fan_in_fan_out": false,
        "bias": "none",
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "n_frequency_pattern": {},
        "init_weights": false,
        "inference_mode": true,
        "revision": null,
        "base_model_name_or_path": base,
    })
}

/// PEFT's VeRA `adapter_config.json`. `projection_prng_key` holds our seed: PEFT seeds torch's
/// generator with it only to fill buffers the saved `vera_A` / `vera_B` then replace
/// (`save_projection` is true), and `import` uses it to recognise projections made by us.
fn vera_config(r: usize, seed: u64, targets: &[&str], base: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "VERA",
        "task_type": null,
        "r": r,
        "target_modules": targets,
        "projection_prng_key": seed,
        "save_projection": true,
        "vera_dropout": 0.0,
        "d_initial": vera::D_INITIAL,
        "fan_in_fan_out": false,
        "bias": "none",
        "modules_to_save": null,
        "init_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "inference_mode": true,
        "revision": null,
        "base_model_name_or_path": base,
    })
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
