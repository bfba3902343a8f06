//! Engine errors.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Quant(#[from] quant::QuantError),
    #[error("architecture {0:?} is not supported (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, smollm3)")]
    UnsupportedArchitecture(String),
    #[error("model is missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt of {tokens} tokens does not fit in the context of {context} tokens")]
    ContextOverflow { tokens: usize, context: usize },
    #[error("cannot resume at position {position}: the windowed layers' KV cache keeps the last {kept} positions, and the window before it has been overwritten since")]
    WindowGone { position: usize, kept: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    #[error("cannot allocate {bytes} bytes for the {what}")]
    OutOfMemory { what: &'static str, bytes: usize },
    #[error("prompt of {tokens} tokens can never fit in the KV cache of {capacity} tokens")]
    KvBudget { tokens: usize, capacity: usize },
    #[error("the engine is overloaded: {waiting} requests are already waiting (limit {limit})")]
    Overloaded { waiting: usize, limit: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the engine has stopped")]
    Stopped,
    #[error("CUDA: {0}")]
    Cuda(#[from] cuda::CudaError),
    #[error("tensor {name:?}: {reason}")]
    UnsupportedTensor { name: String, reason: String },
    #[error("constraint: {0}")]
    Constraint(String),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
