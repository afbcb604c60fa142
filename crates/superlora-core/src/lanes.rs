//! Floating-point sums in a fixed order that still vectorises.
//!
//! Equation: Σ_i term(a_i, b_i, c_i) = ((s₀ + s₄) + (s₁ + s₅)) + ((s₂ + s₆) + (s₃ + s₇)), where
//! s_l is the f64 sum, in index order, of the terms with i mod 8 = l.
//!
//! The order depends only on the length, never on the CPU, the vector width or a thread count, so
//! results are the same bits everywhere; and the 8 independent partial sums fit one vector
//! register, where a single running sum is one sequential chain. The slices are read as arrays of
//! 8, without a bounds check per element: read through an index, the 8 chains stayed scalar
//! (`perf annotate` of LayerNorm's backward, docs/BENCHMARKS.md).
//!
//! Used by LayerNorm's row statistics (superlora-models), AdamW's gradient norm (superlora-train)
//! and the tape's inner product ([`crate::adapter`]).

/// Σ term(a_i, b_i, c_i) over the common length of the three slices, in the fixed order above.
/// Pass the same slice twice where a term needs fewer inputs.
#[inline(always)]
pub fn lane_sum<T: Copy>(a: &[T], b: &[T], c: &[T], term: impl Fn(T, T, T) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let ((a8, ar), (b8, br), (c8, cr)) = (a.as_chunks::<8>(), b.as_chunks::<8>(), c.as_chunks::<8>());
    for ((x, y), z) in a8.iter().zip(b8).zip(c8) {
        for l in 0..8 {
            acc[l] += term(x[l], y[l], z[l]);
        }
    }
    for (l, ((&x, &y), &z)) in ar.iter().zip(br).zip(cr).enumerate() {
        acc[l] += term(x, y, z);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed order, spelled out: partial sums by index mod 8, then the tree; every length
    /// from 0 to 40 (remainders included), with terms whose order of addition shows in the bits.
    #[test]
    fn lane_sum_is_the_documented_order() {
        for n in 0..=40usize {
            let v: Vec<f32> =
                (0..n).map(|i| (1.0 + i as f32 * 0.37).powi(7) * if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
            let mut s = [0f64; 8];
            for (i, &x) in v.iter().enumerate() {
                s[i % 8] += f64::from(x) * 1.1;
            }
            let want = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
            let got = lane_sum(&v, &v, &v, |x, _, _| f64::from(x) * 1.1);
            assert_eq!(got.to_bits(), want.to_bits(), "n = {n}");
        }
    }

    /// The three inputs are read in step; the shortest bounds the sum.
    #[test]
    fn lane_sum_reads_the_slices_in_step() {
        let a: Vec<f64> = (0..19).map(f64::from).collect();
        let b: Vec<f64> = (0..19).map(|i| f64::from(i) * 2.0).collect();
        let c: Vec<f64> = (0..17).map(|_| 1.0).collect();
        let got = lane_sum(&a, &b, &c, |x, y, z| x * y * z);
        let want: f64 = (0..17).map(|i| f64::from(i) * f64::from(i) * 2.0).sum();
        assert_eq!(got, want);
    }
}
