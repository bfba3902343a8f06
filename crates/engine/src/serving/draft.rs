//! A draft model in the serving engine (speculative decoding): a second, smaller model
//! with the target's vocabulary, with a KV pool of its own and a block table per
//! sequence. In a step where the sequences decode, the draft first catches up with the
//! text of each sequence it drafts for (what the target kept since the last proposals;
//! the whole prompt the first time), then decodes ahead greedily, every drafting
//! sequence in one batched pass per drafted position. Its numbers only decide what is
//! proposed: the target checks every proposal, so the tokens are those of plain
//! decoding whatever the draft computes. The draft's cache has no prefix sharing: a
//! sequence's draft blocks are its own, and a sequence that loses them (the draft pool
//! ran out, or it was preempted) reads its text again when it next drafts.

use super::blocks::BlockManager;
use super::sequence::Sequence;
use crate::backend::Backend;
use crate::error::{EngineError, Result};
use crate::kv_groups::KvPools;
use crate::model::{first_one_token_position, Llama, Logits, SeqBatch};
use crate::sampler::argmax;
use crate::session::common_prefix;
use crate::speculate::{check_draft_vocabulary, decayed_average, probability, Drafted, PassCosts};
use std::collections::VecDeque;
use std::time::Instant;

/// The draft model and how it drafts (the flags of `run --spec draft`).
pub struct DraftModel<B: Backend> {
    pub model: Llama<B>,
    /// Most tokens proposed at once.
    pub max_draft: usize,
    /// Fewest tokens drafted for a sequence each round, whatever the measured costs say
    /// (llama.cpp's `--draft-min`).
    pub min_draft: usize,
    /// Drafting stops at the first token (past `min_draft` tokens) less likely than this
    /// under the draft (llama.cpp's `--draft-p-min`); that token is still proposed, and
    /// checked where its row pays (`speculate::worth_a_row`).
    pub min_confidence: f32,
}

/// One sequence's part of the draft's cache: the tokens whose keys and values it holds,
/// in order from position 0, and the blocks holding them.
#[derive(Clone, Debug, Default)]
pub(super) struct DraftCache {
    tokens: Vec<u32>,
    blocks: Vec<u32>,
}

pub(super) struct Drafting<B: Backend> {
    draft: DraftModel<B>,
    pools: KvPools<B::KvPool>,
    blocks: BlockManager,
    /// What a draft pass of so many rows costs, measured as it drafts.
    costs: PassCosts,
    /// Seconds per token of reading text (prompts) into the draft's cache (decayed
    /// average; 0: not measured yet).
    read_seconds_per_token: f64,
    /// Whether the draft has run a pass yet. The first pays for first touches (before
    /// the pools were committed at start, a 64-token prompt read in 626 ms, the next 29
    /// tokens in 42 ms), and counted, it set the reading cost so high that no prompt was
    /// read again, so its time is not counted.
    warm: bool,
    /// How long the latest answers were, to tell what reading a prompt may save.
    lengths: AnswerLengths,
    /// Tokens run through the draft (text read and tokens drafted), and the seconds its
    /// passes took: what drafting cost the server (`/metrics`).
    ran_tokens: u64,
    ran_seconds: f64,
}

impl<B: Backend> Drafting<B> {
    /// The draft with a pool of `blocks` blocks (those of a windowed model's windowed
    /// layers too: the draft keeps them whole rather than giving them back).
    pub fn new(draft: DraftModel<B>, target_vocab: usize, blocks: usize) -> Result<Self> {
        check_draft_vocabulary(draft.model.config.vocab_size, target_vocab)?;
        if draft.max_draft == 0 {
            return Err(EngineError::Config(
                "a draft model must propose at least one token at once".into(),
            ));
        }
        let windowed = match draft.model.kv_layout.is_split() {
            true => blocks,
            false => 0,
        };
        let mut pools = draft.model.new_kv_pools(blocks, windowed)?;
        draft.model.commit_kv_pools(&mut pools);
        let (block_bytes, window_block_bytes) = draft.model.kv_block_bytes();
        tracing::info!(
            blocks,
            mib = (blocks * block_bytes + windowed * window_block_bytes) >> 20,
            "draft model's KV cache"
        );
        Ok(Drafting {
            draft,
            pools,
            blocks: BlockManager::new(blocks, false),
            costs: PassCosts::default(),
            read_seconds_per_token: 0.0,
            warm: false,
            lengths: AnswerLengths::default(),
            ran_tokens: 0,
            ran_seconds: 0.0,
        })
    }

    pub fn max_draft(&self) -> usize {
        self.draft.max_draft
    }

    pub fn min_draft(&self) -> usize {
        self.draft.min_draft
    }

    /// What the draft's passes cost so far (rows: the sequences drafting in them).
    pub fn costs(&self) -> &PassCosts {
        &self.costs
    }

    /// Tokens of `s` the draft has yet to read before it can draft for it.
    pub fn unread(&self, s: &Sequence) -> usize {
        s.tokens.len() - common_prefix(&s.draft.tokens, &s.tokens)
    }

    /// What reading `tokens` tokens of text costs, as measured (`None` before any
    /// reading was timed).
    pub fn reading_seconds(&self, tokens: usize) -> Option<f64> {
        (self.read_seconds_per_token > 0.0).then_some(tokens as f64 * self.read_seconds_per_token)
    }

    /// A sequence ended after generating `generated` tokens.
    pub fn answered(&mut self, generated: usize) {
        self.lengths.record(generated);
    }

    /// How many more tokens `s` is expected to generate, at most `room`.
    pub fn expected_remaining(&self, s: &Sequence, room: usize) -> f64 {
        self.lengths.expected_remaining(s.generated(), room)
    }

    /// Gives back a sequence's draft blocks (it ended, or it starts again).
    pub fn release(&mut self, cache: &mut DraftCache) {
        self.blocks.release(&cache.blocks);
        *cache = DraftCache::default();
    }

    /// (held, total) blocks of the draft's pool.
    pub fn gauges(&self) -> (usize, usize) {
        (self.blocks.used(), self.blocks.total())
    }

    /// (tokens, seconds) of every draft pass so far.
    pub fn work(&self) -> (u64, f64) {
        (self.ran_tokens, self.ran_seconds)
    }

    /// Up to `wanted[i]` tokens the draft expects after the tokens of `seqs[i]` (none
    /// where `wanted[i]` is 0; the last possibly one it was unsure of). The catch-up
    /// reads at most `catch_up` tokens in all: a sequence with more to read than is left
    /// (a long prompt) reads part of it and proposes nothing this time.
    pub fn propose(
        &mut self,
        seqs: &mut [Sequence],
        wanted: &[usize],
        catch_up: usize,
    ) -> Vec<Drafted> {
        let mut proposals = vec![Drafted::default(); seqs.len()];
        let mut budget = catch_up;
        // Per sequence drafting: its first position fed this pass, and whether the pass
        // returns its logits (it has read all its text).
        let mut feeds: Vec<Option<(usize, bool)>> = vec![None; seqs.len()];
        for (i, s) in seqs.iter_mut().enumerate() {
            if wanted[i] == 0 {
                continue;
            }
            let cache = &mut s.draft;
            let common = common_prefix(&cache.tokens, &s.tokens);
            self.trim(cache, common);
            let missing = s.tokens.len() - common;
            let fed = missing.min(budget.max(1));
            budget = budget.saturating_sub(fed);
            cache
                .tokens
                .extend_from_slice(&s.tokens[common..common + fed]);
            if !self.reserve(cache) {
                self.release(cache);
                continue;
            }
            feeds[i] = Some((common, fed == missing));
        }
        // Each pass: feed, then take each fed sequence's next proposal from its logits.
        while feeds.iter().any(Option::is_some) {
            let mut logits = match self.run(seqs, &feeds) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("the draft model's step failed: {e}");
                    for (s, feed) in seqs.iter_mut().zip(&feeds) {
                        if feed.is_some() {
                            self.release(&mut s.draft);
                        }
                    }
                    return vec![Drafted::default(); seqs.len()];
                }
            };
            let vocab = self.draft.model.logit_width();
            let mut rows = logits.chunks_exact_mut(vocab);
            for (i, s) in seqs.iter_mut().enumerate() {
                let Some((_, true)) = feeds[i].take() else {
                    continue;
                };
                let Some(row) = rows.next() else {
                    continue;
                };
                let best = argmax(row);
                let proposed = &mut proposals[i];
                proposed.tokens.push(best);
                if self.draft.min_confidence > 0.0 && proposed.tokens.len() > self.draft.min_draft {
                    let p = probability(row, best);
                    if p < self.draft.min_confidence {
                        proposed.unsure = Some(p);
                        continue;
                    }
                }
                if proposed.tokens.len() == wanted[i] {
                    continue;
                }
                let cache = &mut s.draft;
                let position = cache.tokens.len();
                cache.tokens.push(best);
                if self.reserve(cache) {
                    feeds[i] = Some((position, true));
                } else {
                    cache.tokens.pop();
                }
            }
        }
        proposals
    }

    /// Runs the draft over each sequence's tokens from its fed position on.
    fn run(&mut self, seqs: &[Sequence], feeds: &[Option<(usize, bool)>]) -> Result<Vec<f32>> {
        let batch: Vec<SeqBatch> = seqs
            .iter()
            .zip(feeds)
            .filter_map(|(s, feed)| {
                let (start, last) = (*feed)?;
                Some(SeqBatch {
                    tokens: &s.draft.tokens[start..],
                    start,
                    blocks: &s.draft.blocks,
                    window_blocks: None,
                    logits: match last {
                        true => Logits::Last,
                        false => Logits::None,
                    },
                    generated_from: first_one_token_position(s.prompt_len),
                })
            })
            .collect();
        let tokens: usize = batch.iter().map(|b| b.tokens.len()).sum();
        let started = Instant::now();
        let logits = self.draft.model.forward_batch(&batch, &mut self.pools)?;
        let seconds = started.elapsed().as_secs_f64();
        self.ran_tokens += tokens as u64;
        self.ran_seconds += seconds;
        tracing::trace!(
            sequences = batch.len(),
            tokens,
            ms = seconds * 1e3,
            "draft pass"
        );
        if !std::mem::replace(&mut self.warm, true) {
            return Ok(logits);
        }
        // A pass reading a prompt says nothing of what drafting a token costs, and a
        // drafting pass little of what reading costs.
        if tokens <= 2 * batch.len() {
            self.costs.timed(batch.len(), seconds);
        } else {
            self.read_seconds_per_token =
                decayed_average(self.read_seconds_per_token, seconds / tokens as f64);
        }
        Ok(logits)
    }

    /// Blocks for every token of `cache`; false when the pool has none left.
    fn reserve(&mut self, cache: &mut DraftCache) -> bool {
        let blocks = Sequence::blocks_for(cache.tokens.len());
        self.blocks.grow(&mut cache.blocks, blocks)
    }

    /// Keeps the first `positions` positions of `cache` (those the text still has).
    fn trim(&mut self, cache: &mut DraftCache, positions: usize) {
        cache.tokens.truncate(positions);
        let blocks = Sequence::blocks_for(positions);
        self.blocks.shrink(&mut cache.blocks, blocks);
    }
}

/// The lengths of the latest answers. Reading a prompt into the draft pays only over
/// the tokens drafting then saves, and `max_tokens` says little of how many those are
/// (the 20 prompts of `tests/data/spec_prompts.jsonl` answered 45 tokens on average
/// under a cap of 128).
#[derive(Debug, Default)]
struct AnswerLengths {
    latest: VecDeque<usize>,
}

impl AnswerLengths {
    const KEPT: usize = 32;

    fn record(&mut self, generated: usize) {
        if self.latest.len() == Self::KEPT {
            self.latest.pop_front();
        }
        self.latest.push_back(generated);
    }

    /// The tokens still to come for an answer `generated` tokens long (at most `room`):
    /// the mean of what the latest answers longer than it had left at that point; as
    /// many again as it has when none was longer; `room` before any answer ended.
    fn expected_remaining(&self, generated: usize, room: usize) -> f64 {
        if self.latest.is_empty() {
            return room as f64;
        }
        let (left, longer) = self
            .latest
            .iter()
            .filter(|&&length| length > generated)
            .fold((0, 0), |(left, longer), &length| {
                (left + (length - generated).min(room), longer + 1)
            });
        match longer {
            0 => generated.min(room) as f64,
            _ => left as f64 / longer as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AnswerLengths;

    #[test]
    fn expected_remaining_follows_the_latest_answers() {
        let mut lengths = AnswerLengths::default();
        assert_eq!(lengths.expected_remaining(0, 128), 128.0);
        for length in [40, 50, 60, 128] {
            lengths.record(length);
        }
        // Fresh: the mean of all four.
        assert_eq!(lengths.expected_remaining(0, 128), 69.5);
        // 55 generated: of the answers longer than that, 5 and 73 were left.
        assert_eq!(lengths.expected_remaining(55, 73), 39.0);
        // The room caps what each had left: 5 and 10.
        assert_eq!(lengths.expected_remaining(55, 10), 7.5);
        // Longer than every answer seen: as many again as generated, within the room.
        assert_eq!(lengths.expected_remaining(200, 500), 200.0);
        assert_eq!(lengths.expected_remaining(200, 30), 30.0);
        // Only the latest 32 answers count.
        for _ in 0..32 {
            lengths.record(10);
        }
        assert_eq!(lengths.expected_remaining(0, 128), 10.0);
    }
}
