//! The budget planner: given the adapted shapes and a parameter budget P, search the config space
//! (fold, G, M, factorization, rank, K, projection ratio ρ) for the configs whose trainable count is
//! closest to P without exceeding it, per family. Counts come from [`Plan::new`], so they are the
//! exact counts a run would train.
//!
//! Per (family, G, M, K, ρ) the count grows with the rank, so the largest admissible rank is found
//! by bisection; ρ for the dense + fastfood family is solved directly (n = Σ ⌈ρ·N_g⌉ ≤ P).

use serde::Serialize;

use crate::config::{AdapterSpec, FactorKind, Fold, ProjectionKind};
use crate::plan::{LayerShape, Plan};

/// One config found for a budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// Family name (`lora`, `square-2d`, `tucker-m3`, …).
    pub family: String,
    /// The settings (resolve with [`AdapterSpec::resolve`]).
    pub spec: AdapterSpec,
    /// Exact trainable parameters.
    pub params: usize,
}

fn params(shapes: &[LayerShape], spec: &AdapterSpec) -> Option<usize> {
    let cfg = spec.resolve().ok()?;
    Plan::new(shapes, &cfg).ok().map(|p| p.trainable_params)
}

/// The largest rank in 1..=max_rank whose config fits the budget, with its count.
fn best_rank(shapes: &[LayerShape], budget: usize, base: &AdapterSpec, max_rank: usize) -> Option<(usize, usize)> {
    let at = |r: usize| params(shapes, &AdapterSpec { rank: Some(r), ..base.clone() });
    let p1 = at(1)?;
    if p1 > budget {
        return None;
    }
    let (mut lo, mut hi) = (1usize, max_rank.max(1));
    // Shrink `hi` to a valid rank (ranks above a side are rejected by the planner).
    while hi > lo && at(hi).is_none() {
        hi = lo + (hi - lo) / 2;
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match at(mid) {
            Some(p) if p <= budget => lo = mid,
            _ => hi = mid - 1,
        }
    }
    let best = at(lo)?;
    // Past the point where every factor is dense the count stops growing: report the smallest
    // rank that gives the same count.
    let (mut a, mut b) = (1usize, lo);
    while a < b {
        let mid = a + (b - a) / 2;
        if at(mid) == Some(best) { b = mid } else { a = mid + 1 }
    }
    Some((a, best))
}

const GROUPS: [usize; 9] = [1, 2, 3, 4, 6, 8, 12, 16, 24];
const RATIOS: [f64; 4] = [1.0, 0.1, 0.01, 0.001];

/// Searches the config space; returns, per family, the `per_family` configs closest to `budget`
/// without exceeding it (largest count first), families in a fixed order.
pub fn search(shapes: &[LayerShape], budget: usize, per_family: usize) -> Vec<Candidate> {
    let total: usize = shapes.iter().map(LayerShape::numel).sum();
    let max_side = shapes.iter().map(|s| s.rows.max(s.cols)).max().unwrap_or(1);
    let mut found: Vec<Candidate> = Vec::new();
    let mut push = |family: &str, spec: AdapterSpec, p: usize| {
        found.push(Candidate { family: family.to_string(), spec, params: p });
    };
    let square = |g: usize, m: usize, f: FactorKind| AdapterSpec {
        fold: Some(Fold::Square),
        groups: Some(g),
        order: Some(m),
        factor: Some(f),
        ..Default::default()
    };
    // Weight-wise and group-wise LoRA (natural fold).
    for g in std::iter::once(None).chain(GROUPS.iter().copied().filter(|&g| g < shapes.len()).map(Some)) {
        let base = AdapterSpec { groups: g, ..Default::default() };
        if let Some((r, p)) = best_rank(shapes, budget, &base, max_side) {
            let family = if g.is_none() { "lora (weight-wise)" } else { "lora (group-wise)" };
            push(family, AdapterSpec { rank: Some(r), ..base }, p);
        }
    }
    for &ratio in &RATIOS {
        let with = |s: AdapterSpec| {
            if ratio < 1.0 {
                AdapterSpec { projection: Some(ProjectionKind::Fastfood), ratio: Some(ratio), ..s }
            } else {
                s
            }
        };
        let suffix = if ratio < 1.0 { format!(" + fastfood ρ={ratio}") } else { String::new() };
        for &g in GROUPS.iter().filter(|&&g| g <= total) {
            if let Some((r, p)) = best_rank(shapes, budget, &with(square(g, 2, FactorKind::Lora)), max_side) {
                push(
                    &format!("square 2D{suffix}"),
                    AdapterSpec { rank: Some(r), ..with(square(g, 2, FactorKind::Lora)) },
                    p,
                );
            }
            for m in 3..=6 {
                let base = with(square(g, m, FactorKind::Tucker));
                if let Some((r, p)) = best_rank(shapes, budget, &base, max_side) {
                    push(&format!("tucker M={m}{suffix}"), AdapterSpec { rank: Some(r), ..base }, p);
                }
            }
            for k in 2..=3 {
                for m in 2..=3 {
                    let base = AdapterSpec { kron: Some(k), ..with(square(g, m, FactorKind::Kronecker)) };
                    if let Some((r, p)) = best_rank(shapes, budget, &base, max_side) {
                        push(&format!("kronecker K={k} M={m}{suffix}"), AdapterSpec { rank: Some(r), ..base }, p);
                    }
                }
            }
        }
    }
    // The per-weight peers: VeRA (Σ (d_out + r), largest rank that fits) and FourierFT (n per
    // weight, n·L ≤ budget).
    let min_side = shapes.iter().map(|s| s.rows.min(s.cols)).min().unwrap_or(1);
    let vera = AdapterSpec { factor: Some(FactorKind::Vera), ..Default::default() };
    if let Some((r, p)) = best_rank(shapes, budget, &vera, min_side) {
        push("vera", AdapterSpec { rank: Some(r), ..vera }, p);
    }
    let min_numel = shapes.iter().map(LayerShape::numel).min().unwrap_or(0);
    let n = (budget / shapes.len().max(1)).min(min_numel);
    if n >= 1 {
        let spec = AdapterSpec { projection: Some(ProjectionKind::Fourier), count: Some(n), ..Default::default() };
        if let Some(p) = params(shapes, &spec) {
            push("fourierft", spec, p);
        }
    }
    // Dense M=1 with fastfood: ρ with Σ ⌈ρ·N_g⌉ ≤ budget, written with 3 significant digits.
    if budget > 0 && budget < total {
        let mut rho = budget as f64 / total as f64;
        let digits = 3 - rho.log10().floor() as i32 - 1;
        let scale = 10f64.powi(digits);
        rho = (rho * scale).floor() / scale;
        while rho > 0.0 {
            let spec = AdapterSpec {
                ratio: Some(rho),
                projection: Some(ProjectionKind::Fastfood),
                ..square(1, 1, FactorKind::Dense)
            };
            match params(shapes, &spec) {
                Some(p) if p <= budget => {
                    push("dense M=1 + fastfood", spec, p);
                    break;
                }
                _ => rho = ((rho * scale).round() - 1.0) / scale,
            }
        }
    } else if let Some(p) = params(shapes, &square(1, 1, FactorKind::Dense)).filter(|&p| p <= budget) {
        push("full fine-tuning (dense M=1)", square(1, 1, FactorKind::Dense), p);
    }
    // Keep the `per_family` closest per family, families in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    for c in &found {
        if !order.contains(&c.family) {
            order.push(c.family.clone());
        }
    }
    let mut out = Vec::new();
    for f in order {
        let mut v: Vec<Candidate> = found.iter().filter(|c| c.family == f).cloned().collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.params));
        v.dedup_by(|a, b| a.params == b.params && a.spec == b.spec);
        out.extend(v.into_iter().take(per_family));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_worked_table_configs_under_their_own_counts() {
        let s = vec![LayerShape::new("w", 768, 768)];
        let c = search(&s, 8_160, 3);
        assert!(c.iter().all(|c| c.params <= 8_160));
        assert!(
            c.iter().any(|c| c.params == 8_160 && c.family == "tucker M=3"),
            "the spec's Tucker M=3 G=12 r=5 (8,160) is exactly on budget: {c:?}"
        );
        let c = search(&s, 76, 3);
        assert!(c.iter().any(|c| c.params == 76), "{c:?}");
        assert!(c.iter().all(|c| c.params <= 76));
    }

    #[test]
    fn lora_budget_picks_the_largest_rank() {
        let s: Vec<LayerShape> = (0..24).map(|i| LayerShape::new(format!("l{i}"), 768, 768)).collect();
        let c = search(&s, 36_864 * 8 + 5, 1);
        let lora = c.iter().find(|c| c.family == "lora (weight-wise)").unwrap();
        assert_eq!(lora.spec.rank, Some(8));
        assert_eq!(lora.params, 294_912);
        assert!(search(&s, 100, 1).iter().all(|c| !c.family.starts_with("lora")), "LoRA cannot go below 36,864 here");
        let dense = search(&s, 100, 1).into_iter().find(|c| c.family == "dense M=1 + fastfood").unwrap();
        assert!(dense.params <= 100 && dense.params >= 90, "{dense:?}");
    }

    #[test]
    fn peers_are_searched_too() {
        let s: Vec<LayerShape> = (0..12).map(|i| LayerShape::new(format!("l{i}"), 384, 384)).collect();
        let c = search(&s, 12 * (384 + 256), 1);
        let vera = c.iter().find(|c| c.family == "vera").unwrap();
        assert_eq!((vera.spec.rank, vera.params), (Some(256), 12 * 640));
        let ft = c.iter().find(|c| c.family == "fourierft").unwrap();
        assert_eq!((ft.spec.count, ft.params), (Some(640), 12 * 640));
        assert!(search(&s, 100, 1).iter().all(|c| c.family != "vera"), "VeRA needs at least Σ (d_out + 1)");
    }
}
