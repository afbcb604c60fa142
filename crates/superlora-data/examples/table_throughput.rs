//! Hand-run throughput check of the table reader (not a test):
//!
//! ```text
//! cargo run --release -p superlora-data --example table_throughput -- [ROWS] [csv|tsv|jsonl]
//! ```
//!
//! Writes ROWS (default 1,000,000) short labelled texts to a temporary file, reads them back
//! with `load_text_table`, and prints the seconds taken and the process's peak resident memory.

use std::io::Write;
use std::time::Instant;

use superlora_data::{TableFormat, TextColumns, load_text_table};

const WORDS: [&str; 12] =
    ["a", "gripping", "film", "dull", "plot", "with", "great", "acting", "but", "slow", "\"quoted\"", "ending"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(1_000_000), |a| a.replace('_', "").parse())?;
    let format = match args.next().as_deref() {
        None | Some("csv") => TableFormat::Csv,
        Some("tsv") => TableFormat::Tsv,
        Some("jsonl") => TableFormat::Jsonl,
        Some(other) => return Err(format!("unknown format {other}").into()),
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(match format {
        TableFormat::Csv => "big.csv",
        TableFormat::Tsv => "big.tsv",
        TableFormat::Jsonl => "big.jsonl",
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    match format {
        TableFormat::Csv => writeln!(out, "id,text,label")?,
        TableFormat::Tsv => writeln!(out, "id\ttext\tlabel")?,
        TableFormat::Jsonl => {}
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..rows {
        let mut text = String::new();
        for k in 0..(4 + i % 9) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if k > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        }
        let label = ["neg", "pos", "neutral"][i % 3];
        match format {
            TableFormat::Csv => writeln!(out, "{i},\"{}, {i}\",{label}", text.replace('"', "\"\""))?,
            TableFormat::Tsv => writeln!(out, "{i}\t{text} {i}\t{label}")?,
            TableFormat::Jsonl => writeln!(out, "{}", serde_json::json!({"id": i, "text": text, "label": label}))?,
        }
    }
    out.flush()?;
    drop(out);
    let bytes = std::fs::metadata(&path)?.len();
    let before = peak_rss_kib();
    let start = Instant::now();
    let set = load_text_table(&path, &TextColumns::default(), Some(format))?;
    let secs = start.elapsed().as_secs_f64();
    let text_bytes: usize = set.texts.iter().map(String::len).sum();
    println!(
        "{rows} rows, {:.1} MB file, {:?}: read in {secs:.2} s ({:.0} rows/s); classes {:?}; text bytes {:.1} MB",
        bytes as f64 / 1e6,
        format,
        rows as f64 / secs,
        set.classes,
        text_bytes as f64 / 1e6
    );
    println!(
        "peak RSS: {:.1} MB before reading, {:.1} MB after",
        before as f64 / 1024.0,
        peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// VmHWM from /proc/self/status (Linux), in KiB; 0 elsewhere.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
