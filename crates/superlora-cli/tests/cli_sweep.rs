//! `superlora sweep` + `plot` on real assets, small: 2 configs x 2 seeds of DINOv2 ViT-S on the 5k
//! MNIST digits at 28 px for a few steps. The CSV has one well-formed row per run, a second
//! `sweep` reruns nothing, and `plot` writes a PNG and an SVG that are images with content, and a
//! Markdown report. Assets come from `scripts/setup-assets.sh` (the test names it if missing).

use std::path::Path;
use std::process::{Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_superlora")
}

/// The shared part of the test grids: DINOv2 ViT-S on the 5k MNIST digits at 28 px.
fn small_task(onnx: &Path, seeds: &str, batch: usize, steps: usize, eval_limit: usize) -> String {
    format!(
        "seeds = {seeds}\n[train]\ndataset = \"mnist5k\"\nmodel = \"{}\"\nimage-size = 28\nbatch-size = {batch}\n\
         eval-batch-size = 100\neval-limit = {eval_limit}\nfinal-eval-limit = {eval_limit}\nsteps = {steps}\n",
        onnx.display()
    )
}

fn grid(onnx: &Path) -> String {
    small_task(onnx, "[0, 1]", 16, 6, 100)
        + r#"eval-every = 3
head-lr = 1e-2

[[run]]
family = "lora"
rank = 1
adapter-lr = 3e-3

[[run]]
fold = "square"
groups = 4
order = 3
factor = "tucker"
rank = 2
adapter-lr = 1e-2
"#
}

#[test]
fn a_small_sweep_writes_results_and_plots() {
    let onnx = superlora_data::cache_dir().unwrap().join("assets/dinov2-onnx/vit_s_focus.onnx");
    assert!(onnx.exists(), "missing {}: run `scripts/setup-assets.sh dinov2-onnx mnist-5k font`", onnx.display());
    let dir = tempfile::tempdir().unwrap();
    let grid_path = dir.path().join("grid.toml");
    std::fs::write(&grid_path, grid(&onnx)).unwrap();
    let out = dir.path().join("sweep");
    let sweep = || {
        Command::new(bin())
            .args(["sweep", "--no-progress", "--grid", grid_path.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // A typo in any config fails the dry run (and the sweep) before anything trains, naming it.
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, grid(&onnx) + "[[run]]\nrnak = 1\n").unwrap();
    let o = Command::new(bin())
        .args(["sweep", "--dry-run", "--grid", bad_path.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("rnak") && err.contains("config `"), "{err}");
    assert!(!out.exists(), "a refused sweep writes nothing");
    let o = sweep();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // With --no-progress every finished run is still reported, one line each.
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches(": test ").count(), 4, "{err}");
    let csv_path = out.join("results.csv");
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(headers[..4], ["cell", "family", "config", "seed"]);
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4, "{text}");
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    // Seed-major: both configs with seed 0 before either with seed 1.
    let seeds: Vec<&str> = rows.iter().map(|r| &r[col("seed")]).collect();
    assert_eq!(seeds, ["0", "0", "1", "1"], "{text}");
    let mut families: Vec<&str> = rows.iter().map(|r| &r[col("family")]).collect();
    families.sort();
    assert_eq!(families, ["lora", "lora", "tucker-m3", "tucker-m3"]);
    for row in &rows {
        let params: usize = row[col("adapter_params")].parse().unwrap();
        let expect = if &row[col("family")] == "lora" { 24 * (384 + 384) } else { 0 };
        if expect > 0 {
            assert_eq!(params, expect);
        } else {
            assert!(params > 0 && params < 24 * (384 + 384), "{params}");
        }
        for c in ["best_valid_acc", "test_acc_at_best", "final_test_acc"] {
            let v: f64 = row[col(c)].parse().unwrap();
            assert!((0.0..=1.0).contains(&v), "{c} = {v}");
        }
        assert!(row[col("wall_s")].parse::<f64>().unwrap() > 0.0);
        assert!(row[col("samples_per_s")].parse::<f64>().unwrap() > 0.0);
    }
    // Resumable: a second sweep runs nothing and leaves the CSV as it was.
    let o = sweep();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 to go"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&csv_path).unwrap(), text);

    let o = Command::new(bin()).args(["plot", csv_path.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // PNG: decodes, the promised size, and a real drawing (many non-white pixels, several colours).
    let png_path = out.join("accuracy_vs_params.png");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 750));
    let px = &buf[..info.buffer_size()];
    let channels = px.len() / (1200 * 750);
    let pixels: Vec<&[u8]> = px.chunks(channels).collect();
    let non_white = pixels.iter().filter(|p| p[..3] != [255, 255, 255]).count();
    assert!(non_white > 10_000, "only {non_white} non-white pixels");
    let colours: std::collections::BTreeSet<[u8; 3]> =
        pixels.iter().filter(|p| p[0] != p[1] || p[1] != p[2]).map(|p| [p[0], p[1], p[2]]).collect();
    assert!(colours.len() > 5, "the series are not coloured");
    // SVG: an SVG document with the labels.
    let svg = std::fs::read_to_string(out.join("accuracy_vs_params.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in ["trainable adapter parameters", "test accuracy", "lora", "tucker-m3"] {
        assert!(svg.contains(label), "SVG lacks `{label}`");
    }
    let md = std::fs::read_to_string(out.join("accuracy_vs_params.md")).unwrap();
    assert!(md.contains("Pareto front") && md.contains("| lora |"), "{md}");
    // Outputs are not replaced without --force.
    let o = Command::new(bin()).args(["plot", csv_path.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Two named two-step configs of the small task, with the given seeds.
fn named_grid(onnx: &Path, seeds: &str) -> String {
    small_task(onnx, seeds, 8, 2, 50)
        + r#"eval-every = 2
[[run]]
name = "a"
rank = 1
[[run]]
name = "b"
rank = 2
"#
}

fn rows_of(csv_path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(csv_path).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    r.records().map(|r| r.unwrap()).map(|r| (r[0].to_string(), r[3].to_string())).collect()
}

#[test]
fn sweep_processes_share_a_folder_and_run_each_run_once() {
    let onnx = superlora_data::cache_dir().unwrap().join("assets/dinov2-onnx/vit_s_focus.onnx");
    assert!(onnx.exists(), "missing {}: run `scripts/setup-assets.sh dinov2-onnx mnist-5k font`", onnx.display());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let sweep_cmd = |seeds: &str| {
        let grid_path = dir.path().join(format!("grid{}.toml", seeds.len()));
        std::fs::write(&grid_path, named_grid(&onnx, seeds)).unwrap();
        let mut c = Command::new(bin());
        c.args(["sweep", "--no-progress", "--grid", grid_path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        c
    };
    // A run claimed by another process (here: this test holds its lock) is skipped and named.
    std::fs::create_dir_all(out.join("locks")).unwrap();
    let held = std::fs::File::create(out.join("locks/a-s0.lock")).unwrap();
    held.lock().unwrap();
    let o = sweep_cmd("[0]").output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("another sweep process") && stderr.contains("a-s0"), "{stderr}");
    assert_eq!(rows_of(&out.join("results.csv")), [("b".to_string(), "0".to_string())]);
    drop(held);
    // Two sweeps started together on the same folder share the three runs left: each once.
    let mut first = sweep_cmd("[0, 1]").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let second = sweep_cmd("[0, 1]").output().unwrap();
    let first_status = first.wait().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(first_status.success());
    let mut rows = rows_of(&out.join("results.csv"));
    rows.sort();
    let expect: Vec<(String, String)> =
        [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")].iter().map(|(c, s)| (c.to_string(), s.to_string())).collect();
    assert_eq!(rows, expect, "every run exactly once");
    let text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(text.matches("cell,family").count(), 1, "one header: {text}");
}

#[test]
fn a_sweep_writes_only_into_a_new_empty_or_sweep_folder() {
    let onnx = superlora_data::cache_dir().unwrap().join("assets/dinov2-onnx/vit_s_focus.onnx");
    assert!(onnx.exists(), "missing {}: run `scripts/setup-assets.sh dinov2-onnx mnist-5k`", onnx.display());
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.toml");
    std::fs::write(&g, grid(&onnx)).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("run.json"), "{}").unwrap();
    let sweep = |out: &Path| {
        let o = Command::new(bin())
            .args(["sweep", "--grid", g.to_str().unwrap(), "--dry-run", "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = sweep(&run);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a sweep folder"), "{err}");
    let (code, err) = sweep(&run.join("run.json"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a file"), "{err}");
    // A second process on a new folder finds only the first one's `locks/` there.
    let starting = dir.path().join("starting");
    std::fs::create_dir_all(starting.join("locks")).unwrap();
    for ok in [dir.path().join("new"), starting] {
        let (code, err) = sweep(&ok);
        assert_eq!(code, Some(0), "{}: {err}", ok.display());
    }
}
