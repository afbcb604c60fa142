//! The adapter as a portable artifact: a folder with `adapter_config.json` and
//! `adapter_model.safetensors` (format described in docs/FORMAT.md).
//!
//! - `adapter_config.json`: format and version, the full SuperLoRA config, the ordered targets
//!   (module name and shape), the rules the adapter was built with (Kronecker side split, RNG
//!   streams, LoRA factor roles), the base model's identity (kind, path, sha256 of its weights
//!   file), the head (features, class names) and the task description.
//! - `adapter_model.safetensors`: every trainable tensor under its stable name `group.<g>.<name>`,
//!   `head.weight` / `head.bias` if a head was trained, and — when saved with projections —
//!   `projection.group.<g>.{signs,perm,gauss}` (fastfood, u8/u32/f32) or
//!   `projection.group.<g>.shuffle_src` (u32), so a reader without our RNG can rebuild ΔW.
//!
//! Loading treats the folder as untrusted: unknown fields, a format it does not know, targets that
//! do not match the plan, missing / extra / wrong-shape / wrong-dtype / non-finite tensors, and
//! saved projections that differ from the ones the seed regenerates are all errors that say what
//! differs. Saving is atomic (a temporary folder renamed into place) and refuses to replace an
//! existing folder unless asked.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use superlora_core::plan::KRONECKER_SIDE_RULE;
use superlora_core::projection::GroupProjection;
use superlora_core::{AdapterConfig, LayerShape, Plan, SuperLora};

use crate::checkpoint::{load_tensors, save_tensors};
use crate::head::Head;
use crate::{Error, Result};

/// Format name written in every adapter folder.
pub const FORMAT: &str = "superlora-adapter";
/// Current format version.
pub const FORMAT_VERSION: u32 = 1;
/// The config file of an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The tensor file of an adapter folder.
pub const TENSOR_FILE: &str = "adapter_model.safetensors";

/// One adapted weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Module path (the weight is `<name>.weight`).
    pub name: String,
    /// d_out.
    pub rows: usize,
    /// d_in.
    pub cols: usize,
}

/// The rules an adapter was built with, recorded so files stay readable if a rule changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The Kronecker side split and factor kinds.
    pub kronecker_side_split: String,
    /// How fixed randomness is drawn.
    pub rng: String,
    /// Which LoRA factor is which.
    pub lora_factors: String,
}

impl Rules {
    /// The rules of this version of the code.
    pub fn current() -> Self {
        Rules {
            kronecker_side_split: KRONECKER_SIDE_RULE.into(),
            rng: "ChaCha8 (rand_chacha 0.9) seeded with seed_from_u64(seed), stream = group << 8 | purpose (1 init, 2 shuffle, 3 fastfood signs, 4 fastfood permutation, 5 fastfood gauss, 6 VeRA shared A and B, 7 FourierFT positions; groups 0 for the last two); distributions in superlora_core::rng".into(),
            lora_factors: "X = A·Bᵀ with A (lora_a) [rows, r] the output side and B (lora_b) [cols, r] the input side".into(),
        }
    }
}

/// The base model an adapter belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// `bert` or `dinov2`.
    pub kind: String,
    /// Path of its weights file when the adapter was saved.
    pub path: String,
    /// sha256 of that file.
    pub sha256: String,
}

/// The classification head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadInfo {
    /// Input features.
    pub features: usize,
    /// Class names, by label.
    pub classes: Vec<String>,
}

/// `adapter_config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The adapter; None for a head-only (linear probe) artifact.
    pub adapter: Option<AdapterConfig>,
    /// The adapted weights, in plan order.
    pub targets: Vec<Target>,
    /// Rules in force.
    pub rules: Rules,
    /// Base model identity.
    pub base_model: BaseModel,
    /// The head, if one was trained.
    pub head: Option<HeadInfo>,
    /// Trainable adapter parameters.
    pub trainable_params: usize,
    /// Trainable head parameters.
    pub head_params: usize,
    /// Whether the fixed projections are in the tensor file.
    pub projection_saved: bool,
    /// Free-form task description (dataset, input size, …).
    pub task: serde_json::Value,
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Io { path: path.display().to_string(), cause })?;
    Ok(superlora_io::dinov2::sha256_hex(&bytes))
}

fn projection_tensors(adapter: &SuperLora, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for g in 0..adapter.plan().groups.len() {
        match adapter.projection(g) {
            Some(GroupProjection::Fastfood(f)) => {
                let signs: Vec<u8> = f.signs.iter().map(|&s| u8::from(s)).collect();
                out.insert(format!("projection.group.{g}.signs"), Tensor::from_vec(signs, f.padded, device)?);
                out.insert(format!("projection.group.{g}.perm"), Tensor::from_vec(f.perm.clone(), f.padded, device)?);
                out.insert(format!("projection.group.{g}.gauss"), Tensor::from_vec(f.gauss.clone(), f.padded, device)?);
            }
            Some(GroupProjection::Shuffle(s)) => {
                out.insert(
                    format!("projection.group.{g}.shuffle_src"),
                    Tensor::from_vec(s.src.clone(), s.src.len(), device)?,
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Writes the adapter folder `dir` atomically. Refuses an existing `dir` unless `force`.
pub fn save(
    dir: &Path,
    file: &AdapterFile,
    adapter: Option<&SuperLora>,
    head: Option<&Head>,
    force: bool,
) -> Result<()> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |cause| Error::Io { path: p.clone(), cause }
    };
    crate::output::check_replace(
        dir,
        force,
        crate::output::Kind::Folder(&[CONFIG_FILE, TENSOR_FILE]),
        "adapter folder",
    )?;
    let staged = crate::output::Staged::new(dir, true)?;
    let tmp = staged.path();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    if let Some(a) = adapter {
        for (n, v) in a.named_vars() {
            tensors.insert(n, v.as_tensor().to_dtype(DType::F32)?);
        }
        if file.projection_saved {
            tensors.extend(projection_tensors(a, &Device::Cpu)?);
        }
    }
    if let Some(h) = head {
        for (n, v) in h.named_vars() {
            tensors.insert(format!("head.{n}"), v.as_tensor().to_dtype(DType::F32)?);
        }
    }
    let meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    save_tensors(&tmp.join(TENSOR_FILE), &tensors, Some(meta))?;
    let json = serde_json::to_string_pretty(file).map_err(|e| Error::Checkpoint(e.to_string()))?;
    std::fs::write(tmp.join(CONFIG_FILE), json).map_err(io(tmp))?;
    staged.commit()
}

/// An adapter folder read back and checked.
pub struct Loaded {
    /// Its config.
    pub file: AdapterFile,
    /// The adapter with its trained values (None for head-only).
    pub adapter: Option<SuperLora>,
    /// The targets, as plan shapes.
    pub targets: Vec<LayerShape>,
    /// The head, if saved.
    pub head: Option<Head>,
}

fn bad(dir: &Path, what: String) -> Error {
    Error::Checkpoint(format!("{}: {what}", dir.display()))
}

/// Reads `adapter_config.json` of `dir`.
pub fn read_config(dir: &Path) -> Result<AdapterFile> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|cause| Error::Io { path: path.display().to_string(), cause })?;
    let file: AdapterFile = serde_json::from_str(&text)
        .map_err(|e| bad(dir, format!("{CONFIG_FILE} is not a valid adapter config: {e}")))?;
    if file.format != FORMAT {
        return Err(bad(dir, format!("format is `{}`, expected `{FORMAT}`", file.format)));
    }
    if file.format_version != FORMAT_VERSION {
        return Err(bad(
            dir,
            format!("format_version {} is not {FORMAT_VERSION}, the version this program reads", file.format_version),
        ));
    }
    Ok(file)
}

/// Bounds on what a loaded adapter may make this program allocate.
#[derive(Clone, Copy, Debug)]
pub struct LoadLimits {
    /// Most entries (Σ rows·cols over the targets) an adapter may cover: its ΔW and fixed
    /// projections are this large. The default, 2^31, is far above the attention weights of any
    /// model this program runs.
    pub max_entries: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits { max_entries: 1 << 31 }
    }
}

/// Loads and checks an adapter folder (see the module docs).
pub fn load(dir: &Path, device: &Device) -> Result<Loaded> {
    load_with_limits(dir, device, LoadLimits::default())
}

/// [`load`] with explicit allocation bounds. Nothing is allocated from the config's numbers
/// before they are checked against the limits and against the size of the tensor file.
pub fn load_with_limits(dir: &Path, device: &Device, limits: LoadLimits) -> Result<Loaded> {
    let file = read_config(dir)?;
    let targets: Vec<LayerShape> = file.targets.iter().map(|t| LayerShape::new(&t.name, t.rows, t.cols)).collect();
    let tensor_path = dir.join(TENSOR_FILE);
    let mut tensors = load_tensors(&tensor_path, device)?;
    let adapter = match &file.adapter {
        None => None,
        Some(cfg) => {
            let plan = Plan::new(&targets, cfg)
                .map_err(|e| bad(dir, format!("the config does not plan over its targets: {e}")))?;
            if plan.total_entries > limits.max_entries {
                return Err(bad(
                    dir,
                    format!(
                        "the targets cover {} entries, more than the loader's limit of {}",
                        plan.total_entries, limits.max_entries
                    ),
                ));
            }
            let held: usize = tensors.values().map(|t| t.elem_count()).sum();
            if plan.trainable_params > held {
                return Err(bad(
                    dir,
                    format!(
                        "the config needs {} trainable values but {TENSOR_FILE} holds only {held}",
                        plan.trainable_params
                    ),
                ));
            }
            let a = SuperLora::new(plan, DType::F32, device)?;
            for (name, var) in a.named_vars() {
                let t = tensors.remove(&name).ok_or_else(|| bad(dir, format!("tensor `{name}` is missing")))?;
                check_tensor(dir, &name, &t, var.dims(), DType::F32)?;
                var.set(&t)?;
            }
            if a.num_trainable() != file.trainable_params {
                return Err(bad(
                    dir,
                    format!("trainable_params says {}, the tensors hold {}", file.trainable_params, a.num_trainable()),
                ));
            }
            if file.projection_saved {
                let regenerated = projection_tensors(&a, device)?;
                for (name, want) in regenerated {
                    let got = tensors
                        .remove(&name)
                        .ok_or_else(|| bad(dir, format!("projection tensor `{name}` is missing")))?;
                    if got.dims() != want.dims() || got.dtype() != want.dtype() || !bitwise_equal(&got, &want)? {
                        return Err(bad(
                            dir,
                            format!(
                                "projection `{name}` differs from the one regenerated from seed {}: the file was written by an incompatible RNG",
                                cfg.seed
                            ),
                        ));
                    }
                }
            }
            Some(a)
        }
    };
    let head = match &file.head {
        None => None,
        Some(h) => {
            let held: usize = tensors.values().map(|t| t.elem_count()).sum();
            let need = h.features.checked_mul(h.classes.len()).and_then(|w| w.checked_add(h.classes.len()));
            if need.is_none_or(|n| n > held) || h.classes.is_empty() || h.features == 0 {
                return Err(bad(
                    dir,
                    format!(
                        "the head ({} features x {} classes) does not match the {held} values left in {TENSOR_FILE}",
                        h.features,
                        h.classes.len()
                    ),
                ));
            }
            let head = Head::new(h.features, h.classes.len(), 0, DType::F32, device)?;
            for (n, var) in head.named_vars() {
                let name = format!("head.{n}");
                let t = tensors.remove(&name).ok_or_else(|| bad(dir, format!("tensor `{name}` is missing")))?;
                check_tensor(dir, &name, &t, var.dims(), DType::F32)?;
                var.set(&t)?;
            }
            Some(head)
        }
    };
    if let Some(extra) = tensors.keys().next() {
        return Err(bad(dir, format!("unexpected tensor `{extra}` (not part of this adapter)")));
    }
    Ok(Loaded { file, adapter, targets, head })
}

fn check_tensor(dir: &Path, name: &str, t: &Tensor, dims: &[usize], dtype: DType) -> Result<()> {
    if t.dims() != dims {
        return Err(bad(dir, format!("tensor `{name}` has shape {:?}, expected {dims:?}", t.dims())));
    }
    if t.dtype() != dtype {
        return Err(bad(dir, format!("tensor `{name}` is {:?}, expected {dtype:?}", t.dtype())));
    }
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(dir, format!("tensor `{name}` has a non-finite value at flat index {i}")));
    }
    Ok(())
}

fn bitwise_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(match a.dtype() {
        DType::U8 => a.to_vec1::<u8>()? == b.to_vec1::<u8>()?,
        DType::U32 => a.to_vec1::<u32>()? == b.to_vec1::<u32>()?,
        _ => {
            let (x, y): (Vec<f32>, Vec<f32>) = (a.to_vec1()?, b.to_vec1()?);
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()) && x.len() == y.len()
        }
    })
}
