//! `superlora generate` and `superlora train --task causal-lm` end to end on SmolLM2-135M-Instruct
//! (the real GGUF, from `scripts/setup-assets.sh smollm2`; the tests fail naming it when it is
//! missing): greedy generation is repeatable, bad input exits 2, a few causal-LM steps write an
//! adapter that `generate --adapter` then uses; `smollm2` and `rotten-tomatoes` name the packaged
//! model and reviews.

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
    // The baseline: the base model's perplexity on the same chunks, which 3 steps move.
    let base = summary["base"]["test_ppl"].as_f64().unwrap();
    assert!(base.is_finite() && base > 1.0 && base != ppl, "base perplexity {base}, trained {ppl}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model"]["kind"], "llama");
    assert!(config["head"].is_null());
    let adapter = out.join("adapter");
    let g = run(&["generate", "--model", m, "--adapter", adapter.to_str().unwrap(), "--max-tokens", "4", "the cat"]);
    assert!(g.status.success(), "{}", text(&g.stderr));
    assert!(!text(&g.stdout).trim().is_empty());
}

/// `train --task lm-classify` on a small Rotten Tomatoes subset: the zero-shot baseline and the
/// accuracies are reported (stdout and summary.json); the adapter then exports for PEFT under
/// Llama names, merges into a Hugging Face folder that `generate` loads, and is refused by `eval`.
#[test]
fn lm_classify_reports_zero_shot_and_accuracy_and_its_adapter_ships() {
    let m = gguf();
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let t0 = std::time::Instant::now();
    let r = run(&[
        "train",
        "--task",
        "lm-classify",
        "--model",
        m,
        "--data",
        "rotten-tomatoes",
        "--prompt-template",
        "Review: {text}\nSentiment:",
        "--label-words",
        " negative, positive",
        "--train-subset",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--eval-batch-size",
        "8",
        "--final-eval-limit",
        "16",
        "--rank",
        "1",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    eprintln!("lm-classify, 2 steps: {:.1} s", t0.elapsed().as_secs_f64());
    let stdout = text(&r.stdout);
    assert!(stdout.contains("final test accuracy") && stdout.contains("zero-shot"), "{stdout}");
    assert!(text(&r.stderr).contains("zero-shot (base model)"), "{}", text(&r.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for key in ["final_test_acc", "final_valid_acc"] {
        let acc = summary[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{key} {acc}");
    }
    let zs = summary["zero_shot"]["test_acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&zs), "zero-shot {zs}");
    // 16 examples: accuracies are multiples of 1/16.
    assert!((zs * 16.0 - (zs * 16.0).round()).abs() < 1e-9, "zero-shot {zs} over 16 examples");

    let adapter = out.join("adapter");
    let a = adapter.to_str().unwrap();
    let e = run(&["eval", "--adapter", a]);
    assert_eq!(e.status.code(), Some(2), "{}", text(&e.stderr));
    assert!(text(&e.stderr).contains("superlora generate"), "{}", text(&e.stderr));

    let peft = dir.path().join("peft");
    let x = run(&["export", "--adapter", a, "--format", "peft", "--out", peft.to_str().unwrap()]);
    assert!(x.status.success(), "{}", text(&x.stderr));
    let bytes = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a0 = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
    assert_eq!(a0.shape(), [1, 576]);
    let b29 = st.tensor("base_model.model.model.layers.29.self_attn.v_proj.lora_B.weight").unwrap();
    assert_eq!(b29.shape(), [192, 1]);

    let merged = dir.path().join("merged");
    let g = run(&["merge", "--adapter", a, "--out", merged.to_str().unwrap()]);
    assert!(g.status.success(), "{}", text(&g.stderr));
    assert!(text(&g.stdout).contains("max |merged − unmerged|"), "{}", text(&g.stdout));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(merged.join(f).is_file(), "merge wrote no {f}");
    }
    let q = run(&["generate", "--model", merged.to_str().unwrap(), "--max-tokens", "2", "The film was"]);
    assert!(q.status.success(), "{}", text(&q.stderr));
}

/// lm-classify refuses, with exit 2 and the problem named: label words that are not one token
/// (with their tokens), a template without {text}, and prompts longer than the context.
#[test]
fn lm_classify_refuses_bad_label_words_templates_and_long_prompts() {
    let m = gguf();
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("t.csv");
    let mut rows = String::from("text,label\n");
    for i in 0..20 {
        rows.push_str(&format!("review number {i},{}\n", if i % 2 == 0 { "good" } else { "bad" }));
    }
    std::fs::write(&csv, rows).unwrap();
    let out = dir.path().join("run");
    let base = ["train", "--task", "lm-classify", "--model", m, "--data", csv.to_str().unwrap(), "--steps", "1"];
    let go = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--out", out.to_str().unwrap(), "--no-progress"]);
        run(&a)
    };
    let r = go(&["--prompt-template", "{text} Verdict:", "--label-words", " bad, xqzvbrtt"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    let e = text(&r.stderr);
    assert!(e.contains("\" xqzvbrtt\"") && e.contains("tokens [") && e.contains("single tokens"), "{e}");
    assert!(!e.contains("\" bad\" is"), "a one-token word reported: {e}");

    let r = go(&["--prompt-template", "Verdict:"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("has no {text}"), "{}", text(&r.stderr));

    let r = go(&["--prompt-template", "{text} Verdict:", "--label-words", " bad"]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("one per class"), "{}", text(&r.stderr));

    let long = format!("{}{{text}} Verdict:", "word ".repeat(9000));
    let r = go(&["--prompt-template", &long]);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
    let e = text(&r.stderr);
    assert!(e.contains("longer than the model's context of 8192 tokens"), "{e}");
    assert!(!out.join("run.json").exists(), "a refused run left run.json");
}

#[test]
fn the_packaged_model_and_reviews_go_by_name() {
    let m = gguf();
    // `smollm2` is the packaged GGUF: the same greedy text as its path.
    let by_path = run(&["generate", "--model", m.to_str().unwrap(), "--max-tokens", "3", "Paris is"]);
    let by_name = run(&["generate", "--model", "smollm2", "--max-tokens", "3", "Paris is"]);
    assert!(by_name.status.success(), "{}", text(&by_name.stderr));
    assert_eq!(text(&by_path.stdout), text(&by_name.stdout));
    let missing = run(&["generate", "--model", "no-such-model", "x"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("give `smollm2` for the packaged"), "{}", text(&missing.stderr));
    // causal-lm on the built-in reviews, with the base model's perplexity in the summary.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let r = run(&[
        "train",
        "--task",
        "causal-lm",
        "--model",
        "smollm2",
        "--data",
        "rotten-tomatoes",
        "--max-len",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--eval-limit",
        "4",
        "--final-eval-limit",
        "4",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("base model: valid ppl"), "{}", text(&r.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["base"]["valid_ppl"].as_f64().unwrap() > 1.0, "{summary}");
}
