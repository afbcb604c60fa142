//! End-to-end tests of `superlora plan` through the built binary.

use std::io::Write;
use std::process::{Command, Output};

fn superlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_superlora")).args(args).output().expect("run superlora")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn params_line(args: &[&str]) -> String {
    let o = superlora(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o).lines().find(|l| l.starts_with("trainable parameters:")).unwrap_or_default().to_string()
}

/// Every square-fold row of the spec's worked table (§6), on one 768x768 weight.
#[test]
fn reproduces_the_worked_table() {
    let rows: [(&[&str], &str); 7] = [
        (&["--groups", "1", "--order", "2", "--factor", "lora", "--rank", "7"], "10,752"),
        (&["--groups", "4", "--order", "2", "--factor", "lora", "--rank", "24"], "73,728"),
        (&["--groups", "12", "--order", "3", "--factor", "tucker", "--rank", "5"], "8,160"),
        (&["--groups", "12", "--order", "4", "--factor", "tucker", "--rank", "5"], "11,100"),
        (&["--groups", "1", "--order", "5", "--factor", "tucker", "--rank", "1"], "76"),
        (
            &[
                "--groups",
                "4",
                "--order",
                "3",
                "--factor",
                "tucker",
                "--rank",
                "4",
                "--projection",
                "fastfood",
                "--ratio",
                "0.01",
            ],
            "832",
        ),
        (
            &[
                "--groups",
                "1",
                "--order",
                "5",
                "--factor",
                "tucker",
                "--rank",
                "1",
                "--projection",
                "fastfood",
                "--ratio",
                "0.01",
            ],
            "31",
        ),
    ];
    for (flags, want) in rows {
        let mut args = vec!["plan", "--shapes", "768x768", "--fold", "square"];
        args.extend_from_slice(flags);
        assert_eq!(params_line(&args), format!("trainable parameters: {want}"), "{args:?}");
    }
}

#[test]
fn weight_wise_lora_on_vit_b_query_value() {
    let args = [
        "plan",
        "--shapes",
        "768x768*24",
        "--fold",
        "natural",
        "--groups",
        "24",
        "--order",
        "2",
        "--factor",
        "lora",
        "--rank",
        "1",
    ];
    assert_eq!(params_line(&args), "trainable parameters: 36,864");
}

#[test]
fn json_has_params_and_groups() {
    let o = superlora(&[
        "plan",
        "--shapes",
        "768x768*24,3072x768*12",
        "--fold",
        "square",
        "--groups",
        "5",
        "--factor",
        "tucker",
        "--rank",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 5);
    let sum: u64 = groups.iter().map(|g| g["params"].as_u64().unwrap()).sum();
    assert_eq!(v["trainable_params"].as_u64().unwrap(), sum);
    assert_eq!(v["total_entries"].as_u64().unwrap(), 24 * 768 * 768 + 12 * 3072 * 768);
    assert_eq!(groups[0]["sides"].as_array().unwrap().len(), 3);
}

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.toml");
    std::fs::write(&path, "fold = \"square\"\ngroups = 1\norder = 2\nfactor = \"lora\"\nrank = 7\n").unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(params_line(&["plan", "--shapes", "768x768", "--config", p]), "trainable parameters: 10,752");
    assert_eq!(
        params_line(&["plan", "--shapes", "768x768", "--config", p, "--rank", "1"]),
        "trainable parameters: 1,536"
    );

    std::fs::write(&path, "fold = \"square\"\nrnak = 7\n").unwrap();
    let o = superlora(&["plan", "--shapes", "768x768", "--config", p]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("rnak"), "{}", stderr(&o));
}

#[test]
fn invalid_settings_exit_2_naming_the_field() {
    let cases: [(&[&str], &str); 5] = [
        (&["--shapes", "768x768", "--rank", "1000"], "`rank` = 1000"),
        (&["--shapes", "768x768", "--ratio", "0.01"], "`ratio` = 0.01"),
        (&["--shapes", "768x768", "--fold", "square", "--order", "3", "--factor", "lora"], "`order` = 3"),
        (&["--shapes", "2x2", "--fold", "square", "--groups", "5"], "`groups` = 5"),
        (&["--shapes", "768*768"], "--shapes"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["plan"];
        args.extend_from_slice(flags);
        let o = superlora(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
}

/// A safetensors file with BERT-like names (header + zero data), for --model.
fn tiny_bert(dir: &std::path::Path) -> std::path::PathBuf {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    for l in 0..3 {
        for (m, shape) in [("query", [8, 4]), ("key", [8, 4]), ("value", [8, 4]), ("dense", [4, 8])] {
            let n = shape[0] * shape[1] * 4;
            entries.push(format!(
                "\"encoder.layer.{l}.attention.self.{m}.weight\":{{\"dtype\":\"F32\",\"shape\":[{},{}],\"data_offsets\":[{offset},{}]}}",
                shape[0],
                shape[1],
                offset + n
            ));
            offset += n;
        }
    }
    let header = format!("{{{}}}", entries.join(","));
    let path = dir.join("model.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(&vec![0u8; offset]).unwrap();
    path
}

#[test]
fn model_headers_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_bert(dir.path());
    let m = model.to_str().unwrap();
    // Default targets query,value: 6 weights of 8x4, LoRA r=1 → 6 * 12.
    assert_eq!(params_line(&["plan", "--model", m, "--rank", "1"]), "trainable parameters: 72");
    // A folder of shards works too.
    assert_eq!(
        params_line(&["plan", "--model", dir.path().to_str().unwrap(), "--rank", "1"]),
        "trainable parameters: 72"
    );
    let o = superlora(&["plan", "--model", m, "--targets", "value", "--rank", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "encoder.layer.0.attention.self.value",
            "encoder.layer.1.attention.self.value",
            "encoder.layer.2.attention.self.value"
        ]
    );
    let o = superlora(&[
        "plan",
        "--model",
        m,
        "--targets-regex",
        r"encoder\.layer\.[01]\.attention\.self\.(key|dense)",
        "--rank",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["layers"].as_array().unwrap().len(), 4);

    let o = superlora(&["plan", "--model", m, "--targets", "quer"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("closest: encoder.layer.0.attention.self.query"), "{}", stderr(&o));

    std::fs::write(dir.path().join("broken.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    let o = superlora(&["plan", "--model", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a valid safetensors file"), "{}", stderr(&o));
}

/// On a model `train` can fine-tune, `plan` counts exactly the linear layers `train` adapts: a
/// regex over everything does not pick up the embedding tables or BERT's unused pooler, and the
/// preset's DINOv2 `.onnx` is read like `train` reads it.
#[test]
fn plan_counts_the_weights_train_adapts() {
    let assets = superlora_data::cache_dir().unwrap().join("assets");
    let (minilm, onnx) = (assets.join("minilm"), assets.join("dinov2-onnx/vit_s_focus.onnx"));
    assert!(
        minilm.join("config.json").exists() && onnx.exists(),
        "missing {} or {}: run `scripts/setup-assets.sh minilm dinov2-onnx`",
        minilm.display(),
        onnx.display()
    );
    // 6 layers x (4 square 384x384 + 1536x384 + 384x1536), LoRA r=1: 24·768 + 12·1920.
    for m in [minilm.clone(), minilm.join("model.safetensors")] {
        let o = superlora(&["plan", "--model", m.to_str().unwrap(), "--targets-regex", ".*", "--rank", "1", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["layers"].as_array().unwrap().len(), 36);
        assert_eq!(v["trainable_params"], 41_472, "{v}");
    }
    // The ViT preset's query+value, r=1: 12 layers x 2 x (384 + 384).
    assert_eq!(
        params_line(&["plan", "--model", onnx.to_str().unwrap(), "--rank", "1"]),
        "trainable parameters: 18,432"
    );
}

/// `superlora plan … | head`: a reader that stops early ends the command quietly (SIGPIPE), not
/// with a Rust panic about a failed print.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_superlora"))
        .args(["plan", "--shapes", "768x768*24", "--budget", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line is printed
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn help_teaches() {
    let o = superlora(&["plan", "--help"]);
    let h = stdout(&o);
    for want in ["--shapes", "--targets-regex", "--ratio", "Examples:", "36,864"] {
        assert!(h.contains(want), "help lacks {want}");
    }
}

#[test]
fn budget_lists_configs_at_or_under_the_budget() {
    let o = superlora(&["plan", "--shapes", "768x768*24", "--budget", "1000", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let c = v["candidates"].as_array().unwrap();
    assert!(c.len() > 10);
    for x in c {
        assert!(x["params"].as_u64().unwrap() <= 1000, "{x}");
    }
    assert!(c.iter().any(|x| x["params"] == 1000 && x["family"] == "dense M=1 + fastfood"));
    // Every flag that shapes the adapter is refused with --budget (it searches them all).
    let shaping: [&[&str]; 9] = [
        &["--rank", "2"],
        &["--fold", "square"],
        &["--groups", "4"],
        &["--order", "3"],
        &["--factor", "tucker"],
        &["--kron", "2"],
        &["--projection", "shuffle"],
        &["--ratio", "0.01"],
        &["--config", "adapter.toml"],
    ];
    for flag in shaping {
        let mut args = vec!["plan", "--shapes", "768x768*24", "--budget", "1000"];
        args.extend_from_slice(flag);
        let o = superlora(&args);
        assert_eq!(o.status.code(), Some(2), "{flag:?}");
        assert!(stderr(&o).contains("drop the adapter settings"), "{flag:?}: {}", stderr(&o));
    }
    // --seed and --scale do not change the count: allowed.
    let o = superlora(&["plan", "--shapes", "768x768*24", "--budget", "1000", "--seed", "3", "--scale", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `bench` refuses what it cannot measure with exit 2, naming the flags: a batch no memory holds
/// (by its parser), and more long texts than the data has (found by the config's child process,
/// whose refusal is the parent's). Needs the minilm and rotten-tomatoes assets.
#[test]
fn bench_refuses_a_batch_it_cannot_fill() {
    let o = superlora(&["bench", "--batch-size", "100000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--batch-size"), "{}", stderr(&o));
    let o = superlora(&["bench", "--seq-len", "100000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = superlora(&["bench", "--batch-size", "20000", "--seq-len", "500", "--steps", "1", "--warmup", "0"]);
    assert_eq!(o.status.code(), Some(2), "run `scripts/setup-assets.sh` if the assets are missing: {}", stderr(&o));
    assert!(stderr(&o).contains("training texts have 500 or more tokens"), "{}", stderr(&o));
}

/// The per-weight peers: VeRA's Σ (d_out + r) and FourierFT's n·L, and their refusals.
#[test]
fn vera_and_fourier_counts_and_refusals() {
    let line = params_line(&["plan", "--shapes", "384x384*12", "--factor", "vera", "--rank", "256"]);
    assert!(line.contains("7,680"), "{line}");
    let line = params_line(&["plan", "--shapes", "576x576*2", "--projection", "fourier", "--count", "1000"]);
    assert!(line.contains("2,000"), "{line}");
    let cases: [(&[&str], &str); 4] = [
        (&["--shapes", "384x384", "--factor", "vera", "--rank", "500"], "`rank` = 500"),
        (&["--shapes", "4x6", "--count", "25"], "`count` = 25"),
        (&["--shapes", "64x64", "--fold", "square", "--projection", "fourier", "--count", "4"], "`fold` = square"),
        (&["--shapes", "64x64", "--projection", "fourier"], "`count` = unset"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["plan"];
        args.extend_from_slice(flags);
        let o = superlora(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = superlora(&["plan", "--shapes", "384x384*12", "--budget", "8000"]);
    let out = stdout(&o);
    assert!(out.contains("--factor vera --rank 282") && out.contains("--count 666"), "{out}");
}
