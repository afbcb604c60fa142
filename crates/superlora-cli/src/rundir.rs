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
    }
}
