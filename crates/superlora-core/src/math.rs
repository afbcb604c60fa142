//! Exact integer arithmetic for the plan: integer roots and ratios, never a float root.

use crate::error::{Error, Result};

/// `base^exp`, or `None` on overflow.
pub fn checked_pow(base: u64, exp: u32) -> Option<u64> {
    base.checked_pow(exp)
}

/// The smallest integer `s` with `s^m >= n` (the fold side of spec §3, "computed with integers").
///
/// `ceil_root(0, m) = 0`, `ceil_root(n, 1) = n`.
pub fn ceil_root(n: u64, m: u32) -> u64 {
    if n <= 1 || m == 1 {
        return n;
    }
    if m == 0 {
        return 1;
    }
    // Float estimate, then walk to the exact answer with checked integer powers.
    let mut s = (n as f64).powf(1.0 / f64::from(m)).round().max(1.0) as u64;
    while s > 1 && checked_pow(s - 1, m).is_some_and(|p| p >= n) {
        s -= 1;
    }
    while checked_pow(s, m).is_some_and(|p| p < n) {
        s += 1;
    }
    s
}

/// `ceil(a / b)` for `b > 0`.
pub fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// A projection ratio ρ read as the exact decimal the user typed: `0.01` is 1/100, not the binary
/// float nearest to it, so `ceil(ρ·N)` never drifts by one through rounding (0.1·10 must be 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecimalRatio {
    num: u64,
    den: u64,
}

impl DecimalRatio {
    /// Reads `rho` through its shortest round-trip decimal form (Rust's `Display` of `f64`).
    pub fn from_f64(rho: f64) -> Result<Self> {
        if !rho.is_finite() || rho <= 0.0 || rho > 1.0 {
            return Err(Error::config("ratio", rho, "must be in (0, 1]"));
        }
        let text = format!("{rho}");
        let (int_part, frac_part) = text.split_once('.').unwrap_or((&text, ""));
        if frac_part.len() > 18 {
            return Err(Error::config("ratio", rho, "has more than 18 decimal digits; give it with at most 18"));
        }
        let den = 10u64.pow(frac_part.len() as u32);
        let digits = format!("{int_part}{frac_part}");
        let num: u64 =
            digits.parse().map_err(|_| Error::config("ratio", rho, "could not be read as a decimal number"))?;
        Ok(DecimalRatio { num, den })
    }

    /// `ceil(ρ · n)` exactly, at least 1 for `n >= 1`.
    pub fn ceil_mul(&self, n: u64) -> u64 {
        let p = u128::from(n) * u128::from(self.num);
        let d = u128::from(self.den);
        p.div_ceil(d) as u64
    }

    /// True when ρ = 1.
    pub fn is_one(&self) -> bool {
        self.num == self.den
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_root_matches_definition() {
        for m in 1..=8u32 {
            for n in 0..3000u64 {
                let s = ceil_root(n, m);
                if n > 0 {
                    assert!(s.pow(m) >= n, "n={n} m={m} s={s}");
                    assert!(s == 1 || (s - 1).pow(m) < n, "n={n} m={m} s={s}");
                }
            }
        }
        // The worked table of the spec.
        assert_eq!(ceil_root(49_152, 3), 37);
        assert_eq!(ceil_root(49_152, 4), 15);
        assert_eq!(ceil_root(589_824, 5), 15);
        assert_eq!(ceil_root(1_475, 3), 12);
        assert_eq!(ceil_root(5_899, 5), 6);
        assert_eq!(ceil_root(u64::MAX, 2), 4_294_967_296);
        assert_eq!(ceil_root(1 << 62, 2), 1 << 31);
    }

    #[test]
    fn decimal_ratio_is_exact() {
        let r = DecimalRatio::from_f64(0.1).unwrap();
        assert_eq!(r.ceil_mul(10), 1);
        let r = DecimalRatio::from_f64(0.01).unwrap();
        assert_eq!(r.ceil_mul(147_456), 1_475);
        assert_eq!(r.ceil_mul(589_824), 5_899);
        assert_eq!(DecimalRatio::from_f64(0.001).unwrap().ceil_mul(1), 1);
        assert!(DecimalRatio::from_f64(1.0).unwrap().is_one());
        assert!(DecimalRatio::from_f64(0.0).is_err());
        assert!(DecimalRatio::from_f64(1.5).is_err());
        assert!(DecimalRatio::from_f64(f64::NAN).is_err());
        assert_eq!(DecimalRatio::from_f64(1e-5).unwrap().ceil_mul(100_000), 1);
    }
}
