//! One conversation with a model: its KV cache, the tokens already in it, and the
//! generation loop (prefill the prompt, then sample one token at a time). The cache is
//! reused for the longest common prefix of consecutive prompts, as a chat needs.

use crate::backend::Backend;
use crate::constraint::GrammarState;
use crate::error::{EngineError, Result};
use crate::model::{KvCache, Llama, Logits};
use crate::sampler::Sampler;
use crate::speculate::{
    worth_a_row, DraftTuner, Drafter, NgramSpeculation, ProposedBy, SpeculationStats,
};
use crate::text::TextStream;
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::time::Instant;

/// Tokens per forward call while reading a prompt.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// What the output must match; generation stops where the grammar ends.
    pub grammar: Option<GrammarState>,
    /// Propose tokens by n-gram lookup and check them in one pass (same output, sooner).
    pub speculation: Option<NgramSpeculation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    /// The caller asked to stop.
    Cancelled,
    /// The engine could not go on (the event says why).
    Error,
}

#[derive(Clone, Debug)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    /// Prompt tokens actually computed (a reused prefix is not counted).
    pub prompt_computed: usize,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
    pub speculation: SpeculationStats,
}

pub struct Session<'m, B: Backend> {
    model: &'m Llama<B>,
    cache: KvCache<B>,
    context: usize,
    cached: Vec<u32>,
    /// Where proposals come from when set (`set_drafter`), instead of n-gram lookup.
    drafter: Option<Box<Drafter<'m, B>>>,
    /// How many proposals to check, from what passes cost and how often proposals were
    /// kept, in this and earlier generations.
    tuner: DraftTuner,
}

impl<'m, B: Backend> Session<'m, B> {
    pub fn new(model: &'m Llama<B>, context: usize) -> Result<Session<'m, B>> {
        Ok(Session {
            cache: model.new_kv_cache(context)?,
            model,
            context,
            cached: Vec::new(),
            drafter: None,
            tuner: DraftTuner::default(),
        })
    }

    /// Speculates with a draft model from now on: every generation proposes the
    /// draft's tokens (`GenerateOptions::speculation` is not consulted).
    pub fn set_drafter(&mut self, drafter: Drafter<'m, B>) {
        self.drafter = Some(Box::new(drafter));
        self.tuner = DraftTuner::expecting_agreement();
    }

    pub fn context(&self) -> usize {
        self.context
    }

    /// The tokens whose keys and values the cache holds, in order.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the cached tokens (the memory is kept).
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Brings the cache to exactly `prompt` and returns the last position's logits.
    /// Returns how many tokens had to be computed.
    pub(crate) fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > self.context {
            return Err(EngineError::ContextOverflow {
                tokens: prompt.len(),
                context: self.context,
            });
        }
        let common = common_prefix(&self.cached, prompt);
        let mut start = common.min(prompt.len() - 1);
        if !self.cache.resumable(start) {
            // The windowed layers no longer hold what the window before it shows.
            start = 0;
        }
        self.cached.truncate(start);
        if crate::model::first_one_token_position(prompt.len()) == 0 {
            let logits = self.model.decode(prompt[0], 0, &mut self.cache)?;
            self.cached = prompt.to_vec();
            return Ok((logits, 1));
        }
        let mut logits = Vec::new();
        for chunk in prompt[start..].chunks(PREFILL_CHUNK) {
            let pos = self.cached.len();
            let last = pos + chunk.len() == prompt.len();
            let wanted = if last { Logits::Last } else { Logits::None };
            logits =
                self.model
                    .forward_prompt(chunk, pos, prompt.len(), &mut self.cache, wanted)?;
            self.cached.extend_from_slice(chunk);
        }
        Ok((logits, prompt.len() - start))
    }

    /// Generates after `prompt`, calling `on_text` with each piece of text as soon as
    /// it is complete; `on_text` returns false to stop.
    pub fn generate(
        &mut self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        sampler: &mut Sampler,
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generated> {
        let t0 = Instant::now();
        let (mut logits, prompt_computed) = self.prefill(prompt)?;
        if let Some(drafter) = &mut self.drafter {
            drafter.read_prompt(prompt)?;
        }
        let prompt_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut history = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut stream = TextStream::new(&options.stop);
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        let mut grammar = options.grammar.clone();
        // Proposed tokens already in the cache, each with the logits after it.
        let mut ahead: VecDeque<(u32, Vec<f32>)> = VecDeque::new();
        let mut speculation = SpeculationStats::default();
        let tuner = &mut self.tuner;
        // Proposals checked by the last pass (kept ones leave `ahead` one by one), where
        // they came from, and how many of them count in the proposer's acceptance (not
        // a draft's last token it was unsure of: its outcome says nothing of the others').
        let mut checked = 0;
        let mut proposed_by = ProposedBy::DraftModel;
        let mut judged = 0;
        while tokens.len() < options.max_tokens {
            if let Some(g) = &mut grammar {
                g.mask()?.apply(&mut logits);
            }
            let id = sampler.sample(&mut logits, &history, prompt.len());
            tokens.push(id);
            history.push(id);
            if !options.ignore_eos && tokenizer.is_end_of_generation(id) {
                finish = FinishReason::Stop;
                break;
            }
            let mut grammar_done = false;
            if let Some(g) = &mut grammar {
                g.consume(id)?;
                grammar_done = g.is_finished();
            }
            let piece = stream.push(tokenizer.token_bytes(id));
            text.push_str(&piece);
            if !piece.is_empty() && !on_text(&piece) {
                finish = FinishReason::Cancelled;
                break;
            }
            if stream.stopped() || grammar_done {
                finish = FinishReason::Stop;
                break;
            }
            if tokens.len() >= options.max_tokens || self.cached.len() - ahead.len() >= self.context
            {
                break;
            }
            match ahead.pop_front() {
                Some((proposed, next)) if proposed == id => {
                    speculation.accepted += 1;
                    logits = next;
                    if ahead.is_empty() {
                        tuner.outcome(proposed_by, judged, judged);
                    }
                    continue;
                }
                // The token differs from the proposal: the proposals from there on go.
                Some(_) => {
                    let kept_proposals = checked - ahead.len() - 1;
                    tuner.outcome(proposed_by, judged, kept_proposals.min(judged));
                    let kept = self.cached.len() - ahead.len() - 1;
                    self.cached.truncate(kept);
                    ahead.clear();
                }
                None => {}
            }
            let pos = self.cached.len();
            let room = (self.context - pos - 1).min(options.max_tokens - tokens.len() - 1);
            let mut proposed = match (&mut self.drafter, &options.speculation) {
                (Some(drafter), _) => {
                    let limit = room.min(drafter.max_draft);
                    let k = tuner
                        .choose_paying(limit, drafter.seconds_per_token())
                        .max(drafter.min_draft.min(limit));
                    proposed_by = ProposedBy::DraftModel;
                    let mut drafted = drafter.propose(&history, k)?;
                    judged = drafted.sure();
                    if let Some(p) = drafted.unsure {
                        if !worth_a_row(&tuner.costs, 1, drafted.tokens.len(), p.into()) {
                            drafted.tokens.pop();
                        }
                    }
                    drafted.tokens
                }
                (None, Some(spec)) => {
                    let lookup = spec.propose(&history, room);
                    proposed_by = ProposedBy::Lookup {
                        matched: lookup.matched,
                    };
                    let k = tuner.choose(&lookup);
                    let mut proposed = lookup.tokens;
                    proposed.truncate(k);
                    judged = proposed.len();
                    proposed
                }
                (None, None) => Vec::new(),
            };
            // Proposals the grammar refuses could never be kept.
            if let Some(g) = &mut grammar {
                proposed.truncate(g.valid_prefix(&proposed));
            }
            let started = Instant::now();
            if proposed.is_empty() {
                logits = self.model.decode(id, pos, &mut self.cache)?;
                self.cached.push(id);
                tuner.timed(1, started.elapsed().as_secs_f64());
                continue;
            }
            let mut batch = vec![id];
            batch.extend_from_slice(&proposed);
            let all = self.model.verify(&batch, pos, &mut self.cache)?;
            tuner.timed(batch.len(), started.elapsed().as_secs_f64());
            self.cached.extend_from_slice(&batch);
            speculation.drafted += proposed.len();
            speculation.checks += 1;
            checked = proposed.len();
            judged = judged.min(checked);
            let mut rows = all
                .chunks_exact(all.len() / batch.len())
                .map(<[f32]>::to_vec);
            logits = rows.next().expect("one row per token");
            ahead.extend(proposed.into_iter().zip(rows));
        }
        if speculation.checks > 0 {
            tracing::debug!(
                costs = ?tuner.costs,
                draft_seconds_per_token = self.drafter.as_ref().map(|d| d.seconds_per_token()),
                matches = ?tuner.matches,
                draft = ?tuner.acceptance,
                "speculation tuner after a generation"
            );
        }
        // Proposals never reached leave the cache.
        let kept = self.cached.len() - ahead.len();
        self.cached.truncate(kept);
        let tail = stream.finish();
        if !tail.is_empty() {
            on_text(&tail);
            text.push_str(&tail);
        }
        Ok(Generated {
            tokens,
            text,
            finish,
            prompt_computed,
            prompt_seconds,
            generation_seconds: t1.elapsed().as_secs_f64(),
            speculation,
        })
    }

    /// One forward pass of prompt `tokens` at `pos` (benchmarks: no sampling, no
    /// bookkeeping beyond the cached tokens).
    pub fn forward_at(&mut self, tokens: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        self.check_room(pos + tokens.len())?;
        self.cached.truncate(pos);
        let out = self.model.forward(tokens, pos, &mut self.cache, logits)?;
        self.cached.extend_from_slice(tokens);
        Ok(out)
    }

    /// Whether `forward_at` and `decode_at` can start at `pos` from what the cache holds:
    /// the tokens before it, and for a model with windowed layers, the window before it
    /// (a ring keeps a limited way back, `window_ring`).
    pub fn resumable(&self, pos: usize) -> bool {
        pos <= self.cached.len() && self.cache.resumable(pos)
    }

    /// One generated `token` at `pos` (benchmarks, as `forward_at`).
    pub fn decode_at(&mut self, token: u32, pos: usize) -> Result<Vec<f32>> {
        self.check_room(pos + 1)?;
        self.cached.truncate(pos);
        let out = self.model.decode(token, pos, &mut self.cache)?;
        self.cached.push(token);
        Ok(out)
    }

    fn check_room(&self, tokens: usize) -> Result<()> {
        if tokens > self.context {
            return Err(EngineError::ContextOverflow {
                tokens,
                context: self.context,
            });
        }
        Ok(())
    }

    /// How likely each token of `tokens` is given those before it, for the tokens after
    /// position `first` (perplexity scores the second half of each window; a harness
    /// scores a continuation after its context).
    pub fn score(&mut self, tokens: &[u32], first: usize) -> Result<Vec<TokenScore>> {
        if tokens.len() > self.context {
            return Err(EngineError::ContextOverflow {
                tokens: tokens.len(),
                context: self.context,
            });
        }
        self.cached.clear();
        let vocab = self.model.logit_width();
        let mut out = Vec::new();
        for (c, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let pos = c * PREFILL_CHUNK;
            let from = first.saturating_sub(pos).min(chunk.len());
            let logits = self.model.forward_prompt(
                chunk,
                pos,
                tokens.len(),
                &mut self.cache,
                Logits::From(from),
            )?;
            self.cached.extend_from_slice(chunk);
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                let next = pos + from + i + 1;
                if next < tokens.len() {
                    out.push(TokenScore::of(row, tokens[next] as usize));
                }
            }
        }
        Ok(out)
    }
}

/// One scored token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenScore {
    /// Its log-probability.
    pub logprob: f64,
    /// It is the most likely token there (what greedy decoding would pick).
    pub is_greedy: bool,
}

impl TokenScore {
    fn of(logits: &[f32], index: usize) -> TokenScore {
        let logprob = logits[index] as f64 - crate::sampler::log_sum_exp(logits);
        let is_greedy = logits.iter().all(|&l| l <= logits[index]);
        TokenScore { logprob, is_greedy }
    }
}

/// How many leading tokens `a` and `b` share (what a cache holding `a` keeps of `b`).
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
