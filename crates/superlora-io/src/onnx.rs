//! A minimal reader of ONNX model files: the protobuf wire format, hand-decoded, just far enough
//! to list a graph's nodes and decode its initializers (no protoc, no generated code).
//!
//! Read: `ModelProto` (`ir_version` = 1, `producer_name` = 2, `producer_version` = 3, `graph` = 7,
//! `opset_import` = 8) → `GraphProto` (`node` = 1, `name` = 2, `initializer` = 5, `input` = 11,
//! `output` = 12) → `NodeProto` (`input` = 1, `output` = 2, `name` = 3, `op_type` = 4,
//! `domain` = 7) and `TensorProto` (`dims` = 1, packed or not; `data_type` = 2; `float_data` = 4;
//! `int64_data` = 7; `name` = 8; `raw_data` = 9; `external_data` = 13; `data_location` = 14).
//! Every other field is skipped by its wire type; node attributes are not decoded.
//!
//! FLOAT and INT64 initializers are decoded ([`TensorData::F32`], [`TensorData::I64`]); other
//! types are listed with their shape but [`TensorData::NotDecoded`]. Tensors whose data lives in an
//! external file are rejected with an error that says so.
//!
//! The input is untrusted: every varint and every length is bounds-checked, sizes are checked
//! with overflow-checked arithmetic, nothing is allocated beyond what the input's own bytes can
//! fill, and malformed input gives a [`DecodeError`] (with the byte offset), never a panic.
//! Nesting is fixed (model → graph → node/tensor), so hostile input cannot recurse deeply.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const DATA_TYPE_INT64: i32 = 7;

/// Malformed protobuf or ONNX content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct DecodeError {
    /// Byte offset in the whole file where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl DecodeError {
    fn context(mut self, what: &str) -> Self {
        self.reason = format!("{what}: {}", self.reason);
        self
    }
}

type DResult<T> = std::result::Result<T, DecodeError>;

/// A decoded `ModelProto` (only the fields this crate needs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// `ir_version`.
    pub ir_version: i64,
    /// `producer_name` (e.g. `pytorch`).
    pub producer_name: String,
    /// `producer_version`.
    pub producer_version: String,
    /// `(domain, version)` of each operator set imported; `""` is the default ONNX domain.
    pub opset_import: Vec<(String, i64)>,
    /// The main graph.
    pub graph: Graph,
}

/// A decoded `GraphProto`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Nodes in file order (ONNX requires topological order).
    pub nodes: Vec<Node>,
    /// Initializers (the weights) in file order.
    pub initializers: Vec<Tensor>,
    /// Names of the graph inputs.
    pub inputs: Vec<String>,
    /// Names of the graph outputs.
    pub outputs: Vec<String>,
}

/// A decoded `NodeProto` (attributes are not decoded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Node name, e.g. `/backbone/encoder/layer.0/attention/attention/query/MatMul`.
    pub name: String,
    /// Operator, e.g. `MatMul`.
    pub op_type: String,
    /// Operator domain (`""` for the default ONNX domain).
    pub domain: String,
    /// Input value names in slot order (`""` marks an omitted optional input).
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
}

/// The decoded data of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// FLOAT elements, row-major.
    F32(Vec<f32>),
    /// INT64 elements, row-major.
    I64(Vec<i64>),
    /// A data type this reader does not decode.
    NotDecoded,
}

/// A decoded `TensorProto`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Shape (validated non-negative; the element count fits in `usize`).
    pub dims: Vec<usize>,
    /// ONNX `TensorProto.DataType` code (1 = FLOAT, 7 = INT64, ...).
    pub data_type: i32,
    /// The elements.
    pub data: TensorData,
}

impl Tensor {
    /// Number of elements (product of the dims; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The elements if this is a FLOAT tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if this is an INT64 tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }
}

impl Graph {
    /// The initializer called `name`, if any.
    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    /// The node called `name`, if any.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// For every value name, the nodes that read it, as `(node index, input slot)`.
    pub fn consumers(&self) -> HashMap<&str, Vec<(usize, usize)>> {
        let mut map: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for (slot, input) in node.inputs.iter().enumerate() {
                if !input.is_empty() {
                    map.entry(input.as_str()).or_default().push((i, slot));
                }
            }
        }
        map
    }
}

/// Reads and decodes an ONNX model file.
pub fn read_model(path: &Path) -> Result<Model> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|cause| Error::Io { path: shown.clone(), cause })?;
    parse_model(&bytes).map_err(|e| Error::Onnx { path: shown, reason: format!("not a valid ONNX model: {e}") })
}

/// Decodes a serialized `ModelProto`.
pub fn parse_model(bytes: &[u8]) -> DResult<Model> {
    let mut r = Reader::new(bytes, 0);
    let mut model = Model::default();
    let mut graph = None;
    while !r.at_end() {
        let (field, wire, at) = r.key()?;
        match field {
            1 => {
                expect(wire, Wire::Varint, "ModelProto", "ir_version", r.abs(at))?;
                model.ir_version = r.varint()? as i64;
            }
            2 => model.producer_name = r.string(wire, "ModelProto", "producer_name", at)?,
            3 => model.producer_version = r.string(wire, "ModelProto", "producer_version", at)?,
            7 => {
                expect(wire, Wire::Len, "ModelProto", "graph", r.abs(at))?;
                if graph.is_some() {
                    return Err(r.err(at, "ModelProto holds more than one graph (field 7)"));
                }
                let mut sub = r.sub()?;
                graph = Some(parse_graph(&mut sub).map_err(|e| e.context("graph"))?);
            }
            8 => {
                expect(wire, Wire::Len, "ModelProto", "opset_import", r.abs(at))?;
                let mut sub = r.sub()?;
                model.opset_import.push(parse_opset(&mut sub).map_err(|e| e.context("opset_import"))?);
            }
            _ => r.skip(wire)?,
        }
    }
    model.graph = graph.ok_or_else(|| DecodeError {
        offset: bytes.len(),
        reason: "ModelProto has no graph (field 7); is this an ONNX model file?".into(),
    })?;
    Ok(model)
}

fn parse_opset(r: &mut Reader<'_>) -> DResult<(String, i64)> {
    let (mut domain, mut version) = (String::new(), 0i64);
    while !r.at_end() {
        let (field, wire, at) = r.key()?;
        match field {
            1 => domain = r.string(wire, "OperatorSetIdProto", "domain", at)?,
            2 => {
                expect(wire, Wire::Varint, "OperatorSetIdProto", "version", r.abs(at))?;
                version = r.varint()? as i64;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok((domain, version))
}

fn parse_graph(r: &mut Reader<'_>) -> DResult<Graph> {
    let mut g = Graph::default();
    while !r.at_end() {
        let (field, wire, at) = r.key()?;
        match field {
            1 => {
                expect(wire, Wire::Len, "GraphProto", "node", r.abs(at))?;
                let i = g.nodes.len();
                let mut sub = r.sub()?;
                g.nodes.push(parse_node(&mut sub).map_err(|e| e.context(&format!("node #{i}")))?);
            }
            2 => g.name = r.string(wire, "GraphProto", "name", at)?,
            5 => {
                expect(wire, Wire::Len, "GraphProto", "initializer", r.abs(at))?;
                let i = g.initializers.len();
                let mut sub = r.sub()?;
                g.initializers.push(parse_tensor(&mut sub).map_err(|e| e.context(&format!("initializer #{i}")))?);
            }
            11 | 12 => {
                expect(wire, Wire::Len, "GraphProto", "input/output", r.abs(at))?;
                let mut sub = r.sub()?;
                let name = parse_value_info_name(&mut sub)?;
                if field == 11 { g.inputs.push(name) } else { g.outputs.push(name) }
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(g)
}

fn parse_value_info_name(r: &mut Reader<'_>) -> DResult<String> {
    let mut name = String::new();
    while !r.at_end() {
        let (field, wire, at) = r.key()?;
        match field {
            1 => name = r.string(wire, "ValueInfoProto", "name", at)?,
            _ => r.skip(wire)?,
        }
    }
    Ok(name)
}

fn parse_node(r: &mut Reader<'_>) -> DResult<Node> {
    let mut n = Node::default();
    while !r.at_end() {
        let (field, wire, at) = r.key()?;
        match field {
            1 => n.inputs.push(r.string(wire, "NodeProto", "input", at)?),
            2 => n.outputs.push(r.string(wire, "NodeProto", "output", at)?),
            3 => n.name = r.string(wire, "NodeProto", "name", at)?,
            4 => n.op_type = r.string(wire, "NodeProto", "op_type", at)?,
            7 => n.domain = r.string(wire, "NodeProto", "domain", at)?,
            _ => r.skip(wire)?,
        }
    }
    Ok(n)
}

fn parse_tensor(r: &mut Reader<'_>) -> DResult<Tensor> {
    let start = r.abs(0);
    let mut dims: Vec<i64> = Vec::new();
    let mut data_type: i32 = 0;
    let mut name = String::new();
    let mut float_data: Vec<f32> = Vec::new();
    let mut int64_data: Vec<i64> = Vec::new();
    let mut raw: Option<&[u8]> = None;
    let mut external = false;
    while !r.at_end() {
        let (field, wire, at) = r.key()?;
        match field {
            1 => match wire {
                Wire::Varint => dims.push(r.varint()? as i64),
                Wire::Len => {
                    let mut sub = r.sub()?;
                    while !sub.at_end() {
                        dims.push(sub.varint()? as i64);
                    }
                }
                _ => return Err(wrong_wire(wire, "TensorProto", "dims", "varint or packed", r.abs(at))),
            },
            2 => {
                expect(wire, Wire::Varint, "TensorProto", "data_type", r.abs(at))?;
                let v = r.varint()?;
                data_type =
                    i32::try_from(v).map_err(|_| r.err(at, format!("TensorProto data_type {v} is out of range")))?;
            }
            3 => return Err(r.err(at, "segmented tensors (TensorProto.segment) are not supported")),
            4 => match wire {
                Wire::Fixed32 => float_data.push(f32::from_le_bytes(r.fixed32()?)),
                Wire::Len => {
                    let (off, b) = r.len_delimited()?;
                    if b.len() % 4 != 0 {
                        return Err(DecodeError {
                            offset: off,
                            reason: format!("packed float_data is {} bytes, not a multiple of 4", b.len()),
                        });
                    }
                    float_data.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
                }
                _ => return Err(wrong_wire(wire, "TensorProto", "float_data", "fixed32 or packed", r.abs(at))),
            },
            7 => match wire {
                Wire::Varint => int64_data.push(r.varint()? as i64),
                Wire::Len => {
                    let mut sub = r.sub()?;
                    while !sub.at_end() {
                        int64_data.push(sub.varint()? as i64);
                    }
                }
                _ => return Err(wrong_wire(wire, "TensorProto", "int64_data", "varint or packed", r.abs(at))),
            },
            8 => name = r.string(wire, "TensorProto", "name", at)?,
            9 => {
                expect(wire, Wire::Len, "TensorProto", "raw_data", r.abs(at))?;
                raw = Some(r.len_delimited()?.1);
            }
            13 => {
                expect(wire, Wire::Len, "TensorProto", "external_data", r.abs(at))?;
                r.len_delimited()?;
                external = true;
            }
            14 => {
                expect(wire, Wire::Varint, "TensorProto", "data_location", r.abs(at))?;
                if r.varint()? == 1 {
                    external = true;
                }
            }
            _ => r.skip(wire)?,
        }
    }
    let bad = |reason: String| DecodeError { offset: start, reason: format!("tensor `{name}`: {reason}") };
    if external {
        return Err(bad("its data is stored in an external file (data_location EXTERNAL), which is not \
                        supported; save the model with its data embedded"
            .into()));
    }
    let mut shape = Vec::with_capacity(dims.len());
    for &d in &dims {
        shape.push(usize::try_from(d).map_err(|_| bad(format!("negative dimension {d} in dims {dims:?}")))?);
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dims {dims:?} overflow the element count")))?;
    let data = match data_type {
        DATA_TYPE_FLOAT => TensorData::F32(decode_elements(raw, float_data, numel, 4, "float_data", &bad, |c| {
            f32::from_le_bytes([c[0], c[1], c[2], c[3]])
        })?),
        DATA_TYPE_INT64 => TensorData::I64(decode_elements(raw, int64_data, numel, 8, "int64_data", &bad, |c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        })?),
        _ => TensorData::NotDecoded,
    };
    Ok(Tensor { name, dims: shape, data_type, data })
}

/// Picks a tensor's elements from `raw_data` (little-endian, `width` bytes each) or from its typed
/// repeated field, checking that exactly one holds them and that the count matches the shape.
fn decode_elements<T>(
    raw: Option<&[u8]>,
    typed: Vec<T>,
    numel: usize,
    width: usize,
    typed_name: &str,
    bad: &dyn Fn(String) -> DecodeError,
    from_le: impl Fn(&[u8]) -> T,
) -> DResult<Vec<T>> {
    match raw {
        Some(raw) => {
            if !typed.is_empty() {
                return Err(bad(format!("both raw_data and {typed_name} are set")));
            }
            let want = numel.checked_mul(width).ok_or_else(|| bad("byte size overflows".into()))?;
            if raw.len() != want {
                return Err(bad(format!(
                    "raw_data holds {} bytes but {numel} elements of {width} bytes need {want}",
                    raw.len()
                )));
            }
            Ok(raw.chunks_exact(width).map(from_le).collect())
        }
        None => {
            if typed.len() != numel {
                return Err(bad(format!("{typed_name} holds {} elements but the dims need {numel}", typed.len())));
            }
            Ok(typed)
        }
    }
}

/// Protobuf wire types (groups, 3 and 4, are rejected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl Wire {
    fn describe(self) -> &'static str {
        match self {
            Wire::Varint => "varint (0)",
            Wire::Fixed64 => "fixed64 (1)",
            Wire::Len => "length-delimited (2)",
            Wire::Fixed32 => "fixed32 (5)",
        }
    }
}

fn wrong_wire(got: Wire, message: &str, field: &str, want: &str, offset: usize) -> DecodeError {
    DecodeError { offset, reason: format!("{message}.{field} has wire type {}, expected {want}", got.describe()) }
}

fn expect(got: Wire, want: Wire, message: &str, field: &str, offset: usize) -> DResult<()> {
    if got == want { Ok(()) } else { Err(wrong_wire(got, message, field, want.describe(), offset)) }
}

/// A cursor over one message's bytes; `base` is the message's offset in the whole file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn abs(&self, at: usize) -> usize {
        self.base.saturating_add(at)
    }

    fn err(&self, at: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError { offset: self.abs(at), reason: reason.into() }
    }

    fn varint(&mut self) -> DResult<u64> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10u32 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(start, "truncated varint (input ends inside it)"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.err(start, "varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err(start, "varint longer than 10 bytes"))
    }

    /// Reads a field key: `(field number, wire type, offset of the key within this message)`.
    fn key(&mut self) -> DResult<(u32, Wire, usize)> {
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(self.err(at, format!("invalid field number {field}")));
        }
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            3 | 4 => {
                return Err(self.err(at, format!("field {field} uses protobuf groups (wire type 3/4), not supported")));
            }
            w => return Err(self.err(at, format!("field {field} has invalid wire type {w}"))),
        };
        Ok((field as u32, wire, at))
    }

    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        let start = self.pos;
        let left = self.buf.len() - start.min(self.buf.len());
        if n > left {
            return Err(self.err(start, format!("{n} bytes needed but only {left} are left")));
        }
        self.pos = start + n;
        Ok(&self.buf[start..start + n])
    }

    fn fixed32(&mut self) -> DResult<[u8; 4]> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// Reads a length prefix and the bytes it covers: `(absolute offset of the bytes, bytes)`.
    fn len_delimited(&mut self) -> DResult<(usize, &'a [u8])> {
        let at = self.pos;
        let n = self.varint()?;
        let left = self.buf.len() - self.pos.min(self.buf.len());
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let off = self.abs(self.pos);
                Ok((off, self.take(n)?))
            }
            _ => {
                Err(self.err(at, format!("length {n} runs past the end of the enclosing message ({left} bytes left)")))
            }
        }
    }

    fn sub(&mut self) -> DResult<Reader<'a>> {
        let (off, b) = self.len_delimited()?;
        Ok(Reader::new(b, off))
    }

    fn string(&mut self, wire: Wire, message: &str, field: &str, at: usize) -> DResult<String> {
        expect(wire, Wire::Len, message, field, self.abs(at))?;
        let (off, b) = self.len_delimited()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(DecodeError { offset: off, reason: format!("{message}.{field} is not UTF-8: {e}") }),
        }
    }

    fn skip(&mut self, wire: Wire) -> DResult<()> {
        match wire {
            Wire::Varint => self.varint().map(drop),
            Wire::Fixed64 => self.take(8).map(drop),
            Wire::Fixed32 => self.take(4).map(drop),
            Wire::Len => self.len_delimited().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A tiny protobuf encoder for building test inputs.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
        varint(field << 3 | wire, out);
    }
    fn len_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    fn varint_field(field: u64, v: u64, out: &mut Vec<u8>) {
        key(field, 0, out);
        varint(v, out);
    }
    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            len_field(1, i.as_bytes(), &mut n);
        }
        for o in outputs {
            len_field(2, o.as_bytes(), &mut n);
        }
        len_field(3, name.as_bytes(), &mut n);
        len_field(4, op.as_bytes(), &mut n);
        // An attribute (field 5), which the reader skips.
        len_field(5, b"\x0a\x04axis\x18\x01", &mut n);
        n
    }
    fn float_tensor_raw(name: &str, dims: &[u64], vals: &[f32]) -> Vec<u8> {
        let mut t = Vec::new();
        let mut packed = Vec::new();
        for &d in dims {
            varint(d, &mut packed);
        }
        len_field(1, &packed, &mut t);
        varint_field(2, 1, &mut t);
        len_field(8, name.as_bytes(), &mut t);
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        len_field(9, &raw, &mut t);
        t
    }
    fn model_with(graph: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        varint_field(1, 7, &mut m);
        len_field(2, b"pytorch", &mut m);
        let mut opset = Vec::new();
        varint_field(2, 14, &mut opset);
        len_field(8, &opset, &mut m);
        len_field(7, graph, &mut m);
        m
    }
    fn sample_model() -> Vec<u8> {
        let mut g = Vec::new();
        len_field(1, &node("/lin/MatMul", "MatMul", &["x", "w"], &["y"]), &mut g);
        len_field(2, b"main", &mut g);
        len_field(5, &float_tensor_raw("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), &mut g);
        // Unpacked dims and unpacked float_data.
        let mut t = Vec::new();
        varint_field(1, 2, &mut t);
        varint_field(2, 1, &mut t);
        for v in [0.5f32, -1.5] {
            key(4, 5, &mut t);
            t.extend_from_slice(&v.to_le_bytes());
        }
        len_field(8, b"b", &mut t);
        len_field(5, &t, &mut g);
        // INT64 in packed int64_data, including a negative value (10-byte varint).
        let mut t = Vec::new();
        varint_field(1, 2, &mut t);
        varint_field(2, 7, &mut t);
        let mut packed = Vec::new();
        varint(5, &mut packed);
        varint(-1i64 as u64, &mut packed);
        len_field(7, &packed, &mut t);
        len_field(8, b"shape", &mut t);
        len_field(5, &t, &mut g);
        let mut vi = Vec::new();
        len_field(1, b"x", &mut vi);
        len_field(11, &vi, &mut g);
        let mut vo = Vec::new();
        len_field(1, b"y", &mut vo);
        len_field(12, &vo, &mut g);
        // Unknown fields of every wire type, to be skipped.
        key(99, 1, &mut g);
        g.extend_from_slice(&[0; 8]);
        key(98, 5, &mut g);
        g.extend_from_slice(&[0; 4]);
        varint_field(97, 123456, &mut g);
        len_field(96, b"whatever", &mut g);
        model_with(&g)
    }

    #[test]
    fn decodes_a_hand_made_model() {
        let m = parse_model(&sample_model()).unwrap();
        assert_eq!(m.ir_version, 7);
        assert_eq!(m.producer_name, "pytorch");
        assert_eq!(m.opset_import, vec![(String::new(), 14)]);
        let g = &m.graph;
        assert_eq!(g.name, "main");
        assert_eq!(g.inputs, vec!["x"]);
        assert_eq!(g.outputs, vec!["y"]);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].op_type, "MatMul");
        assert_eq!(g.nodes[0].inputs, vec!["x", "w"]);
        let w = g.initializer("w").unwrap();
        assert_eq!(w.dims, vec![2, 3]);
        assert_eq!(w.as_f32().unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(g.initializer("b").unwrap().as_f32().unwrap(), &[0.5, -1.5]);
        assert_eq!(g.initializer("shape").unwrap().as_i64().unwrap(), &[5, -1]);
        assert_eq!(g.consumers()["w"], vec![(0, 1)]);
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            varint(v, &mut b);
            let mut r = Reader::new(&b, 0);
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.at_end());
        }
        // 10th byte > 1 overflows; 11 bytes is too long.
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over, 0).varint().unwrap_err().reason.contains("overflows"));
        let long = [0x80; 11];
        assert!(Reader::new(&long, 0).varint().is_err());
    }

    fn err_of(bytes: &[u8]) -> DecodeError {
        parse_model(bytes).unwrap_err()
    }

    #[test]
    fn truncated_varint() {
        let e = err_of(&[0x08, 0x80, 0x80]);
        assert!(e.reason.contains("truncated varint"), "{e}");
        assert_eq!(e.offset, 1);
        // Truncated key.
        assert!(err_of(&[0x80]).reason.contains("truncated varint"));
    }

    #[test]
    fn length_past_end() {
        // graph field claims 100 bytes, 2 present.
        let e = err_of(&[0x3a, 100, 0x0a, 0x00]);
        assert!(e.reason.contains("runs past the end"), "{e}");
        // Nested: a node inside the graph whose length exceeds the graph.
        let mut g = Vec::new();
        key(1, 2, &mut g);
        varint(50, &mut g);
        g.extend_from_slice(b"abc");
        let e = err_of(&model_with(&g));
        assert!(e.reason.contains("graph: ") && e.reason.contains("runs past the end"), "{e}");
        // A huge length that would overflow usize arithmetic.
        let mut m = Vec::new();
        key(7, 2, &mut m);
        varint(u64::MAX, &mut m);
        assert!(err_of(&m).reason.contains("runs past the end"));
    }

    #[test]
    fn wrong_wire_types() {
        // graph (field 7) as a varint.
        let e = err_of(&[0x38, 0x01]);
        assert!(e.reason.contains("ModelProto.graph has wire type varint"), "{e}");
        // dims as fixed32.
        let mut t = Vec::new();
        key(1, 5, &mut t);
        t.extend_from_slice(&[0; 4]);
        let mut g = Vec::new();
        len_field(5, &t, &mut g);
        let e = err_of(&model_with(&g));
        assert!(e.reason.contains("initializer #0") && e.reason.contains("TensorProto.dims"), "{e}");
        // Node name as a varint.
        let mut n = Vec::new();
        varint_field(3, 1, &mut n);
        let mut g = Vec::new();
        len_field(1, &n, &mut g);
        assert!(err_of(&model_with(&g)).reason.contains("NodeProto.name"));
        // Groups and invalid wire types.
        assert!(err_of(&[0x0b]).reason.contains("groups"));
        assert!(err_of(&[0x0e]).reason.contains("invalid wire type 6"));
        assert!(err_of(&[0x00]).reason.contains("invalid field number 0"));
    }

    #[test]
    fn bad_tensors() {
        let tensor_err = |t: Vec<u8>| {
            let mut g = Vec::new();
            len_field(5, &t, &mut g);
            err_of(&model_with(&g)).reason
        };
        // raw_data size disagrees with dims.
        let mut t = float_tensor_raw("w", &[2, 3], &[1.0; 5]);
        assert!(tensor_err(t.clone()).contains("raw_data holds 20 bytes"));
        // External data.
        varint_field(14, 1, &mut t);
        assert!(tensor_err(t).contains("external file"));
        let mut t = float_tensor_raw("w", &[1], &[1.0]);
        len_field(13, b"\x0a\x08location\x12\x01x", &mut t);
        assert!(tensor_err(t).contains("external file"));
        // Negative dimension.
        let mut t = Vec::new();
        varint_field(1, -3i64 as u64, &mut t);
        varint_field(2, 1, &mut t);
        assert!(tensor_err(t).contains("negative dimension"));
        // Element count overflows.
        let mut t = Vec::new();
        varint_field(1, 1 << 40, &mut t);
        varint_field(1, 1 << 40, &mut t);
        varint_field(2, 1, &mut t);
        assert!(tensor_err(t).contains("overflow"));
        // Both raw_data and float_data.
        let mut t = float_tensor_raw("w", &[1], &[1.0]);
        key(4, 5, &mut t);
        t.extend_from_slice(&[0; 4]);
        assert!(tensor_err(t).contains("both raw_data and float_data"));
        // No data at all.
        let mut t = Vec::new();
        varint_field(1, 4, &mut t);
        varint_field(2, 1, &mut t);
        assert!(tensor_err(t).contains("float_data holds 0 elements but the dims need 4"));
        // Packed float_data of a bad length.
        let mut t = Vec::new();
        varint_field(2, 1, &mut t);
        len_field(4, &[0; 5], &mut t);
        assert!(tensor_err(t).contains("not a multiple of 4"));
        // Unknown data types are listed, not decoded.
        let mut t = Vec::new();
        varint_field(1, 2, &mut t);
        varint_field(2, 10, &mut t);
        len_field(8, b"half", &mut t);
        len_field(9, &[0; 4], &mut t);
        let mut g = Vec::new();
        len_field(5, &t, &mut g);
        let m = parse_model(&model_with(&g)).unwrap();
        assert_eq!(m.graph.initializers[0].data, TensorData::NotDecoded);
        assert_eq!(m.graph.initializers[0].dims, vec![2]);
    }

    #[test]
    fn model_level_errors() {
        assert!(err_of(&[]).reason.contains("no graph"));
        assert!(err_of(b"\x12\x00").reason.contains("no graph"));
        assert!(err_of(b"\x0a\x00").reason.contains("ModelProto.ir_version has wire type length-delimited"));
        let mut m = model_with(&[]);
        len_field(7, &[], &mut m);
        assert!(err_of(&m).reason.contains("more than one graph"));
        // Invalid UTF-8 in a name.
        let mut n = Vec::new();
        len_field(3, &[0xff, 0xfe], &mut n);
        let mut g = Vec::new();
        len_field(1, &n, &mut g);
        assert!(err_of(&model_with(&g)).reason.contains("not UTF-8"));
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled_without_panic() {
        let good = sample_model();
        for len in 0..good.len() {
            let _ = parse_model(&good[..len]);
        }
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = parse_model(&bad);
            }
        }
        // Deterministic pseudo-random garbage.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(s % 64) {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                buf.push((s >> 56) as u8);
            }
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            let _ = parse_model(&buf);
        }
    }

    #[test]
    fn read_model_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.onnx");
        std::fs::write(&p, [0x3a, 100]).unwrap();
        let e = read_model(&p).unwrap_err().to_string();
        assert!(e.contains("junk.onnx") && e.contains("not a valid ONNX model"), "{e}");
        let e = read_model(&dir.path().join("missing.onnx")).unwrap_err().to_string();
        assert!(e.contains("missing.onnx"), "{e}");
    }
}
