//! Untrusted adapter files through the command line: every corruption of an adapter folder (and of
//! a PEFT folder given to `import`) is refused with a message naming what is wrong and exit code 2
//! — never a panic (exit code 101) and never a success. Needs no assets: `export --format delta`
//! reads only the adapter folder, and the PEFT checks fail before the base model is loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape, SuperLora};
use superlora_train::artifact::{self, AdapterFile, BaseModel, HeadInfo, Rules, Target};
use superlora_train::checkpoint::{load_tensors, save_tensors};
use superlora_train::head::Head;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_superlora")
}

fn shapes() -> Vec<LayerShape> {
    vec![LayerShape::new("l.0.query", 6, 5), LayerShape::new("l.0.value", 6, 5), LayerShape::new("l.1.query", 6, 5)]
}

/// A valid weight-wise LoRA r=2 adapter folder with random values and a head.
fn make(dir: &Path) {
    let dev = Device::Cpu;
    let cfg = AdapterSpec {
        fold: Some(Fold::Natural),
        order: Some(2),
        factor: Some(FactorKind::Lora),
        rank: Some(2),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let a = SuperLora::from_shapes(&shapes(), &cfg, DType::F32, &dev).unwrap();
    // Seeded values (candle's CPU randn cannot be seeded): each tensor its own stream.
    for (i, (n, v)) in a.named_vars().into_iter().enumerate() {
        let mut r = superlora_core::rng::stream(1, i, superlora_core::rng::Purpose::Init);
        let values: Vec<f32> = (0..v.elem_count()).map(|_| (r.normal()) as f32).collect();
        a.set(&n, &Tensor::from_vec(values, v.dims(), &dev).unwrap()).unwrap();
    }
    let head = Head::new(4, 2, 1, DType::F32, &dev).unwrap();
    let file = AdapterFile {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        adapter: Some(cfg),
        targets: shapes().iter().map(|s| Target { name: s.name.clone(), rows: s.rows, cols: s.cols }).collect(),
        rules: Rules::current(),
        base_model: BaseModel { kind: "bert".into(), path: "model.safetensors".into(), sha256: "00".into() },
        head: Some(HeadInfo { features: 4, classes: vec!["no".into(), "yes".into()] }),
        trainable_params: a.num_trainable(),
        head_params: head.num_params(),
        projection_saved: false,
        task: serde_json::json!({"dataset": "rotten-tomatoes"}),
    };
    artifact::save(dir, &file, Some(&a), Some(&head), false).unwrap();
}

/// `superlora export --format delta` on `dir`: (exit code, stderr).
fn export(dir: &Path, out: &Path) -> (Option<i32>, String) {
    let o = Command::new(bin())
        .args(["export", "--format", "delta", "--adapter", dir.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let p = dir.join(artifact::TENSOR_FILE);
    let mut t = load_tensors(&p, &Device::Cpu).unwrap();
    f(&mut t);
    save_tensors(&p, &t, None).unwrap();
}

/// A safetensors file from a raw header and data section.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn a_corpus_of_corrupted_adapters_is_refused_with_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    make(&good);
    let (code, err) = export(&good, &tmp.path().join("good-out"));
    assert_eq!(code, Some(0), "the intact adapter must export: {err}");

    type Corrupt = Box<dyn Fn(&Path)>;
    let tensor_file = |d: &Path| d.join(artifact::TENSOR_FILE);
    let config_file = |d: &Path| d.join(artifact::CONFIG_FILE);
    let cases: Vec<(&str, Corrupt, &str)> = vec![
        (
            "truncated header",
            Box::new(move |d| {
                let b = std::fs::read(tensor_file(d)).unwrap();
                std::fs::write(tensor_file(d), &b[..20]).unwrap();
            }),
            "header length",
        ),
        ("shorter than 8 bytes", Box::new(move |d| std::fs::write(tensor_file(d), [1u8, 0, 0]).unwrap()), "shorter"),
        (
            "header length larger than the file",
            Box::new(move |d| std::fs::write(tensor_file(d), [&1000u64.to_le_bytes()[..], b"{}"].concat()).unwrap()),
            "larger than the rest of the file",
        ),
        (
            "absurd header length",
            Box::new(move |d| std::fs::write(tensor_file(d), u64::MAX.to_le_bytes()).unwrap()),
            "exceeds",
        ),
        (
            "truncated data",
            Box::new(move |d| {
                let b = std::fs::read(tensor_file(d)).unwrap();
                std::fs::write(tensor_file(d), &b[..b.len() - 7]).unwrap();
            }),
            "outside the",
        ),
        (
            "overlapping offsets",
            Box::new(move |d| {
                let h = r#"{"group.0.lora_a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"group.0.lora_b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
                std::fs::write(tensor_file(d), raw_safetensors(h, &[0u8; 12])).unwrap();
            }),
            "overlap",
        ),
        (
            "shape that overflows",
            Box::new(move |d| {
                let h = r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#;
                std::fs::write(tensor_file(d), raw_safetensors(h, &[0u8; 4])).unwrap();
            }),
            "needs too many bytes",
        ),
        (
            "deeply nested header",
            Box::new(move |d| {
                let h = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
                std::fs::write(tensor_file(d), raw_safetensors(&h, &[])).unwrap();
            }),
            "not a JSON object",
        ),
        (
            "NaN value",
            Box::new(|d| {
                edit_tensors(d, |t| {
                    let v = t["group.1.lora_a"].zeros_like().unwrap().affine(0.0, f64::NAN).unwrap();
                    t.insert("group.1.lora_a".into(), v);
                })
            }),
            "non-finite",
        ),
        (
            "wrong shape",
            Box::new(|d| {
                edit_tensors(d, |t| {
                    t.insert("group.2.lora_b".into(), Tensor::zeros((5, 3), DType::F32, &Device::Cpu).unwrap());
                })
            }),
            "has shape [5, 3], expected [5, 2]",
        ),
        (
            "wrong dtype",
            Box::new(|d| {
                edit_tensors(d, |t| {
                    let v = t["group.0.lora_b"].to_dtype(DType::F64).unwrap();
                    t.insert("group.0.lora_b".into(), v);
                })
            }),
            "is F64, expected F32",
        ),
        (
            "missing tensor",
            Box::new(|d| {
                edit_tensors(d, |t| {
                    t.remove("group.0.lora_a");
                })
            }),
            "holds only",
        ),
        (
            "unknown config field",
            Box::new(move |d| {
                let text = std::fs::read_to_string(config_file(d)).unwrap();
                std::fs::write(config_file(d), text.replacen('{', "{\"trust_me\": true,", 1)).unwrap();
            }),
            "trust_me",
        ),
        (
            "truncated config",
            Box::new(move |d| {
                let text = std::fs::read_to_string(config_file(d)).unwrap();
                std::fs::write(config_file(d), &text[..text.len() / 2]).unwrap();
            }),
            "not a valid adapter config",
        ),
        (
            "targets that contradict the tensors",
            Box::new(move |d| {
                let text = std::fs::read_to_string(config_file(d)).unwrap();
                std::fs::write(config_file(d), text.replacen("\"rows\": 6", "\"rows\": 7", 1)).unwrap();
            }),
            "has shape",
        ),
        (
            "invalid adapter config",
            Box::new(move |d| {
                let text = std::fs::read_to_string(config_file(d)).unwrap();
                std::fs::write(config_file(d), text.replacen("\"order\": 2", "\"order\": 3", 1)).unwrap();
            }),
            "order",
        ),
    ];
    for (i, (name, corrupt, want)) in cases.iter().enumerate() {
        let d = tmp.path().join(format!("case{i}"));
        make(&d);
        corrupt(&d);
        let (code, err) = export(&d, &tmp.path().join(format!("case{i}-out")));
        assert_eq!(code, Some(2), "{name}: exit code {code:?}, stderr: {err}");
        assert!(err.contains(want), "{name}: want `{want}` in: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!tmp.path().join(format!("case{i}-out")).exists(), "{name}: wrote an output");
    }
}

/// Runs the binary in `cwd`: (exit code, stderr).
fn run_in(cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(bin()).current_dir(cwd).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Hidden temporaries (`.<name>.tmp-<pid>`) left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn force_replaces_only_our_outputs_and_a_refused_write_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = root.join("a");
    make(&a);
    let a_str = a.to_str().unwrap();
    // A folder holding someone's file is not emptied by --force, whether named or `.`.
    let mine = root.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "mine").unwrap();
    let (code, err) = run_in(root, &["export", "--format", "delta", "--adapter", a_str, "--out", "mine", "--force"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`thesis.tex`") && err.contains("did not write"), "{err}");
    let (code, err) = run_in(&mine, &["export", "--format", "delta", "--adapter", a_str, "--out", ".", "--force"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("names no file or folder of its own"), "{err}");
    assert_eq!(std::fs::read_to_string(mine.join("thesis.tex")).unwrap(), "mine");
    // Our own export is replaced with --force.
    for _ in 0..2 {
        let (code, err) = run_in(root, &["export", "--format", "delta", "--adapter", a_str, "--out", "e", "--force"]);
        assert_eq!(code, Some(0), "{err}");
    }
    // Flags refused once the temporary exists (a rank past the layer) leave nothing behind.
    for bad in [
        &["--format", "peft", "--rank", "0"][..],
        &["--format", "delta", "--rank", "2"][..],
        &["--format", "peft", "--rank", "99"][..],
    ] {
        let mut args = vec!["export", "--adapter", a_str, "--out", "x"];
        args.extend_from_slice(bad);
        let (code, err) = run_in(root, &args);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(!root.join("x").exists() && leftovers(root).is_empty(), "{bad:?}: {:?}", leftovers(root));
    }
    // An export never replaces (or holds) the adapter it reads, even with --force: an adapter
    // folder has the same file names as a PEFT export.
    let (code, err) =
        run_in(root, &["export", "--format", "peft", "--rank", "1", "--adapter", a_str, "--out", a_str, "--force"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is the input"), "{err}");
    assert!(artifact::load(&a, &Device::Cpu).unwrap().head.is_some(), "the adapter is intact");
    // merge never writes into the adapter folder, and a bad tolerance is refused before anything.
    let inside = a.join(artifact::TENSOR_FILE);
    let before = std::fs::read(&inside).unwrap();
    let (code, err) = run_in(root, &["merge", "--adapter", a_str, "--out", inside.to_str().unwrap(), "--force"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("lies inside"), "{err}");
    assert_eq!(std::fs::read(&inside).unwrap(), before);
    let (code, err) = run_in(root, &["merge", "--adapter", a_str, "--out", "m.safetensors", "--tolerance", "NaN"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a tolerance"), "{err}");
}

fn peft_dir(root: &Path, name: &str, config: serde_json::Value, tensors: &[(&str, Tensor)]) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("adapter_config.json"), config.to_string()).unwrap();
    let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
    save_tensors(&d.join("adapter_model.safetensors"), &map, None).unwrap();
    d
}

#[test]
fn hostile_peft_folders_are_refused_by_import() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let a = Tensor::ones((2, 384), DType::F32, &dev).unwrap();
    let b = Tensor::ones((384, 2), DType::F32, &dev).unwrap();
    let key = |f: &str| format!("base_model.model.encoder.layer.0.attention.self.query.{f}.weight");
    let (ka, kb) = (key("lora_A"), key("lora_B"));
    let ok = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = ok.clone();
        c[k] = v;
        c
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "not LoRA",
            peft_dir(tmp.path(), "ia3", with("peft_type", "IA3".into()), &[(&ka, a.clone()), (&kb, b.clone())]),
            "only LORA",
        ),
        ("no rank", peft_dir(tmp.path(), "r0", with("r", 0.into()), &[(&ka, a.clone()), (&kb, b.clone())]), "`r`"),
        (
            "DoRA",
            peft_dir(tmp.path(), "dora", with("use_dora", true.into()), &[(&ka, a.clone()), (&kb, b.clone())]),
            "use_dora",
        ),
        (
            "rank pattern",
            peft_dir(
                tmp.path(),
                "pattern",
                with("rank_pattern", serde_json::json!({"query": 4})),
                &[(&ka, a.clone()), (&kb, b.clone())],
            ),
            "rank_pattern",
        ),
        (
            "foreign tensor",
            peft_dir(
                tmp.path(),
                "foreign",
                ok.clone(),
                &[(&ka, a.clone()), (&kb, b.clone()), ("base_model.model.classifier.weight", a.clone())],
            ),
            "is not a LoRA factor",
        ),
        (
            "integer factor",
            peft_dir(tmp.path(), "int", ok.clone(), &[(&ka, a.to_dtype(DType::U32).unwrap()), (&kb, b.clone())]),
            "floating point",
        ),
        ("empty", peft_dir(tmp.path(), "empty", ok.clone(), &[]), "no LoRA factors"),
        (
            "targets disagree",
            peft_dir(
                tmp.path(),
                "tm",
                with("target_modules", serde_json::json!(["value"])),
                &[(&ka, a.clone()), (&kb, b.clone())],
            ),
            "does not name it",
        ),
        (
            "no targets",
            peft_dir(
                tmp.path(),
                "tm0",
                with("target_modules", serde_json::json!([])),
                &[(&ka, a.clone()), (&kb, b.clone())],
            ),
            "does not name it",
        ),
        (
            "alpha beyond f32",
            peft_dir(tmp.path(), "alpha", with("lora_alpha", 1e39.into()), &[(&ka, a.clone()), (&kb, b.clone())]),
            "overflow f32",
        ),
    ];
    for (name, dir, want) in cases {
        let out = tmp.path().join(format!("{name}-out"));
        let o = Command::new(bin())
            .args(["import", "--format", "peft", dir.to_str().unwrap(), "--preset", "minilm-rt"])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: want `{want}` in: {err}");
        assert!(!out.exists(), "{name}: wrote an output");
    }
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": ").unwrap();
    let o = Command::new(bin())
        .args(["import", "--format", "peft", broken.to_str().unwrap(), "--preset", "minilm-rt", "--out"])
        .arg(tmp.path().join("broken-out"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not JSON"));
    // Importing a PEFT folder onto itself is refused before anything is read or written.
    let own = peft_dir(tmp.path(), "own", ok.clone(), &[(&ka, a.clone()), (&kb, b.clone())]);
    let before = std::fs::read(own.join("adapter_model.safetensors")).unwrap();
    let o = Command::new(bin())
        .args(["import", "--format", "peft", own.to_str().unwrap(), "--preset", "minilm-rt", "--force", "--out"])
        .arg(&own)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(std::fs::read(own.join("adapter_model.safetensors")).unwrap(), before);
}
