//! Helpers shared by the binary's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

pub mod server;

#[path = "../../../../tests/refs.rs"]
mod refs_dir;
#[allow(unused_imports)] // not every test binary reads reference data
pub use refs_dir::refs;

/// The model store the tests share: `$LLAMA_GPU_HOME` when set, else one under
/// `target/`, so the default model is pulled once per checkout.
pub fn store_home() -> PathBuf {
    match std::env::var_os("LLAMA_GPU_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-home"),
    }
}

pub fn llama_gpu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama-gpu"))
        .args(args)
        .env("LLAMA_GPU_HOME", store_home())
        .output()
        .expect("cannot start llama-gpu")
}

/// Runs llama-gpu with `input` on its standard input.
pub fn llama_gpu_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama-gpu"))
        .args(args)
        .env("LLAMA_GPU_HOME", store_home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start llama-gpu");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("writing stdin");
    child.wait_with_output().expect("waiting for llama-gpu")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
