//! The custom ops against plain candle ops.

mod common;

use candle_core::{Device, Tensor, Var};
use superlora_models::ops::{
    adapted_linear, attention, attention_reference, frozen_linear, layer_norm, mask_bias, softmax_last,
};

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn frozen_linear_equals_matmul_and_gives_only_dx() {
    let x = Var::from_tensor(&common::normal(0f32, 1.0, (2, 5, 7), 1001)).unwrap();
    let w = common::normal(0f32, 1.0, (3, 7), 1002);
    let b = common::normal(0f32, 1.0, 3, 1003);
    let got = frozen_linear(x.as_tensor(), &w, Some(&b)).unwrap();
    let want = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    assert!(maxdiff(&got, &want) < 1e-5, "{}", maxdiff(&got, &want));
    let g = got.sum_all().unwrap().backward().unwrap();
    let gw = want.sum_all().unwrap().backward().unwrap();
    assert!(maxdiff(g.get(x.as_tensor()).unwrap(), gw.get(x.as_tensor()).unwrap()) < 1e-5);
    assert!(g.get(&w).is_none() && g.get(&b).is_none());
}

#[test]
fn adapted_linear_gives_dx_and_ddelta_only() {
    let x = Var::from_tensor(&common::normal(0f32, 1.0, (4, 7), 1004)).unwrap();
    let w = common::normal(0f32, 1.0, (3, 7), 1005);
    let b = common::normal(0f32, 1.0, 3, 1006);
    let d = Var::from_tensor(&common::normal(0f32, 1.0, (3, 7), 1007)).unwrap();
    let got = adapted_linear(x.as_tensor(), &w, d.as_tensor(), Some(&b)).unwrap();
    let want = x.as_tensor().matmul(&(&w + d.as_tensor()).unwrap().t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    assert!(maxdiff(&got, &want) < 1e-5);
    let g = got.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let gw = want.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(maxdiff(g.get(d.as_tensor()).unwrap(), gw.get(d.as_tensor()).unwrap()) < 1e-4);
    assert!(maxdiff(g.get(x.as_tensor()).unwrap(), gw.get(x.as_tensor()).unwrap()) < 1e-4);
    assert!(g.get(&w).is_none() && g.get(&b).is_none(), "frozen W or b got a gradient");
}

#[test]
fn layer_norm_and_softmax_match_definitions() {
    let dev = Device::Cpu;
    let x = common::normal(0f32, 3.0, (4, 9), 1008);
    let s = softmax_last(&x).unwrap();
    let e = x.exp().unwrap();
    let want = e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap();
    assert!(maxdiff(&s, &want) < 1e-6);
    let g = Tensor::ones(9, candle_core::DType::F32, &dev).unwrap();
    let z = Tensor::zeros(9, candle_core::DType::F32, &dev).unwrap();
    let y = layer_norm(&x, &g, &z, 1e-12).unwrap();
    let m: Vec<f32> = y.mean_keepdim(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let v: Vec<f32> = y.sqr().unwrap().mean_keepdim(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(m.iter().all(|x| x.abs() < 1e-5) && v.iter().all(|x| (x - 1.0).abs() < 1e-4), "{m:?} {v:?}");
}

#[test]
fn gelu_matches_candle_and_its_gradient() {
    let x = Var::from_tensor(&common::normal(0f32, 3.0, (70_000,), 1009)).unwrap();
    let ours = superlora_models::ops::gelu(x.as_tensor()).unwrap();
    let theirs = x.as_tensor().gelu_erf().unwrap();
    assert!(maxdiff(&ours, &theirs) < 2e-6, "{}", maxdiff(&ours, &theirs));
    let c = common::normal(0f32, 1.0, (70_000,), 1010);
    let g1 = ours.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = theirs.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    let d = maxdiff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
    assert!(d < 1e-5, "gradient differs by {d}");
}

#[test]
fn fused_layer_norm_and_softmax_equal_their_composed_twins_with_gradients() {
    use superlora_models::ops::{layer_norm_reference, softmax_reference};
    let x = Var::from_tensor(&common::normal(0f32, 2.0, (3, 70, 384), 1011)).unwrap();
    let g = common::normal(1f32, 0.2, 384, 1012);
    let b = common::normal(0f32, 0.2, 384, 1013);
    let c = common::normal(0f32, 1.0, (3, 70, 384), 1014);
    let fast = layer_norm(x.as_tensor(), &g, &b, 1e-6).unwrap();
    let slow = layer_norm_reference(x.as_tensor(), &g, &b, 1e-6).unwrap();
    assert!(maxdiff(&fast, &slow) < 1e-5, "layer norm {}", maxdiff(&fast, &slow));
    let gf = fast.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = slow.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    let d = maxdiff(gf.get(x.as_tensor()).unwrap(), gs.get(x.as_tensor()).unwrap());
    assert!(d < 1e-4, "layer norm gradient differs by {d}");
    assert!(gf.get(&g).is_none() && gf.get(&b).is_none());

    let fast = softmax_last(x.as_tensor()).unwrap();
    let slow = softmax_reference(x.as_tensor()).unwrap();
    assert!(maxdiff(&fast, &slow) < 1e-6);
    let gf = fast.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = slow.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    let d = maxdiff(gf.get(x.as_tensor()).unwrap(), gs.get(x.as_tensor()).unwrap());
    assert!(d < 1e-5, "softmax gradient differs by {d}");
}

#[test]
fn batched_matmul_equals_matmul_for_every_transpose_with_gradients() {
    use superlora_models::bmm::bmm;
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (n, m, k, p) = (5, 7, 3, 4);
        let a = Var::from_tensor(&common::normal(0f32, 1.0, if ta { (n, k, m) } else { (n, m, k) }, 1015)).unwrap();
        let b = Var::from_tensor(&common::normal(0f32, 1.0, if tb { (n, p, k) } else { (n, k, p) }, 1016)).unwrap();
        let fast = bmm(a.as_tensor(), b.as_tensor(), ta, tb).unwrap();
        let oa = if ta { a.as_tensor().transpose(1, 2).unwrap() } else { a.as_tensor().clone() };
        let ob = if tb { b.as_tensor().transpose(1, 2).unwrap() } else { b.as_tensor().clone() };
        let slow = oa.matmul(&ob).unwrap();
        assert!(maxdiff(&fast, &slow) < 1e-5, "ta={ta} tb={tb}");
        let c = common::normal(0f32, 1.0, (n, m, p), 1017);
        let gf = fast.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = slow.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let d = maxdiff(gf.get(v.as_tensor()).unwrap(), gs.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "ta={ta} tb={tb}: gradient differs by {d}");
        }
    }
}

/// The composed linears (what runs on CUDA) against the CPU ops: values, ∂x and ∂ΔW equal, and
/// neither gives the frozen W or b a gradient.
#[test]
fn composed_linears_equal_the_cpu_ops_with_gradients() {
    use superlora_models::ops::{
        adapted_linear_composed, frozen_linear_composed, low_rank_linear, low_rank_linear_composed,
    };
    let x = Var::from_tensor(&common::normal(0f32, 1.0, (2, 5, 8), 1018)).unwrap();
    let w = Var::from_tensor(&common::normal(0f32, 1.0, (6, 8), 1019)).unwrap();
    let b = Var::from_tensor(&common::normal(0f32, 1.0, 6, 1020)).unwrap();
    let delta = Var::from_tensor(&common::normal(0f32, 0.1, (6, 8), 1021)).unwrap();
    let c = common::normal(0f32, 1.0, (2, 5, 6), 1022);
    let p = Var::from_tensor(&common::normal(0f32, 0.3, (6, 2), 1023)).unwrap();
    let q = Var::from_tensor(&common::normal(0f32, 0.3, (8, 2), 1024)).unwrap();
    for bias in [Some(b.as_tensor()), None] {
        let pairs = [
            (
                frozen_linear(x.as_tensor(), w.as_tensor(), bias).unwrap(),
                frozen_linear_composed(x.as_tensor(), w.as_tensor(), bias).unwrap(),
            ),
            (
                adapted_linear(x.as_tensor(), w.as_tensor(), delta.as_tensor(), bias).unwrap(),
                adapted_linear_composed(x.as_tensor(), w.as_tensor(), delta.as_tensor(), bias).unwrap(),
            ),
            (
                low_rank_linear(x.as_tensor(), w.as_tensor(), p.as_tensor(), q.as_tensor(), bias).unwrap(),
                low_rank_linear_composed(x.as_tensor(), w.as_tensor(), p.as_tensor(), q.as_tensor(), bias).unwrap(),
            ),
        ];
        for (i, (fast, composed)) in pairs.into_iter().enumerate() {
            assert_eq!(fast.dims(), &[2, 5, 6]);
            assert!(maxdiff(&fast, &composed) < 1e-5, "op {i}: values differ");
            let gf = fast.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = composed.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
            let d = maxdiff(gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
            assert!(d < 1e-4, "op {i}: ∂x differs by {d}");
            if i == 1 {
                let d = maxdiff(gf.get(delta.as_tensor()).unwrap(), gc.get(delta.as_tensor()).unwrap());
                assert!(d < 1e-4, "∂ΔW differs by {d}");
            }
            if i == 2 {
                for f in [&p, &q] {
                    let d = maxdiff(gf.get(f.as_tensor()).unwrap(), gc.get(f.as_tensor()).unwrap());
                    assert!(d < 1e-4, "∂P or ∂Q differs by {d}");
                }
            }
            for frozen in [&w, &b] {
                assert!(
                    gf.get(frozen.as_tensor()).is_none() && gc.get(frozen.as_tensor()).is_none(),
                    "op {i}: a frozen tensor got a gradient"
                );
            }
        }
    }
    // x fed by nothing trained (a first block's input): the adapter gradients are unchanged and
    // no ∂x is made for it.
    let plain = x.as_tensor().detach();
    let trained = [
        adapted_linear(x.as_tensor(), w.as_tensor(), delta.as_tensor(), None).unwrap(),
        low_rank_linear(x.as_tensor(), w.as_tensor(), p.as_tensor(), q.as_tensor(), None).unwrap(),
    ];
    let untrained = [
        adapted_linear(&plain, w.as_tensor(), delta.as_tensor(), None).unwrap(),
        low_rank_linear(&plain, w.as_tensor(), p.as_tensor(), q.as_tensor(), None).unwrap(),
    ];
    for (i, (t, u)) in trained.iter().zip(&untrained).enumerate() {
        let gt = t.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        let gu = u.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(gu.get(&plain).is_none() && gu.get(x.as_tensor()).is_none(), "op {i}: ∂x for an untrained x");
        let vars: &[&Var] = if i == 0 { &[&delta] } else { &[&p, &q] };
        for v in vars {
            let (a, b) = (gt.get(v.as_tensor()).unwrap(), gu.get(v.as_tensor()).unwrap());
            assert_eq!(maxdiff(a, b), 0.0, "op {i}: adapter gradient changed without ∂x");
        }
    }
}

/// GELU then a frozen linear as one op against the two ops it replaces: the same values and ∂h
/// bit for bit (the same product and the same GELU arithmetic), in shapes that leave partial
/// GELU chunks and rows, with and without a bias; W and b get no gradient.
#[test]
fn gelu_frozen_linear_equals_gelu_then_frozen_linear_bit_for_bit() {
    use superlora_models::ops::{gelu, gelu_frozen_linear};
    for (rows, k, n) in [(3, 5, 4), (70, 300, 33), (9, 1536, 384)] {
        let h = Var::from_tensor(&(seeded(&[rows, k], 1) * 2.0).unwrap()).unwrap();
        let w = Var::from_tensor(&(seeded(&[n, k], 2) * 0.1).unwrap()).unwrap();
        let b = Var::from_tensor(&seeded(&[n], 3)).unwrap();
        let c = seeded(&[rows, n], 4);
        for bias in [Some(b.as_tensor()), None] {
            let fused = gelu_frozen_linear(h.as_tensor(), w.as_tensor(), bias).unwrap();
            let plain = frozen_linear(&gelu(h.as_tensor()).unwrap(), w.as_tensor(), bias).unwrap();
            assert_eq!(fused.dims(), &[rows, n]);
            assert_eq!(maxdiff(&fused, &plain), 0.0, "{rows}x{k}x{n}: values differ");
            let gf = fused.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = plain.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
            let (df, dp) = (gf.get(h.as_tensor()).unwrap(), gp.get(h.as_tensor()).unwrap());
            assert_eq!(maxdiff(df, dp), 0.0, "{rows}x{k}x{n}: ∂h differs");
            assert!(df.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
            for frozen in [&w, &b] {
                assert!(gf.get(frozen.as_tensor()).is_none(), "a frozen tensor got a gradient");
            }
        }
    }
}

/// LayerNorm(a + r) as one op against the add and the LayerNorm it replaces: values, ∂a and ∂r
/// bit for bit; γ and β get no gradient.
#[test]
fn layer_norm_of_a_sum_equals_add_then_layer_norm() {
    use superlora_models::ops::{layer_norm, layer_norm_of_sum};
    for (rows, d) in [(3, 5), (70, 384), (130, 24)] {
        let a = Var::from_tensor(&seeded(&[rows, d], 1)).unwrap();
        let r = Var::from_tensor(&(seeded(&[rows, d], 2) * 3.0).unwrap()).unwrap();
        let gamma = Var::from_tensor(&seeded(&[d], 3)).unwrap();
        let beta = Var::from_tensor(&seeded(&[d], 4)).unwrap();
        let c = seeded(&[rows, d], 5);
        let fused =
            layer_norm_of_sum(a.as_tensor(), r.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-12).unwrap();
        let sum = (a.as_tensor() + r.as_tensor()).unwrap();
        let plain = layer_norm(&sum, gamma.as_tensor(), beta.as_tensor(), 1e-12).unwrap();
        assert_eq!(maxdiff(&fused, &plain), 0.0, "{rows}x{d}: values differ");
        let gf = fused.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = plain.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &r] {
            let (df, dp) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
            assert_eq!(maxdiff(df, dp), 0.0, "{rows}x{d}: a gradient differs");
            assert!(df.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
        for frozen in [&gamma, &beta] {
            assert!(gf.get(frozen.as_tensor()).is_none(), "γ or β got a gradient");
        }
    }
}

/// The vectorisable e^x of GELU and softmax against f64's, over its whole range and its edges.
#[test]
fn exp_nonpos_matches_f64() {
    use superlora_models::ops::exp_nonpos;
    let mut worst = 0f64;
    let n = 2_000_000;
    for i in 0..=n {
        let x = -87.0 * i as f32 / n as f32;
        let want = (x as f64).exp();
        let rel = ((exp_nonpos(x) as f64) - want).abs() / want;
        worst = worst.max(rel);
    }
    assert!(worst <= 2.5e-7, "max relative error {worst:e}");
    assert_eq!(exp_nonpos(0.0), 1.0);
    assert_eq!(exp_nonpos(-0.0), 1.0);
    assert_eq!(exp_nonpos(-87.5), 0.0);
    assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
    assert!(exp_nonpos(f32::NAN).is_nan());
}

/// A seeded N(0, 1) tensor (candle's CPU `randn` cannot be seeded).
fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let mut r = superlora_core::rng::stream(seed, 0, superlora_core::rng::Purpose::Init);
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| r.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

#[test]
fn fused_attention_equals_the_composed_one_with_and_without_a_mask() {
    let (b, t, heads, d) = (3, 7, 4, 5);
    let dev = Device::Cpu;
    // Example 1 has its last three keys masked, example 2 its last one.
    let mask: Vec<u32> =
        (0..b * t).map(|i| u32::from(!((i / t == 1 && i % t >= 4) || (i / t == 2 && i % t == 6)))).collect();
    let mask = mask_bias(&Tensor::from_vec(mask, (b, t), &dev).unwrap(), candle_core::DType::F32).unwrap();
    for bias in [None, Some(&mask)] {
        let vars: Vec<Var> = (0..3).map(|i| Var::from_tensor(&seeded(&[b, t, heads * d], 10 + i)).unwrap()).collect();
        let (q, k, v) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
        let fused = attention(q, k, v, heads, bias).unwrap();
        let composed = attention_reference(q, k, v, heads, bias).unwrap();
        assert!(maxdiff(&fused, &composed) < 1e-5, "forward: {}", maxdiff(&fused, &composed));
        // A loss that weighs every output differently, so each gradient is specific.
        let c = seeded(&[b, t, heads * d], 20);
        let gf = fused.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = composed.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("q", q), ("k", k), ("v", v)] {
            let (a, e) = (gf.get(x).unwrap(), gc.get(x).unwrap());
            let scale = e.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(scale > 0.0 && maxdiff(a, e) <= 1e-5 * scale.max(1.0), "∂{name}: {} of {scale}", maxdiff(a, e));
        }
        // A masked key gets no gradient through K or V.
        if bias.is_some() {
            let dk = gf.get(k).unwrap().get(1).unwrap().get(5).unwrap();
            assert!(dk.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
        }
    }
    // A bias that is not a key mask goes the composed way, with the same result.
    let (q, k, v) = (seeded(&[1, 3, 4], 1), seeded(&[1, 3, 4], 2), seeded(&[1, 3, 4], 3));
    let full = seeded(&[1, 2, 3, 3], 4);
    let got = attention(&q, &k, &v, 2, Some(&full)).unwrap();
    assert!(maxdiff(&got, &attention_reference(&q, &k, &v, 2, Some(&full)).unwrap()) < 1e-6);
}
