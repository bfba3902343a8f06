//! The binary's integration tests, built as one binary: each file beside this one is a
//! module of it, so their shared code is compiled once rather than once per file. Run one
//! file's tests with `cargo test --release -p llama-gpu --test integration <file>::`.

mod common;

mod doctor;
mod gemma3;
mod generation;
mod inspect;
mod serve;
mod structured;
