//! Run records: `metrics.jsonl` (one line per evaluation) and `summary.json`, plus the process's
//! peak resident memory.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::{Error, Result};

/// One evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    /// Training accuracy (on the batches since the previous evaluation).
    pub train_acc: f64,
    /// Validation accuracy.
    pub valid_acc: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Trainable head parameters.
    pub head_params: usize,
    /// Training samples per second since the previous evaluation.
    pub samples_per_s: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mb: f64,
    /// Training seconds so far.
    pub elapsed_s: f64,
}

/// Appends one JSON line to `path`.
pub fn append_jsonl<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let line = serde_json::to_string(record).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|cause| Error::Io { path: path.display().to_string(), cause })?;
    writeln!(f, "{line}").map_err(|cause| Error::Io { path: path.display().to_string(), cause })
}

/// Writes `value` as pretty JSON to `path` atomically (temporary file, then rename).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|cause| Error::Io { path: tmp.display().to_string(), cause })?;
    std::fs::rename(&tmp, path).map_err(|cause| Error::Io { path: path.display().to_string(), cause })
}

/// Peak resident set size of this process in MiB (`VmHWM`), or 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
