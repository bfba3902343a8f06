//! Parsing GGUF v2/v3 from bytes. Every count and length read from the file is
//! checked against the bytes left before anything is allocated for it.

use crate::error::{GgufError, Result};
use crate::metadata::Metadata;
use crate::types::GgmlType;
use crate::value::{Array, Value, ValueType};

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are rejected (no real file nests at all).
const MAX_ARRAY_DEPTH: u32 = 8;

/// Description of one tensor. `offset` is relative to the start of the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (row length) first, as GGML stores them.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
    /// Bytes of data, derived from `dims` and `ty`.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Length of one row (the innermost dimension).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of the outer dimensions).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// The parsed header of a GGUF file: everything but the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct Gguf {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// File offset where the data section begins.
    pub data_offset: u64,
}

impl Gguf {
    /// Parses and validates a whole GGUF file held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Gguf> {
        let mut r = Cursor { bytes, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                found: [magic[0], magic[1], magic[2], magic[3]],
            });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = r.count("tensor_count", 8 + 4 + 8 + 4 + 8)?;
        let kv_count = r.count("metadata_kv_count", 8 + 4 + 1)?;

        let mut metadata = Metadata::default();
        for i in 0..kv_count {
            let at = r.pos;
            let key = r.string(&format!("metadata key #{i}"))?;
            let field = format!("metadata value {key:?}");
            let ty = r.value_type(&field)?;
            let value = r.value(ty, &field, 0)?;
            if !metadata.insert(key.clone(), value) {
                return Err(GgufError::DuplicateKey { offset: at, key });
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i128() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= u32::MAX as i128 => {
                    a as u64
                }
                _ => {
                    return Err(GgufError::BadAlignment {
                        alignment: v.as_i128().unwrap_or(0).max(0) as u64,
                    })
                }
            },
        };

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..tensor_count {
            let info = r.tensor_info(i, alignment)?;
            if !names.insert(info.name.clone()) {
                return Err(GgufError::DuplicateTensor { name: info.name });
            }
            tensors.push(info);
        }

        let data_offset = r.pos.next_multiple_of(alignment);
        if !tensors.is_empty() && data_offset > bytes.len() as u64 {
            return Err(GgufError::Truncated {
                offset: r.pos,
                field: "padding before the data section".into(),
                needed: data_offset - r.pos,
                available: r.remaining(),
            });
        }
        let data_len = (bytes.len() as u64).saturating_sub(data_offset);
        check_tensor_ranges(&tensors, alignment, data_offset, data_len)?;
        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Metadata `general.architecture`, the key prefix of the model's hyperparameters.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.get_str("general.architecture")
    }
}

/// Every tensor must lie inside the data section, padded to the alignment as GGML
/// writes it, and no two may share bytes.
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
    data_len: u64,
) -> Result<()> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for t in &by_offset {
        let end = t
            .offset
            .checked_add(t.size)
            .and_then(|e| e.checked_next_multiple_of(alignment))
            .unwrap_or(u64::MAX);
        if end > data_len {
            return Err(GgufError::TensorOutOfRange {
                tensor: t.name.clone(),
                start: t.offset,
                end,
                data_len,
                data_offset,
            });
        }
    }
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.size > 0 && b.size > 0 && a.offset + a.size > b.offset {
            return Err(GgufError::TensorsOverlap {
                first: a.name.clone(),
                second: b.name.clone(),
                at: b.offset,
            });
        }
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.bytes.len() as u64 - self.pos
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos,
                field: field.into(),
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos as usize;
        self.pos += n;
        Ok(&self.bytes[start..start + n as usize])
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A u64 count of items that each need at least `min_item_bytes`; rejected if
    /// the rest of the file could not hold that many.
    fn count(&mut self, field: &str, min_item_bytes: u64) -> Result<u64> {
        let at = self.pos;
        let count = self.u64(field)?;
        let available = self.remaining();
        if count > available / min_item_bytes.max(1) {
            return Err(GgufError::ImplausibleCount {
                offset: at,
                field: field.into(),
                count,
                available,
            });
        }
        Ok(count)
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(&format!("{field} (length)"))?;
        let at = self.pos;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            offset: at,
            field: field.into(),
        })
    }

    fn value_type(&mut self, field: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(&format!("{field} (type)"))?;
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            offset: at,
            field: field.into(),
            type_id: id,
        })
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(field)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(field)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(field)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(field)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(field)?[0] != 0),
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::UnknownValueType {
                        offset: at,
                        field: format!("{field} (arrays nested deeper than {MAX_ARRAY_DEPTH})"),
                        type_id: ValueType::Array as u32,
                    });
                }
                let element_type = self.value_type(&format!("{field} (element type)"))?;
                let n = self.count(
                    &format!("{field} (array length)"),
                    element_type.min_encoded_size(),
                )?;
                let mut values = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    values.push(self.value(element_type, field, depth + 1)?);
                }
                Value::Array(Array {
                    element_type,
                    values,
                })
            }
        })
    }

    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<TensorInfo> {
        let at = self.pos;
        let name = self.string(&format!("tensor #{index} name"))?;
        let bad = |reason: String| GgufError::BadTensorInfo {
            offset: at,
            tensor: name.clone(),
            reason,
        };
        let n_dims = self.u32(&format!("tensor {name:?} n_dims"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(format!("n_dims is {n_dims}, expected 1..={MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let dim = self.u64(&format!("tensor {name:?} dim {d}"))?;
            n_elements = n_elements
                .checked_mul(dim)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    bad(format!(
                        "dimension {d} = {dim} makes the element count overflow"
                    ))
                })?;
            dims.push(dim);
        }
        let type_at = self.pos;
        let type_id = self.u32(&format!("tensor {name:?} type"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            offset: type_at,
            tensor: name.clone(),
            type_id,
        })?;
        if !dims[0].is_multiple_of(ty.block_size() as u64) {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {}",
                dims[0],
                ty,
                ty.block_size()
            )));
        }
        let size = ty
            .bytes_for(n_elements)
            .ok_or_else(|| bad("data size overflows".into()))?;
        let offset = self.u64(&format!("tensor {name:?} offset"))?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        })
    }
}
