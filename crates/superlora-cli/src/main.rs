//! `superlora`: plan, train, evaluate and ship SuperLoRA adapters.
//!
//! Exit codes: 0 success; 2 bad input (arguments, settings, files); 1 anything else.

mod cli;
mod commands;
mod flags;
mod rundir;
mod runspec;
mod settings;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    superlora_core::sys::ensure_malloc_tunables();
    superlora_core::sys::default_sigpipe();
    let cli = cli::Cli::parse();
    single_threaded_workers(&cli);
    let result = match &cli.command {
        cli::Command::Plan(a) => commands::plan::run(a),
        cli::Command::Train(a) => commands::train::run(a),
        cli::Command::Eval(a) => commands::eval::run(a),
        cli::Command::Bench(a) => commands::bench::run(a),
        cli::Command::Predict(a) => commands::predict::run(a),
        cli::Command::Generate(a) => commands::generate::run(a),
        cli::Command::Merge(a) => commands::merge::run(a),
        cli::Command::Export(a) => commands::export::run(a),
        cli::Command::Import(a) => commands::import::run(a),
        cli::Command::Sweep(a) => commands::sweep::run(a),
        cli::Command::Plot(a) => commands::plot::run(a),
        cli::Command::Unmerge(a) => commands::merge::unmerge(a),
        cli::Command::Diffusion(a) => commands::diffusion::run(a),
        cli::Command::DeviceCheck(a) => commands::device_check::run_command(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Data parallel (`--workers N`, N > 1) is fastest with one single-threaded worker per core: so
/// candle's matmul threads (`RAYON_NUM_THREADS`) and its elementwise pool (`CANDLE_NUM_THREADS`)
/// are set to 1, unless the user set them. Both are read when first used, after this.
fn single_threaded_workers(cli: &cli::Cli) {
    let workers = match &cli.command {
        cli::Command::Train(a) => a.workers.unwrap_or(1),
        cli::Command::Bench(a) => a.workers,
        _ => 1,
    };
    if workers > 1 {
        for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                // SAFETY: nothing but this thread runs yet (no pool, no progress bar), so no other
                // thread can read the environment while it changes.
                unsafe { std::env::set_var(var, "1") };
            }
        }
    }
}

/// 2 for errors caused by the user's input, 1 otherwise. An OS error the machine caused (disk
/// full, interrupted) is never the input's fault, whatever the layer that wrapped it.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().filter_map(io_cause).any(|io| !superlora_core::error::io_is_input(io.kind())) {
        return 1;
    }
    let input = e.chain().any(|c| {
        c.downcast_ref::<settings::InputError>().is_some()
            || c.downcast_ref::<superlora_core::Error>().is_some_and(|e| !matches!(e, superlora_core::Error::Candle(_)))
            || c.downcast_ref::<superlora_io::Error>().is_some()
            || c.downcast_ref::<toml::de::Error>().is_some()
            || c.downcast_ref::<std::io::Error>().is_some()
            || c.downcast_ref::<superlora_data::Error>().is_some()
            || c.downcast_ref::<superlora_models::Error>().is_some_and(|e| {
                matches!(
                    e,
                    superlora_models::Error::Weights(_)
                        | superlora_models::Error::Adapter(_)
                        | superlora_models::Error::Io(_)
                )
            })
            || c.downcast_ref::<superlora_train::Error>().is_some_and(|e| {
                matches!(
                    e,
                    superlora_train::Error::Checkpoint(_)
                        | superlora_train::Error::Output(_)
                        | superlora_train::Error::Io { .. }
                        | superlora_train::Error::Data(_)
                        | superlora_train::Error::DataLoad(_)
                        // A diverged run: the learning rates given were too large.
                        | superlora_train::Error::NonFinite(_)
                )
            })
            || c.downcast_ref::<csv::Error>().is_some()
            || c.downcast_ref::<safetensors::SafeTensorError>().is_some()
            || c.downcast_ref::<serde_json::Error>().is_some()
    });
    if input { 2 } else { 1 }
}

/// The OS error a link of an error chain is or wraps.
fn io_cause<'a>(c: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    if let Some(io) = c.downcast_ref::<std::io::Error>() {
        return Some(io);
    }
    if let Some(superlora_io::Error::Io { cause, .. }) = c.downcast_ref::<superlora_io::Error>() {
        return Some(cause);
    }
    if let Some(superlora_train::Error::Io { cause, .. }) = c.downcast_ref::<superlora_train::Error>() {
        return Some(cause);
    }
    if let Some(superlora_data::Error::Io { source, .. }) = c.downcast_ref::<superlora_data::Error>() {
        return Some(source);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::exit_code;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_full_disk_is_not_the_users_input_but_a_missing_file_is() {
        let wrapped = |kind: ErrorKind| {
            anyhow::Error::new(superlora_train::Error::Io {
                path: "runs/x/summary.json".into(),
                cause: Error::from(kind),
            })
            .context("writing the summary")
        };
        assert_eq!(exit_code(&wrapped(ErrorKind::NotFound)), 2);
        assert_eq!(exit_code(&wrapped(ErrorKind::StorageFull)), 1);
        let bare = anyhow::Error::new(Error::from(ErrorKind::Interrupted)).context("reading");
        assert_eq!(exit_code(&bare), 1);
        let bare = anyhow::Error::new(Error::from(ErrorKind::PermissionDenied)).context("reading");
        assert_eq!(exit_code(&bare), 2);
        let data = superlora_data::Error::Io { path: "x".into(), source: Error::from(ErrorKind::StorageFull) };
        assert_eq!(exit_code(&anyhow::Error::new(data)), 1);
    }

    #[test]
    fn a_diverged_run_is_the_settings_fault() {
        let e = anyhow::Error::new(superlora_train::Error::NonFinite("training loss is NaN at step 3".into()))
            .context("training");
        assert_eq!(exit_code(&e), 2);
    }
}
