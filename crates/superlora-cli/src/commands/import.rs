//! `superlora import --format peft`: a Hugging Face PEFT LoRA or VeRA adapter in as one of ours
//! (VeRA: see [`vera_adapter`]; FourierFT: see [`fourier_adapter`]).
//!
//! PEFT computes, per target module, ΔW = s · lora_B.weight · lora_A.weight with lora_A [r, d_in],
//! lora_B [d_out, r] and s = lora_alpha / r (lora_alpha / √r with `use_rslora`). Ours, for
//! weight-wise LoRA (natural fold, G = L, M = 2, factor lora, identity projection), is
//! ΔW = α · A · Bᵀ with A = `group.<g>.lora_a` [d_out, r] and B = `group.<g>.lora_b` [d_in, r].
//! So A = lora_B, B = lora_Aᵀ, α = s: the import is exact (no arithmetic on the factors).
//!
//! Both files are untrusted: the config is read as loose JSON and every field we depend on is
//! checked; the tensor file goes through the checked safetensors reader; every key must be a LoRA
//! factor of a linear layer of the base model with matching shapes and finite values.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use superlora_core::{
    AdapterConfig, AdapterSpec, FactorKind, Factorization, Fold, LayerShape, Plan, Projection, SuperLora,
};
use superlora_io::TargetPattern;
use superlora_models::adapt::LinearInfo;
use superlora_train::artifact::{self, AdapterFile, BaseModel, Rules, Target};
use superlora_train::checkpoint::load_tensors;
use superlora_train::head::Head;

use crate::flags::Preset;
use crate::runspec::{Encoder, TaskSpec};
use crate::settings::InputError;

pub(crate) const IMPORT_ABOUT: &str = "\
Bring a Hugging Face PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, as written \
by `PeftModel.save_pretrained`) in as a superlora adapter folder: weight-wise LoRA (natural fold, one \
group per layer, order 2, factor lora) with α = lora_alpha / r (lora_alpha / √r with use_rslora), \
PEFT's lora_B as our A (output side) and lora_A transposed as our B (input side).

The base model, the task and the head come from --like (one of our adapter folders for the same base \
model, e.g. a linear probe trained with `train --head-only`), or from --preset (no head: `predict \
--json` then prints the features only). Every target module must be a linear layer of that model \
with the shapes the PEFT tensors imply. Refused, with the reason: DoRA, bias training, \
fan_in_fan_out, per-layer rank/alpha patterns, modules_to_save, any tensor that is not a LoRA factor.

A PEFT VeRA (peft_type VERA) saved with its projections (save_projection, PEFT's default) comes in \
exactly: as our VeRA (b = vera_lambda_b, d = vera_lambda_d, α = 1, seed = projection_prng_key) when \
vera_A / vera_B are the ones our VeRA draws from that seed (an adapter exported by us), otherwise as \
weight-wise LoRA of rank r with the same ΔW (A = diag(λ_b)·vera_B·diag(λ_d), B = vera_Aᵀ), since \
PEFT's torch-drawn projections cannot be regenerated here. Refused: VeRA without saved projections.

A PEFT FourierFT (peft_type FOURIERFT) comes in exactly as our FourierFT: count = n_frequency, scale = \
scaling, seed = random_loc_seed (both draw the frequency positions with torch's randperm from that \
seed), coefficients = fourierft_spectrum. Refused: n_frequency_pattern.";

pub(crate) const IMPORT_EXAMPLES: &str = "\
Examples:
  superlora import --format peft peft-out/ --like runs/minilm-probe/adapter \\
    --out imported
  superlora import --format peft peft-out/ --preset minilm-rt --out imported
  superlora predict --adapter imported --json \"a gripping, well acted film\"";

/// `superlora import`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("base").required(true).multiple(false)))]
pub struct ImportArgs {
    /// What to import.
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// The folder to import (a PEFT adapter folder).
    #[arg(value_name = "DIR")]
    pub input: PathBuf,
    /// Take the base model, task and head from this adapter folder of ours.
    #[arg(long, value_name = "DIR", group = "base")]
    pub like: Option<PathBuf>,
    /// Take the base model and task from a preset (no head).
    #[arg(long, value_enum, group = "base")]
    pub preset: Option<Preset>,
    /// The adapter folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `--format` of import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// Hugging Face PEFT LoRA.
    Peft,
}

/// What a PEFT config says, checked.
struct PeftLora {
    r: usize,
    /// LoRA: lora_alpha / r (or / √r); VeRA: 1 (PEFT's VeRA has no scale).
    scale: f64,
    /// `target_modules` (None: absent, null or `all-linear`).
    targets: Option<(String, TargetPattern)>,
    /// VeRA: `Some(projection_prng_key)`; LoRA: None.
    vera_key: Option<u64>,
    /// FourierFT: `Some((n_frequency, random_loc_seed))`; `r` is n and `scale` is `scaling`.
    fourier: Option<(usize, u64)>,
}

fn bad(dir: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    InputError(format!("{}: {what}", dir.display())).into()
}

fn read_peft_config(dir: &Path) -> Result<PeftLora> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(dir, format!("adapter_config.json is not JSON: {e}")))?;
    let Some(o) = v.as_object() else { return Err(bad(dir, "adapter_config.json is not a JSON object")) };
    let peft_type = o.get("peft_type").and_then(|x| x.as_str()).unwrap_or("(missing)");
    match peft_type {
        "LORA" | "VERA" | "FOURIERFT" => {}
        other => {
            return Err(bad(
                dir,
                format!("peft_type is `{other}`; only LORA, VERA and FOURIERFT adapters can be imported"),
            ));
        }
    }
    let fourier = if peft_type == "FOURIERFT" {
        let n = o.get("n_frequency").and_then(serde_json::Value::as_u64).filter(|&n| n >= 1).ok_or_else(|| {
            bad(
                dir,
                format!(
                    "`n_frequency` = {}: must be a positive integer",
                    o.get("n_frequency").unwrap_or(&serde_json::Value::Null)
                ),
            )
        })? as usize;
        // PEFT's default random_loc_seed is 777.
        let seed = match o.get("random_loc_seed") {
            None | Some(serde_json::Value::Null) => 777,
            Some(v) => {
                v.as_u64().ok_or_else(|| bad(dir, format!("`random_loc_seed` = {v}: must be an integer ≥ 0")))?
            }
        };
        Some((n, seed))
    } else {
        None
    };
    let r = match fourier {
        Some((n, _)) => n,
        None => o.get("r").and_then(serde_json::Value::as_u64).filter(|&r| r >= 1).ok_or_else(|| {
            bad(dir, format!("`r` = {}: must be a positive integer", o.get("r").unwrap_or(&serde_json::Value::Null)))
        })? as usize,
    };
    let vera_key = if peft_type == "VERA" {
        if o.get("save_projection").and_then(serde_json::Value::as_bool) == Some(false) {
            return Err(bad(
                dir,
                "`save_projection` is false: the shared vera_A / vera_B are not in the file and PEFT \
                 regenerates them with torch's generator from `projection_prng_key`, which this tool does \
                 not reproduce; save the adapter with save_projection=True",
            ));
        }
        let key = match o.get("projection_prng_key") {
            None | Some(serde_json::Value::Null) => 0,
            Some(v) => {
                v.as_u64().ok_or_else(|| bad(dir, format!("`projection_prng_key` = {v}: must be an integer")))?
            }
        };
        Some(key)
    } else {
        None
    };
    let alpha_key = if fourier.is_some() { "scaling" } else { "lora_alpha" };
    let alpha = match (vera_key, fourier) {
        (Some(_), _) => Some(1.0),
        // PEFT's default FourierFT scaling is 150.
        (None, Some(_)) => match o.get("scaling") {
            None | Some(serde_json::Value::Null) => Some(150.0),
            Some(v) => v.as_f64(),
        },
        (None, None) => o.get("lora_alpha").and_then(serde_json::Value::as_f64),
    };
    let alpha = alpha.filter(|a| a.is_finite()).ok_or_else(|| {
        bad(dir, format!("`{alpha_key}` = {}: must be a number", o.get(alpha_key).unwrap_or(&serde_json::Value::Null)))
    })?;
    let flag = |name: &str| o.get(name).and_then(serde_json::Value::as_bool).unwrap_or(false);
    for (name, why) in [
        ("use_dora", "DoRA rescales the weight's columns, which a LoRA adapter cannot express"),
        ("fan_in_fan_out", "the factors are stored transposed (Conv1D layers), which our models do not have"),
    ] {
        if flag(name) {
            return Err(bad(dir, format!("`{name}` is true: {why}")));
        }
    }
    let empty = |name: &str| match o.get(name) {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(m)) => m.is_empty(),
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    for name in ["rank_pattern", "alpha_pattern", "n_frequency_pattern", "modules_to_save", "layers_to_transform"] {
        if !empty(name) {
            return Err(bad(
                dir,
                format!("`{name}` is set: per-layer ranks, extra trained modules and layer subsets are not supported"),
            ));
        }
    }
    if let Some(b) = o.get("bias").and_then(|b| b.as_str())
        && b != "none"
    {
        return Err(bad(dir, format!("`bias` = `{b}`: trained biases are not part of a LoRA adapter here")));
    }
    let scale = if vera_key.is_some() {
        1.0
    } else if fourier.is_some() {
        alpha
    } else if flag("use_rslora") {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    if scale.abs() > superlora_core::config::MAX_SCALE {
        return Err(bad(
            dir,
            format!(
                "`{alpha_key}` = {alpha} gives the scale {scale:e}, beyond {:e}: ΔW would overflow f32",
                superlora_core::config::MAX_SCALE
            ),
        ));
    }
    let targets = match o.get("target_modules") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s == "all-linear" => None,
        Some(serde_json::Value::String(s)) => Some((
            format!("the regex `{s}`"),
            TargetPattern::regex(s).map_err(|e| bad(dir, format!("`target_modules`: {e}")))?,
        )),
        Some(serde_json::Value::Array(a)) => {
            let names: Option<Vec<String>> = a.iter().map(|v| v.as_str().map(String::from)).collect();
            let names = names.ok_or_else(|| bad(dir, "`target_modules` must be a list of strings or one regex"))?;
            Some((format!("{names:?}"), TargetPattern::Names(names)))
        }
        Some(other) => {
            return Err(bad(dir, format!("`target_modules` = {other}: must be a list of strings or one regex")));
        }
    };
    Ok(PeftLora { r, scale, targets, vera_key, fourier })
}

/// Splits `base_model.model.<module>.lora_{A,B}[.<adapter>].weight` into (module, "A" | "B").
fn split_key(key: &str) -> Option<(String, &'static str)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest.strip_suffix(".weight")?;
    for (tag, which) in [(".lora_A", "A"), (".lora_B", "B")] {
        if let Some(i) = rest.rfind(tag) {
            let tail = &rest[i + tag.len()..];
            // no adapter name, or one adapter name (`.default`) between the tag and `.weight`
            if tail.is_empty() || (tail.starts_with('.') && !tail[1..].contains('.')) {
                return Some((rest[..i].to_string(), which));
            }
        }
    }
    None
}

/// Splits `base_model.model.<module>.fourierft_spectrum[.<adapter>]` into the module.
fn split_fourier_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("base_model.model.")?;
    let tag = ".fourierft_spectrum";
    let i = rest.rfind(tag)?;
    let tail = &rest[i + tag.len()..];
    (tail.is_empty() || (tail.starts_with('.') && !tail[1..].contains('.'))).then(|| rest[..i].to_string())
}

/// A PEFT FourierFT adapter as ours: FourierFT with count = n_frequency, scale = scaling and
/// seed = random_loc_seed, whose frequencies are PEFT's (both draw torch's randperm from that
/// seed), and coefficients = `fourierft_spectrum`: exact.
fn fourier_adapter(
    dir: &Path,
    peft: &PeftLora,
    (n, seed): (usize, u64),
    targets: &[LayerShape],
    factors: &BTreeMap<String, HashMap<&str, Tensor>>,
    device: &Device,
) -> Result<(AdapterConfig, SuperLora)> {
    let spec = AdapterSpec {
        projection: Some(superlora_core::ProjectionKind::Fourier),
        count: Some(n),
        scale: Some(peft.scale),
        seed: Some(seed),
        ..Default::default()
    };
    let cfg = spec.resolve().map_err(|e| bad(dir, format!("n_frequency {n}: {e}")))?;
    let plan = Plan::new(targets, &cfg).map_err(|e| bad(dir, format!("n_frequency {n} does not fit: {e}")))?;
    let adapter = SuperLora::new(plan, DType::F32, device)?;
    let vars: HashMap<String, candle_core::Var> = adapter.named_vars().into_iter().collect();
    for (g, t) in targets.iter().enumerate() {
        let x = &factors[&t.name]["S"];
        if x.dims() != [n] {
            return Err(bad(
                dir,
                format!("`{}.fourierft_spectrum` has shape {:?}; n_frequency = {n} needs [{n}]", t.name, x.dims()),
            ));
        }
        check_finite(dir, &format!("{}.fourierft_spectrum", t.name), x)?;
        vars[&format!("group.{g}.{}", superlora_core::factor::dense::NAME)].set(x)?;
    }
    Ok((cfg, adapter))
}

/// The base model's linear layers and weights file.
fn base_linears(spec: &TaskSpec, device: &Device) -> Result<(&'static str, std::path::PathBuf, Vec<LinearInfo>)> {
    let encoder = Encoder::load(spec, device)?;
    Ok((encoder.kind(), encoder.weights_path(), encoder.linears()))
}

/// Runs the command.
pub fn run(args: &ImportArgs) -> Result<()> {
    let ImportFormat::Peft = args.format;
    let device = Device::Cpu;
    if args.out.exists() && !args.force {
        bail!(InputError(format!("{} exists; pass --force to replace it", args.out.display())));
    }
    let mut inputs: Vec<&std::path::Path> = vec![&args.input];
    inputs.extend(args.like.as_deref());
    superlora_train::output::refuse_inputs(&args.out, &inputs, "--out")?;
    let dir = &args.input;
    let peft = read_peft_config(dir)?;
    let tensor_path = dir.join("adapter_model.safetensors");
    if !tensor_path.is_file() {
        return Err(bad(dir, "adapter_model.safetensors is missing (PEFT's .bin files are not read: pickles)"));
    }
    let raw = load_tensors(&tensor_path, &device)?;
    let mut factors: BTreeMap<String, HashMap<&str, Tensor>> = BTreeMap::new();
    let mut shared: HashMap<&str, Tensor> = HashMap::new();
    for (key, t) in raw {
        let parsed = if peft.vera_key.is_some() {
            match split_vera_key(&key) {
                Some(VeraKey::Shared(which)) => {
                    if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
                        return Err(bad(
                            dir,
                            format!("tensor `{key}` is {:?}; vera_A/B are floating point", t.dtype()),
                        ));
                    }
                    check_finite(dir, &key, &t)?;
                    if shared.insert(which, t.to_dtype(DType::F32)?).is_some() {
                        return Err(bad(dir, format!("two `vera_{which}` tensors (key `{key}`): one adapter only")));
                    }
                    continue;
                }
                Some(VeraKey::Layer(m, w)) => Some((m, w)),
                None => {
                    return Err(bad(
                        dir,
                        format!(
                            "tensor `{key}` is not a VeRA tensor (`base_model.vera_A|vera_B`, \
                             `base_model.model.<module>.vera_lambda_b|vera_lambda_d`)"
                        ),
                    ));
                }
            }
        } else if peft.fourier.is_some() {
            match split_fourier_key(&key) {
                Some(m) => Some((m, "S")),
                None => {
                    return Err(bad(
                        dir,
                        format!(
                            "tensor `{key}` is not a FourierFT tensor (`base_model.model.<module>.fourierft_spectrum`)"
                        ),
                    ));
                }
            }
        } else {
            split_key(&key)
        };
        let Some((module, which)) = parsed else {
            return Err(bad(
                dir,
                format!("tensor `{key}` is not a LoRA factor (`base_model.model.<module>.lora_A|lora_B.weight`)"),
            ));
        };
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(bad(dir, format!("tensor `{key}` is {:?}; LoRA factors are floating point", t.dtype())));
        }
        let slot = factors.entry(module).or_default();
        if slot.insert(which, t.to_dtype(DType::F32)?).is_some() {
            return Err(bad(dir, format!("two `lora_{which}` tensors for one module (key `{key}`)")));
        }
    }
    if factors.is_empty() {
        return Err(bad(dir, "adapter_model.safetensors holds no LoRA factors"));
    }
    if let Some((shown, pattern)) = &peft.targets
        && let Some(m) = factors.keys().find(|m| !pattern.matches(m))
    {
        return Err(bad(
            dir,
            format!(
                "module `{m}` has LoRA factors but `target_modules` ({shown}) does not name it: the files disagree"
            ),
        ));
    }

    // The base model, task and head.
    let (spec, like): (TaskSpec, Option<(AdapterFile, Option<Head>)>) = match (&args.like, args.preset) {
        (Some(like), _) => {
            let file = artifact::read_config(like)?;
            let spec: TaskSpec = crate::runspec::task_of(&file, like)?;
            let loaded = artifact::load(like, &device)?;
            (spec, Some((file, loaded.head)))
        }
        (None, Some(p)) => (crate::commands::train::preset_task(p)?, None),
        (None, None) => bail!(InputError("give --like DIR or --preset".into())),
    };
    let (kind, weights, linears) = base_linears(&spec, &device)?;
    let sha = artifact::file_sha256(&weights)?;
    if let Some((file, _)) = &like
        && (file.base_model.kind != kind || file.base_model.sha256 != sha)
    {
        bail!(InputError(format!(
            "--like was trained on {} {} (sha256 {}), but the model here is {kind} {} (sha256 {sha})",
            file.base_model.kind,
            file.base_model.path,
            file.base_model.sha256,
            weights.display()
        )));
    }

    // Targets in the model's module order, each with its two factors checked.
    let mut targets: Vec<LayerShape> = Vec::new();
    for l in &linears {
        if factors.contains_key(&l.name) {
            targets.push(LayerShape::new(&l.name, l.rows, l.cols));
        }
    }
    if let Some(unknown) = factors.keys().find(|m| !linears.iter().any(|l| &&l.name == m)) {
        let close: Vec<&str> = linears
            .iter()
            .filter(|l| l.name.rsplit('.').next() == unknown.rsplit('.').next())
            .take(3)
            .map(|l| l.name.as_str())
            .collect();
        return Err(bad(
            dir,
            format!("module `{unknown}` is not a linear layer of {} (e.g. {})", weights.display(), close.join(", ")),
        ));
    }
    if let Some(fourier) = peft.fourier {
        let (cfg, adapter) = fourier_adapter(dir, &peft, fourier, &targets, &factors, &device)?;
        let imported = Imported { targets: &targets, kind, weights: &weights, sha, spec: &spec };
        let with_head = imported.save(args, like, cfg, &adapter)?;
        println!(
            "imported {} FourierFT layers (n = {}, scaling {}, random_loc_seed {}) from {} into {}{}",
            targets.len(),
            fourier.0,
            peft.scale,
            fourier.1,
            dir.display(),
            args.out.display(),
            with_head
        );
        return Ok(());
    }
    if let Some(prng_key) = peft.vera_key {
        let (cfg, adapter, how) = vera_adapter(dir, &peft, prng_key, &targets, &factors, &shared, &device)?;
        let imported = Imported { targets: &targets, kind, weights: &weights, sha, spec: &spec };
        let with_head = imported.save(args, like, cfg, &adapter)?;
        println!(
            "imported {} VeRA layers (r = {}) from {} into {} as {how}{with_head}",
            targets.len(),
            peft.r,
            dir.display(),
            args.out.display(),
        );
        return Ok(());
    }
    let cfg = AdapterConfig {
        fold: Fold::Natural,
        groups: Some(targets.len()),
        order: 2,
        factorization: Factorization::Lora { rank: peft.r },
        projection: Projection::Identity,
        scale: peft.scale,
        seed: 0,
    };
    let plan = Plan::new(&targets, &cfg).map_err(|e| bad(dir, format!("rank {} does not fit: {e}", peft.r)))?;
    let adapter = SuperLora::new(plan, DType::F32, &device)?;
    let vars: HashMap<String, candle_core::Var> = adapter.named_vars().into_iter().collect();
    for (g, t) in targets.iter().enumerate() {
        let f = &factors[&t.name];
        let (Some(a), Some(b)) = (f.get("A"), f.get("B")) else {
            return Err(bad(dir, format!("module `{}` needs both lora_A and lora_B", t.name)));
        };
        for (which, got, want) in [("lora_A", a, [peft.r, t.cols]), ("lora_B", b, [t.rows, peft.r])] {
            if got.dims() != want {
                return Err(bad(
                    dir,
                    format!(
                        "`{}.{which}.weight` has shape {:?}; r = {} and the base weight {}x{} need {want:?}",
                        t.name,
                        got.dims(),
                        peft.r,
                        t.rows,
                        t.cols
                    ),
                ));
            }
            let v: Vec<f32> = got.flatten_all()?.to_vec1()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(dir, format!("`{}.{which}.weight` has a non-finite value at flat index {i}", t.name)));
            }
        }
        vars[&format!("group.{g}.lora_a")].set(b)?;
        vars[&format!("group.{g}.lora_b")].set(&a.t()?.contiguous()?)?;
    }

    let imported = Imported { targets: &targets, kind, weights: &weights, sha, spec: &spec };
    let with_head = imported.save(args, like, cfg, &adapter)?;
    println!(
        "imported {} LoRA layers (r = {}, α = {}) from {} into {}{}",
        targets.len(),
        peft.r,
        peft.scale,
        dir.display(),
        args.out.display(),
        with_head
    );
    Ok(())
}

/// What every import writes beside the adapter itself.
struct Imported<'a> {
    targets: &'a [LayerShape],
    kind: &'static str,
    weights: &'a Path,
    sha: String,
    spec: &'a TaskSpec,
}

impl Imported<'_> {
    /// Writes `--out` (config, adapter, the head of `--like` if any); returns the tail of the
    /// report line that says whether a head came along.
    fn save(
        self,
        args: &ImportArgs,
        like: Option<(AdapterFile, Option<Head>)>,
        cfg: AdapterConfig,
        adapter: &SuperLora,
    ) -> Result<&'static str> {
        let (head_info, head) = match like {
            Some((file, head)) => (file.head, head),
            None => (None, None),
        };
        let file = AdapterFile {
            format: artifact::FORMAT.into(),
            format_version: artifact::FORMAT_VERSION,
            adapter: Some(cfg),
            targets: self.targets.iter().map(|t| Target { name: t.name.clone(), rows: t.rows, cols: t.cols }).collect(),
            rules: Rules::current(),
            base_model: BaseModel {
                kind: self.kind.into(),
                path: self.weights.display().to_string(),
                sha256: self.sha,
            },
            head: if head.is_some() { head_info } else { None },
            trainable_params: adapter.num_trainable(),
            head_params: head.as_ref().map_or(0, Head::num_params),
            projection_saved: false,
            task: serde_json::to_value(self.spec)?,
        };
        artifact::save(&args.out, &file, Some(adapter), head.as_ref(), args.force)
            .with_context(|| format!("writing {}", args.out.display()))?;
        Ok(if head.is_some() { " with the head of --like" } else { " (no head: predict --json prints features)" })
    }
}

fn check_finite(dir: &Path, name: &str, t: &Tensor) -> Result<()> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(dir, format!("`{name}` has a non-finite value at flat index {i}")));
    }
    Ok(())
}

/// A VeRA tensor of a PEFT file.
#[derive(Debug, PartialEq)]
enum VeraKey {
    /// `base_model.vera_A` / `vera_B` (an adapter name may follow): "A" | "B".
    Shared(&'static str),
    /// `base_model.model.<module>.vera_lambda_b|d[.<adapter>]`: (module, "b" | "d").
    Layer(String, &'static str),
}

fn split_vera_key(key: &str) -> Option<VeraKey> {
    let one_name =
        |tail: &str| tail.is_empty() || (tail.len() > 1 && tail.starts_with('.') && !tail[1..].contains('.'));
    for (tag, which) in [("base_model.vera_A", "A"), ("base_model.vera_B", "B")] {
        if let Some(tail) = key.strip_prefix(tag)
            && one_name(tail)
        {
            return Some(VeraKey::Shared(which));
        }
    }
    let rest = key.strip_prefix("base_model.model.")?;
    for (tag, which) in [(".vera_lambda_b", "b"), (".vera_lambda_d", "d")] {
        if let Some(i) = rest.rfind(tag)
            && i > 0
            && one_name(&rest[i + tag.len()..])
        {
            return Some(VeraKey::Layer(rest[..i].to_string(), which));
        }
    }
    None
}

/// Our adapter for a PEFT VeRA: ΔW_l = diag(λ_b)·B_l·diag(λ_d)·A_l with A_l = vera_A[:, :d_in],
/// B_l = vera_B[:d_out, :]. When vera_A / vera_B are, bit for bit, the matrices our VeRA draws from
/// the seed `projection_prng_key` (an adapter exported by us), a VeRA adapter with that seed and
/// α = 1 (b = λ_b, d = λ_d: exact, no arithmetic). Otherwise (PEFT's torch-drawn projections, which
/// our VeRA cannot regenerate) the same ΔW as weight-wise LoRA of rank r with α = 1:
/// A = diag(λ_b)·B_l·diag(λ_d) (output side), B = A_lᵀ (one f32 rounding per entry of A).
fn vera_adapter(
    dir: &Path,
    peft: &PeftLora,
    prng_key: u64,
    targets: &[LayerShape],
    factors: &BTreeMap<String, HashMap<&str, Tensor>>,
    shared: &HashMap<&str, Tensor>,
    device: &Device,
) -> Result<(AdapterConfig, SuperLora, &'static str)> {
    let r = peft.r;
    let (Some(va), Some(vb)) = (shared.get("A"), shared.get("B")) else {
        return Err(bad(dir, "`base_model.vera_A` and `base_model.vera_B` must both be in the file (save_projection)"));
    };
    let max_rows = targets.iter().map(|t| t.rows).max().unwrap_or(0);
    let max_cols = targets.iter().map(|t| t.cols).max().unwrap_or(0);
    if va.rank() != 2 || va.dims()[0] != r || va.dims()[1] < max_cols {
        return Err(bad(
            dir,
            format!(
                "`base_model.vera_A` has shape {:?}; r = {r} and the widest target need [{r}, ≥{max_cols}]",
                va.dims()
            ),
        ));
    }
    if vb.rank() != 2 || vb.dims()[1] != r || vb.dims()[0] < max_rows {
        return Err(bad(
            dir,
            format!(
                "`base_model.vera_B` has shape {:?}; r = {r} and the tallest target need [≥{max_rows}, {r}]",
                vb.dims()
            ),
        ));
    }
    for t in targets {
        let f = &factors[&t.name];
        let (Some(b), Some(d)) = (f.get("b"), f.get("d")) else {
            return Err(bad(dir, format!("module `{}` needs both vera_lambda_b and vera_lambda_d", t.name)));
        };
        for (which, got, want) in [("vera_lambda_b", b, vec![t.rows]), ("vera_lambda_d", d, vec![r])] {
            if got.dims() != want.as_slice() {
                return Err(bad(
                    dir,
                    format!(
                        "`{}.{which}` has shape {:?}; the weight {}x{} and r = {r} need {want:?}",
                        t.name,
                        got.dims(),
                        t.rows,
                        t.cols
                    ),
                ));
            }
            check_finite(dir, &format!("{}.{which}", t.name), got)?;
        }
    }
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
    };
    let ours = if va.dims() == [r, max_cols] && vb.dims() == [max_rows, r] {
        let (a, b) = superlora_core::factor::vera::shared(prng_key, r, max_rows, max_cols, DType::F32, device)?;
        bits(&a)? == bits(va)? && bits(&b)? == bits(vb)?
    } else {
        false
    };
    if ours {
        let cfg = AdapterSpec {
            fold: Some(Fold::Natural),
            order: Some(2),
            factor: Some(FactorKind::Vera),
            rank: Some(r),
            scale: Some(1.0),
            seed: Some(prng_key),
            ..Default::default()
        }
        .resolve()
        .map_err(|e| bad(dir, format!("rank {r}: {e}")))?;
        let plan = Plan::new(targets, &cfg).map_err(|e| bad(dir, format!("rank {r} does not fit: {e}")))?;
        let adapter = SuperLora::new(plan, DType::F32, device)?;
        for (g, t) in targets.iter().enumerate() {
            let f = &factors[&t.name];
            adapter.set(&format!("group.{g}.vera_lambda_b"), &f["b"])?;
            adapter.set(&format!("group.{g}.vera_lambda_d"), &f["d"])?;
        }
        return Ok((cfg, adapter, "VeRA (the projections are ours for seed `projection_prng_key`)"));
    }
    let cfg = AdapterConfig {
        fold: Fold::Natural,
        groups: Some(targets.len()),
        order: 2,
        factorization: Factorization::Lora { rank: r },
        projection: Projection::Identity,
        scale: 1.0,
        seed: 0,
    };
    let plan = Plan::new(targets, &cfg).map_err(|e| bad(dir, format!("rank {r} does not fit: {e}")))?;
    let adapter = SuperLora::new(plan, DType::F32, device)?;
    for (g, t) in targets.iter().enumerate() {
        let f = &factors[&t.name];
        let b_l = vb.narrow(0, 0, t.rows)?;
        let a_l = va.narrow(1, 0, t.cols)?;
        let left = b_l.broadcast_mul(&f["b"].unsqueeze(1)?)?.broadcast_mul(&f["d"].unsqueeze(0)?)?;
        adapter.set(&format!("group.{g}.lora_a"), &left.contiguous()?)?;
        adapter.set(&format!("group.{g}.lora_b"), &a_l.t()?.contiguous()?)?;
    }
    Ok((cfg, adapter, "weight-wise LoRA of rank r with the same ΔW (PEFT's torch-drawn vera_A/B are not ours)"))
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn peft_keys_split_into_module_and_factor() {
        let k = |s: &str| split_key(s).map(|(m, w)| (m, w.to_string()));
        assert_eq!(
            k("base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"),
            Some(("encoder.layer.0.attention.self.query".into(), "A".into()))
        );
        assert_eq!(
            k("base_model.model.blocks.3.attn.qkv.lora_B.default.weight"),
            Some(("blocks.3.attn.qkv".into(), "B".into()))
        );
        assert_eq!(k("base_model.model.encoder.layer.0.attention.self.query.weight"), None);
        assert_eq!(k("encoder.layer.0.query.lora_A.weight"), None);
        assert_eq!(k("base_model.model.x.lora_A.a.b.weight"), None);
        assert_eq!(k("base_model.model.x.lora_embedding_A"), None);
    }

    #[test]
    fn peft_vera_keys_split() {
        use super::{VeraKey, split_vera_key};
        assert_eq!(split_vera_key("base_model.vera_A"), Some(VeraKey::Shared("A")));
        assert_eq!(split_vera_key("base_model.vera_B.default"), Some(VeraKey::Shared("B")));
        assert_eq!(split_vera_key("base_model.vera_Ax"), None);
        assert_eq!(
            split_vera_key("base_model.model.encoder.layer.0.attention.self.query.vera_lambda_b"),
            Some(VeraKey::Layer("encoder.layer.0.attention.self.query".into(), "b"))
        );
        assert_eq!(split_vera_key("base_model.model.q.vera_lambda_d.default"), Some(VeraKey::Layer("q".into(), "d")));
        assert_eq!(split_vera_key("base_model.model.q.vera_lambda_d.a.b"), None);
        assert_eq!(split_vera_key("base_model.model.q.lora_A.weight"), None);
    }
}
