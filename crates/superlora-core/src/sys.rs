//! Process-level tuning for training on CPU with glibc.
//!
//! candle allocates a fresh buffer for nearly every op's result. Buffers above glibc's mmap
//! threshold (≤ 32 MiB, adjusted dynamically) are mapped on allocation and unmapped on free, so
//! every training step pays a page fault per 4 KiB of every large temporary — on the virtual
//! machines measured here ~1.5 µs each, which made a ΔW forward+backward over ViT-B's query+value
//! weights 5–10x slower than its arithmetic (see docs/BENCHMARKS.md). Raising the mmap threshold
//! and the trim threshold keeps freed memory in the heap, where the next step reuses it.
//!
//! One arena (`arena_max=1`): glibc gives each further thread an arena of its own, made of mapped
//! heaps that it shrinks with `madvise(DONTNEED)` when their top is free, so the data-parallel
//! workers (`train --workers`) faulted in ~50,000 fresh pages per MiniLM step and held 18 % more
//! memory. In the one main-heap arena they reuse freed memory like the main thread does; the lock
//! they then share is taken a few thousand times per step (candle allocates per op), which costs
//! less than the faults did (docs/BENCHMARKS.md, "Data parallel").
//!
//! These settings can only be given to glibc before the process starts (`GLIBC_TUNABLES`; the
//! `mallopt` call caps the threshold at 32 MiB), so [`ensure_malloc_tunables`] re-executes the
//! program once with them set. Opt out with `SUPERLORA_NO_MALLOC_TUNING=1`.

/// The glibc tunables applied: heap allocations up to 1 GiB, freed memory kept up to 16 GiB, one
/// arena for every thread.
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1";

/// Environment variable that disables [`ensure_malloc_tunables`].
pub const OPT_OUT: &str = "SUPERLORA_NO_MALLOC_TUNING";

/// If this is a glibc Linux process without [`MALLOC_TUNABLES`], re-executes the same program
/// with the same arguments and those tunables added to `GLIBC_TUNABLES`. Returns (doing nothing)
/// when they are already set, when [`OPT_OUT`] is set, on other platforms, or if the exec fails.
/// Call it first thing in `main`, before any thread is started.
pub fn ensure_malloc_tunables() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(OPT_OUT).is_some() {
            return;
        }
        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if current.contains("glibc.malloc.mmap_threshold") {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let value =
            if current.is_empty() { MALLOC_TUNABLES.to_string() } else { format!("{current}:{MALLOC_TUNABLES}") };
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let mut cmd = std::process::Command::new(exe);
        if let Some(a0) = argv0 {
            cmd.arg0(a0);
        }
        // `exec` only returns on failure; then the program simply runs untuned.
        let _ = cmd.args(args).env("GLIBC_TUNABLES", value).exec();
    }
}

/// Restores the default action of SIGPIPE, so a command whose output is cut short
/// (`superlora plan … | head`) ends quietly, as Unix tools do, instead of panicking in `println!`
/// (Rust starts programs with SIGPIPE ignored). For binaries; call it first thing in `main`.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: `signal` with a valid signal number and SIG_DFL only changes this process's
    // disposition of SIGPIPE; it touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
