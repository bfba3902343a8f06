//! Writing GGUF v3 files: metadata in insertion order, tensors aligned.

use crate::error::{GgufError, Result};
use crate::metadata::Metadata;
use crate::reader::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::types::GgmlType;
use crate::value::Value;
use std::io::Write;
use std::path::Path;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory and writes it out.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        self.metadata.insert(key, value);
        self
    }

    /// Adds a tensor; `dims` is innermost first and `data` must be exactly its encoded size.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(GgufError::Write(format!(
                "tensor {name:?} has {} dimensions, expected 1..={MAX_DIMS}",
                dims.len()
            )));
        }
        let expected = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|_| dims[0].is_multiple_of(ty.block_size() as u64))
            .and_then(|n| ty.bytes_for(n));
        if expected != Some(data.len() as u64) {
            return Err(GgufError::Write(format!(
                "tensor {name:?} {dims:?} of type {ty} needs {expected:?} bytes, got {}",
                data.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::Write(format!("tensor {name:?} added twice")));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .get("general.alignment")
            .and_then(|v| v.as_i128())
            .map(|a| a as u64)
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to memory cannot fail");
        out
    }

    /// Everything before the tensor data: header, metadata, tensor infos, padding.
    fn header(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in self.metadata.iter() {
            put_string(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }
        if !self.tensors.is_empty() {
            pad_to(&mut out, alignment);
        }
        out
    }

    /// Streams the file: the tensor data is written as it is, never copied.
    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        let alignment = self.alignment() as usize;
        w.write_all(&self.header())?;
        let zeros = vec![0u8; alignment];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            w.write_all(&zeros[..t.data.len().next_multiple_of(alignment) - t.data.len()])?;
        }
        Ok(())
    }

    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        self.write_to(&mut file).map_err(io)?;
        file.flush().map_err(io)
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(len, 0);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => {
            out.extend_from_slice(&(a.element_type as u32).to_le_bytes());
            out.extend_from_slice(&(a.values.len() as u64).to_le_bytes());
            for v in &a.values {
                put_value(out, v);
            }
        }
    }
}
