//! What a diffusion command may write over or into, by the rules of `superlora_train::output`
//! that `export`, `merge` and `import` follow:
//! - an existing file is replaced only with `--force`, and then only a file of the same kind
//!   ([`FileKind`]: a classifier, a PNG, an evaluation report), checked cheaply (a header, a
//!   signature, a small JSON file);
//! - an output is never one of the command's inputs, inside one, or around one;
//! - an output never lands inside an adapter folder or a run folder: those hold only what their
//!   command writes (`--force` on them refuses a folder holding anything else).

use std::path::Path;

use superlora_train::output::{Kind, check_replace, refuse_inputs, refuse_inside_output_folder};

use crate::{Error, Result};

/// A single file a diffusion command writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A classifier (`superlora diffusion classifier --out`): safetensors whose metadata `format`
    /// is [`crate::classifier::FORMAT`].
    Classifier,
    /// A PNG sample grid (`superlora diffusion sample --out`).
    Png,
    /// An evaluation report (`superlora diffusion eval --json`): a JSON object with
    /// [`EVAL_REPORT_KEYS`].
    EvalReport,
}

/// Keys every `diffusion eval --json` report holds.
pub const EVAL_REPORT_KEYS: [&str; 4] = ["heldout_loss", "conditional_accuracy", "frechet_distance", "ddim_steps"];

/// Largest evaluation report read to tell its kind.
const MAX_REPORT_BYTES: u64 = 1 << 20;

impl FileKind {
    /// The kind in words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Classifier => "a classifier written by `superlora diffusion classifier`",
            FileKind::Png => "a PNG file",
            FileKind::EvalReport => "a report written by `superlora diffusion eval --json`",
        }
    }

    /// Whether the existing file `path` is of this kind.
    pub fn matches(self, path: &Path) -> bool {
        match self {
            FileKind::Classifier => crate::classifier::is_classifier_file(path),
            FileKind::Png => crate::grid::is_png(path),
            FileKind::EvalReport => {
                let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= MAX_REPORT_BYTES);
                small
                    && std::fs::read(path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok())
                        .is_some_and(|m| EVAL_REPORT_KEYS.iter().all(|k| m.contains_key(*k)))
            }
        }
    }
}

/// Checks that the file `dest` (named by `flag`) may be written (module docs): absent, or with
/// `force` a file of `kind`; not one of `inputs`, inside one or holding one; not inside an adapter
/// or run folder. Creates nothing.
pub fn check_file_output(dest: &Path, force: bool, kind: FileKind, flag: &str, inputs: &[&Path]) -> Result<()> {
    check_replace(dest, force, Kind::File, flag)?;
    refuse_inputs(dest, inputs, flag)?;
    refuse_inside_output_folder(dest, flag)?;
    if std::fs::symlink_metadata(dest).is_ok() && !kind.matches(dest) {
        return Err(Error::Output(format!(
            "{flag} {} exists and is not {}; --force replaces only such a file: move it or pick another {flag}",
            dest.display(),
            kind.describe()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<()>) -> String {
        let e = r.unwrap_err();
        assert!(e.is_input(), "{e}");
        e.to_string()
    }

    #[test]
    fn force_replaces_only_a_file_of_the_same_kind() {
        let dir = tempfile::tempdir().unwrap();
        let dev = candle_core::Device::Cpu;
        let clf = dir.path().join("c.safetensors");
        crate::classifier::Classifier::new(4, vec!["a".into(), "b".into()], 0, &dev).unwrap().save(&clf, &[]).unwrap();
        let text = dir.path().join("notes.safetensors");
        std::fs::write(&text, "mine").unwrap();
        let base = dir.path().join("base.safetensors");
        let m = crate::Dit::new(
            crate::DitConfig { width: 8, depth: 1, heads: 2, mlp: 8, freq_dim: 4, timesteps: 10, ..Default::default() },
            0,
            &dev,
        )
        .unwrap();
        crate::train::save_base(&base, &m, &[]).unwrap();
        let png = dir.path().join("g.png");
        crate::grid::write_png(&png, &[0; 4], 1, 1, 2).unwrap();
        let report = dir.path().join("r.json");
        std::fs::write(
            &report,
            r#"{"heldout_loss": 0.1, "conditional_accuracy": 0.5, "frechet_distance": 3.0, "ddim_steps": 50}"#,
        )
        .unwrap();
        let other_json = dir.path().join("o.json");
        std::fs::write(&other_json, r#"{"a": 1}"#).unwrap();
        let ok = |p: &Path, k: FileKind| check_file_output(p, true, k, "--out", &[]);

        ok(&clf, FileKind::Classifier).unwrap();
        ok(&png, FileKind::Png).unwrap();
        ok(&report, FileKind::EvalReport).unwrap();
        ok(&dir.path().join("new.safetensors"), FileKind::Classifier).unwrap();
        for (p, k) in [
            (&text, FileKind::Classifier),
            (&base, FileKind::Classifier),
            (&png, FileKind::Classifier),
            (&text, FileKind::Png),
            (&clf, FileKind::Png),
            (&other_json, FileKind::EvalReport),
            (&text, FileKind::EvalReport),
        ] {
            let e = err(ok(p, k));
            assert!(e.contains("is not") && e.contains("--force replaces only"), "{e}");
        }
        // Without --force nothing is replaced.
        assert!(err(check_file_output(&clf, false, FileKind::Classifier, "--out", &[])).contains("pass --force"));
        assert_eq!(std::fs::read(&text).unwrap(), b"mine");
    }

    #[test]
    fn an_output_lands_neither_in_an_input_nor_in_an_adapter_or_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("t_d").join("adapter");
        std::fs::create_dir_all(&adapter).unwrap();
        std::fs::write(adapter.join("adapter_config.json"), "{}").unwrap();
        std::fs::write(adapter.join("adapter_model.safetensors"), "x").unwrap();
        std::fs::write(dir.path().join("t_d").join("run.json"), "{}").unwrap();
        let into = adapter.join("x.png");
        let e = err(check_file_output(&into, false, FileKind::Png, "--out", &[&adapter]));
        assert!(e.contains("lies inside the input"), "{e}");
        // A classifier has no adapter input, but still may not write into one.
        let e = err(check_file_output(&adapter.join("c.safetensors"), false, FileKind::Classifier, "--out", &[]));
        assert!(e.contains("inside the adapter folder"), "{e}");
        let e = err(check_file_output(&adapter.join("new/c.safetensors"), false, FileKind::Classifier, "--out", &[]));
        assert!(e.contains("inside the adapter folder"), "{e}");
        let e = err(check_file_output(&dir.path().join("t_d/x.json"), false, FileKind::EvalReport, "--json", &[]));
        assert!(e.contains("--json") && e.contains("inside the run folder"), "{e}");
        let base = dir.path().join("base.safetensors");
        std::fs::write(&base, "b").unwrap();
        let e = err(check_file_output(&base, true, FileKind::Png, "--out", &[&base]));
        assert!(e.contains("is the input"), "{e}");
        check_file_output(&dir.path().join("grids/x.png"), false, FileKind::Png, "--out", &[&adapter, &base]).unwrap();
        assert!(!into.exists() && !dir.path().join("grids").exists());
    }
}
