//! Where the integration tests of every crate find llama.cpp's reference outputs
//! (included by each crate's `tests/common` through `#[path]`).

use std::path::PathBuf;

/// A file of the repository's `tests/data/refs/` (see its README); `LLAMA_GPU_TEST_REFS`
/// names another folder holding the same files, e.g. on a machine that has only binaries.
pub fn refs(name: &str) -> PathBuf {
    match std::env::var_os("LLAMA_GPU_TEST_REFS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/refs"),
    }
    .join(name)
}
