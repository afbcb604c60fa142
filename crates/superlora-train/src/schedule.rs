//! Learning-rate schedules: a factor in [0, 1] applied to every group's peak rate.

use serde::{Deserialize, Serialize};

/// How the learning rate evolves over `total` steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then constant.
    Constant,
    /// Linear warm-up, then linear decay to 0.
    Linear,
    /// Linear warm-up, then half a cosine down to 0.
    Cosine,
}

impl Schedule {
    /// The factor for step `step` (0-based) of `total`, with `warmup` warm-up steps.
    pub fn factor(self, step: u64, total: u64, warmup: u64) -> f64 {
        if warmup > 0 && step < warmup {
            return (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let done = (step.saturating_sub(warmup) as f64 / span).clamp(0.0, 1.0);
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - done,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * done).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(Schedule::Cosine.factor(0, 100, 10), 0.1);
        assert_eq!(Schedule::Cosine.factor(9, 100, 10), 1.0);
        assert!((Schedule::Cosine.factor(10, 100, 10) - 1.0).abs() < 1e-12);
        assert!(Schedule::Cosine.factor(99, 100, 10) < 0.01);
        assert_eq!(Schedule::Constant.factor(50, 100, 0), 1.0);
        assert!((Schedule::Linear.factor(55, 100, 10) - 0.5).abs() < 1e-12);
    }
}
