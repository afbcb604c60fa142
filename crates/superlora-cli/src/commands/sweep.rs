//! `superlora sweep --grid FILE.toml`: many `train` runs (configs x seeds) on one task, in
//! sequence, resumable, one `results.csv` row per finished run.
//!
//! The grid file:
//!
//! ```toml
//! out = "runs/sweep-minilm"        # optional; --out wins
//! seeds = [0, 1, 2]
//!
//! [train]                          # `train` flags shared by every run (names without --)
//! preset = "minilm-rt"
//! steps = 300
//! head-lr = 3e-2
//!
//! [[run]]                          # one config, or a grid: list values are crossed
//! family = "lora"                  # the plot series (default: derived from the config)
//! rank = [1, 2, 4, 8]
//! adapter-lr = 1e-2
//! ```
//!
//! results.csv has [`COLUMNS`] (accuracy tasks) or [`PPL_COLUMNS`] (`--task causal-lm`), one kind
//! per folder. Decoder tasks also write, once, a row for the base model ([`BASE_CELL`]) from the
//! first summary that carries its scores (lm-classify's `zero_shot`, causal-lm's `base`).
//!
//! Every other key of `[train]` and `[[run]]` is passed to `train` as `--key value` (`true` as a
//! bare `--key`, `false` omitted). Each run (cell x seed) lives in `<out>/runs/<cell>-s<seed>`, its
//! output in `<out>/logs/`. Runs go seed by seed (every config with the first seed, then the next
//! seed), so a sweep stopped part-way has already covered the whole grid. A run with a row in
//! `results.csv` is never rerun; an interrupted one is continued with `train --resume`; a failed
//! one is reported and the sweep goes on.
//!
//! Several sweep processes may work on the same grid and folder at once (one per core or GPU):
//! each run is claimed with an exclusive lock on `<out>/locks/<run>.lock` for as long as it
//! trains, a run claimed by another process is skipped, and rows are appended to `results.csv`
//! under a lock. Locks are advisory file locks, released by the system when a process ends, so a
//! killed sweep never leaves a run claimed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::settings::InputError;

pub(crate) const SWEEP_ABOUT: &str = "\
Run a grid of `train` runs on one task: every [[run]] entry of the TOML file is one config, or a grid \
when some of its values are lists (crossed); every config runs once per seed, seed by seed (all \
configs with the first seed, then the next). Runs go one after another, each in its own process, \
into <out>/runs/<config>-s<seed> with its output in <out>/logs/. \
Each finished run appends a row to <out>/results.csv (config, seed, adapter and head parameters, best \
validation accuracy, test accuracy at that step, training time, samples/s; for causal-lm the same with \
perplexity and tokens/s). Decoder tasks (lm-classify, causal-lm) also add, once, a `base` row: the base \
model's zero-shot accuracy or perplexity, the plot's reference line. Run the same command again to \
continue a killed sweep: finished runs are skipped, an interrupted one resumes from its checkpoint. \
Several sweep processes may share one grid and folder (start the same command once per core): \
each run is locked while it trains (<out>/locks/), so every run is done once.";

pub(crate) const SWEEP_EXAMPLE: &str = "\
Example grid (the full reference: docs/GUIDE.md; the study's grids: sweeps/):

  seeds = [0, 1, 2]
  [train]                # `train` flags shared by every run, without --
  preset = \"minilm-rt\"
  steps = 300
  head-lr = 3e-2
  [[run]]
  head-only = true
  [[run]]
  family = \"lora\"        # the plot series (derived from the flags if omitted)
  rank = [1, 2, 4, 8]
  adapter-lr = 3e-3
  [[run]]
  fold = \"square\"
  groups = [1, 4, 12]
  order = 3
  factor = \"tucker\"
  rank = [2, 4]
  adapter-lr = 1e-2

  superlora sweep --grid grid.toml --out runs/my-sweep
  superlora plot runs/my-sweep/results.csv";

/// `superlora sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The grid (TOML; see above).
    #[arg(long, value_name = "FILE.toml")]
    pub grid: PathBuf,
    /// Output folder (default: the grid's `out`, else runs/sweep-<grid file name>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the runs the grid expands to and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The columns of results.csv for tasks scored by accuracy (higher is better).
pub const COLUMNS: [&str; 13] = [
    "cell",
    "family",
    "config",
    "seed",
    "adapter_params",
    "head_params",
    "best_valid_acc",
    "best_step",
    "test_acc_at_best",
    "final_test_acc",
    "wall_s",
    "samples_per_s",
    "run_dir",
];

/// The columns of results.csv for `--task causal-lm` (held-out perplexity, lower is better): the
/// same positions as [`COLUMNS`], the metric's names and tokens/s in place of samples/s.
pub const PPL_COLUMNS: [&str; 13] = [
    "cell",
    "family",
    "config",
    "seed",
    "adapter_params",
    "head_params",
    "best_valid_ppl",
    "best_step",
    "test_ppl_at_best",
    "final_test_ppl",
    "wall_s",
    "tokens_per_s",
    "run_dir",
];

/// The cell name of the base model's row (decoder tasks: the model before any training).
pub const BASE_CELL: &str = "base";

/// What a sweep's runs are scored by, read off a run's summary.json or results.csv's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Test accuracy at the best-validation step; higher is better.
    Accuracy,
    /// Test perplexity at the best-validation step; lower is better.
    Perplexity,
}

impl Metric {
    /// results.csv's header.
    pub fn columns(self) -> [&'static str; 13] {
        match self {
            Metric::Accuracy => COLUMNS,
            Metric::Perplexity => PPL_COLUMNS,
        }
    }

    /// The metric a header belongs to.
    pub fn from_header(header: &[&str]) -> Option<Metric> {
        [Metric::Accuracy, Metric::Perplexity].into_iter().find(|m| header == m.columns())
    }

    /// The summary.json keys of (best validation, test at best, final test, throughput).
    fn summary_keys(self) -> [&'static str; 4] {
        match self {
            Metric::Accuracy => ["best_valid_acc", "test_acc_at_best", "final_test_acc", "samples_per_s"],
            Metric::Perplexity => ["best_valid_ppl", "test_ppl_at_best", "final_test_ppl", "tokens_per_s"],
        }
    }

    /// The summary.json object holding the base model's (validation, test) scores: lm-classify's
    /// zero-shot accuracy, causal-lm's perplexity before training.
    fn base_key(self) -> (&'static str, [&'static str; 2]) {
        match self {
            Metric::Accuracy => ("zero_shot", ["valid_acc", "test_acc"]),
            Metric::Perplexity => ("base", ["valid_ppl", "test_ppl"]),
        }
    }

    /// The score on a higher-is-better scale (perplexity negated), for comparisons.
    pub fn key(self, v: f64) -> f64 {
        match self {
            Metric::Accuracy => v,
            Metric::Perplexity => -v,
        }
    }

    /// Its name in plots and tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "test accuracy",
            Metric::Perplexity => "test perplexity",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    out: Option<PathBuf>,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    #[serde(default)]
    train: toml::Table,
    #[serde(default)]
    run: Vec<toml::Table>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One config of the sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// Unique, file-name-safe name.
    pub name: String,
    /// Plot series.
    pub family: String,
    /// `train` arguments (without --seed / --out).
    pub args: Vec<String>,
}

/// Keys that describe a run but are not `train` flags.
const META: [&str; 2] = ["family", "name"];
/// Flags the sweep sets itself.
const RESERVED: [&str; 5] = ["seed", "out", "resume", "force", "no-progress"];

fn scalar(key: &str, v: &toml::Value) -> Result<Option<String>> {
    Ok(match v {
        toml::Value::String(s) if s == "@" => bail!(InputError(format!(
            "`{key}` = \"@\" is a placeholder for a value chosen on validation: fill it in with scripts/pick_lrs.py (see scripts/study.sh)"
        ))),
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(true) => Some(String::new()),
        toml::Value::Boolean(false) => None,
        other => bail!(InputError(format!(
            "`{key}` = {other}: values are strings, numbers, booleans or (in [[run]]) lists of them"
        ))),
    })
}

fn flags(table: &toml::Table, keys: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in keys {
        if let Some(v) = scalar(k, &table[k])? {
            out.push(format!("--{k}"));
            if !v.is_empty() {
                out.push(v);
            }
        }
    }
    Ok(out)
}

fn check_key(key: &str) -> Result<()> {
    if RESERVED.contains(&key) {
        bail!(InputError(format!(
            "`{key}` is set by the sweep itself (seeds come from `seeds = [...]`, folders from `out`)"
        )));
    }
    if key.starts_with("--") || key.contains(char::is_whitespace) {
        bail!(InputError(format!("`{key}`: write flag names without leading dashes or spaces, e.g. `adapter-lr`")));
    }
    Ok(())
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

/// Expands the `[[run]]` entries into cells (lists crossed, in file order).
fn expand(file: &GridFile) -> Result<Vec<Cell>> {
    let shared_keys: Vec<String> = file.train.keys().cloned().collect();
    for k in &shared_keys {
        check_key(k)?;
        if file.train[k].is_array() {
            bail!(InputError(format!("[train] `{k}` is a list: lists belong in [[run]] entries")));
        }
    }
    let shared = flags(&file.train, &shared_keys)?;
    if file.run.is_empty() {
        bail!(InputError("the grid has no [[run]] entries".into()));
    }
    let mut cells: Vec<Cell> = Vec::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for (i, entry) in file.run.iter().enumerate() {
        let keys: Vec<String> = entry.keys().filter(|k| !META.contains(&k.as_str())).cloned().collect();
        for k in &keys {
            check_key(k)?;
        }
        // cartesian product over list values
        let mut combos: Vec<toml::Table> = vec![toml::Table::new()];
        for k in &keys {
            let values: Vec<toml::Value> = match &entry[k] {
                toml::Value::Array(a) if a.is_empty() => {
                    bail!(InputError(format!("[[run]] #{} `{k}` is an empty list", i + 1)))
                }
                toml::Value::Array(a) => a.clone(),
                v => vec![v.clone()],
            };
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(k.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        let family = match entry.get("family") {
            Some(toml::Value::String(s)) => Some(s.clone()),
            None => None,
            Some(v) => bail!(InputError(format!("[[run]] #{} `family` = {v}: must be a string", i + 1))),
        };
        for combo in combos {
            let mut args = shared.clone();
            args.extend(flags(&combo, &keys)?);
            let desc: Vec<String> = keys
                .iter()
                .filter_map(|k| {
                    scalar(k, &combo[k])
                        .ok()
                        .flatten()
                        .map(|v| if v.is_empty() { k.clone() } else { format!("{k}={v}") })
                })
                .collect();
            let family = family.clone().unwrap_or_else(|| derive_family(&combo));
            let base = match (entry.get("name"), desc.is_empty()) {
                (Some(n), _) => given_name(n, keys.iter().any(|k| entry[k].is_array()), i)?,
                (None, true) => family.clone(),
                (None, false) => format!("{family}__{}", desc.join("__")),
            };
            let name = slug(&base);
            if name.len() > MAX_NAME {
                bail!(InputError(format!(
                    "[[run]] #{}: the config's name `{name}` is {} bytes, longer than {MAX_NAME} (file names of its \
                     run, log and lock would be too long); give it a shorter `name`",
                    i + 1,
                    name.len()
                )));
            }
            if name == BASE_CELL {
                bail!(InputError(format!(
                    "[[run]] #{}: `{BASE_CELL}` names the base model's row of results.csv; give the config another \
                     `name`",
                    i + 1
                )));
            }
            if !names.insert(name.clone()) {
                bail!(InputError(format!("two [[run]] configs are both named `{name}`; give them distinct `name`s")));
            }
            cells.push(Cell { name, family, args });
        }
    }
    Ok(cells)
}

/// The longest config name: with `-s<seed>` and `.lock` it stays well inside a file name's 255 bytes.
const MAX_NAME: usize = 200;

/// A `[[run]]` entry's own `name`: a non-empty string, for an entry that is one config.
fn given_name(v: &toml::Value, expands: bool, i: usize) -> Result<String> {
    match v {
        toml::Value::String(n) if expands => bail!(InputError(format!(
            "[[run]] #{} `name` = \"{n}\" names an entry with lists, which expands to several configs; drop the \
             `name` (names are then derived from the varying flags) or split the entry",
            i + 1
        ))),
        toml::Value::String(n) if n.trim().is_empty() => {
            bail!(InputError(format!("[[run]] #{} `name` is empty; give a name or drop the key", i + 1)))
        }
        toml::Value::String(n) => Ok(n.clone()),
        other => bail!(InputError(format!("[[run]] #{} `name` = {other}: must be a string", i + 1))),
    }
}

/// A plot series for a config that names none: the core's [`AdapterConfig::family`] of the
/// adapter flags (`head-only` without an adapter). A cell whose flags do not resolve is named by
/// its `factor` (its run then fails with the resolver's message).
///
/// [`AdapterConfig::family`]: superlora_core::AdapterConfig::family
fn derive_family(t: &toml::Table) -> String {
    if t.get("head-only").and_then(toml::Value::as_bool) == Some(true) {
        return "head-only".into();
    }
    const ADAPTER_KEYS: [&str; 11] =
        ["fold", "groups", "order", "factor", "rank", "kron", "projection", "ratio", "scale", "seed", "count"];
    let adapter: toml::Table =
        t.iter().filter(|(k, _)| ADAPTER_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    match adapter
        .try_into::<superlora_core::AdapterSpec>()
        .map_err(|e| e.to_string())
        .and_then(|s| s.resolve().map_err(|e| e.to_string()))
    {
        Ok(cfg) => cfg.family(),
        Err(_) => t.get("factor").and_then(toml::Value::as_str).unwrap_or("invalid").to_string(),
    }
}

/// Rows already in results.csv, as (cell, seed); read under a shared lock so that a row being
/// appended by another sweep process is never seen half-written.
fn finished(csv_path: &Path) -> Result<BTreeSet<(String, u64)>> {
    let mut done = BTreeSet::new();
    let file = match std::fs::File::open(csv_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("opening {}", csv_path.display())),
    };
    file.lock_shared().with_context(|| format!("locking {}", csv_path.display()))?;
    if file.metadata()?.len() == 0 {
        return Ok(done);
    }
    let mut r = csv::Reader::from_reader(file);
    let headers = r.headers().with_context(|| format!("reading {}", csv_path.display()))?.clone();
    if Metric::from_header(&headers.iter().collect::<Vec<_>>()).is_none() {
        bail!(InputError(format!(
            "{} has columns {:?}, not those of this version ({:?}, or for causal-lm {:?}); move it away to start a \
             new sweep",
            csv_path.display(),
            headers.iter().collect::<Vec<_>>(),
            COLUMNS,
            PPL_COLUMNS
        )));
    }
    for row in r.records() {
        let row = row.with_context(|| format!("reading {}", csv_path.display()))?;
        let seed: u64 = row[3].parse().with_context(|| format!("{}: seed `{}`", csv_path.display(), &row[3]))?;
        done.insert((row[0].to_string(), seed));
    }
    Ok(done)
}

/// This process's claim on one run: an exclusive lock on `<out>/locks/<run>.lock`, held until
/// the returned file is dropped (or the process ends). `None` when another process holds it.
fn claim(out: &Path, run_name: &str) -> Result<Option<std::fs::File>> {
    crate::rundir::try_lock(&out.join("locks").join(format!("{run_name}.lock")))
}

fn append_row(csv_path: &Path, cell: &Cell, seed: u64, run_dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(run_dir.join("summary.json"))
        .with_context(|| format!("reading {}", run_dir.join("summary.json").display()))?;
    let s: serde_json::Value = serde_json::from_str(&text)?;
    let metric = if s.get("best_valid_ppl").is_some() { Metric::Perplexity } else { Metric::Accuracy };
    let num_in = |v: &serde_json::Value, k: &str| -> Result<String> {
        v.get(k)
            .and_then(|v| if v.is_number() { Some(v.to_string()) } else { None })
            .ok_or_else(|| anyhow::anyhow!("{}: `{k}` missing", run_dir.join("summary.json").display()))
    };
    let num = |k: &str| num_in(&s, k);
    let [valid, test, final_test, rate] = metric.summary_keys();
    // Decoder tasks train no head.
    let head = if s.get("head_params").is_some() { num("head_params")? } else { "0".into() };
    let row = vec![
        cell.name.clone(),
        cell.family.clone(),
        cell.args.join(" "),
        seed.to_string(),
        num("adapter_params")?,
        head,
        num(valid)?,
        num("best_step")?,
        num(test)?,
        num(final_test)?,
        num("train_seconds")?,
        num(rate)?,
        run_dir.display().to_string(),
    ];
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(csv_path)
        .with_context(|| format!("opening {}", csv_path.display()))?;
    // Other sweep processes may append to the same file: header and rows under one lock.
    f.lock().with_context(|| format!("locking {}", csv_path.display()))?;
    let mut existing = String::new();
    std::io::Read::read_to_string(&mut f, &mut existing).with_context(|| format!("reading {}", csv_path.display()))?;
    let mut rows = csv::Reader::from_reader(existing.as_bytes());
    let has_base = if existing.is_empty() {
        false
    } else {
        let header: Vec<String> = rows.headers()?.iter().map(str::to_string).collect();
        if header != metric.columns() {
            bail!(InputError(format!(
                "{}: its columns are {header:?}, but run {} reports {}; one sweep folder holds one kind of task",
                csv_path.display(),
                run_dir.display(),
                if metric == Metric::Perplexity { "perplexity" } else { "accuracy" }
            )));
        }
        rows.records().any(|r| r.is_ok_and(|r| &r[0] == BASE_CELL))
    };
    let mut w = csv::Writer::from_writer(f);
    if existing.is_empty() {
        w.write_record(metric.columns())?;
    }
    w.write_record(&row)?;
    // The base model's scores, once per folder: the plot's horizontal reference.
    let (base_key, [base_valid, base_test]) = metric.base_key();
    if let (false, Some(b)) = (has_base, s.get(base_key)) {
        let test = num_in(b, base_test)?;
        w.write_record([
            BASE_CELL.to_string(),
            BASE_CELL.to_string(),
            "the base model without an adapter".to_string(),
            seed.to_string(),
            "0".into(),
            "0".into(),
            num_in(b, base_valid)?,
            "0".into(),
            test.clone(),
            test,
            "0".into(),
            "0".into(),
            run_dir.display().to_string(),
        ])?;
    }
    w.flush()?;
    Ok(format!(
        "{} s{seed}: test {} at best validation {} ({} adapter params)",
        cell.name,
        num(test)?,
        num(valid)?,
        num("adapter_params")?
    ))
}

/// Runs the command.
pub fn run(args: &SweepArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.grid).with_context(|| format!("reading {}", args.grid.display()))?;
    let file: GridFile = toml::from_str(&text)
        .map_err(|e| InputError(format!("{}: not a valid sweep grid: {e}", args.grid.display())))?;
    if file.seeds.is_empty() {
        bail!(InputError(format!("{}: `seeds` is empty", args.grid.display())));
    }
    let mut seen = BTreeSet::new();
    if let Some(s) = file.seeds.iter().find(|&&s| !seen.insert(s)) {
        bail!(InputError(format!("{}: `seeds` lists {s} twice", args.grid.display())));
    }
    let cells = expand(&file).with_context(|| format!("in {}", args.grid.display()))?;
    let out = args.out.clone().or(file.out.clone()).unwrap_or_else(|| {
        let stem = args.grid.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(format!("sweep-{stem}"))
    });
    check_out(&out)?;
    // Every config's flags are checked as `train` reads them before anything runs, so a typo in
    // the last config of a long grid fails now, not hours in.
    for c in &cells {
        check_cell(c, &out).with_context(|| format!("in {}, config `{}`", args.grid.display(), c.name))?;
    }
    // Seed-major: every config with the first seed, then every config with the next one, so a
    // long sweep stopped part-way already covers the whole grid.
    let plan: Vec<(&Cell, u64)> = file.seeds.iter().flat_map(|&s| cells.iter().map(move |c| (c, s))).collect();
    if args.dry_run {
        for (c, s) in &plan {
            println!("{}-s{s}\t{}\ttrain {} --seed {s}", c.name, c.family, c.args.join(" "));
        }
        println!("{} configs x {} seeds = {} runs into {}", cells.len(), file.seeds.len(), plan.len(), out.display());
        return Ok(());
    }
    for sub in ["logs", "locks"] {
        std::fs::create_dir_all(out.join(sub)).with_context(|| format!("creating {}", out.join(sub).display()))?;
    }
    keep_grid(&args.grid, &text, &out)?;
    let csv_path = out.join("results.csv");
    let done = finished(&csv_path)?;
    let todo: Vec<&(&Cell, u64)> = plan.iter().filter(|(c, s)| !done.contains(&(c.name.clone(), *s))).collect();
    eprintln!(
        "sweep: {} configs x {} seeds = {} runs; {} already in {}, {} to go",
        cells.len(),
        file.seeds.len(),
        plan.len(),
        plan.len() - todo.len(),
        csv_path.display(),
        todo.len()
    );
    let bar = if args.no_progress { ProgressBar::hidden() } else { ProgressBar::new(todo.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let exe = std::env::current_exe().context("locating the superlora binary")?;
    let mut failed: Vec<String> = Vec::new();
    let mut elsewhere: Vec<String> = Vec::new();
    for (cell, seed) in todo.into_iter().copied() {
        let run_name = format!("{}-s{seed}", cell.name);
        let run_dir = out.join("runs").join(&run_name);
        bar.set_message(run_name.clone());
        // Held until this run's row is written; another sweep process on this folder skips it.
        let Some(_claim) = claim(&out, &run_name)? else {
            elsewhere.push(run_name);
            bar.inc(1);
            continue;
        };
        // Another process may have finished it since this one read results.csv.
        if finished(&csv_path)?.contains(&(cell.name.clone(), seed)) {
            bar.inc(1);
            continue;
        }
        if !run_dir.join("summary.json").exists() {
            let log_path = out.join("logs").join(format!("{run_name}.log"));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("train").args(&cell.args).arg("--seed").arg(seed.to_string()).arg("--out").arg(&run_dir);
            cmd.arg("--no-progress");
            if run_dir.join("run.json").exists() {
                cmd.arg("--resume");
            }
            let mut log2 = log.try_clone()?;
            writeln!(
                log2,
                "$ superlora {}",
                cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
            )?;
            let status = cmd
                .stdin(Stdio::null())
                .stdout(log2)
                .stderr(log)
                .status()
                .with_context(|| format!("starting {}", exe.display()))?;
            if !status.success() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last: Vec<&str> = tail.lines().rev().take(3).collect();
                say(
                    &bar,
                    format!(
                        "FAILED {run_name} (exit {}): {} — log {}",
                        status.code().map_or("signal".into(), |c| c.to_string()),
                        last.into_iter().rev().collect::<Vec<_>>().join(" | "),
                        log_path.display()
                    ),
                );
                failed.push(run_name);
                bar.inc(1);
                continue;
            }
        }
        let line = append_row(&csv_path, cell, seed, &run_dir)?;
        say(&bar, line);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !elsewhere.is_empty() {
        eprintln!(
            "sweep: {} runs were running in another sweep process on {} ({}); they add their rows when they finish",
            elsewhere.len(),
            out.display(),
            elsewhere.join(", ")
        );
    }
    if !failed.is_empty() {
        bail!("{} runs failed: {} (logs in {})", failed.len(), failed.join(", "), out.join("logs").display());
    }
    println!("results in {}", csv_path.display());
    Ok(())
}

/// Parses a config's `train` flags as `train` would and resolves its settings (model present,
/// adapter valid, counts ≥ 1), without loading data.
fn check_cell(cell: &Cell, out: &Path) -> Result<()> {
    use clap::Parser;
    let argv = ["superlora".to_string(), "train".into()]
        .into_iter()
        .chain(cell.args.iter().cloned())
        .chain(["--out".to_string(), out.join("runs").join(&cell.name).display().to_string()]);
    let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| {
        let msg = e.render().to_string();
        let first = msg.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        InputError(format!("`train {}`: {first}", cell.args.join(" ")))
    })?;
    if let crate::cli::Command::Train(t) = &cli.command {
        use crate::commands::train_lm::{TaskKind, decoder_model};
        match t.task {
            TaskKind::Classify => {
                crate::commands::train::resolve(t)?;
            }
            TaskKind::CausalLm | TaskKind::LmClassify => {
                decoder_model(t, if t.task == TaskKind::CausalLm { "causal-lm" } else { "lm-classify" })?;
                crate::settings::resolve_adapter(&t.adapter)?;
            }
        }
    }
    Ok(())
}

/// What a sweep writes at the top of its folder.
const SWEEP_ENTRIES: [&str; 5] = ["grid.toml", "results.csv", "logs", "locks", "runs"];

/// A sweep writes into a new folder, or one holding only what sweeps write (a second process
/// starting on the same new folder finds the first one's `locks/`), or one an earlier sweep made
/// (it holds `grid.toml`; plots may lie beside it); never into a run, an adapter or any other folder.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!(InputError(format!("--out {} is a file; a sweep needs a folder", out.display())));
    }
    if !out.is_dir() || out.join("grid.toml").is_file() {
        return Ok(());
    }
    let foreign = superlora_train::output::foreign_entries(out, &SWEEP_ENTRIES)?;
    match foreign.iter().find(|n| !(n.starts_with("grid-") && n.ends_with(".toml"))) {
        None => Ok(()),
        Some(e) => bail!(InputError(format!(
            "--out {} holds `{e}` and is not a sweep folder (no grid.toml); pick another --out",
            out.display()
        ))),
    }
}

/// Copies the grid to `<out>/grid.toml`; an earlier, different grid there is kept as
/// `grid-<n>.toml` (a folder run with two grids says so).
fn keep_grid(grid: &Path, text: &str, out: &Path) -> Result<()> {
    // Sweeps starting together on one folder take turns here (the second then finds its grid
    // already in place); run locks are named `<run>-s<seed>.lock`, so this name is free.
    let lock_path = out.join("locks").join("grid.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    let dest = out.join("grid.toml");
    if let Ok(old) = std::fs::read_to_string(&dest) {
        if old == text {
            return Ok(());
        }
        let kept = (1..).map(|n| out.join(format!("grid-{n}.toml"))).find(|p| !p.exists()).context("no free name")?;
        std::fs::rename(&dest, &kept).with_context(|| format!("keeping {} as {}", dest.display(), kept.display()))?;
        eprintln!(
            "sweep: {} differs from the grid this folder ran before; the earlier one is kept as {}",
            grid.display(),
            kept.display()
        );
    }
    std::fs::write(&dest, text).with_context(|| format!("copying the grid to {}", dest.display()))
}

/// Prints above the progress bar, or to stderr when the bar is hidden (`--no-progress`), where
/// `ProgressBar::println` would print nothing.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
}

/// Families and cells of a grid without running it.
#[cfg(test)]
fn cells_of(text: &str) -> Result<Vec<Cell>> {
    let file: GridFile = toml::from_str(text).map_err(|e| InputError(format!("not a valid sweep grid: {e}")))?;
    expand(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(name: &str) -> Cell {
        Cell { name: name.into(), family: "lora".into(), args: vec!["--rank".into(), "1".into()] }
    }

    /// A finished run's folder holding only `summary` as summary.json.
    fn run_with(root: &Path, name: &str, summary: serde_json::Value) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        dir
    }

    #[test]
    fn decoder_runs_write_their_metric_and_the_base_model_once() {
        let tmp = tempfile::tempdir().unwrap();
        let ppl = |valid: f64, test: f64| {
            serde_json::json!({
                "adapter_params": 57600, "best_valid_ppl": valid, "best_step": 100, "test_ppl_at_best": test,
                "final_test_ppl": test, "train_seconds": 12.5, "tokens_per_s": 80.0,
                "base": {"valid_ppl": 30.0, "test_ppl": 31.0}
            })
        };
        let csv = tmp.path().join("results.csv");
        for (i, seed) in [0u64, 1].into_iter().enumerate() {
            let run = run_with(tmp.path(), &format!("r{seed}"), ppl(20.0 + i as f64, 21.0 + i as f64));
            append_row(&csv, &cell("lora_r1"), seed, &run).unwrap();
        }
        let text = std::fs::read_to_string(&csv).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(rows[0], PPL_COLUMNS, "{text}");
        assert_eq!(rows.len(), 4, "header, run, base (once), run: {text}");
        assert_eq!((rows[1][0], rows[1][6], rows[1][8], rows[1][5]), ("lora_r1", "20.0", "21.0", "0"), "{text}");
        assert_eq!((rows[2][0], rows[2][4], rows[2][6], rows[2][8]), (BASE_CELL, "0", "30.0", "31.0"), "{text}");
        assert_eq!(rows[3][3], "1");
        assert_eq!(finished(&csv).unwrap().len(), 3);
        // An accuracy run cannot join a perplexity folder.
        let acc = run_with(
            tmp.path(),
            "acc",
            serde_json::json!({
                "adapter_params": 10, "head_params": 4, "best_valid_acc": 0.8, "best_step": 1, "test_acc_at_best": 0.7,
                "final_test_acc": 0.7, "train_seconds": 1.0, "samples_per_s": 2.0
            }),
        );
        let e = append_row(&csv, &cell("x"), 0, &acc).unwrap_err().to_string();
        assert!(e.contains("reports accuracy; one sweep folder holds one kind of task"), "{e}");
        // lm-classify: accuracy columns, its zero-shot scores as the base row.
        let csv2 = tmp.path().join("results2.csv");
        let cls = run_with(
            tmp.path(),
            "cls",
            serde_json::json!({
                "adapter_params": 57600, "best_valid_acc": 0.85, "best_step": 50, "test_acc_at_best": 0.86,
                "final_test_acc": 0.84, "train_seconds": 3.0, "samples_per_s": 2.0,
                "zero_shot": {"valid_acc": 0.775, "test_acc": 0.805}
            }),
        );
        append_row(&csv2, &cell("lora_r1"), 2, &cls).unwrap();
        let text = std::fs::read_to_string(&csv2).unwrap();
        assert!(text.starts_with(&COLUMNS.join(",")), "{text}");
        assert!(
            text.contains("\nbase,base,the base model without an adapter,2,0,0,0.775,0,0.805,0.805,0,0,"),
            "{text}"
        );
        let e = cells_of("[[run]]\nname = \"base\"\nrank = 1\n").unwrap_err().to_string();
        assert!(e.contains("names the base model's row"), "{e}");
    }

    #[test]
    fn peer_families_come_from_the_core() {
        let cells = cells_of(
            r#"
            seeds = [0]
            [train]
            preset = "minilm-rt"
            [[run]]
            factor = "vera"
            rank = [4, 16]
            [[run]]
            count = 100
            [[run]]
            projection = "fourier"
            count = 50
            scale = 300
            "#,
        )
        .unwrap();
        let fam: Vec<&str> = cells.iter().map(|c| c.family.as_str()).collect();
        assert_eq!(fam, ["vera", "vera", "fourierft", "fourierft"]);
    }

    #[test]
    fn lists_are_crossed_and_families_derived() {
        let cells = cells_of(
            r#"
            seeds = [0, 1]
            [train]
            preset = "minilm-rt"
            steps = 10
            [[run]]
            head-only = true
            [[run]]
            rank = [1, 8]
            adapter-lr = 1e-2
            [[run]]
            fold = "square"
            groups = [1, 4]
            order = 3
            factor = "tucker"
            rank = [2, 3]
            [[run]]
            fold = "square"
            order = 1
            factor = "dense"
            ratio = 0.001
            [[run]]
            fold = ["natural", "square"]
            factor = "dense"
            "#,
        )
        .unwrap();
        let fam: Vec<&str> = cells.iter().map(|c| c.family.as_str()).collect();
        assert_eq!(
            fam,
            [
                "head-only",
                "lora",
                "lora",
                "tucker-m3",
                "tucker-m3",
                "tucker-m3",
                "tucker-m3",
                "dense+fastfood",
                "full-ft",
                "full-ft"
            ]
        );
        assert_eq!(cells[0].args, ["--preset", "minilm-rt", "--steps", "10", "--head-only"]);
        assert_ne!(cells[8].name, cells[9].name);
        let pair = |args: &[String], k: &str, v: &str| args.windows(2).any(|w| w[0] == k && w[1] == v);
        assert!(
            pair(&cells[2].args, "--rank", "8") && pair(&cells[2].args, "--adapter-lr", "0.01"),
            "{:?}",
            cells[2].args
        );
        let names: BTreeSet<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), cells.len());
    }

    #[test]
    fn bad_grids_name_the_problem() {
        let e = cells_of("[[run]]\nseed = 3\n").unwrap_err().to_string();
        assert!(e.contains("`seed` is set by the sweep"), "{e}");
        let e = cells_of("[train]\nrank = [1, 2]\n[[run]]\nfold = \"square\"\n").unwrap_err().to_string();
        assert!(e.contains("lists belong in [[run]]"), "{e}");
        let e = cells_of("[[run]]\nrank = []\n").unwrap_err().to_string();
        assert!(e.contains("empty list"), "{e}");
        assert!(cells_of("").unwrap_err().to_string().contains("no [[run]]"));
        assert!(cells_of("bogus = 1\n[[run]]\nrank = 1\n").unwrap_err().to_string().contains("bogus"));
        assert!(cells_of("[[run]]\nadapter-lr = \"@\"\n").unwrap_err().to_string().contains("pick_lrs"));
        let e = cells_of("[[run]]\nname = [\"a\", \"b\"]\nrank = 1\n").unwrap_err().to_string();
        assert!(e.contains("`name` = [\"a\", \"b\"]: must be a string"), "{e}");
        let e = cells_of("[[run]]\nname = \"a\"\nrank = [1, 2]\n").unwrap_err().to_string();
        assert!(e.contains("expands to several configs"), "{e}");
        let e = cells_of("[[run]]\nname = \" \"\nrank = 1\n").unwrap_err().to_string();
        assert!(e.contains("`name` is empty"), "{e}");
        let long = "x".repeat(300);
        let e = cells_of(&format!("[[run]]\nname = \"{long}\"\nrank = 1\n")).unwrap_err().to_string();
        assert!(e.contains("shorter `name`"), "{e}");
    }

    /// Names are how a resumed sweep finds its finished runs: they must not drift between versions.
    #[test]
    fn config_names_are_stable() {
        let cells = cells_of(
            r#"
            [[run]]
            head-only = true
            [[run]]
            family = "lora"
            adapter-lr = 0.003
            rank = [1]
            [[run]]
            family = "dense+fastfood"
            adapter-lr = 0.03
            factor = "dense"
            fold = "square"
            order = 1
            ratio = [0.00002]
            [[run]]
            family = "lora"
            head-only = false
            "#,
        )
        .unwrap();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "head-only__head-only",
                "lora__adapter-lr_0.003__rank_1",
                "dense_fastfood__adapter-lr_0.03__factor_dense__fold_square__order_1__ratio_0.00002",
                "lora"
            ]
        );
    }
}
