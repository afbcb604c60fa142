//! Fuzzes the adapter loader (`superlora_train::artifact::load_with_limits`) and the safetensors
//! header reader with arbitrary bytes.
//!
//! Input layout: `[u16 LE n][n bytes: adapter_config.json][rest: adapter_model.safetensors]`.
//! Both files are written to a per-process folder under /dev/shm and the folder is loaded; any
//! `Err` is fine, a panic, abort, leak past the RSS limit or timeout is a finding. The entry
//! limit is lowered to 2^22 so a hostile config cannot ask for gigabytes within the RSS limit
//! (the real loader's default is 2^31 and the same checks run before any allocation).
//!
//!     cd fuzz && cargo +nightly fuzz run adapter_loader corpus/adapter_loader -- -max_total_time=600
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use superlora_train::artifact::{CONFIG_FILE, LoadLimits, TENSOR_FILE, load_with_limits};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let d = base.join(format!("superlora-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch folder");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (config, tensors) = data[2..].split_at(n);
    let d = dir();
    std::fs::write(d.join(CONFIG_FILE), config).expect("write config");
    std::fs::write(d.join(TENSOR_FILE), tensors).expect("write tensors");
    let _ = superlora_io::read_header(&d.join(TENSOR_FILE));
    let _ = load_with_limits(d, &candle_core::Device::Cpu, LoadLimits { max_entries: 1 << 22 });
});
