//! Store errors.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("neither LLAMA_GPU_HOME nor HOME is set: cannot locate the model store")]
    NoHome,
    #[error("model {model:?} is not a file, a model in the store, or a known model name (see `llama-gpu models list`)")]
    NotFound { model: String },
    #[error("digest prefix {prefix:?} matches {count} models: give more characters")]
    Ambiguous { prefix: String, count: usize },
    #[error("SHA-256 of {what} is {actual}, expected {expected}: not installed")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("bad model source {spec:?}: {reason}")]
    BadSource { spec: String, reason: String },
    #[error("bad model name {name:?}: use letters, digits, '.', '-' and '_'")]
    BadName { name: String },
    #[error("{0}")]
    Pip(String),
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("corrupt manifest {path}: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("not a usable GGUF file: {0}")]
    Gguf(#[from] gguf::GgufError),
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
