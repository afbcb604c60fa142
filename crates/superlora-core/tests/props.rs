//! Property tests over random shapes and configs: the plan partitions the vector, split∘concat is
//! the identity, the parameter count equals the closed form, and seeds behave.

mod common;

use candle_core::DType;
use common::*;
use proptest::prelude::*;
use superlora_core::projection::GroupProjection;
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape, Plan, ProjectionKind, SuperLora};

fn shapes_strategy() -> impl Strategy<Value = Vec<LayerShape>> {
    prop::collection::vec((1usize..13, 1usize..13), 1..5)
        .prop_map(|v| v.into_iter().enumerate().map(|(i, (r, c))| LayerShape::new(format!("l{i}"), r, c)).collect())
}

fn spec_strategy() -> impl Strategy<Value = AdapterSpec> {
    (1usize..7, 1usize..5, 0usize..4, 1usize..4, 2usize..4, 0usize..5).prop_map(|(g, m, f, r, k, p)| {
        let (factor, order, rank, kron) = match f {
            0 => (FactorKind::Dense, m, None, None),
            1 => (FactorKind::Lora, 2, Some(r), None),
            2 => (FactorKind::Tucker, m.max(3), Some(r), None),
            _ => (FactorKind::Kronecker, m, Some(r), Some(k)),
        };
        let (projection, ratio) = match p {
            0 => (ProjectionKind::Identity, 1.0),
            1 => (ProjectionKind::Shuffle, 1.0),
            2 => (ProjectionKind::Fastfood, 1.0),
            3 => (ProjectionKind::Fastfood, 0.5),
            _ => (ProjectionKind::Fastfood, 0.15),
        };
        AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(g),
            order: Some(order),
            factor: Some(factor),
            rank,
            kron,
            projection: Some(projection),
            ratio: Some(ratio),
            ..Default::default()
        }
    })
}

/// Smallest s with s^m ≥ n by plain counting (the closed form's definition, no roots).
fn side(n: usize, m: u32) -> usize {
    (1..).find(|s: &usize| s.pow(m) >= n).unwrap_or(1)
}

/// The spec's parameter count, written independently of the planner.
fn closed_form(shapes: &[LayerShape], spec: &AdapterSpec) -> usize {
    let total: usize = shapes.iter().map(LayerShape::numel).sum();
    let g = spec.groups.unwrap_or(1);
    let m = spec.order.unwrap_or(1) as u32;
    let ratio = spec.ratio.unwrap_or(1.0);
    (0..g)
        .map(|i| {
            let len = total / g + usize::from(i < total % g);
            // ρ in {1, 0.5, 0.15}: exact decimal ceil via integer hundredths.
            let hundredths = (ratio * 100.0).round() as usize;
            let n = (len * hundredths).div_ceil(100);
            let s = side(n, m);
            let r = spec.rank.unwrap_or(0);
            match spec.factor.unwrap_or(FactorKind::Lora) {
                FactorKind::Dense => n,
                FactorKind::Lora => 2 * s * r,
                FactorKind::Tucker => r.pow(m) + m as usize * s * r,
                FactorKind::Kronecker => {
                    let k = spec.kron.unwrap_or(2) as u32;
                    let head = side(s, k);
                    let last = s.div_ceil(head.pow(k - 1));
                    let one = |side: usize| {
                        if r >= side || m == 1 {
                            side.pow(m)
                        } else if m == 2 {
                            2 * side * r
                        } else {
                            r.pow(m) + m as usize * side * r
                        }
                    };
                    (k as usize - 1) * one(head) + one(last)
                }
                FactorKind::Vera => unreachable!("the strategy draws square folds, which VeRA refuses"),
            }
        })
        .sum()
}

fn plan_of(shapes: &[LayerShape], spec: &AdapterSpec) -> Option<Plan> {
    let config = spec.resolve().ok()?;
    Plan::new(shapes, &config).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn groups_partition_the_vector(shapes in shapes_strategy(), spec in spec_strategy()) {
        let p = plan_of(&shapes, &spec); prop_assume!(p.is_some()); let p = p.unwrap();
        let total: usize = shapes.iter().map(LayerShape::numel).sum();
        prop_assert_eq!(p.total_entries, total);
        prop_assert_eq!(p.groups.iter().map(|g| g.len).sum::<usize>(), total);
        let (lo, hi) = (p.groups.iter().map(|g| g.len).min().unwrap(), p.groups.iter().map(|g| g.len).max().unwrap());
        prop_assert!(hi - lo <= 1, "square fold sizes differ by at most one");
        let mut next = 0;
        for g in &p.groups {
            prop_assert_eq!(g.start, next);
            next += g.len;
            prop_assert_eq!(g.segments.iter().map(|s| s.len).sum::<usize>(), g.len);
        }
        for (l, layer) in p.layers.iter().enumerate() {
            let segs = p.layer_segments(l);
            let mut at = 0;
            for (_, s) in segs {
                prop_assert_eq!(s.layer_offset, at);
                at += s.len;
            }
            prop_assert_eq!(at, layer.rows * layer.cols);
        }
    }

    #[test]
    fn parameter_count_equals_closed_form(shapes in shapes_strategy(), spec in spec_strategy()) {
        let p = plan_of(&shapes, &spec); prop_assume!(p.is_some()); let p = p.unwrap();
        prop_assert_eq!(p.trainable_params, closed_form(&shapes, &spec), "{:?}", spec);
        let a = SuperLora::new(p.clone(), DType::F32, &candle_core::Device::Cpu).unwrap();
        prop_assert_eq!(a.num_trainable(), p.trainable_params);
    }

    #[test]
    fn split_after_concat_is_the_identity(shapes in shapes_strategy(), groups in 1usize..9, natural in any::<bool>()) {
        // Full fine-tuning: the trainable vector is the concatenation, ΔW its split.
        let spec = if natural {
            AdapterSpec { factor: Some(FactorKind::Dense), groups: Some(groups.min(shapes.len())), ..Default::default() }
        } else {
            square(groups, 1, FactorKind::Dense, None)
        };
        let p = plan_of(&shapes, &spec); prop_assume!(p.is_some()); let p = p.unwrap();
        let a = SuperLora::new(p, DType::F64, &candle_core::Device::Cpu).unwrap();
        randomize(&a, groups as u64);
        let concat: Vec<u64> = a.vars().iter().flat_map(|v| bits(v.as_tensor())).collect();
        let split: Vec<u64> = a.delta_weights().unwrap().iter().flat_map(bits).collect();
        prop_assert_eq!(split, concat);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_projection(shapes in shapes_strategy(), spec in spec_strategy(), seed in 0u64..1000) {
        let spec = AdapterSpec { seed: Some(seed), ..spec };
        let p = plan_of(&shapes, &spec); prop_assume!(p.is_some()); let p = p.unwrap();
        let build = |s: u64| {
            let mut p = p.clone();
            p.config.seed = s;
            SuperLora::new(p, DType::F32, &candle_core::Device::Cpu).unwrap()
        };
        let (a, b, c) = (build(seed), build(seed), build(seed + 1));
        for ((_, x), (_, y)) in a.named_vars().iter().zip(b.named_vars().iter()) {
            prop_assert_eq!(bits(x.as_tensor()), bits(y.as_tensor()));
        }
        for g in 0..p.groups.len() {
            let (pa, pb, pc) = (a.projection(g).unwrap(), b.projection(g).unwrap(), c.projection(g).unwrap());
            match (pa, pb, pc) {
                (GroupProjection::Fastfood(x), GroupProjection::Fastfood(y), GroupProjection::Fastfood(z)) => {
                    prop_assert_eq!(x, y);
                    prop_assert_ne!(&x.gauss, &z.gauss, "a different seed must give a different projection");
                }
                (GroupProjection::Shuffle(x), GroupProjection::Shuffle(y), GroupProjection::Shuffle(z)) => {
                    prop_assert_eq!(x, y);
                    if x.src.len() >= 20 {
                        prop_assert_ne!(&x.src, &z.src);
                    }
                }
                (GroupProjection::Identity, GroupProjection::Identity, GroupProjection::Identity) => {}
                _ => prop_assert!(false, "projection kinds differ"),
            }
        }
        // Random initial values differ with the seed too (when there are any).
        let random: Vec<u64> = a.vars().iter().flat_map(|v| bits(v.as_tensor())).collect();
        let other: Vec<u64> = c.vars().iter().flat_map(|v| bits(v.as_tensor())).collect();
        if random.iter().filter(|x| **x != 0).count() > 4 {
            prop_assert_ne!(random, other);
        }
    }
}
