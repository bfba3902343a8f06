//! LLaMA-family inference: model configuration, the `Backend` trait and its CPU
//! implementation, the model graph (`Llama`), tokenizer, chat templates and sampler.

pub mod config;
pub mod error;
pub mod tokenizer;

pub use config::Config;
pub use error::{EngineError, Result};
pub use tokenizer::Tokenizer;
