//! `--device` through the built binary: parsing, the CPU-only build's refusal of CUDA, and the
//! hidden `device-check` on the CPU (tools/device-check.sh runs it with `--device cuda`).

use std::process::{Command, Output};

fn superlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_superlora")).args(args).output().expect("run superlora")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every command that runs a model takes --device; a wrong value is a usage error naming the
/// accepted ones.
#[test]
fn every_model_command_takes_device() {
    for cmd in [
        &["train"][..],
        &["eval"],
        &["predict"],
        &["bench"],
        &["diffusion", "pretrain"],
        &["diffusion", "transfer"],
        &["diffusion", "sample"],
        &["diffusion", "classifier"],
        &["diffusion", "eval"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = superlora(&args);
        assert!(o.status.success(), "{cmd:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("--device <DEVICE>"), "{cmd:?} has no --device");
        let mut args = cmd.to_vec();
        args.extend(["--device", "gpu"]);
        let o = superlora(&args);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}");
        assert!(stderr(&o).contains("cpu, cuda or cuda:N"), "{cmd:?}: {}", stderr(&o));
    }
}

/// A binary built without the `cuda` feature refuses --device cuda with exit 2 and names the
/// build script, before touching any file (no silent fall-back to the CPU).
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_cpu_build_exits_2_naming_the_build_script() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = superlora(&[
        "train",
        "--preset",
        "minilm-rt",
        "--steps",
        "1",
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("scripts/build-cuda.sh"), "{}", stderr(&o));
    assert!(!out.exists(), "a refused run left a folder behind");
    let o = superlora(&["device-check", "--device", "cuda:1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("scripts/build-cuda.sh"), "{}", stderr(&o));
}

/// device-check on the CPU against the CPU: every family, all differences zero, exit 0; and a
/// tolerance below zero makes every family fail (the check can fail).
#[test]
fn device_check_runs_on_the_cpu() {
    let o = superlora(&["device-check", "--device", "cpu", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.len() >= 9, "{} families", rows.len());
    for r in &rows {
        assert_eq!(r["delta_rel"], 0.0, "{r}");
        assert_eq!(r["grad_rel"], 0.0, "{r}");
    }
    let o = superlora(&["device-check", "--device", "cpu", "--tol=-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("over the tolerance"), "{}", stderr(&o));
}
