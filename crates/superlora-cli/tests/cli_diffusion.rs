//! `superlora diffusion` end to end on real assets, tiny and fast: pretrain a tiny DiT on the 5k
//! MNIST digits (the loss goes down), transfer it to Fashion-MNIST with LoRA r=1 (the held-out loss
//! goes down, only the adapter is saved), sample a PNG grid per class, train a classifier for one
//! epoch and score the transferred model. Existing outputs are refused (exit code 2) and a finished
//! run resumes as a no-op. Assets come from `scripts/setup-assets.sh mnist-5k fashion-mnist`; the
//! test fails naming that command if they are missing.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_superlora")
}

fn require_assets() {
    let assets = superlora_data::cache_dir().expect("a cache folder").join("assets");
    for f in [
        "mnist-5k/mnist_5k.csv.gz",
        "fashion-mnist/train-images-idx3-ubyte.gz",
        "fashion-mnist/t10k-images-idx3-ubyte.gz",
    ] {
        assert!(
            assets.join(f).is_file(),
            "missing {}: run `scripts/setup-assets.sh mnist-5k fashion-mnist`",
            assets.join(f).display()
        );
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("RAYON_NUM_THREADS", "1").output().expect("run superlora")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "superlora {}\n{}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (train losses, held-out losses), each checked finite.
fn losses(out: &Path) -> (Vec<f64>, Vec<f64>) {
    let m = metrics(out);
    let train: Vec<f64> = m.iter().filter_map(|r| r["train_loss"].as_f64()).collect();
    let heldout: Vec<f64> = m.iter().map(|r| r["heldout_loss"].as_f64().expect("held-out loss is a number")).collect();
    assert!(train.iter().chain(&heldout).all(|v| v.is_finite()), "{m:?}");
    assert_eq!(m.len(), heldout.len());
    (train, heldout)
}

fn png_size(path: &Path) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height)
}

#[test]
fn pretrain_transfer_sample_classifier_eval() {
    require_assets();
    let dir = tempfile::tempdir().unwrap();
    let base_run = dir.path().join("base");
    let b = base_run.to_str().unwrap();
    let pretrain = [
        "diffusion",
        "pretrain",
        "--dataset",
        "mnist5k",
        "--width",
        "32",
        "--depth",
        "2",
        "--heads",
        "2",
        "--timesteps",
        "100",
        "--steps",
        "60",
        "--batch-size",
        "32",
        "--lr",
        "3e-3",
        "--eval-every",
        "20",
        "--heldout",
        "100",
        "--no-progress",
        "--out",
        b,
    ];
    ok(&pretrain);
    let base = base_run.join("base.safetensors");
    assert!(base.is_file() && base_run.join("run.json").is_file() && base_run.join("summary.json").is_file());
    assert!(base_run.join("checkpoints/latest").is_file());
    let (train, heldout) = losses(&base_run);
    assert_eq!(heldout.len(), 4, "step 0, 20, 40, 60");
    assert!(train[2] < train[0], "pretraining loss did not go down: {train:?}");
    assert!(heldout[3] < heldout[0], "held-out loss did not go down: {heldout:?}");
    // An existing run is refused (exit 2); the finished run resumes as a no-op.
    let again = run(&pretrain);
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let mut resume = pretrain.to_vec();
    resume.push("--resume");
    ok(&resume);
    assert_eq!(metrics(&base_run).len(), 4);

    // A transfer into the base's own run folder would delete the base with --force: refused.
    let into_base =
        run(&["diffusion", "transfer", "--base", base.to_str().unwrap(), "--steps", "1", "--force", "--out", b]);
    assert_eq!(into_base.status.code(), Some(2), "{}", String::from_utf8_lossy(&into_base.stderr));
    assert!(String::from_utf8_lossy(&into_base.stderr).contains("contains the input"));
    assert!(base.is_file());

    // Transfer to Fashion-MNIST with LoRA r=1 on q, k, v, o of both blocks: 8 x (32 + 32).
    let tr_run = dir.path().join("lora-r1");
    let t = tr_run.to_str().unwrap();
    let out = ok(&[
        "diffusion",
        "transfer",
        "--base",
        base.to_str().unwrap(),
        "--rank",
        "1",
        "--steps",
        "30",
        "--batch-size",
        "32",
        "--lr",
        "2e-2",
        "--eval-every",
        "10",
        "--heldout",
        "100",
        "--train-subset",
        "2000",
        "--no-progress",
        "--out",
        t,
    ]);
    assert!(out.contains("adapter 512 parameters"), "{out}");
    let adapter = tr_run.join("adapter");
    assert!(adapter.join("adapter_config.json").is_file() && adapter.join("adapter_model.safetensors").is_file());
    let (_, heldout) = losses(&tr_run);
    assert_eq!(heldout.len(), 4);
    assert!(heldout[3] < heldout[0], "transfer did not lower the held-out loss: {heldout:?}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["trainable_params"], 512);
    assert_eq!(cfg["base_model"]["kind"], "superlora-dit");

    // A grid: 10 classes x 3 columns of 28 px tiles with 2 px padding.
    let png = dir.path().join("grid.png");
    let p = png.to_str().unwrap();
    let sample = [
        "diffusion",
        "sample",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        p,
        "--per-class",
        "3",
        "--steps",
        "4",
        "--no-progress",
    ];
    ok(&sample);
    assert_eq!(png_size(&png), (3 * 30 + 2, 10 * 30 + 2));
    let again = run(&sample);
    assert_eq!(again.status.code(), Some(2), "an existing PNG must not be overwritten without --force");

    // A classifier for one epoch, and the scores of the transferred model.
    let clf = dir.path().join("clf.safetensors");
    let out = ok(&[
        "diffusion",
        "classifier",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--no-progress",
        "--out",
        clf.to_str().unwrap(),
    ]);
    let acc: f64 = out.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(acc > 0.7, "a one-epoch Fashion-MNIST classifier should beat 70%: {out}");
    let report = dir.path().join("eval.json");
    ok(&[
        "diffusion",
        "eval",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--classifier",
        clf.to_str().unwrap(),
        "--per-class",
        "4",
        "--real",
        "200",
        "--heldout",
        "100",
        "--steps",
        "4",
        "--no-progress",
        "--json",
        report.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["dataset"], "fashion-mnist");
    assert_eq!(r["adapter_params"], 512);
    for k in ["heldout_loss", "conditional_accuracy", "frechet_distance", "classifier_accuracy_on_real"] {
        let v = r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
        assert!(v.is_finite() && v >= 0.0, "{k} = {v}");
    }
    assert!((r["heldout_loss"].as_f64().unwrap() - heldout[3]).abs() < 0.05, "{r} vs {heldout:?}");

    // An adapter is refused on a base it was not trained on.
    let other = dir.path().join("other");
    ok(&[
        "diffusion",
        "pretrain",
        "--dataset",
        "mnist5k",
        "--width",
        "32",
        "--depth",
        "2",
        "--heads",
        "2",
        "--timesteps",
        "100",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--heldout",
        "10",
        "--no-progress",
        "--seed",
        "1",
        "--out",
        other.to_str().unwrap(),
    ]);
    let bad = run(&[
        "diffusion",
        "sample",
        "--base",
        other.join("base.safetensors").to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        dir.path().join("x.png").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("was trained on"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Bad numbers, bad base files and unsafe outputs fail with exit code 2 before any work (no
/// assets needed): a base whose config has `image = 0` panicked in `sample` (exit 101) and huge
/// sizes aborted on allocation (134); NaN flags ran; `--force` replaced any file; outputs landed
/// inside their inputs.
#[test]
fn bad_numbers_files_and_outputs_exit_2() {
    use superlora_diffusion::{Dit, DitConfig};
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let refused = |args: &[&str], want: &str| {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "superlora {}\n{err}", args.join(" "));
        assert!(err.contains(want), "superlora {}: wanted `{want}` in\n{err}", args.join(" "));
    };

    // Flags: NaN, negative or unbounded numbers are refused by the parser.
    refused(&["diffusion", "pretrain", "--weight-decay", "NaN", "--out", &p("r")], "--weight-decay");
    refused(&["diffusion", "pretrain", "--lr", "inf", "--out", &p("r")], "--lr");
    refused(&["diffusion", "classifier", "--lr=-1", "--out", &p("c.safetensors")], "--lr");
    refused(&["diffusion", "sample", "--base", "b", "--out", &p("x.png"), "--guidance", "NaN"], "--guidance");
    refused(&["diffusion", "sample", "--base", "b", "--out", &p("x.png"), "--per-class", "100000000"], "--per-class");
    refused(&["diffusion", "eval", "--base", "b", "--classifier", "c", "--batch-size", "1000000000"], "--batch-size");
    assert!(!dir.path().join("r").exists());

    // Base files: a tiny valid one, one with `image = 0`, one with a huge depth, one holding NaN.
    let config = DitConfig { width: 8, depth: 1, heads: 2, mlp: 8, freq_dim: 4, timesteps: 10, ..Default::default() };
    let model = Dit::new(config.clone(), 0, &candle_core::Device::Cpu).unwrap();
    let base = dir.path().join("base.safetensors");
    superlora_diffusion::train::save_base(&base, &model, &[]).unwrap();
    let write = |name: &str, key: &str, value: serde_json::Value, nan: bool| {
        let mut c = serde_json::to_value(&config).unwrap();
        c[key] = value;
        let meta = std::collections::HashMap::from([
            ("format".to_string(), "superlora-dit".to_string()),
            ("config".to_string(), c.to_string()),
        ]);
        let mut t = model.tensors();
        if nan {
            let dev = candle_core::Device::Cpu;
            t.insert("patch.bias".into(), candle_core::Tensor::from_vec(vec![f32::NAN; 8], 8, &dev).unwrap());
        }
        superlora_train::checkpoint::save_tensors(&dir.path().join(name), &t, Some(meta)).unwrap();
        p(name)
    };
    let zero = write("zero.safetensors", "image", 0.into(), false);
    let deep = write("deep.safetensors", "depth", 1_000_000_000.into(), false);
    let nan = write("nan.safetensors", "image", 28.into(), true);
    refused(&["diffusion", "sample", "--base", &zero, "--out", &p("z.png"), "--steps", "2"], "`image` = 0");
    refused(&["diffusion", "eval", "--base", &zero, "--classifier", &p("none"), "--steps", "2"], "`image` = 0");
    refused(&["diffusion", "sample", "--base", &deep, "--out", &p("d.png"), "--steps", "2"], "`depth` = 1000000000");
    refused(&["diffusion", "sample", "--base", &nan, "--out", &p("n.png"), "--steps", "2"], "NaN");
    assert!(!dir.path().join("z.png").exists() && !dir.path().join("n.png").exists());

    // --force replaces only a file of the same kind, never an input, never inside an adapter.
    let notes = p("notes.png");
    std::fs::write(&notes, "mine").unwrap();
    let b = base.to_str().unwrap();
    refused(&["diffusion", "sample", "--base", b, "--out", &notes, "--force", "--steps", "2"], "not a PNG");
    refused(&["diffusion", "classifier", "--out", b, "--force"], "not a classifier");
    let adapter = dir.path().join("t_d").join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), "{}").unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), "x").unwrap();
    let a = adapter.to_str().unwrap();
    let into = adapter.join("x.png");
    refused(
        &["diffusion", "sample", "--base", b, "--adapter", a, "--out", into.to_str().unwrap()],
        "lies inside the input",
    );
    let clf = adapter.join("c.safetensors");
    refused(&["diffusion", "classifier", "--out", clf.to_str().unwrap()], "inside the adapter folder");
    refused(&["diffusion", "eval", "--base", b, "--classifier", &p("none"), "--json", b, "--force"], "is the input");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    assert!(!into.exists() && !clf.exists());
}
