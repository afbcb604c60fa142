use std::time::Instant;
use superlora_core::rng::{Purpose, stream};

fn advise(v: &[f32]) {
    let start = v.as_ptr() as usize;
    let aligned = start.next_multiple_of(2 << 20);
    let len = (start + v.len() * 4 - aligned) / (2 << 20) * (2 << 20);
    unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

fn main() {
    let n = 1usize << 24;
    let perm = stream(0, 0, Purpose::FastfoodPerm).permutation(n);
    for huge in [false, true] {
        let mut a = vec![0f32; n];
        if huge {
            advise(&a);
        }
        a.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        let mut out = vec![0f32; n];
        if huge {
            advise(&out);
        }
        out.iter_mut().for_each(|v| *v = 1.0);
        for _ in 0..3 {
            let t = Instant::now();
            for (i, o) in out.iter_mut().enumerate() {
                *o = a[perm[i] as usize];
            }
            let t1 = t.elapsed();
            for (i, o) in out.iter_mut().enumerate() {
                *o = a[i ^ 5];
            }
            println!("huge {huge}: random gather {:?}  sequential {:?}", t1, t.elapsed() - t1);
        }
    }
}
