use std::time::Instant;
use superlora_core::projection::fastfood::Fastfood;
fn main() {
    let k: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let n = 1usize << k;
    let ff = Fastfood::generate(n / 2, n, 0, 0);
    let x = vec![1f32; n / 2];
    let reps = (1usize << 28) >> k;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(ff.forward(&x));
    }
    println!("2^{k}: {:.3} ms per forward", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
}
