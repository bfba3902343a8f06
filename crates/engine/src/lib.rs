//! LLaMA-family inference: model configuration, the `Backend` trait and its CPU and
//! CUDA implementations, the model graph (`Llama`), tokenizer, chat templates, sampler, and the
//! serving engine (continuous batching over a paged KV cache).

pub mod backend;
pub mod chat;
pub mod config;
pub mod constraint;
pub mod cpu;
mod cpu_attention;
mod cpu_kv;
pub mod cuda;
pub mod device;
pub mod error;
pub mod gbnf;
pub mod kv_groups;
pub mod model;
pub mod pretokenizer;
pub mod prompt;
pub mod requantize;
pub mod sampler;
pub mod serving;
pub mod session;
pub mod speculate;
pub mod synthetic;
pub mod text;
pub mod tokenizer;
pub mod tools;
pub mod window_ring;

pub use backend::{AttentionOrder, Backend, KvCacheType, KvShape, KvTypes};
pub use chat::{ChatTemplate, Message};
pub use config::{Config, RopeOverrides, RopeScalingKind};
pub use constraint::{Constraint, GrammarState, Grammars};
pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
pub use device::{Device, DeviceChoice};
pub use error::{EngineError, Result};
pub use model::{Llama, Logits};
pub use prompt::ContentTokens;
pub use sampler::{Sampler, SamplingParams};
pub use serving::{Engine, EngineConfig, Event, KvBudget, Request, RequestStream, Usage};
pub use session::{FinishReason, GenerateOptions, Generated, Session, TokenScore};
pub use speculate::{Drafter, NgramSpeculation, SpeculationStats};
pub use text::TextStream;
pub use tokenizer::Tokenizer;
