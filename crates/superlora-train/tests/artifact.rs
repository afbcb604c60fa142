//! Adapter folders: save → load gives identical tensors and projections, and every kind of
//! corruption is refused with a reason (no panic).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use superlora_core::{AdapterSpec, FactorKind, Fold, LayerShape, ProjectionKind, SuperLora};
use superlora_train::artifact::{self, AdapterFile, BaseModel, HeadInfo, Rules, Target};
use superlora_train::checkpoint::{load_tensors, save_tensors};
use superlora_train::head::Head;

fn shapes() -> Vec<LayerShape> {
    vec![LayerShape::new("a.query", 12, 10), LayerShape::new("a.value", 12, 10), LayerShape::new("b.query", 12, 10)]
}

fn make(spec: &AdapterSpec, save_projection: bool, dir: &Path) -> (SuperLora, Head) {
    let dev = Device::Cpu;
    let cfg = spec.resolve().unwrap();
    let a = SuperLora::from_shapes(&shapes(), &cfg, DType::F32, &dev).unwrap();
    // Seeded values (candle's CPU randn cannot be seeded): each tensor its own stream.
    for (i, (n, v)) in a.named_vars().into_iter().enumerate() {
        let mut r = superlora_core::rng::stream(1, i, superlora_core::rng::Purpose::Init);
        let values: Vec<f32> = (0..v.elem_count()).map(|_| (r.normal()) as f32).collect();
        a.set(&n, &Tensor::from_vec(values, v.dims(), &dev).unwrap()).unwrap();
    }
    let head = Head::new(16, 3, 5, DType::F32, &dev).unwrap();
    let file = AdapterFile {
        format: artifact::FORMAT.into(),
        format_version: artifact::FORMAT_VERSION,
        adapter: Some(cfg),
        targets: shapes().iter().map(|s| Target { name: s.name.clone(), rows: s.rows, cols: s.cols }).collect(),
        rules: Rules::current(),
        base_model: BaseModel { kind: "bert".into(), path: "model.safetensors".into(), sha256: "00".into() },
        head: Some(HeadInfo { features: 16, classes: vec!["x".into(), "y".into(), "z".into()] }),
        trainable_params: a.num_trainable(),
        head_params: head.num_params(),
        projection_saved: save_projection,
        task: serde_json::json!({"dataset": "test"}),
    };
    artifact::save(dir, &file, Some(&a), Some(&head), false).unwrap();
    (a, head)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn fastfood_spec() -> AdapterSpec {
    AdapterSpec {
        fold: Some(Fold::Square),
        groups: Some(2),
        order: Some(3),
        factor: Some(FactorKind::Tucker),
        rank: Some(2),
        projection: Some(ProjectionKind::Fastfood),
        ratio: Some(0.5),
        seed: Some(9),
        ..Default::default()
    }
}

#[test]
fn save_then_load_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, spec) in [
        fastfood_spec(),
        AdapterSpec { projection: Some(ProjectionKind::Shuffle), ratio: None, ..fastfood_spec() },
        AdapterSpec { rank: Some(2), ..Default::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("a{i}"));
        let (a, head) = make(&spec, true, &dir);
        let loaded = artifact::load(&dir, &Device::Cpu).unwrap();
        let b = loaded.adapter.unwrap();
        for ((n1, v1), (n2, v2)) in a.named_vars().iter().zip(b.named_vars().iter()) {
            assert_eq!(n1, n2);
            assert_eq!(bits(v1.as_tensor()), bits(v2.as_tensor()), "{n1}");
        }
        for (d1, d2) in a.delta_weights().unwrap().iter().zip(b.delta_weights().unwrap()) {
            assert_eq!(bits(d1), bits(&d2));
        }
        let h = loaded.head.unwrap();
        assert_eq!(bits(head.weight.as_tensor()), bits(h.weight.as_tensor()));
        // Refuses to overwrite without force.
        assert!(artifact::save(&dir, &loaded.file, Some(&b), Some(&h), false).is_err());
        // Both files are created like any file (the user's umask), not the tensors privately (0600).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(artifact::TENSOR_FILE), mode(artifact::CONFIG_FILE));
        }
    }
}

/// Rewrites the tensor file of `dir` through `f`.
fn edit_tensors(dir: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join(artifact::TENSOR_FILE);
    let mut t = load_tensors(&path, &Device::Cpu).unwrap();
    f(&mut t);
    save_tensors(&path, &t, None).unwrap();
}

#[test]
fn corrupted_folders_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let dir = tmp.path().join(name);
        make(&fastfood_spec(), true, &dir);
        dir
    };
    let expect = |dir: &Path, want: &str| {
        let e = artifact::load(dir, &Device::Cpu).err().unwrap_or_else(|| panic!("{want}: loaded"));
        assert!(e.to_string().contains(want), "want `{want}` in `{e}`");
    };
    let d = fresh("unknown-field");
    let cfg = d.join(artifact::CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replacen("{", "{\"extra\": 1,", 1)).unwrap();
    expect(&d, "extra");

    let d = fresh("version");
    let text = std::fs::read_to_string(d.join(artifact::CONFIG_FILE)).unwrap();
    std::fs::write(d.join(artifact::CONFIG_FILE), text.replace("\"format_version\": 1", "\"format_version\": 7"))
        .unwrap();
    expect(&d, "format_version 7");

    let d = fresh("missing");
    edit_tensors(&d, |t| {
        t.remove("group.0.tucker_core");
    });
    expect(&d, "`group.0.tucker_core` is missing");

    let d = fresh("shape");
    edit_tensors(&d, |t| {
        t.insert("group.1.tucker_u.0".into(), Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap());
    });
    expect(&d, "has shape [2, 2]");

    let d = fresh("dtype");
    edit_tensors(&d, |t| {
        let v = t["head.bias"].to_dtype(DType::F64).unwrap();
        t.insert("head.bias".into(), v);
    });
    expect(&d, "is F64");

    let d = fresh("nan");
    edit_tensors(&d, |t| {
        t.insert("head.bias".into(), Tensor::new(&[0f32, f32::NAN, 1.0], &Device::Cpu).unwrap());
    });
    expect(&d, "non-finite");

    let d = fresh("extra");
    edit_tensors(&d, |t| {
        t.insert("backdoor".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    });
    expect(&d, "unexpected tensor `backdoor`");

    let d = fresh("projection");
    edit_tensors(&d, |t| {
        let g: Vec<f32> = t["projection.group.0.gauss"].to_vec1().unwrap();
        let n = g.len();
        let mut g = g;
        g[0] += 1.0;
        t.insert("projection.group.0.gauss".into(), Tensor::from_vec(g, n, &Device::Cpu).unwrap());
    });
    expect(&d, "differs from the one regenerated");

    let d = fresh("truncated");
    let p = d.join(artifact::TENSOR_FILE);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(artifact::load(&d, &Device::Cpu).is_err());

    let d = fresh("header-length");
    std::fs::write(d.join(artifact::TENSOR_FILE), [255u8, 255, 255, 255, 0, 0, 0, 0, b'{', b'}']).unwrap();
    expect(&d, "header length");
}
