//! The GGUF model file format: a validating reader over a memory map with zero-copy
//! tensor views, typed metadata access, and a writer. No math lives here.

mod error;
mod file;
mod metadata;
mod reader;
mod types;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use file::{GgufFile, TensorView};
pub use metadata::Metadata;
pub use reader::{Gguf, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

/// Builds an array value from strings (tokenizer vocabularies and the like).
pub fn string_array<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(Array {
        element_type: ValueType::String,
        values: items
            .into_iter()
            .map(|s| Value::String(s.as_ref().to_owned()))
            .collect(),
    })
}
