use std::time::Instant;
use superlora_core::projection::fastfood::Fastfood;
use superlora_core::projection::wht::{wht, wht_reference};

fn time<F: FnMut()>(label: &str, reps: usize, mut f: F) {
    f();
    let mut v = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{label:40} median {:9.3} ms", v[v.len() / 2] * 1e3);
}

fn main() {
    for k in [16u32, 20, 24] {
        let n = 1usize << k;
        let mut x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        time(&format!("wht 2^{k}"), 5, || wht(&mut x));
        time(&format!("wht_reference 2^{k}"), 3, || wht_reference(&mut x));
        let ff = Fastfood::generate(n / 2, n, 0, 0);
        let xin: Vec<f32> = vec![1.0; n / 2];
        time(&format!("ff forward 2^{k}"), 5, || {
            std::hint::black_box(ff.forward(&xin));
        });
        let a: Vec<f32> = vec![1.0; n];
        let b: Vec<f32> = vec![2.0; n];
        time(&format!("vec mul 2^{k}"), 5, || {
            std::hint::black_box(a.iter().zip(&b).map(|(x, y)| x * y).collect::<Vec<f32>>());
        });
        time(&format!("alloc zeroed 2^{k}"), 5, || {
            let mut z = vec![0f32; n];
            z[n - 1] = 1.0;
            std::hint::black_box(z);
        });
    }
}
