//! Hugging Face folders loaded by `model_type`: each tiny fixture (random-init models saved by
//! real transformers, tools/make_tiny_models.py) matches transformers' `last_hidden_state` (and
//! pooled image features), gradients reach every adapter tensor through each model, bad folders
//! fail with errors naming the file, sharded checkpoints load, and the real MiniLM loads through
//! `load_text_encoder` exactly as through `Bert::load`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Fold, SuperLora};
use superlora_io::TargetPattern;
use superlora_models::adapt::{Deltas, select};
use superlora_models::bert::Bert;
use superlora_models::distilbert::DistilBert;
use superlora_models::google_vit::GoogleVit;
use superlora_models::roberta::Roberta;
use superlora_models::vit::Vit;
use superlora_models::{LinearInfo, SUPPORTED, load_image_encoder, load_text_encoder};

const TOL: f32 = 1e-4;
/// The sentences tools/make_tiny_models.py encoded for the text goldens.
const SENTENCES: [&str; 3] =
    ["A man is eating food.", "The plot is thin, the film is not!", "Adapters fine-tune models."];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("tiny-{name}"))
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn u32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn text_parity(name: &str, kind: &str, pad: u32) {
    let m = load_text_encoder(&fixture(name), &Device::Cpu).unwrap();
    assert_eq!(m.kind(), kind);
    let g = golden(name);
    let (ids, mask) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]));
    let tt = g.get("token_type_ids").map(u32s);
    // The fixture's tokenizer.json (loaded offline) gives the same ids the goldens were made from.
    let tok = tokenizers::Tokenizer::from_file(fixture(name).join("tokenizer.json")).unwrap();
    let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    for (s, row) in SENTENCES.iter().zip(&rows) {
        let enc = tok.encode(*s, true).unwrap();
        let n = enc.get_ids().len();
        assert_eq!(enc.get_ids(), &row[..n], "{name}: tokenizer ids of {s:?}");
        assert!(row[n..].iter().all(|x| *x == pad), "{name}: padding of {s:?}");
    }
    let h = m.forward(&ids, &mask, tt.as_ref(), &Deltas::none()).unwrap();
    let d = max_abs(&h, &g["last_hidden_state"]);
    println!("{name}: last_hidden_state {:?}, max abs difference to transformers {d:.2e}", h.dims());
    assert!(d <= TOL, "{name}: max abs difference {d} > {TOL}");
}

#[test]
fn roberta_matches_transformers() {
    text_parity("roberta", "roberta", 1);
    let m = load_text_encoder(&fixture("roberta"), &Device::Cpu).unwrap();
    assert_eq!(m.max_tokens(), 66 - 1 - 1);
    assert!(!m.uses_token_types());
    assert_eq!(m.hidden_size(), 32);
}

#[test]
fn distilbert_matches_transformers() {
    text_parity("distilbert", "distilbert", 0);
    let m = load_text_encoder(&fixture("distilbert"), &Device::Cpu).unwrap();
    assert_eq!(m.max_tokens(), 64);
    assert!(!m.uses_token_types());
    // Token type 1 means nothing to DistilBERT: refused, not ignored.
    let g = golden("distilbert");
    let (ids, mask) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]));
    let ones = ids.ones_like().unwrap();
    let e = m.forward(&ids, &mask, Some(&ones), &Deltas::none()).err().unwrap().to_string();
    assert!(e.contains("token type 1"), "{e}");
}

fn image_parity(name: &str, kind: &str, feature_dim: usize) {
    let m = load_image_encoder(&fixture(name), &Device::Cpu).unwrap();
    assert_eq!((m.kind(), m.feature_dim(), m.patch_size()), (kind, feature_dim, 4));
    let g = golden(name);
    for suffix in ["", "_24"] {
        let x = &g[&format!("pixel_values{suffix}")];
        let f = m.features(x, &Deltas::none()).unwrap();
        let d = max_abs(&f, &g[&format!("features{suffix}")]);
        let h = match kind {
            "vit" => GoogleVit::load(&fixture(name), &Device::Cpu).unwrap().forward(x, &Deltas::none()).unwrap(),
            _ => Vit::load_hf(&fixture(name), &Device::Cpu).unwrap().forward(x, &Deltas::none()).unwrap(),
        };
        let dh = max_abs(&h, &g[&format!("last_hidden_state{suffix}")]);
        println!(
            "{name} {:?}: features {:?} max abs diff {d:.2e}; last_hidden_state {:?} max abs diff {dh:.2e}",
            x.dims(),
            f.dims(),
            h.dims()
        );
        assert!(d <= TOL && dh <= TOL, "{name}{suffix}: {d} / {dh} > {TOL}");
    }
}

#[test]
fn vit_matches_transformers() {
    image_parity("vit", "vit", 32);
    let m = load_image_encoder(&fixture("vit"), &Device::Cpu).unwrap();
    assert_eq!(m.normalization(), ([0.5; 3], [0.5; 3]));
    assert!(m.check_size(24).is_ok() && m.check_size(18).is_err() && m.check_size(0).is_err());
}

#[test]
fn dinov2_folder_matches_transformers() {
    image_parity("dinov2", "dinov2", 64);
    let m = load_image_encoder(&fixture("dinov2"), &Device::Cpu).unwrap();
    assert_eq!(m.normalization(), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]));
    // The weights file of a folder loads as the folder's model_type too.
    let m = load_image_encoder(&fixture("vit").join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(m.kind(), "vit");
}

#[test]
fn converted_dinov2_file_still_loads_as_an_image_encoder() {
    let onnx = common::asset("dinov2-onnx", "vit_s_focus.onnx");
    let file = superlora_models::vit::ensure_converted(&onnx).unwrap();
    let m = load_image_encoder(&file, &Device::Cpu).unwrap();
    assert_eq!(load_image_encoder(&onnx, &Device::Cpu).unwrap().weights_path(), file.as_path());
    assert_eq!((m.kind(), m.feature_dim(), m.patch_size()), ("dinov2", 768, 14));
    assert_eq!(m.normalization(), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]));
    assert!(m.check_size(56).is_ok() && m.check_size(50).is_err());
    let direct = Vit::load(&file, &Device::Cpu).unwrap();
    assert_eq!(m.linears(), direct.linears());
    let x = common::normal(0f32, 1.0, (1, 3, 28, 28), 3001);
    let d = max_abs(&m.features(&x, &Deltas::none()).unwrap(), &direct.features(&x, &Deltas::none()).unwrap());
    println!("converted DINOv2 via load_image_encoder vs Vit::load: max abs diff {d:e}");
    assert_eq!(d, 0.0);
}

/// One backward through `forward` with a few adapters over `targets`: every adapter tensor gets a
/// finite non-zero gradient, and no tensor of `frozen` gets one.
fn check_gradients(
    linears: &[LinearInfo],
    pattern: &str,
    n_targets: usize,
    frozen: &[Tensor],
    forward: &dyn Fn(&Deltas) -> Tensor,
) {
    let dev = Device::Cpu;
    let targets = select(linears, &TargetPattern::names(pattern).unwrap()).unwrap();
    assert_eq!(targets.len(), n_targets, "{pattern}");
    let specs = [
        AdapterSpec { rank: Some(2), ..Default::default() },
        AdapterSpec {
            fold: Some(Fold::Square),
            groups: Some(2),
            order: Some(3),
            factor: Some(FactorKind::Tucker),
            rank: Some(2),
            ..Default::default()
        },
    ];
    for spec in specs {
        let a = SuperLora::from_shapes(&targets, &spec.resolve().unwrap(), DType::F32, &dev).unwrap();
        for (name, v) in a.named_vars() {
            a.set(&name, &common::normal(0f32, 0.05, v.dims(), 3002 ^ common::seed_of(&name))).unwrap();
        }
        let tape = a.forward_tape().unwrap();
        let out = forward(&Deltas::new(&targets, tape.deltas()).unwrap());
        let loss = out.mul(&common::normal(0f32, 1.0, out.dims(), 3003)).unwrap().sum_all().unwrap();
        let grads = tape.backward(loss.backward().unwrap()).unwrap();
        for (name, v) in a.named_vars() {
            let g: Vec<f32> = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{spec:?}: no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0), "{spec:?}: {name}");
        }
        for t in frozen {
            assert!(grads.get(t).is_none(), "a frozen tensor of shape {:?} got a gradient", t.dims());
        }
    }
    println!("{pattern}: {n_targets} targets, every adapter tensor has a finite non-zero gradient");
}

#[test]
fn adapter_gradients_reach_every_tensor_of_every_model() {
    let dev = Device::Cpu;
    let g = golden("roberta");
    let (ids, mask, tt) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]), u32s(&g["token_type_ids"]));
    let m = Roberta::load(&fixture("roberta"), &dev).unwrap();
    assert_eq!(m.linears()[0].name, "encoder.layer.0.attention.self.query");
    check_gradients(&m.linears(), "query,value", 4, &m.frozen_tensors(), &|d| {
        m.forward(&ids, &mask, Some(&tt), d).unwrap()
    });

    let g = golden("distilbert");
    let (ids, mask) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]));
    let m = DistilBert::load(&fixture("distilbert"), &dev).unwrap();
    assert_eq!(m.linears()[0].name, "transformer.layer.0.attention.q_lin");
    check_gradients(&m.linears(), "q_lin,v_lin", 4, &m.frozen_tensors(), &|d| m.forward(&ids, &mask, None, d).unwrap());
    check_gradients(&m.linears(), "lin1,lin2,out_lin", 6, &m.frozen_tensors(), &|d| {
        m.forward(&ids, &mask, None, d).unwrap()
    });

    let x = golden("vit")["pixel_values_24"].clone();
    let m = GoogleVit::load(&fixture("vit"), &dev).unwrap();
    assert_eq!(m.linears()[0].name, "encoder.layer.0.attention.attention.query");
    check_gradients(&m.linears(), "query,value", 4, &m.frozen_tensors(), &|d| m.features(&x, d).unwrap());

    let x = golden("dinov2")["pixel_values"].clone();
    let m = Vit::load_hf(&fixture("dinov2"), &dev).unwrap();
    check_gradients(&m.linears(), "query,value,fc1", 6, &m.frozen_tensors(), &|d| m.features(&x, d).unwrap());
}

/// DistilBERT and the Hugging Face ViT run each block as one node (BERT's post-LN block, and the
/// pre-LN block with λ = 1); against their per-op blocks: the same output and adapter gradients.
#[test]
fn one_node_blocks_equal_the_per_op_blocks_in_distilbert_and_vit() {
    let dev = Device::Cpu;
    let g = golden("distilbert");
    let (ids, mask) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]));
    let m = DistilBert::load(&fixture("distilbert"), &dev).unwrap();
    common::one_node_equals_per_op(&m.linears(), ["q_lin,v_lin", "k_lin,out_lin,lin1,lin2"], &|d, composed| {
        if composed { m.forward_composed(&ids, &mask, d) } else { m.forward(&ids, &mask, None, d) }.unwrap()
    });
    let x = golden("vit")["pixel_values_24"].clone();
    let m = GoogleVit::load(&fixture("vit"), &dev).unwrap();
    common::one_node_equals_per_op(&m.linears(), ["query,value", "key,dense"], &|d, composed| {
        if composed { m.forward_composed(&x, d) } else { m.forward(&x, d) }.unwrap()
    });
}

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

#[test]
fn unknown_or_wrong_modality_model_type_lists_the_supported_ones() {
    let dir = copy_fixture("distilbert");
    edit_config(dir.path(), "model_type", "gpt2".into());
    for e in [
        load_text_encoder(dir.path(), &Device::Cpu).err().unwrap().to_string(),
        load_image_encoder(dir.path(), &Device::Cpu).err().unwrap().to_string(),
    ] {
        println!("{e}");
        assert!(e.contains("`gpt2` is not supported") && e.contains("config.json"), "{e}");
        assert!(SUPPORTED.iter().all(|s| e.contains(s)), "{e}");
    }
    let e = load_image_encoder(&fixture("roberta"), &Device::Cpu).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("`roberta` cannot be loaded as an image encoder") && e.contains("vit, dinov2"), "{e}");
    assert!(SUPPORTED.iter().all(|s| e.contains(s)), "{e}");
    let e = load_text_encoder(&fixture("vit"), &Device::Cpu).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("`vit` cannot be loaded as a text encoder") && e.contains("bert, roberta, distilbert"), "{e}");
    assert_eq!(superlora_models::model_type(&fixture("dinov2")).unwrap(), "dinov2");
}

#[test]
fn missing_config_is_an_error_naming_the_file() {
    let dir = copy_fixture("vit");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let want = dir.path().join("config.json").display().to_string();
    for e in [
        load_image_encoder(dir.path(), &Device::Cpu).err().unwrap().to_string(),
        load_text_encoder(dir.path(), &Device::Cpu).err().unwrap().to_string(),
        superlora_models::model_type(dir.path()).err().unwrap().to_string(),
    ] {
        println!("{e}");
        assert!(e.contains(&want), "{e}");
    }
}

#[test]
fn config_and_weights_that_disagree_name_tensor_shapes_and_file() {
    let dir = copy_fixture("distilbert");
    edit_config(dir.path(), "hidden_dim", 48.into());
    let e = load_text_encoder(dir.path(), &Device::Cpu).err().unwrap().to_string();
    println!("{e}");
    assert!(
        e.contains("`transformer.layer.0.ffn.lin1.weight`") && e.contains("[64, 32]") && e.contains("[48, 32]"),
        "{e}"
    );
    assert!(e.contains(&dir.path().join("model.safetensors").display().to_string()), "{e}");
    let dir = copy_fixture("vit");
    edit_config(dir.path(), "num_hidden_layers", 3.into());
    let e = load_image_encoder(dir.path(), &Device::Cpu).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("2 ViT layers") && e.contains("says 3"), "{e}");
}

/// Splits `model.safetensors` of a copied fixture into two shards with an index.
fn shard(dir: &Path) {
    let all = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let tensors: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), all[*n].clone())).collect();
        candle_core::safetensors::save(&tensors, dir.join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
}

#[test]
fn sharded_checkpoints_load_every_shard() {
    let dev = Device::Cpu;
    let dir = copy_fixture("roberta");
    shard(dir.path());
    let m = load_text_encoder(dir.path(), &dev).unwrap();
    assert!(m.weights_path().ends_with("model.safetensors.index.json"));
    let g = golden("roberta");
    let (ids, mask) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]));
    let d = max_abs(&m.forward(&ids, &mask, None, &Deltas::none()).unwrap(), &g["last_hidden_state"]);
    println!("sharded roberta: max abs difference to transformers {d:.2e}");
    assert!(d <= TOL);

    let dir = copy_fixture("dinov2");
    shard(dir.path());
    let m = load_image_encoder(dir.path(), &dev).unwrap();
    let g = golden("dinov2");
    let d = max_abs(&m.features(&g["pixel_values"], &Deltas::none()).unwrap(), &g["features"]);
    println!("sharded dinov2: max abs difference to transformers {d:.2e}");
    assert!(d <= TOL);

    // A shape error inside a shard names the shard.
    edit_config(dir.path(), "mlp_ratio", 3.into());
    let e = load_image_encoder(dir.path(), &dev).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("model-0000") && e.contains("mlp.fc1.weight"), "{e}");
}

#[test]
fn prefixed_task_model_names_load_too() {
    let dev = Device::Cpu;
    for (name, prefix) in
        [("roberta", "roberta."), ("distilbert", "distilbert."), ("vit", "vit."), ("dinov2", "dinov2.")]
    {
        let dir = copy_fixture(name);
        let p = dir.path().join("model.safetensors");
        let all = candle_core::safetensors::load(&p, &dev).unwrap();
        let renamed: HashMap<String, Tensor> = all.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect();
        candle_core::safetensors::save(&renamed, &p).unwrap();
        let g = golden(name);
        let d = if ["vit", "dinov2"].contains(&name) {
            let m = load_image_encoder(dir.path(), &dev).unwrap();
            max_abs(&m.features(&g["pixel_values"], &Deltas::none()).unwrap(), &g["features"])
        } else {
            let m = load_text_encoder(dir.path(), &dev).unwrap();
            let (ids, mask) = (u32s(&g["input_ids"]), u32s(&g["attention_mask"]));
            max_abs(&m.forward(&ids, &mask, None, &Deltas::none()).unwrap(), &g["last_hidden_state"])
        };
        assert!(d <= TOL, "{prefix}: {d}");
    }
}

#[test]
fn real_minilm_loads_through_load_text_encoder_like_bert_load() {
    let dir = common::asset("minilm", "config.json").parent().unwrap().to_path_buf();
    let dev = Device::Cpu;
    let via_hf = load_text_encoder(&dir, &dev).unwrap();
    let direct = Bert::load(&dir, &dev).unwrap();
    assert_eq!(via_hf.kind(), "bert");
    assert_eq!((via_hf.hidden_size(), via_hf.max_tokens(), via_hf.uses_token_types()), (384, 512, true));
    assert_eq!(via_hf.linears(), direct.linears());
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let enc = tok.encode("A man is eating a piece of bread.", true).unwrap();
    let n = enc.get_ids().len();
    let ids = Tensor::from_vec(enc.get_ids().to_vec(), (1, n), &dev).unwrap();
    let mask = Tensor::from_vec(enc.get_attention_mask().to_vec(), (1, n), &dev).unwrap();
    let a = via_hf.forward(&ids, &mask, None, &Deltas::none()).unwrap();
    let b = direct.forward(&ids, &mask, &Deltas::none()).unwrap();
    let d = max_abs(&a, &b);
    // Explicit all-zero token types are the same as none.
    let z = max_abs(&via_hf.forward(&ids, &mask, Some(&ids.zeros_like().unwrap()), &Deltas::none()).unwrap(), &b);
    // Type 1 changes the states (BERT uses token types).
    let o = max_abs(&via_hf.forward(&ids, &mask, Some(&ids.ones_like().unwrap()), &Deltas::none()).unwrap(), &b);
    println!(
        "MiniLM {:?}: load_text_encoder vs Bert::load max abs diff {d:e}; zero types {z:e}; type-1 {o:.3}",
        a.dims()
    );
    assert_eq!(d, 0.0);
    assert_eq!(z, 0.0);
    assert!(o > 1e-3);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    fn send_sync<T: Send + Sync + ?Sized>() {}
    send_sync::<dyn superlora_models::TextEncoder>();
    send_sync::<dyn superlora_models::ImageEncoder>();
    let dev = Device::Cpu;
    for name in ["roberta", "distilbert"] {
        let m = load_text_encoder(&fixture(name), &dev).unwrap();
        let ids = Tensor::from_vec(vec![5u32, 100_000], (1, 2), &dev).unwrap();
        let mask = Tensor::from_vec(vec![1u32, 1], (1, 2), &dev).unwrap();
        let e = m.forward(&ids, &mask, None, &Deltas::none()).err().unwrap().to_string();
        assert!(e.contains("token id 100000"), "{e}");
        let short = Tensor::from_vec(vec![1u32], (1, 1), &dev).unwrap();
        assert!(m.forward(&ids, &short, None, &Deltas::none()).is_err());
        let long = Tensor::zeros((1, 200), DType::U32, &dev).unwrap();
        let e = m.forward(&long, &long, None, &Deltas::none()).err().unwrap().to_string();
        assert!(e.contains("longer than"), "{e}");
    }
    for name in ["vit", "dinov2"] {
        let m = load_image_encoder(&fixture(name), &dev).unwrap();
        for dims in [(1, 3, 18, 18), (1, 1, 16, 16)] {
            let x = Tensor::zeros(dims, DType::F32, &dev).unwrap();
            assert!(m.features(&x, &Deltas::none()).is_err(), "{name} {dims:?}");
        }
    }
    // An index naming a shard that is not there names the file.
    let dir = copy_fixture("distilbert");
    shard(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_text_encoder(dir.path(), &dev).err().unwrap().to_string();
    println!("{e}");
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}
