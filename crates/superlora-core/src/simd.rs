//! Which vector unit the loops compiled more than once may use, decided at run time.
//!
//! The release build targets baseline x86-64 (SSE2: four f32 per instruction). Hot loops are
//! compiled again for AVX2 + FMA and for AVX-512 (`#[target_feature]`), and [`level`] picks the
//! widest version this CPU runs. Every version computes the same bits: Rust never contracts
//! a·b + c into an FMA by itself and LLVM keeps the order of floating-point reductions, so only
//! the vector width changes, never an element's arithmetic (tested wherever a loop has versions).
//! `superlora-models` uses the same level for its elementwise kernels.

/// A cap on [`level`] that tests set to run each version in turn.
#[cfg(target_arch = "x86_64")]
static CAP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Caps the version that multiversioned loops pick (0 baseline, 1 AVX2 + FMA, 2 AVX-512) for the
/// whole process; `u8::MAX` lifts the cap. For tests: every version gives the same bits, so a cap
/// set by one test cannot change another's results.
#[doc(hidden)]
pub fn set_cap(level: u8) {
    #[cfg(target_arch = "x86_64")]
    CAP.store(level, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
}

/// 2 with AVX-512 (F, VL, BW, DQ), 1 with AVX2 + FMA, 0 otherwise (and off x86-64); the
/// environment variable `SUPERLORA_SIMD=0|1|2` caps it (to measure the versions against each
/// other).
pub fn level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let detected = *LEVEL.get_or_init(|| {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq");
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            let level = if avx512 && avx2 {
                2
            } else if avx2 {
                1
            } else {
                0
            };
            let cap = std::env::var("SUPERLORA_SIMD").ok().and_then(|v| v.trim().parse::<u8>().ok());
            cap.map_or(level, |c| level.min(c))
        });
        detected.min(CAP.load(std::sync::atomic::Ordering::Relaxed))
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}
