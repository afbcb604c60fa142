//! Run folders are used by one process at a time.
//!
//! `train` and the diffusion commands hold an advisory lock on `<out>/train.lock` while they
//! write a run folder, so a second process pointed at the same folder (a second `train --resume`,
//! a sweep restarted while an earlier one's run still trains) is refused instead of interleaving
//! checkpoints. The system releases the lock when the process ends, however it ends; the file
//! itself stays (removing it would let two processes lock two different files).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use anyhow::{Context, Result, bail};
use superlora_train::output::Kind;

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = "train.lock";

/// This process's hold on a run folder; released when dropped.
#[derive(Debug)]
pub struct RunDirLock {
    _file: File,
}

/// Everything `train` and the diffusion commands write into a run folder.
pub const RUN_ENTRIES: [&str; 9] = [
    LOCK_FILE,
    "run.json",
    "summary.json",
    "metrics.jsonl",
    "checkpoints",
    "adapter",
    "base.safetensors",
    "run.json.tmp",
    "summary.json.tmp",
];

/// Creates `out` if needed and locks it for this process. With `force`, everything in it except
/// the lock is then removed (a fresh start that never deletes a folder another process uses);
/// a folder holding anything a run does not write is refused instead (`--out .` in a project).
pub fn lock(out: &Path, force: bool) -> Result<RunDirLock> {
    if force {
        superlora_train::output::check_replace(out, true, Kind::Folder(&RUN_ENTRIES), "--out")?;
        check_subfolders(out)?;
    } else {
        check_no_stranger_files(out)?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating --out {}", out.display()))?;
    let path = out.join(LOCK_FILE);
    let Some(file) = try_lock(&path)? else {
        bail!(
            "{} is being written by another process (it holds {}); wait for it to end, stop it, or pick another --out",
            out.display(),
            path.display()
        )
    };
    if force {
        for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
            let entry = entry?;
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let p = entry.path();
            let removed =
                if entry.file_type()?.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            removed.with_context(|| format!("removing {} (--force)", p.display()))?;
        }
    }
    Ok(RunDirLock { _file: file })
}

/// Without `--force`: a folder that exists but holds no run (no `run.json`) must hold nothing but
/// the lock a refused earlier attempt leaves, so that a run never writes over (or appends to)
/// files it did not write.
fn check_no_stranger_files(out: &Path) -> Result<()> {
    if !out.is_dir() || out.join("run.json").exists() {
        return Ok(());
    }
    let names = superlora_train::output::foreign_entries(out, &[LOCK_FILE])?;
    match names.first() {
        None => Ok(()),
        Some(f) => bail!(superlora_train::Error::Output(format!(
            "--out {} exists and holds `{f}` but no run (no run.json): a run would write over it; pick another \
             --out, or empty the folder",
            out.display()
        ))),
    }
}

/// One level down: `adapter/` holds an adapter's two files and `checkpoints/` only `latest` and
/// `ckpt-<step>` folders of a checkpoint's three files, so `--force` deletes nothing a user put
/// inside them either.
fn check_subfolders(out: &Path) -> Result<()> {
    use superlora_train::artifact::{CONFIG_FILE, TENSOR_FILE};
    use superlora_train::output::foreign_entries;
    let refuse = |dir: &Path, foreign: &[String]| -> Result<()> {
        match foreign.first() {
            None => Ok(()),
            Some(f) => bail!(superlora_train::Error::Output(format!(
                "--out {}: {} holds `{f}`, which a run does not write; --force replaces only a run folder \
                 as the program wrote it: move it or pick another --out",
                out.display(),
                dir.display()
            ))),
        }
    };
    let adapter = out.join("adapter");
    if adapter.is_dir() {
        refuse(&adapter, &foreign_entries(&adapter, &[CONFIG_FILE, TENSOR_FILE])?)?;
    }
    let ckpts = out.join("checkpoints");
    if ckpts.is_dir() {
        let is_ckpt = |n: &str| {
            let step =
                n.strip_prefix("ckpt-").or_else(|| n.strip_prefix(".ckpt-").and_then(|r| r.strip_suffix(".tmp")));
            step.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        };
        let names = foreign_entries(&ckpts, &["latest", ".latest.tmp"])?;
        let (steps, other): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| is_ckpt(n));
        refuse(&ckpts, &other)?;
        for step in steps {
            let d = ckpts.join(&step);
            if d.is_dir() {
                refuse(&d, &foreign_entries(&d, &["params.safetensors", "optimizer.safetensors", "state.json"])?)?;
            }
        }
    }
    Ok(())
}

/// An exclusive advisory lock on `path` (created if missing), held while the returned file
/// lives; `None` when another open file holds it.
pub fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_force_keeps_only_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let held = lock(&out, false).unwrap();
        std::fs::create_dir_all(out.join("checkpoints")).unwrap();
        std::fs::write(out.join("run.json"), "{}").unwrap();
        // A second holder (flock locks conflict across open files, even in one process) is refused,
        // and its --force deletes nothing.
        let err = format!("{:#}", lock(&out, true).unwrap_err());
        assert!(err.contains("another process") && err.contains("train.lock"), "{err}");
        assert!(out.join("run.json").exists() && out.join("checkpoints").exists());
        drop(held);
        let again = lock(&out, true).unwrap();
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [LOCK_FILE]);
        drop(again);
        // A folder that holds something a run does not write is refused, and nothing is deleted.
        std::fs::write(out.join("run.json"), "{}").unwrap();
        std::fs::write(out.join("thesis.tex"), "mine").unwrap();
        let err = format!("{:#}", lock(&out, true).unwrap_err());
        assert!(err.contains("`thesis.tex`") && err.contains("did not write"), "{err}");
        assert!(out.join("thesis.tex").exists() && out.join("run.json").exists());
        // One level down too: a note in the adapter folder or among the checkpoints.
        std::fs::remove_file(out.join("thesis.tex")).unwrap();
        for (dir, name) in [("adapter", "notes.md"), ("checkpoints", "best"), ("checkpoints/ckpt-00000010", "mine.txt")]
        {
            std::fs::create_dir_all(out.join(dir)).unwrap();
            std::fs::write(out.join(dir).join(name), "mine").unwrap();
            let err = format!("{:#}", lock(&out, true).unwrap_err());
            assert!(err.contains(&format!("`{name}`")), "{err}");
            std::fs::remove_file(out.join(dir).join(name)).unwrap();
        }
        std::fs::write(out.join("checkpoints/latest"), "ckpt-00000010").unwrap();
        std::fs::write(out.join("checkpoints/ckpt-00000010/state.json"), "{}").unwrap();
        std::fs::write(out.join("adapter/adapter_config.json"), "{}").unwrap();
        drop(lock(&out, true).unwrap());
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [LOCK_FILE]);
    }
}
