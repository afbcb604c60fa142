//! `superlora generate` and `superlora train --task causal-lm` end to end on SmolLM2-135M-Instruct
//! (the real GGUF, from `scripts/setup-assets.sh smollm2`; the tests fail naming it when it is
//! missing): greedy generation is repeatable, bad input exits 2, a few causal-LM steps write an
//! adapter that `generate --adapter` then uses.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_superlora")
}

fn gguf() -> PathBuf {
    let p = superlora_data::cache_dir().unwrap().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "missing {}: run `scripts/setup-assets.sh smollm2`", p.display());
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run superlora")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn greedy_generation_repeats_and_bad_input_exits_2() {
    let m = gguf();
    let m = m.to_str().unwrap();
    let args = ["generate", "--model", m, "--max-tokens", "8", "The capital of France is"];
    let a = run(&args);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = run(&args);
    assert!(b.status.success(), "{}", text(&b.stderr));
    assert!(!text(&a.stdout).trim().is_empty(), "no text generated");
    assert_eq!(text(&a.stdout), text(&b.stdout), "greedy generation differs between runs");
    assert!(text(&a.stderr).contains("tokens/s"), "{}", text(&a.stderr));

    let long = "word ".repeat(9000);
    let r = run(&["generate", "--model", m, "--max-tokens", "2", &long]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    let e = text(&r.stderr);
    assert!(e.contains("9001 tokens") && e.contains("8192"), "{e}");

    let r = run(&["generate", "--model", m, "--temperature", "0", "hi"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    let r = run(&["generate", "--model", "/nonexistent/model.gguf", "hi"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
}

#[test]
fn three_causal_lm_steps_write_an_adapter_that_generate_uses() {
    let m = gguf();
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "while", "birds", "sang"];
    let body: Vec<&str> = (0..400).map(|i| words[(i * 7 + i / 3) % words.len()]).collect();
    let txt = dir.path().join("t.txt");
    std::fs::write(&txt, body.join(" ")).unwrap();
    let out = dir.path().join("run");
    let t0 = std::time::Instant::now();
    let r = run(&[
        "train",
        "--task",
        "causal-lm",
        "--model",
        m,
        "--data",
        txt.to_str().unwrap(),
        "--max-len",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "3",
        "--rank",
        "2",
        "--adapter-lr",
        "1e-2",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    eprintln!("causal-lm, 3 steps: {:.1} s", t0.elapsed().as_secs_f64());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let ppl = summary["final_test_ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "perplexity {ppl}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model"]["kind"], "llama");
    assert!(config["head"].is_null());
    let adapter = out.join("adapter");
    let g = run(&["generate", "--model", m, "--adapter", adapter.to_str().unwrap(), "--max-tokens", "4", "the cat"]);
    assert!(g.status.success(), "{}", text(&g.stderr));
    assert!(!text(&g.stdout).trim().is_empty());
}
