//! One engine step: choose what runs (continuous batching under a token budget), find
//! KV blocks for it (preempting the newest sequence when there are none), run the
//! model once for the whole batch, and turn the logits into tokens and events.

use super::draft::Drafting;
use super::kv_tables::{BlockCopy, KvTables};
use super::metrics::Metrics;
use super::pacing::PrefillPacing;
use super::sequence::Sequence;
use super::EngineConfig;
use crate::backend::{Backend, KV_BLOCK_SIZE};
use crate::constraint::GrammarState;
use crate::kv_groups::KvPools;
use crate::model::{first_one_token_position, Llama, Logits, SeqBatch};
use crate::session::FinishReason;
use crate::speculate::{
    savings_per_token, share_checks, worth_a_row, Acceptance, Drafted, Lookup, MatchAcceptance,
    PassCosts,
};
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(super) struct Scheduler<B: Backend> {
    model: Llama<B>,
    pools: KvPools<B::KvPool>,
    kv: KvTables,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    /// Not admitted yet, or preempted (those go to the front: they came first).
    waiting: VecDeque<Sequence>,
    /// Admitted, oldest first.
    running: Vec<Sequence>,
    admissions: u64,
    /// Submitted requests not admitted yet; shared with `Engine::submit`.
    queued: Arc<AtomicUsize>,
    metrics: Arc<Mutex<Metrics>>,
    pacing: PrefillPacing,
    /// What steps of so many rows cost when every sequence decodes (for speculation).
    pass_costs: PassCosts,
    /// How often n-gram proposals were kept, by the length of their match, across
    /// every sequence so far.
    lookups: MatchAcceptance,
    /// The draft model proposing tokens, if the engine has one.
    drafting: Option<Drafting<B>>,
}

impl<B: Backend> Scheduler<B> {
    pub fn new(
        model: Llama<B>,
        pools: KvPools<B::KvPool>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        queued: Arc<AtomicUsize>,
        metrics: Arc<Mutex<Metrics>>,
        drafting: Option<Drafting<B>>,
    ) -> Self {
        Scheduler {
            kv: KvTables::new(
                config.kv_blocks,
                model
                    .kv_layout
                    .window()
                    .map(|w| (config.kv_window_blocks, w)),
                config.prefix_caching,
            ),
            pacing: PrefillPacing::new(config.step_target, config.max_batch_tokens),
            model,
            pools,
            tokenizer,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            admissions: 0,
            queued,
            metrics,
            pass_costs: PassCosts::default(),
            lookups: MatchAcceptance::default(),
            drafting,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn enqueue(&mut self, mut seq: Sequence) {
        if self.drafting.is_some() {
            seq.acceptance = Acceptance::expecting_agreement();
        }
        self.waiting.push_back(seq);
        self.publish_gauges();
    }

    /// Ends every sequence with `reason` (engine shutdown).
    pub fn finish_all(&mut self, reason: FinishReason, error: Option<String>) {
        let all: Vec<Sequence> = self
            .running
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        for mut s in all {
            self.retire(&mut s);
            s.finish(reason, error.clone());
        }
        self.publish_gauges();
    }

    pub fn step(&mut self) {
        self.drop_cancelled();
        let takes = self.plan();
        if takes.iter().any(|&t| t > 0) {
            // A decoding sequence may check proposals too: it has one token pending.
            let decoding = self
                .running
                .iter()
                .zip(&takes)
                .any(|(s, &t)| t > 0 && s.pending() == 1);
            let prompt_tokens: usize = self
                .running
                .iter()
                .zip(&takes)
                .filter(|(s, _)| s.pending() > 1)
                .map(|(_, &t)| t)
                .sum();
            let rows: usize = takes.iter().sum();
            let started = Instant::now();
            match self.run_and_mask(&takes) {
                Ok(logits) => self.advance(&takes, logits),
                Err(e) => {
                    tracing::error!("model step failed: {e}");
                    let running: Vec<Sequence> = self.running.drain(..).collect();
                    for mut s in running {
                        self.retire(&mut s);
                        s.finish(FinishReason::Error, Some(e.to_string()));
                    }
                }
            }
            self.pacing
                .observe(prompt_tokens, decoding, started.elapsed());
            if prompt_tokens == 0 {
                self.pass_costs.timed(rows, started.elapsed().as_secs_f64());
            }
            tracing::trace!(rows, ms = started.elapsed().as_secs_f64() * 1e3, "step");
            self.lock_metrics().steps += 1;
        }
        self.publish_gauges();
    }

    fn lock_metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        // A panic elsewhere cannot leave counters half-written; keep serving them.
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a sequence's blocks and its place in the queue limit.
    fn retire(&mut self, s: &mut Sequence) {
        self.kv.release(s);
        if let Some(d) = &mut self.drafting {
            d.release(&mut s.draft);
        }
        if s.in_queue_limit {
            s.in_queue_limit = false;
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn drop_cancelled(&mut self) {
        let mut gone: Vec<Sequence> = Vec::new();
        let (keep, cancelled): (Vec<Sequence>, Vec<Sequence>) =
            self.running.drain(..).partition(|s| !s.is_cancelled());
        self.running = keep;
        gone.extend(cancelled);
        let (keep, cancelled): (VecDeque<Sequence>, VecDeque<Sequence>) =
            self.waiting.drain(..).partition(|s| !s.is_cancelled());
        self.waiting = keep;
        gone.extend(cancelled);
        for mut s in gone {
            self.retire(&mut s);
            self.lock_metrics().requests_finished += 1;
        }
    }

    /// Tokens each running sequence computes this step (aligned with `running`).
    fn plan(&mut self) -> Vec<usize> {
        let mut budget = self.config.max_batch_tokens;
        let mut takes = vec![0; self.running.len()];
        let mut preempted = false;
        // Decoding sequences first, so that a long prompt never stalls a stream; then
        // prompt chunks, paced so that the streams' next tokens are not held up.
        for decoding in [true, false] {
            if !decoding {
                let streams = takes.iter().any(|&t| t > 0);
                budget = budget.min(self.pacing.prompt_budget(streams));
            }
            let mut i = 0;
            while i < self.running.len() {
                let pending = self.running[i].pending();
                if (pending == 1) != decoding || budget == 0 {
                    i += 1;
                    continue;
                }
                let take = pending.min(budget);
                if self.reserve(i, take) {
                    takes[i] = take;
                    budget -= take;
                    i += 1;
                    continue;
                }
                let victim = self.running.len() - 1;
                if victim == 0 {
                    // Alone and still out of blocks: the KV budget is its context.
                    let mut s = self.running.remove(0);
                    takes.remove(0);
                    self.retire(&mut s);
                    s.finish(FinishReason::Length, None);
                    self.lock_metrics().requests_finished += 1;
                    continue;
                }
                budget += takes.pop().unwrap_or(0);
                self.preempt(victim);
                preempted = true;
            }
        }
        // Admitting right after a preemption would only trade one sequence for another.
        if !preempted {
            self.admit(&mut budget, &mut takes);
        }
        self.propose(&mut takes, budget);
        takes
    }

    /// Speculative decoding: in a step where every sequence decodes, adds to each the
    /// proposals worth checking (n-gram lookup or the draft model; as many as the
    /// measured cost of a pass, of drafting, and each sequence's measured acceptance say
    /// pay for their rows, within `budget` more rows). Under a grammar, proposals end
    /// where the grammar would refuse them.
    fn propose(&mut self, takes: &mut [usize], budget: usize) {
        if self.config.speculation.is_none() && self.drafting.is_none() {
            return;
        }
        let decoding_only = self
            .running
            .iter()
            .zip(takes.iter())
            .all(|(s, &t)| t == 0 || s.pending() == 1);
        if !decoding_only || budget == 0 {
            return;
        }
        let context = self.config.context;
        let rooms: Vec<usize> = self
            .running
            .iter()
            .zip(takes.iter())
            .map(|(s, &t)| match t {
                1 => s.room_to_check(context),
                _ => 0,
            })
            .collect();
        let rows: usize = takes.iter().sum();
        let (chances, mut proposals): (Vec<f64>, Vec<Vec<u32>>) =
            match (&mut self.drafting, self.config.speculation) {
                (Some(d), _) => {
                    let chances: Vec<f64> =
                        self.running.iter().map(|s| s.acceptance.chance()).collect();
                    // Draft only what is worth checking.
                    let available: Vec<usize> =
                        rooms.iter().map(|&r| r.min(d.max_draft())).collect();
                    let worth = share_checks(
                        &self.pass_costs,
                        rows,
                        &chances,
                        &available,
                        rows + budget,
                        Some(d.costs()),
                    );
                    // A sequence whose text the draft has yet to read (its prompt, or
                    // what it generated while not drafting) starts drafting only where
                    // the time drafting is expected to save over the tokens it is expected
                    // to generate still (as the latest answers went) pays for the reading.
                    let savings = savings_per_token(
                        &self.pass_costs,
                        Some(d.costs()),
                        rows,
                        &chances,
                        &worth,
                    );
                    // More than the bonus token and a kept proposal is text to read.
                    // Before any reading was timed, reading is tried.
                    let reading_too_dear = |i: usize| {
                        let s = &self.running[i];
                        let unread = d.unread(s);
                        unread > 2
                            && d.reading_seconds(unread).is_some_and(|reading| {
                                reading > d.expected_remaining(s, rooms[i]) * savings[i]
                            })
                    };
                    let wanted: Vec<usize> = (0..worth.len())
                        .map(|i| {
                            let k = match worth[i] == 0 || reading_too_dear(i) {
                                true => 0,
                                false => worth[i],
                            };
                            k.max(d.min_draft().min(available[i]))
                        })
                        .collect();
                    if wanted.iter().all(|&k| k == 0) {
                        return;
                    }
                    // Reading text beside decoding streams is paced as prompts are.
                    let drafted =
                        d.propose(&mut self.running, &wanted, self.pacing.prompt_budget(true));
                    // A token the draft was unsure of is checked where its row pays.
                    let mut pass_rows = rows + drafted.iter().map(Drafted::sure).sum::<usize>();
                    let proposals = drafted
                        .into_iter()
                        .zip(self.running.iter_mut())
                        .map(|(mut drafted, s)| {
                            s.check_sure = drafted.sure();
                            if let Some(p) = drafted.unsure {
                                match worth_a_row(&self.pass_costs, rows, pass_rows, p.into()) {
                                    true => pass_rows += 1,
                                    false => drop(drafted.tokens.pop()),
                                }
                            }
                            drafted.tokens
                        })
                        .collect();
                    (chances, proposals)
                }
                (None, Some(ngram)) => {
                    let lookups: Vec<Lookup> = self
                        .running
                        .iter()
                        .zip(&rooms)
                        .map(|(s, &room)| ngram.propose(&s.tokens, room))
                        .collect();
                    for (s, lookup) in self.running.iter_mut().zip(&lookups) {
                        s.check_matched = lookup.matched;
                        s.check_sure = lookup.tokens.len();
                    }
                    let chances = lookups
                        .iter()
                        .map(|l| self.lookups.chance(l.matched))
                        .collect();
                    (chances, lookups.into_iter().map(|l| l.tokens).collect())
                }
                (None, None) => return,
            };
        for (s, proposed) in self.running.iter_mut().zip(proposals.iter_mut()) {
            if let (Some(g), None) = (&mut s.grammar, s.grammar_from) {
                proposed.truncate(g.valid_prefix(proposed));
            }
        }
        if proposals.iter().all(Vec::is_empty) {
            return;
        }
        let available: Vec<usize> = proposals.iter().map(Vec::len).collect();
        // Drafted proposals were already chosen as worth checking.
        let checks = match self.drafting {
            Some(_) => available,
            None => share_checks(
                &self.pass_costs,
                rows,
                &chances,
                &available,
                rows + budget,
                None,
            ),
        };
        let mut room = budget;
        for (i, (k, proposed)) in checks.into_iter().zip(proposals).enumerate() {
            let k = k.min(room);
            if k == 0 {
                continue;
            }
            room -= k;
            let s = &mut self.running[i];
            s.check = std::iter::once(s.tokens[s.computed])
                .chain(proposed.into_iter().take(k))
                .collect();
            if self.reserve(i, 1 + k) {
                takes[i] = 1 + k;
            } else {
                let s = &mut self.running[i];
                s.check.clear();
                self.kv.trim(s, s.computed + 1);
            }
        }
    }

    /// Gives sequence `i` blocks for its next `take` positions, copying a block it
    /// shares before writing into it. False when a pool has no block left.
    fn reserve(&mut self, i: usize, take: usize) -> bool {
        let mut copies = Vec::new();
        let reserved = self.kv.reserve(&mut self.running[i], take, &mut copies);
        self.copy_blocks(&copies);
        reserved
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) {
        for c in copies {
            let pool = match (c.windowed, &mut self.pools.windowed) {
                (true, Some(windowed)) => windowed,
                _ => &mut self.pools.full,
            };
            self.model.backend.kv_copy_block(pool, c.from, c.to);
        }
    }

    /// Frees running sequence `i` and puts it back at the front of the queue; it is
    /// recomputed from its tokens (and whatever prefix the cache still holds) later.
    fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        tracing::debug!(admitted = s.admitted, tokens = s.tokens.len(), "preempted");
        self.retire(&mut s);
        self.waiting.push_front(s);
        self.lock_metrics().preemptions += 1;
    }

    /// Admits waiting sequences in order while the budget, `max_seqs` and the free
    /// blocks allow, reusing cached prefix blocks.
    fn admit(&mut self, budget: &mut usize, takes: &mut Vec<usize>) {
        while *budget > 0 {
            let Some(front) = self.waiting.front() else {
                break;
            };
            if self.running.len() + 1 + front.forks > self.config.max_seqs {
                break;
            }
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            // Prompt log-probabilities need every prompt position computed.
            let max_blocks = if s.prompt_logprobs.is_some() {
                0
            } else {
                (s.tokens.len() - 1) / KV_BLOCK_SIZE
            };
            self.kv.lookup_prefix(&mut s, max_blocks);
            let take = s.pending().min(*budget);
            // Keep a block per running sequence for its next step.
            let mut copies = Vec::new();
            let reserved = self.kv.fits(&s, take, self.running.len())
                && self.kv.reserve(&mut s, take, &mut copies);
            self.copy_blocks(&copies);
            if !reserved {
                self.kv.release(&mut s);
                self.waiting.push_front(s);
                break;
            }
            self.admissions += 1;
            s.admitted = self.admissions;
            if s.in_queue_limit {
                s.in_queue_limit = false;
                self.queued.fetch_sub(1, Ordering::AcqRel);
                s.cached_prompt_tokens = s.computed;
                let mut m = self.lock_metrics();
                m.queue_time.observe(s.submitted.elapsed());
                m.prefix_queried_tokens += s.prompt_len as u64;
                m.prefix_hit_tokens += s.computed as u64;
                m.prompt_tokens += s.prompt_len as u64;
            }
            self.running.push(s);
            takes.push(take);
            *budget -= take;
        }
    }

    /// Runs the model step and, at the same time on the engine's pool, computes the
    /// grammar masks of the sequences that sample after it.
    fn run_and_mask(&mut self, takes: &[usize]) -> crate::Result<Vec<f32>> {
        let mut grammars: Vec<(usize, GrammarState)> = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            // A check samples after its first row, at the end of `tokens`, too.
            let samples =
                takes[i] > 0 && (s.computed + takes[i] == s.tokens.len() || !s.check.is_empty());
            if samples && s.is_constrained() {
                if let Some(g) = s.grammar.take() {
                    grammars.push((i, g));
                }
            }
        }
        if grammars.is_empty() {
            return self.run(takes);
        }
        let (logits, masks) = rayon::join(
            || self.run(takes),
            || {
                grammars
                    .iter_mut()
                    .map(|(_, g)| g.mask())
                    .collect::<Vec<_>>()
            },
        );
        for ((i, g), mask) in grammars.into_iter().zip(masks) {
            let s = &mut self.running[i];
            s.grammar = Some(g);
            match mask {
                Ok(mask) => s.mask = Some(mask),
                // `accept` computes it again and ends the sample with the error.
                Err(e) => tracing::debug!("grammar mask failed: {e}"),
            }
        }
        logits
    }

    fn run(&mut self, takes: &[usize]) -> crate::Result<Vec<f32>> {
        let batch: Vec<SeqBatch> = self
            .running
            .iter()
            .zip(takes)
            .filter(|(_, &t)| t > 0)
            .map(|(s, &t)| SeqBatch {
                tokens: match s.check.is_empty() {
                    true => &s.tokens[s.computed..s.computed + t],
                    false => &s.check,
                },
                start: s.computed,
                blocks: &s.blocks,
                window_blocks: Some(&s.window_blocks),
                logits: if s.prompt_logprobs.is_some() || !s.check.is_empty() {
                    Logits::All
                } else if s.computed + t == s.tokens.len() {
                    Logits::Last
                } else {
                    Logits::None
                },
                generated_from: first_one_token_position(s.prompt_len),
            })
            .collect();
        self.model.forward_batch(&batch, &mut self.pools)
    }

    /// Books the computed tokens, samples where a sequence has all its tokens in the
    /// cache, forks `n > 1` requests once their prompt is read, and retires the
    /// finished.
    fn advance(&mut self, takes: &[usize], mut logits: Vec<f32>) {
        let vocab = self.model.config.vocab_size;
        let max_context = self.config.context;
        // Rows in batch order: one per sampling sequence, or one per position for a
        // sequence scoring its prompt (`Logits::All`, as `run` asked).
        let mut next_row = 0;
        let mut outcomes: Vec<Option<FinishReason>> = vec![None; self.running.len()];
        let mut forks: Vec<Sequence> = Vec::new();
        let now = Instant::now();
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &take) in takes.iter().enumerate() {
            if take == 0 {
                continue;
            }
            let s = &mut self.running[i];
            let start = s.computed;
            if !s.check.is_empty() {
                let Some(rows) = logits.get_mut(next_row * vocab..(next_row + take) * vocab) else {
                    break;
                };
                next_row += take;
                // A row's token is kept while the token sampled before it was its
                // proposal: its logits are then those plain decoding would give.
                let check = std::mem::take(&mut s.check);
                let mut kept = 0;
                for (j, row) in rows.chunks_exact_mut(vocab).enumerate() {
                    let before = s.tokens.len();
                    outcomes[i] = s.accept(row, &self.tokenizer, max_context);
                    observe_token(&mut metrics, s, now);
                    s.computed = start + j + 1;
                    let followed = outcomes[i].is_none()
                        && s.tokens.len() == before + 1
                        && check.get(j + 1) == Some(&s.tokens[before]);
                    if !followed {
                        break;
                    }
                    kept += 1;
                }
                let checked = check.len() - 1;
                match self.drafting {
                    Some(_) => {
                        let sure = s.check_sure.min(checked);
                        s.acceptance.outcome(sure, kept.min(sure))
                    }
                    None => self.lookups.outcome(s.check_matched, checked, kept),
                }
                metrics.speculative_proposed_tokens += checked as u64;
                metrics.speculative_accepted_tokens += kept as u64;
                // The rejected tokens' positions leave the cache.
                self.kv.trim(s, s.computed);
                continue;
            }
            s.computed += take;
            self.kv.offer_full_blocks(s);
            if s.prompt_logprobs.is_some() {
                let rows = &logits[next_row * vocab..(next_row + take) * vocab];
                s.score_prompt(start, rows, vocab);
                next_row += take;
                if s.computed < s.tokens.len() {
                    continue;
                }
                next_row -= 1;
            } else if s.computed < s.tokens.len() {
                continue;
            }
            let Some(row) = logits.get_mut(next_row * vocab..(next_row + 1) * vocab) else {
                break;
            };
            next_row += 1;
            for k in 1..=s.forks {
                let mut fork = s.fork(k);
                self.kv.share(&fork);
                self.admissions += 1;
                fork.admitted = self.admissions;
                let mut row = row.to_vec();
                let outcome = fork.accept(&mut row, &self.tokenizer, max_context);
                observe_token(&mut metrics, &mut fork, now);
                forks.push(fork);
                outcomes.push(outcome);
            }
            s.forks = 0;
            outcomes[i] = s.accept(row, &self.tokenizer, max_context);
            observe_token(&mut metrics, s, now);
        }
        drop(metrics);
        self.running.extend(forks);
        let mut finished = Vec::new();
        let mut kept = Vec::new();
        for (s, outcome) in self.running.drain(..).zip(outcomes) {
            match outcome {
                Some(reason) => finished.push((s, reason)),
                None => kept.push(s),
            }
        }
        self.running = kept;
        for (mut s, reason) in finished {
            if let Some(d) = &mut self.drafting {
                d.answered(s.generated());
            }
            self.retire(&mut s);
            let failure = s.failure.take();
            s.finish(reason, failure);
            self.lock_metrics().requests_finished += 1;
        }
    }

    fn publish_gauges(&self) {
        let mut m = self.lock_metrics();
        m.waiting = self.waiting.len();
        m.running = self.running.len();
        (m.kv_blocks_used, m.kv_blocks_total, m.kv_blocks_cached) = self.kv.full_gauges();
        (
            m.kv_window_blocks_used,
            m.kv_window_blocks_total,
            m.kv_window_blocks_cached,
        ) = self.kv.windowed_gauges();
        (m.draft_kv_blocks_used, m.draft_kv_blocks_total) =
            self.drafting.as_ref().map_or((0, 0), Drafting::gauges);
        (m.draft_tokens, m.draft_seconds) = self.drafting.as_ref().map_or((0, 0.0), Drafting::work);
    }
}

fn observe_token(m: &mut Metrics, s: &mut Sequence, now: Instant) {
    match s.last_token {
        None => m.time_to_first_token.observe(now - s.submitted),
        Some(t) => m.inter_token_latency.observe(now - t),
    }
    s.last_token = Some(now);
    m.generated_tokens += 1;
}
