//! Typed errors. Every parse error names the byte offset and the field it was reading.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic at offset 0 is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    #[error("file truncated at offset {offset} while reading {field}: need {needed} bytes, {available} left")]
    Truncated {
        offset: u64,
        field: String,
        needed: u64,
        available: u64,
    },
    #[error(
        "{field} at offset {offset} is {count}, which cannot fit in the {available} bytes left"
    )]
    ImplausibleCount {
        offset: u64,
        field: String,
        count: u64,
        available: u64,
    },
    #[error("{field} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64, field: String },
    #[error("{field} at offset {offset} has unknown value type id {type_id}")]
    UnknownValueType {
        offset: u64,
        field: String,
        type_id: u32,
    },
    #[error("metadata key {key:?} appears twice (second at offset {offset})")]
    DuplicateKey { offset: u64, key: String },
    #[error("tensor {tensor:?} at offset {offset} has unknown tensor type id {type_id}")]
    UnknownTensorType {
        offset: u64,
        tensor: String,
        type_id: u32,
    },
    #[error("tensor {tensor:?} at offset {offset}: {reason}")]
    BadTensorInfo {
        offset: u64,
        tensor: String,
        reason: String,
    },
    #[error("general.alignment is {alignment}: it must be a non-zero power of two")]
    BadAlignment { alignment: u64 },
    #[error("tensor {tensor:?} data [{start}, {end}) lies outside the data section of {data_len} bytes (file offset {data_offset})")]
    TensorOutOfRange {
        tensor: String,
        start: u64,
        end: u64,
        data_len: u64,
        data_offset: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section (at data offset {at})")]
    TensorsOverlap {
        first: String,
        second: String,
        at: u64,
    },
    #[error("tensor name {name:?} appears twice")]
    DuplicateTensor { name: String },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("tensor {name:?} is not in the file")]
    MissingTensor { name: String },
    #[error("cannot write GGUF: {0}")]
    Write(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
