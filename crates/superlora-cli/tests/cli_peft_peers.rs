//! PEFT VeRA through the command line, without Python: a VeRA adapter on MiniLM's query/value
//! weights (random b and d, α = 2.5) goes out with `export --format peft` and back in with
//! `import --format peft --preset minilm-rt`, and comes back as VeRA with the same ΔW (α is folded
//! into `vera_lambda_b` on the way out). A PEFT VeRA whose projections are not ours comes in as
//! weight-wise LoRA with the same ΔW. A FourierFT adapter goes out as PEFT's FOURIERFT (the
//! coefficients; PEFT redraws the same frequencies from `random_loc_seed`) and comes back with the
//! same ΔW. Needs the MiniLM asset (`scripts/setup-assets.sh minilm`); tools/peft_peers_check.py
//! checks the same files against PEFT itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Factorization, Fold, LayerShape, ProjectionKind, SuperLora};
use superlora_train::artifact::{self, AdapterFile, BaseModel, Rules, Target};
use superlora_train::checkpoint::{load_tensors, save_tensors};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_superlora")
}

fn minilm() -> PathBuf {
    let m = superlora_data::cache_dir().unwrap().join("assets/minilm/model.safetensors");
    assert!(m.is_file(), "missing {}: run `scripts/setup-assets.sh minilm`", m.display());
    m
}

fn shapes() -> Vec<LayerShape> {
    (0..6)
        .flat_map(|l| {
            ["query", "value"].map(|m| LayerShape::new(format!("encoder.layer.{l}.attention.self.{m}"), 384, 384))
        })
        .collect()
}

/// Writes an adapter folder of `spec` on MiniLM's query/value weights with random values.
fn make(dir: &Path, spec: AdapterSpec) -> SuperLora {
    let dev = Device::Cpu;
    let cfg = spec.resolve().unwrap();
    let a = SuperLora::from_shapes(&shapes(), &cfg, DType::F32, &dev).unwrap();
    // Seeded values (candle's CPU randn cannot be seeded): each tensor its own stream.
    for (i, (n, v)) in a.named_vars().into_iter().enumerate() {
        let mut r = superlora_core::rng::stream(1, i, superlora_core::rng::Purpose::Init);
        let values: Vec<f32> = (0..v.elem_count()).map(|_| (r.normal() * 0.5) as f32).collect();
        a.set(&n, &Tensor::from_vec(values, v.dims(), &dev).unwrap()).unwrap();
    }
    let file = AdapterFile {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        adapter: Some(cfg),
        targets: shapes().iter().map(|s| Target { name: s.name.clone(), rows: s.rows, cols: s.cols }).collect(),
        rules: Rules::current(),
        base_model: BaseModel { kind: "bert".into(), path: minilm().display().to_string(), sha256: "00".into() },
        head: None,
        trainable_params: a.num_trainable(),
        head_params: 0,
        projection_saved: false,
        task: serde_json::json!({"dataset": "rotten-tomatoes"}),
    };
    artifact::save(dir, &file, Some(&a), None, false).unwrap();
    a
}

fn cli(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(bin()).args(args).output().unwrap();
    (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn deltas(dir: &Path) -> (superlora_core::AdapterConfig, Vec<Vec<f32>>) {
    let loaded = artifact::load(dir, &Device::Cpu).unwrap();
    let a = loaded.adapter.unwrap();
    let d = a.delta_weights().unwrap().iter().map(|t| t.flatten_all().unwrap().to_vec1().unwrap()).collect();
    (a.config().clone(), d)
}

/// max |a − b| / max |a| over all layers.
fn relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut diff = 0f32;
    let mut size = 0f32;
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            diff = diff.max((p - q).abs());
            size = size.max(p.abs());
        }
    }
    assert!(size > 0.0);
    diff / size
}

#[test]
fn vera_goes_out_to_peft_and_comes_back_with_the_same_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let ours = tmp.path().join("ours");
    make(
        &ours,
        AdapterSpec {
            fold: Some(Fold::Natural),
            order: Some(2),
            factor: Some(FactorKind::Vera),
            rank: Some(4),
            scale: Some(2.5),
            seed: Some(7),
            ..Default::default()
        },
    );
    let peft = tmp.path().join("peft");
    let (code, out) = cli(&["export", "--format", "peft", "--adapter", &s(&ours), "--out", &s(&peft)]);
    assert_eq!(code, Some(0), "{out}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "VERA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["save_projection"], true);
    assert_eq!(cfg["projection_prng_key"], 7);
    let t = load_tensors(&peft.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(t.len(), 2 * 12 + 2);
    assert_eq!(t["base_model.vera_A"].dims(), [4, 384]);
    assert_eq!(t["base_model.vera_B"].dims(), [384, 4]);
    assert_eq!(t["base_model.model.encoder.layer.5.attention.self.value.vera_lambda_b"].dims(), [384]);

    let back = tmp.path().join("back");
    let (code, out) = cli(&["import", "--format", "peft", &s(&peft), "--preset", "minilm-rt", "--out", &s(&back)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("as VeRA"), "{out}");
    let (c0, d0) = deltas(&ours);
    let (c1, d1) = deltas(&back);
    assert_eq!(c1.factorization, Factorization::Vera { rank: 4 });
    assert_eq!((c1.seed, c1.scale), (7, 1.0));
    assert_eq!(c0.scale, 2.5);
    let rel = relative(&d0, &d1);
    assert!(rel <= 1e-6, "VeRA round trip: relative ΔW difference {rel:e}");

    // Projections that are not ours for the key (as PEFT's torch-drawn ones): LoRA, same ΔW.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let mut cfg2 = cfg.clone();
    cfg2["projection_prng_key"] = 8.into();
    std::fs::write(foreign.join("adapter_config.json"), cfg2.to_string()).unwrap();
    save_tensors(&foreign.join("adapter_model.safetensors"), &t, None).unwrap();
    let lora = tmp.path().join("lora");
    let (code, out) = cli(&["import", "--format", "peft", &s(&foreign), "--preset", "minilm-rt", "--out", &s(&lora)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("weight-wise LoRA"), "{out}");
    let (c2, d2) = deltas(&lora);
    assert_eq!(c2.factorization, Factorization::Lora { rank: 4 });
    let rel = relative(&d0, &d2);
    assert!(rel <= 1e-6, "VeRA as LoRA: relative ΔW difference {rel:e}");

    // Refusals, exit code 2, with the reason.
    let mut no_proj = cfg.clone();
    no_proj["save_projection"] = false.into();
    std::fs::write(foreign.join("adapter_config.json"), no_proj.to_string()).unwrap();
    let (code, out) =
        cli(&["import", "--format", "peft", &s(&foreign), "--preset", "minilm-rt", "--out", &s(&lora), "--force"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("`save_projection` is false"), "{out}");
    let mut fourier = cfg.clone();
    fourier["peft_type"] = "FOURIERFT".into();
    std::fs::write(foreign.join("adapter_config.json"), fourier.to_string()).unwrap();
    let (code, out) =
        cli(&["import", "--format", "peft", &s(&foreign), "--preset", "minilm-rt", "--out", &s(&lora), "--force"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("`n_frequency` = null"), "{out}");
    let mut missing = t.clone();
    missing.remove("base_model.vera_B");
    std::fs::write(foreign.join("adapter_config.json"), cfg.to_string()).unwrap();
    save_tensors(&foreign.join("adapter_model.safetensors"), &missing, None).unwrap();
    let (code, out) =
        cli(&["import", "--format", "peft", &s(&foreign), "--preset", "minilm-rt", "--out", &s(&lora), "--force"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("vera_B"), "{out}");
}

#[test]
fn fourierft_goes_out_to_peft_and_comes_back_with_the_same_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let ours = tmp.path().join("ours");
    make(
        &ours,
        AdapterSpec {
            projection: Some(ProjectionKind::Fourier),
            count: Some(50),
            scale: Some(120.0),
            seed: Some(3),
            ..Default::default()
        },
    );
    let peft = tmp.path().join("peft");
    let (code, out) = cli(&["export", "--format", "peft", "--adapter", &s(&ours), "--out", &s(&peft)]);
    assert_eq!(code, Some(0), "{out}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "FOURIERFT");
    assert_eq!((cfg["n_frequency"].as_u64(), cfg["scaling"].as_f64()), (Some(50), Some(120.0)));
    assert_eq!(cfg["random_loc_seed"], 3);
    let t = load_tensors(&peft.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(t.len(), 12);
    assert_eq!(t["base_model.model.encoder.layer.5.attention.self.value.fourierft_spectrum"].dims(), [50]);

    let back = tmp.path().join("back");
    let (code, out) = cli(&["import", "--format", "peft", &s(&peft), "--preset", "minilm-rt", "--out", &s(&back)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("12 FourierFT layers"), "{out}");
    let (c0, d0) = deltas(&ours);
    let (c1, d1) = deltas(&back);
    assert_eq!((c1.projection, c1.scale, c1.seed), (c0.projection, 120.0, 3));
    assert_eq!(d0, d1, "FourierFT round trip: the coefficients and frequencies come back unchanged");

    // Refusals, exit code 2, with the reason: a wrong spectrum length, per-layer counts.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let mut short = t.clone();
    let key = "base_model.model.encoder.layer.0.attention.self.query.fourierft_spectrum";
    short.insert(key.into(), Tensor::zeros(49, DType::F32, &Device::Cpu).unwrap());
    std::fs::write(bad.join("adapter_config.json"), cfg.to_string()).unwrap();
    save_tensors(&bad.join("adapter_model.safetensors"), &short, None).unwrap();
    let out_dir = s(&tmp.path().join("x"));
    let (code, out) = cli(&["import", "--format", "peft", &s(&bad), "--preset", "minilm-rt", "--out", &out_dir]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("has shape [49]; n_frequency = 50 needs [50]"), "{out}");
    let mut pattern = cfg.clone();
    pattern["n_frequency_pattern"] = serde_json::json!({"query": 10});
    std::fs::write(bad.join("adapter_config.json"), pattern.to_string()).unwrap();
    save_tensors(&bad.join("adapter_model.safetensors"), &t, None).unwrap();
    let (code, out) = cli(&["import", "--format", "peft", &s(&bad), "--preset", "minilm-rt", "--out", &out_dir]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("`n_frequency_pattern` is set"), "{out}");
}
