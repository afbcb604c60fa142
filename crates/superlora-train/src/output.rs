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
    /// A single file.
    File,
    /// A safetensors file this program wrote: `--force` replaces only a valid safetensors file whose
    /// `__metadata__` holds this key (merged weights carry `superlora`). Never inside an adapter or a
    /// run folder, whose files other commands rely on.
    Safetensors(&'a str),
    /// A folder whose entries are all among these names (an adapter, an export, a run).
    Folder(&'a [&'a str]),
}

fn refused(msg: String) -> Error {
    Error::Output(msg)
}

/// Checks that `dest` may be written: it is absent, or `force` is given and it is an output of the
/// same kind (see the module docs). `flag` names the option in messages (`--out`).
pub fn check_replace(dest: &Path, force: bool, kind: Kind, flag: &str) -> Result<()> {
    // `Path` drops a trailing `.` (`runs/x/.` has file name `x`), so look at the text too.
    let text = dest.to_string_lossy();
    let dotted = [".", ".."].iter().any(|d| text == *d || text.ends_with(&format!("/{d}")));
    if dest.file_name().is_none() || dotted {
        return Err(refused(format!(
            "{flag} `{}` names no file or folder of its own; give a new name inside it, e.g. `{}`",
            dest.display(),
            dest.join("out").display()
        )));
    }
    if let Kind::Safetensors(_) = kind {
        refuse_inside_output_folder(dest, flag)?;
    }
    // Follows a link (a link to a run folder is a folder); a dangling link is a file.
    let Ok(meta) = std::fs::metadata(dest).or_else(|_| std::fs::symlink_metadata(dest)) else { return Ok(()) };
    if !force {
        return Err(refused(format!("{flag} {} exists; pass --force to replace it", dest.display())));
    }
    match kind {
        Kind::File if meta.is_dir() => Err(refused(format!(
            "{flag} {} is a folder; --force replaces only a file here, give a file name",
            dest.display()
        ))),
        Kind::File => Ok(()),
        Kind::Safetensors(_) if meta.is_dir() => Err(refused(format!(
            "{flag} {} is a folder; --force replaces only a file here, give a file name",
            dest.display()
        ))),
        Kind::Safetensors(key) => {
            if has_metadata_key(dest, key) {
                Ok(())
            } else {
                Err(refused(format!(
                    "{flag} {} is not a safetensors file this program wrote (no `{key}` in its metadata); \
                     --force replaces only such a file: move it or pick another {flag}",
                    dest.display()
                )))
            }
        }
        Kind::Folder(_) if !meta.is_dir() => Err(refused(format!(
            "{flag} {} is a file; --force replaces only a folder this program wrote",
            dest.display()
        ))),
        Kind::Folder(allowed) => {
            let canon = (dest.canonicalize(), std::env::current_dir().and_then(|c| c.canonicalize()));
            if let (Ok(d), Ok(cwd)) = canon
                && cwd.starts_with(&d)
            {
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

/// The adapter or run folder `dest` would land in, if any: the nearest existing folder among its
/// ancestors holding `adapter_config.json` (an adapter, ours or PEFT's) or `run.json` (a run).
pub fn enclosing_output_folder(dest: &Path) -> Option<(PathBuf, &'static str)> {
    let mut existing = dest.parent()?.to_path_buf();
    while !existing.as_os_str().is_empty() && !existing.exists() {
        existing = existing.parent()?.to_path_buf();
    }
    if existing.as_os_str().is_empty() {
        existing = PathBuf::from(".");
    }
    let start = existing.canonicalize().unwrap_or(existing);
    start.ancestors().find_map(|dir| {
        if dir.join("adapter_config.json").is_file() {
            Some((dir.to_path_buf(), "adapter folder"))
        } else if dir.join("run.json").is_file() {
            Some((dir.to_path_buf(), "run folder"))
        } else {
            None
        }
    })
}

/// Refuses an output file inside an adapter or run folder ([`enclosing_output_folder`]): such a
/// folder holds only what its command writes, and `--force` on it refuses anything else.
pub fn refuse_inside_output_folder(dest: &Path, flag: &str) -> Result<()> {
    match enclosing_output_folder(dest) {
        Some((dir, what)) => Err(refused(format!(
            "{flag} {} lies inside the {what} {}, which holds only what its command writes; write the \
             output somewhere else",
            dest.display(),
            dir.display()
        ))),
        None => Ok(()),
    }
}

/// Whether `path` is a safetensors file whose `__metadata__` has `key` (only the header is read).
fn has_metadata_key(path: &Path, key: &str) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_or(0, |m| m.len());
    if n == 0 || n > 100_000_000 || n > size.saturating_sub(8) {
        return false;
    }
    let mut header = vec![0u8; n as usize];
    if f.read_exact(&mut header).is_err() {
        return false;
    }
    let Ok(serde_json::Value::Object(h)) = serde_json::from_slice::<serde_json::Value>(&header) else { return false };
    h.get("__metadata__").and_then(|m| m.get(key)).is_some()
}

/// Refuses a destination that is one of the command's `inputs`, lies inside one, or contains one:
/// writing it would replace or delete what the command reads (`export --adapter A --out A`, a
/// transfer run folder holding its own `--base`).
pub fn refuse_inputs(dest: &Path, inputs: &[&Path], flag: &str) -> Result<()> {
    // Resolve what exists of the destination: its nearest existing ancestor, plus the rest.
    let mut existing = dest.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
            }
            _ => return Ok(()),
        }
    }
    let Ok(mut d) = existing.canonicalize() else { return Ok(()) };
    d.extend(rest.iter().rev());
    for input in inputs {
        let Ok(i) = input.canonicalize() else { continue };
        if d == i || d.starts_with(&i) || i.starts_with(&d) {
            return Err(refused(format!(
                "{flag} {} {} the input {}; write the output somewhere else",
                dest.display(),
                if d == i {
                    "is"
                } else if d.starts_with(&i) {
                    "lies inside"
                } else {
                    "contains"
                },
                input.display()
            )));
        }
    }
    Ok(())
}

/// Files that file browsers leave in any folder they open (macOS Finder, Windows Explorer): they
/// hold nothing of the user's, so they never make a folder foreign.
pub const FILE_BROWSER_FILES: [&str; 3] = [".DS_Store", "Thumbs.db", "desktop.ini"];

/// Entries of `dir` not among `allowed` (hidden temporaries `.<name>.tmp*` left by an earlier
/// killed write, and [`FILE_BROWSER_FILES`], are allowed too).
pub fn foreign_entries(dir: &Path, allowed: &[&str]) -> Result<Vec<String>> {
    let io = |cause| Error::Io { path: dir.display().to_string(), cause };
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
        let stale_tmp =
            allowed.iter().any(|a| name.starts_with(&format!(".{a}.tmp")) || name.starts_with(&format!("{a}.tmp")));
        if !allowed.contains(&name.as_str()) && !stale_tmp && !FILE_BROWSER_FILES.contains(&name.as_str()) {
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
        // A file replaces a file in one atomic rename; a folder has to go first.
        if std::fs::symlink_metadata(&self.dest).is_ok_and(|m| m.is_dir()) || self.tmp.is_dir() {
            remove(&self.dest).map_err(io(&self.dest))?;
        }
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
        std::fs::write(out.join(".DS_Store"), "finder").unwrap();
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
        let e = check_replace(&out.join("."), true, Kind::Folder(ADAPTER), "--out").unwrap_err().to_string();
        assert!(e.contains("names no file or folder"), "{e}");
    }

    /// A safetensors file with this `__metadata__`.
    fn safetensors_with(path: &Path, meta: &str) {
        let header = format!(r#"{{"__metadata__":{meta},"t":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(1f32.to_le_bytes());
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn force_replaces_only_a_safetensors_file_the_program_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let kind = Kind::Safetensors("superlora");
        let (ours, theirs, text) =
            (dir.path().join("m.safetensors"), dir.path().join("w.safetensors"), dir.path().join("notes.txt"));
        safetensors_with(&ours, r#"{"superlora":"merged"}"#);
        safetensors_with(&theirs, r#"{"format":"pt"}"#);
        std::fs::write(&text, "precious").unwrap();
        assert!(check_replace(&ours, true, kind, "--out").is_ok());
        let e = check_replace(&ours, false, kind, "--out").unwrap_err().to_string();
        assert!(e.contains("pass --force"), "{e}");
        for other in [&theirs, &text] {
            let e = check_replace(other, true, kind, "--out").unwrap_err().to_string();
            assert!(e.contains("not a safetensors file this program wrote"), "{e}");
        }
        // Never into an adapter or run folder, existing file or not.
        for marker in ["adapter_config.json", "run.json"] {
            let a = dir.path().join(marker.replace('.', "_"));
            std::fs::create_dir(&a).unwrap();
            std::fs::write(a.join(marker), "{}").unwrap();
            safetensors_with(&a.join("adapter_model.safetensors"), r#"{"superlora":"x"}"#);
            for name in ["adapter_model.safetensors", "new.safetensors"] {
                let e = check_replace(&a.join(name), true, kind, "--out").unwrap_err().to_string();
                assert!(e.contains("lies inside"), "{e}");
            }
        }
    }

    #[test]
    fn an_output_may_not_be_an_input_or_hold_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("base.safetensors"), "x").unwrap();
        let flag = "--out";
        assert!(refuse_inputs(&a, &[&a], flag).unwrap_err().to_string().contains(" is the input"));
        let e = refuse_inputs(&a.join("sub/new/x"), &[&a], flag).unwrap_err().to_string();
        assert!(e.contains("lies inside"), "{e}");
        let e = refuse_inputs(&a, &[&a.join("base.safetensors")], flag).unwrap_err().to_string();
        assert!(e.contains("contains"), "{e}");
        assert!(refuse_inputs(&dir.path().join("b"), &[&a], flag).is_ok());
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
