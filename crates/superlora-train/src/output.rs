//! Writing outputs safely.
//!
//! Every file or folder the program writes is first built in a hidden temporary beside its
//! destination ([`Staged`]); the temporary is removed if anything fails (a bad flag found late, a
//! failed check, an error), and only [`Staged::commit`] moves it into place. `--force` replaces
//! only what this program writes ([`check_replace`]): a file with a file, a folder whose entries
//! are all ones this kind of output holds with a folder. A folder holding anything else (a
//! project, a home directory, `--out .`) is refused, never emptied.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// What a destination is.
#[derive(Clone, Copy, Debug)]
pub enum Kind<'a> {
    /// A single file (merged weights).
    File,
    /// A folder whose entries are all among these names (an adapter, an export, a run).
    Folder(&'a [&'a str]),
}

fn refused(msg: String) -> Error {
    Error::Output(msg)
}

/// Checks that `dest` may be written: it is absent, or `force` is given and it is an output of the
/// same kind (see the module docs). `flag` names the option in messages (`--out`).
pub fn check_replace(dest: &Path, force: bool, kind: Kind, flag: &str) -> Result<()> {
    if dest.file_name().is_none() {
        return Err(refused(format!(
            "{flag} `{}` names no file or folder of its own; give a new name inside it, e.g. `{}`",
            dest.display(),
            dest.join("out").display()
        )));
    }
    let Ok(meta) = std::fs::symlink_metadata(dest) else { return Ok(()) };
    if !force {
        return Err(refused(format!("{flag} {} exists; pass --force to replace it", dest.display())));
    }
    match kind {
        Kind::File if meta.is_dir() => Err(refused(format!(
            "{flag} {} is a folder; --force replaces only a file here, give a file name",
            dest.display()
        ))),
        Kind::File => Ok(()),
        Kind::Folder(_) if !meta.is_dir() => Err(refused(format!(
            "{flag} {} is a file; --force replaces only a folder this program wrote",
            dest.display()
        ))),
        Kind::Folder(allowed) => {
            let (Ok(d), Ok(cwd)) = (dest.canonicalize(), std::env::current_dir().and_then(|c| c.canonicalize())) else {
                return Ok(());
            };
            if cwd.starts_with(&d) {
                return Err(refused(format!(
                    "{flag} {} holds the current folder; --force would delete it, pick another {flag}",
                    dest.display()
                )));
            }
            let foreign = foreign_entries(dest, allowed)?;
            if foreign.is_empty() {
                Ok(())
            } else {
                Err(refused(format!(
                    "{flag} {} holds {} that this program did not write ({}); --force replaces only a folder \
                     this program wrote: move {} or pick another {flag}",
                    dest.display(),
                    if foreign.len() == 1 { "an entry" } else { "entries" },
                    foreign.iter().take(3).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                        + if foreign.len() > 3 { ", …" } else { "" },
                    if foreign.len() == 1 { "it" } else { "them" }
                )))
            }
        }
    }
}

/// Entries of `dir` not among `allowed` (hidden temporaries `.<name>.tmp*` left by an earlier
/// killed write are allowed too).
pub fn foreign_entries(dir: &Path, allowed: &[&str]) -> Result<Vec<String>> {
    let io = |cause| Error::Io { path: dir.display().to_string(), cause };
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
        let stale_tmp =
            allowed.iter().any(|a| name.starts_with(&format!(".{a}.tmp")) || name.starts_with(&format!("{a}.tmp")));
        if !allowed.contains(&name.as_str()) && !stale_tmp {
            foreign.push(name);
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// A temporary beside a destination; removed on drop unless committed.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Staged {
    /// A fresh temporary for `dest` (a folder when `dir`, else a file path not yet created);
    /// creates `dest`'s parent folders.
    pub fn new(dest: &Path, dir: bool) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |cause| Error::Io { path: p.clone(), cause }
        };
        let name = dest
            .file_name()
            .ok_or_else(|| refused(format!("`{}` names no file or folder of its own", dest.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        remove(&tmp).map_err(io(&tmp))?;
        if dir {
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        }
        Ok(Self { tmp, dest: dest.to_path_buf(), done: false })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Replaces the destination (if any) with the temporary.
    pub fn commit(mut self) -> Result<()> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |cause| Error::Io { path: p.clone(), cause }
        };
        remove(&self.dest).map_err(io(&self.dest))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove(&self.tmp);
        }
    }
}

/// Removes a file or folder; absent is fine.
fn remove(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADAPTER: &[&str] = &["adapter_config.json", "adapter_model.safetensors"];

    #[test]
    fn force_replaces_only_what_the_program_writes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a");
        assert!(check_replace(&out, false, Kind::Folder(ADAPTER), "--out").is_ok());
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("adapter_config.json"), "{}").unwrap();
        std::fs::write(out.join(".adapter_model.safetensors.tmp-1"), "").unwrap();
        let e = check_replace(&out, false, Kind::Folder(ADAPTER), "--out").unwrap_err().to_string();
        assert!(e.contains("pass --force"), "{e}");
        assert!(check_replace(&out, true, Kind::Folder(ADAPTER), "--out").is_ok());
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = check_replace(&out, true, Kind::Folder(ADAPTER), "--out").unwrap_err().to_string();
        assert!(e.contains("`notes.txt`") && e.contains("did not write"), "{e}");
        let e = check_replace(&out, true, Kind::File, "--out").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = check_replace(&out.join("notes.txt"), true, Kind::Folder(ADAPTER), "--out").unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");
        let e = check_replace(Path::new("."), true, Kind::Folder(ADAPTER), "--out").unwrap_err().to_string();
        assert!(e.contains("names no file or folder"), "{e}");
        assert!(out.join("notes.txt").exists());
    }

    #[test]
    fn a_staged_output_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub").join("m.safetensors");
        let s = Staged::new(&dest, false).unwrap();
        std::fs::write(s.path(), "x").unwrap();
        let tmp = s.path().to_path_buf();
        drop(s);
        assert!(!tmp.exists() && !dest.exists());
        let s = Staged::new(&dest, true).unwrap();
        std::fs::write(s.path().join("f"), "y").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("f")).unwrap(), "y");
        let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["m.safetensors"]);
    }
}
