//! What a client submits to the engine and the events it gets back.

use crate::constraint::GrammarState;
use crate::sampler::SamplingParams;
use crate::session::FinishReason;

#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate per sample.
    pub max_tokens: usize,
    /// Generation ends before the first of these strings; it is not part of the text.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Independent samples of the same prompt (they share its KV blocks). Sample `i`
    /// uses the seed `sampling.seed + i`.
    pub n: usize,
    /// Report each token's log-probability and this many alternatives (`None`: neither).
    pub logprobs: Option<usize>,
    /// Report the prompt's tokens' log-probabilities too (with this many alternatives),
    /// in one `Event::Prompt` before the first generated token. The prompt is then
    /// computed afresh, not taken from the prefix cache.
    pub prompt_logprobs: Option<usize>,
    /// What the output must match (`Engine::grammars().compile(...)`).
    pub constraint: Option<GrammarState>,
    /// With a constraint: it applies only from this token on (included), once the
    /// model samples it (a tool call's first token, under `tool_choice: auto`).
    pub constraint_from: Option<u32>,
}

impl Request {
    /// One greedy completion of `prompt` of up to `max_tokens` tokens.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
        Request {
            prompt,
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop: Vec::new(),
            ignore_eos: false,
            n: 1,
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
            constraint_from: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: usize,
}

/// A prompt token's log-probability given the tokens before it (`None` for the first),
/// and the most likely alternatives there.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprob {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The prompt's log-probabilities (`Request::prompt_logprobs`), for sample 0 only.
    Prompt { logprobs: Vec<PromptLogprob> },
    /// A generated token of sample `index`; `text` is what became printable with it
    /// (it can be empty while a multi-byte character or a possible stop string is
    /// incomplete). End-of-generation tokens are not reported.
    Token {
        index: usize,
        id: u32,
        text: String,
        /// Natural log of the token's probability under the model (before sampling
        /// parameters), when asked.
        logprob: Option<f32>,
        /// The most likely tokens and their log-probabilities, most likely first.
        top_logprobs: Vec<(u32, f32)>,
    },
    /// Sample `index` ended. `error` says why when `reason` is `Error`.
    Finished {
        index: usize,
        reason: FinishReason,
        usage: Usage,
        error: Option<String>,
    },
}
