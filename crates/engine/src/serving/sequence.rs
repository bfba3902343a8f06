//! One sample being generated: its tokens, how many of them are in the KV cache, the
//! blocks holding them, and the sampling state that turns logits into the next token.

use super::draft::DraftCache;
use super::request::{Event, PromptLogprob, Request, Usage};
use crate::backend::KV_BLOCK_SIZE;
use crate::constraint::{GrammarState, TokenMask};
use crate::sampler::Sampler;
use crate::session::FinishReason;
use crate::speculate::Acceptance;
use crate::text::TextStream;
use crate::tokenizer::Tokenizer;
use crate::Result;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Clone)]
pub(super) struct Sequence {
    /// Which sample of its request (`Event` index).
    pub index: usize,
    /// Order of (last) admission: the newest is preempted first.
    pub admitted: u64,
    /// The prompt, then every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose keys and values are in the cache.
    pub computed: usize,
    /// Block table: `blocks[i]` holds positions `i * KV_BLOCK_SIZE..`.
    pub blocks: Vec<u32>,
    /// The same into the windowed layers' pool, if the model has one; blocks the window
    /// has left behind are given back (`kv_tables::GIVEN_BACK`).
    pub window_blocks: Vec<u32>,
    /// Chained prefix hashes of the leading full blocks already offered to the cache.
    pub hashes: Vec<u64>,
    /// Samples still to split off this one once the prompt is read (`n - 1`, then 0).
    pub forks: usize,
    /// Still counted in the engine's waiting-queue limit (never admitted yet).
    pub in_queue_limit: bool,
    pub cached_prompt_tokens: usize,
    pub submitted: Instant,
    pub last_token: Option<Instant>,
    sampler: Sampler,
    text: TextStream,
    max_tokens: usize,
    ignore_eos: bool,
    logprobs: Option<usize>,
    /// Where the sample is in its request's grammar, if it has one.
    pub grammar: Option<GrammarState>,
    /// The grammar waits for this token before it applies.
    pub grammar_from: Option<u32>,
    /// The grammar's mask for the next token, computed while the model ran.
    pub mask: Option<TokenMask>,
    /// The pending token and the proposals after it, while a step checks proposals
    /// (speculative decoding; empty otherwise).
    pub check: Vec<u32>,
    /// How often the draft model's proposals for this sample were kept.
    pub acceptance: Acceptance,
    /// How many last tokens the n-gram lookup that proposed `check`'s proposals matched.
    pub check_matched: usize,
    /// How many of `check`'s proposals count in `acceptance` (not the draft's last token
    /// where it was unsure of it).
    pub check_sure: usize,
    /// The draft model's cache of this sample's text (serving with a draft model).
    pub draft: DraftCache,
    /// Why the sample ended with `FinishReason::Error`.
    pub failure: Option<String>,
    /// Alternatives per prompt token while its log-probabilities are being collected
    /// (`None` once they are sent, or when not asked for).
    pub prompt_logprobs: Option<usize>,
    prompt_entries: Vec<PromptLogprob>,
    events: UnboundedSender<Event>,
}

impl Sequence {
    pub fn new(request: Request, events: UnboundedSender<Event>) -> Result<Sequence> {
        Ok(Sequence {
            index: 0,
            admitted: 0,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            computed: 0,
            blocks: Vec::new(),
            window_blocks: Vec::new(),
            hashes: Vec::new(),
            forks: request.n.saturating_sub(1),
            in_queue_limit: true,
            cached_prompt_tokens: 0,
            submitted: Instant::now(),
            last_token: None,
            sampler: Sampler::new(request.sampling)?,
            text: TextStream::new(&request.stop),
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            logprobs: request.logprobs,
            grammar: request.constraint,
            grammar_from: request.constraint_from,
            mask: None,
            check: Vec::new(),
            acceptance: Acceptance::default(),
            check_matched: 0,
            check_sure: 0,
            draft: DraftCache::default(),
            failure: None,
            prompt_logprobs: request.prompt_logprobs,
            prompt_entries: Vec::new(),
            events,
        })
    }

    /// Sample `index` of the same request, at the same point (sharing the blocks is
    /// the caller's business).
    pub fn fork(&self, index: usize) -> Sequence {
        let mut s = self.clone();
        s.index = index;
        s.forks = 0;
        // Draft blocks are not shared: the fork reads its text into the draft anew.
        s.draft = DraftCache::default();
        s.sampler
            .reseed(self.sampler.params.seed.wrapping_add(index as u64));
        s
    }

    /// Tokens known but not yet in the cache.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// The most proposals worth checking after the pending token: with every one kept,
    /// the sample still ends within `max_tokens` and `context`.
    pub fn room_to_check(&self, context: usize) -> usize {
        let to_generate = self.max_tokens.saturating_sub(self.generated());
        to_generate
            .min(context.saturating_sub(self.tokens.len()))
            .saturating_sub(1)
    }

    /// The client has gone (its stream was dropped).
    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// Blocks needed to hold the first `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(KV_BLOCK_SIZE)
    }

    /// Chooses the next token from the logits of the last one (masked by the grammar),
    /// reports it and any tokens the grammar then forces, and says whether the sample
    /// is finished.
    /// Books the logits of prompt positions `start..start + rows.len() / vocab`: each
    /// row scores the token after its position. Sends them all once the prompt is read.
    pub fn score_prompt(&mut self, start: usize, rows: &[f32], vocab: usize) {
        let Some(k) = self.prompt_logprobs else {
            return;
        };
        if self.prompt_entries.is_empty() && start == 0 {
            self.prompt_entries.push(PromptLogprob {
                id: self.tokens[0],
                logprob: None,
                top_logprobs: Vec::new(),
            });
        }
        for (i, row) in rows.chunks_exact(vocab).enumerate() {
            let next = start + i + 1;
            if next >= self.prompt_len || next != self.prompt_entries.len() {
                continue;
            }
            let (table, top) = log_softmax_top(row, k);
            let id = self.tokens[next];
            self.prompt_entries.push(PromptLogprob {
                id,
                logprob: Some(table.at(id)),
                top_logprobs: top,
            });
        }
        if self.prompt_entries.len() == self.prompt_len {
            self.prompt_logprobs = None;
            let logprobs = std::mem::take(&mut self.prompt_entries);
            if self.index == 0 {
                self.send(Event::Prompt { logprobs });
            }
        }
    }

    /// Whether the next token is sampled under a grammar.
    pub fn is_constrained(&self) -> bool {
        self.grammar.is_some() && self.grammar_from.is_none()
    }

    pub fn accept(
        &mut self,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        max_context: usize,
    ) -> Option<FinishReason> {
        let probabilities = self.logprobs.map(|k| log_softmax_top(logits, k));
        if let (Some(grammar), None) = (&mut self.grammar, self.grammar_from) {
            match self.mask.take().map_or_else(|| grammar.mask(), Ok) {
                Ok(mask) => mask.apply(logits),
                Err(e) => return self.fail(e.to_string()),
            }
        }
        let id = self.sampler.sample(logits, &self.tokens, self.prompt_len);
        let (logprob, top_logprobs) = match probabilities {
            Some((table, top)) => (Some(table.at(id)), top),
            None => (None, Vec::new()),
        };
        if let Some(finish) = self.push(id, logprob, top_logprobs, tokenizer, max_context) {
            return Some(finish);
        }
        // Tokens the grammar forces skip sampling, unless their log-probabilities
        // were asked for (only the model can give those).
        let forced = match (&mut self.grammar, self.grammar_from, self.logprobs) {
            (Some(grammar), None, None) => grammar.forced(),
            _ => Vec::new(),
        };
        for id in forced {
            if let Some(finish) = self.push(id, None, Vec::new(), tokenizer, max_context) {
                return Some(finish);
            }
        }
        None
    }

    /// Appends a chosen token, follows it in the grammar and reports it.
    fn push(
        &mut self,
        id: u32,
        logprob: Option<f32>,
        top_logprobs: Vec<(u32, f32)>,
        tokenizer: &Tokenizer,
        max_context: usize,
    ) -> Option<FinishReason> {
        self.tokens.push(id);
        if !self.ignore_eos && tokenizer.is_end_of_generation(id) {
            return Some(FinishReason::Stop);
        }
        if self.grammar_from == Some(id) {
            self.grammar_from = None;
        }
        let mut grammar_done = false;
        if let (Some(grammar), None) = (&mut self.grammar, self.grammar_from) {
            if let Err(e) = grammar.consume(id) {
                return self.fail(e.to_string());
            }
            grammar_done = grammar.is_finished();
        }
        let mut text = self.text.push(tokenizer.token_bytes(id));
        let finish = if self.text.stopped() {
            Some(FinishReason::Stop)
        } else if grammar_done {
            text.push_str(&self.text.finish());
            Some(FinishReason::Stop)
        } else if self.generated() >= self.max_tokens || self.tokens.len() >= max_context {
            text.push_str(&self.text.finish());
            Some(FinishReason::Length)
        } else {
            None
        };
        self.send(Event::Token {
            index: self.index,
            id,
            text,
            logprob,
            top_logprobs,
        });
        finish
    }

    fn fail(&mut self, why: String) -> Option<FinishReason> {
        self.failure = Some(why);
        Some(FinishReason::Error)
    }

    pub fn finish(&mut self, reason: FinishReason, error: Option<String>) {
        let usage = Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_prompt_tokens: self.cached_prompt_tokens,
        };
        self.send(Event::Finished {
            index: self.index,
            reason,
            usage,
            error,
        });
    }

    fn send(&self, event: Event) {
        // A closed channel means the client left; the next step cancels the sequence.
        let _ = self.events.send(event);
    }
}

/// Log-probabilities of a logit row: `at(id)` for any token.
struct LogSoftmax {
    logits: Vec<f32>,
    log_sum: f64,
}

impl LogSoftmax {
    fn at(&self, id: u32) -> f32 {
        (self.logits[id as usize] as f64 - self.log_sum) as f32
    }
}

/// The model's log-probabilities (before any sampling parameter) and the `k` most
/// likely tokens with theirs.
fn log_softmax_top(logits: &[f32], k: usize) -> (LogSoftmax, Vec<(u32, f32)>) {
    let table = LogSoftmax {
        logits: logits.to_vec(),
        log_sum: crate::sampler::log_sum_exp(logits),
    };
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
    }
    order.truncate(k);
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    let top = order.into_iter().map(|id| (id, table.at(id))).collect();
    (table, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_top_orders_and_normalises() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let (table, top) = log_softmax_top(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2]);
        let total: f64 = (0..4).map(|i| (table.at(i) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((top[0].1 - top[1].1).abs() < 1e-7);
    }
}
