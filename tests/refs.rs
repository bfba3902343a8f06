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

/// A reference file of little-endian f32 values (logits, dequantized blocks, inputs).
#[allow(dead_code)] // not every test binary reads one
pub fn f32_file(name: &str) -> Vec<f32> {
    std::fs::read(refs(name))
        .unwrap_or_else(|e| panic!("reference file {name}: {e}"))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
