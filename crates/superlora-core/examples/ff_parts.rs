use std::time::Instant;
use superlora_core::projection::fastfood::Fastfood;
use superlora_core::projection::wht::{wht, wht_fill};

fn main() {
    for k in [20usize, 24] {
        let n = 1usize << k;
        let ff = Fastfood::generate(n / 2, n, 0, 0);
        let x = vec![1f32; n / 2];
        for _ in 0..3 {
            let t = Instant::now();
            let mut a = vec![0f32; n];
            wht_fill(&mut a, |off, c| {
                for (k, o) in c.iter_mut().enumerate() {
                    let i = off + k;
                    *o = if i < n / 2 { if ff.signs[i] { -x[i] } else { x[i] } } else { 0.0 };
                }
            });
            let t1 = t.elapsed();
            let mut out = vec![0f32; n];
            wht_fill(&mut out, |off, c| {
                for (k, o) in c.iter_mut().enumerate() {
                    let i = off + k;
                    *o = a[ff.perm[i] as usize] * ff.gauss[i];
                }
            });
            let t2 = t.elapsed();
            let mut o2 = vec![0f32; n];
            wht_fill(&mut o2, |off, c| {
                for (k, o) in c.iter_mut().enumerate() {
                    let i = off + k;
                    *o = a[i] * ff.gauss[i];
                }
            });
            let t3 = t.elapsed();
            wht(&mut o2);
            let t4 = t.elapsed();
            println!(
                "2^{k}: fill+wht {:?} gather+wht {:?} seqfill+wht {:?} wht(touched) {:?}",
                t1,
                t2 - t1,
                t3 - t2,
                t4 - t3
            );
        }
    }
}
