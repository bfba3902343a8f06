//! The engine's integration tests, built as one binary: each file beside this one is a
//! module of it, so the engine's generic code is compiled once for all of them rather than
//! once per file (that was most of CI's build time). Run one file's tests with
//! `cargo test --release -p engine --test integration <file>::`.

mod common;

mod attention_split;
mod batch_invariance;
mod chat_prompt;
mod constraint;
mod cuda;
mod family_logits;
mod gemma3;
mod greedy;
mod kquant_logits;
mod kv_cache_types;
mod logits;
mod pretokenizers;
mod rope_scaling;
mod serving;
mod speculation;
mod synthetic;
mod tokenizer;
mod tool_calls;
