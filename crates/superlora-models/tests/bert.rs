//! MiniLM-L6 (real weights): forward parity of sentence embeddings, gradients reach every adapter
//! tensor through the model, and frozen weights get none.

mod common;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Fold, ProjectionKind, SuperLora};
use superlora_io::TargetPattern;
use superlora_models::adapt::{Deltas, select};
use superlora_models::bert::{Bert, cosine};

fn tokenize(texts: &[&str]) -> (Tensor, Tensor) {
    let mut tok = tokenizers::Tokenizer::from_file(common::asset("minilm", "tokenizer.json")).unwrap();
    // The shipped tokenizer.json pads every sequence to 128; pad to the batch's longest instead.
    tok.with_padding(None);
    let enc: Vec<_> = texts.iter().map(|t| tok.encode(*t, true).unwrap()).collect();
    let len = enc.iter().map(|e| e.get_ids().len()).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for e in &enc {
        let n = e.get_ids().len();
        ids.extend(e.get_ids().iter().copied().chain(std::iter::repeat_n(0, len - n)));
        mask.extend(std::iter::repeat_n(1u32, n).chain(std::iter::repeat_n(0, len - n)));
    }
    let b = texts.len();
    (Tensor::from_vec(ids, (b, len), &Device::Cpu).unwrap(), Tensor::from_vec(mask, (b, len), &Device::Cpu).unwrap())
}

fn model() -> Bert {
    Bert::load(&common::asset("minilm", "model.safetensors"), &Device::Cpu).unwrap()
}

/// Reference values from an independent forward of the same weights (sentence-transformers).
#[test]
fn sentence_embedding_cosines_match_the_reference() {
    let m = model();
    let (ids, mask) = tokenize(&[
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]);
    let e = m.embed(&ids, &mask, &Deltas::none()).unwrap();
    let row = |i: usize| e.narrow(0, i, 1).unwrap();
    let bread = cosine(&row(0), &row(1)).unwrap();
    let stocks = cosine(&row(0), &row(2)).unwrap();
    println!("cos(food, bread) = {bread:.4}, cos(food, stocks) = {stocks:.4}");
    assert!((bread - 0.755).abs() <= 0.005, "cos(food, bread) = {bread}");
    assert!((stocks - 0.004).abs() <= 0.02, "cos(food, stocks) = {stocks}");
    // Padding must not change a sentence's embedding (it is masked out of attention and pooling).
    let (ids1, mask1) = tokenize(&["A man is eating food."]);
    let alone = m.embed(&ids1, &mask1, &Deltas::none()).unwrap();
    let diff = (alone - row(0)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "padding changed the embedding by {diff}");
}

#[test]
fn adapter_gradients_reach_every_tensor_and_frozen_weights_get_none() {
    let m = model();
    let targets = select(&m.linears(), &TargetPattern::names("query,value").unwrap()).unwrap();
    assert_eq!(targets.len(), 12);
    assert_eq!(targets[0].name, "encoder.layer.0.attention.self.query");
    let (ids, mask) = tokenize(&["a gripping, funny film", "dull and far too long"]);
    let dev = Device::Cpu;
    let specs = [
        AdapterSpec { rank: Some(2), ..Default::default() },
        AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(3),
            order: Some(3),
            factor: Some(FactorKind::Tucker),
            rank: Some(2),
            ..Default::default()
        },
        AdapterSpec {
            fold: Some(Fold::Square),
            order: Some(1),
            factor: Some(FactorKind::Dense),
            ratio: Some(0.001),
            ..Default::default()
        },
    ];
    for spec in specs {
        let a = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        // One step away from the zero init so that every factor is non-zero.
        for (name, v) in a.named_vars() {
            a.set(&name, &common::normal(0f32, 0.05, v.dims(), 4001 ^ common::seed_of(&name))).unwrap();
        }
        let tape = a.forward_tape().unwrap();
        let deltas = Deltas::new(&targets, tape.deltas()).unwrap();
        let e = m.embed(&ids, &mask, &deltas).unwrap();
        let c = common::normal(0f32, 1.0, e.dims(), 4002);
        let loss = e.mul(&c).unwrap().sum_all().unwrap();
        let grads = tape.backward(loss.backward().unwrap()).unwrap();
        for (name, v) in a.named_vars() {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{spec:?}: no gradient for {name}"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|x| x.is_finite()), "{spec:?}: non-finite gradient for {name}");
            assert!(g.iter().any(|x| *x != 0.0), "{spec:?}: zero gradient for {name}");
        }
        for t in m.frozen_tensors() {
            assert!(grads.get(&t).is_none(), "a frozen base weight of shape {:?} got a gradient", t.dims());
        }
    }
}

/// The factored LoRA path (x·Wᵀ + (x·Q)·Pᵀ, ΔW never formed) against its oracle, the dense tape
/// (x·(W + ΔW)ᵀ): the same embeddings and the same gradient for every trainable tensor, with
/// α ≠ 1; and adapters that are not exactly weight-wise LoRA stay dense.
#[test]
fn factored_lora_matches_the_dense_delta_path() {
    let m = model();
    let targets = select(&m.linears(), &TargetPattern::names("query,value").unwrap()).unwrap();
    let (ids, mask) = tokenize(&["a gripping, funny film", "dull and far too long"]);
    let dev = Device::Cpu;
    let spec = AdapterSpec { rank: Some(4), scale: Some(3.0), ..Default::default() };
    let a = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
    for (name, v) in a.named_vars() {
        a.set(&name, &common::normal(0f32, 0.05, v.dims(), 4003 ^ common::seed_of(&name))).unwrap();
    }
    let c = common::normal(0f32, 1.0, (2, 384), 4004);
    let run = |tape: &superlora_core::DeltaTape| {
        let e = m.embed(&ids, &mask, &Deltas::from_tape(&targets, tape).unwrap()).unwrap();
        let grads = tape.backward(e.mul(&c).unwrap().sum_all().unwrap().backward().unwrap()).unwrap();
        (e.flatten_all().unwrap().to_vec1::<f32>().unwrap(), common::adapter_grads(&a, &grads))
    };
    let factored = a.training_tape().unwrap();
    assert!(
        matches!(factored.layer_deltas(), superlora_core::TapeDeltas::LowRank(_)),
        "weight-wise LoRA must train factored"
    );
    let dense = a.forward_tape().unwrap();
    assert!(matches!(dense.layer_deltas(), superlora_core::TapeDeltas::Dense(_)));
    let ((ef, gf), (ed, gd)) = (run(&factored), run(&dense));
    let rel = |x: &[f32], y: &[f32]| {
        let num = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        num / y.iter().map(|b| b.abs()).fold(0f32, f32::max).max(1e-12)
    };
    assert!(rel(&ef, &ed) < 1e-5, "embeddings differ by {} (relative)", rel(&ef, &ed));
    for ((n, _), (x, y)) in a.named_vars().iter().zip(gf.iter().zip(&gd)) {
        assert!(x.iter().any(|v| *v != 0.0), "zero gradient for {n}");
        assert!(rel(x, y) < 1e-4, "gradient of {n} differs by {} (relative)", rel(x, y));
    }
    // Square fold, or a shuffle projection: not weight-wise LoRA, so the tape stays dense.
    for spec in [
        AdapterSpec { fold: Some(Fold::Square), groups: Some(4), rank: Some(2), ..Default::default() },
        AdapterSpec { rank: Some(2), projection: Some(ProjectionKind::Shuffle), ..Default::default() },
    ] {
        let b = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        assert!(b.low_rank_deltas().unwrap().is_none(), "{spec:?} is not weight-wise LoRA");
    }
}
