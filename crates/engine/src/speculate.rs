//! Speculative decoding. Proposals come from n-gram lookup (vLLM's "prompt lookup",
//! llama.cpp's `lookup`: when the last few tokens occurred earlier in the prompt or the
//! output, the tokens that followed them then) or from a draft model (`Drafter`: a
//! smaller or more coarsely quantized model with the same vocabulary, decoding greedily
//! ahead). One forward pass scores the sampled token and the proposals together; a
//! proposal is kept while it equals the token the sampler draws from the logits before
//! it. Every logit is the one one-token decoding would give (`Llama::verify`), and the
//! sampler draws once per kept token as it would without speculation, so the output is
//! the same token for token — greedy or seeded — only sooner when proposals are right.

use crate::backend::Backend;
use crate::error::{EngineError, Result};
use crate::model::Llama;
use crate::sampler::argmax;
use crate::session::Session;
use std::time::Instant;

/// How proposals are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NgramSpeculation {
    /// Most tokens proposed at once.
    pub max_draft: usize,
    /// The longest and shortest runs of last tokens looked up (the longest that matches wins).
    pub max_ngram: usize,
    pub min_ngram: usize,
}

impl Default for NgramSpeculation {
    fn default() -> Self {
        NgramSpeculation {
            max_draft: 8,
            max_ngram: 8,
            min_ngram: 1,
        }
    }
}

/// What an n-gram lookup found: the tokens that followed the match, and how many of the
/// last tokens matched (0: nothing did).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    pub tokens: Vec<u32>,
    pub matched: usize,
}

impl NgramSpeculation {
    /// Up to `limit` (and `max_draft`) tokens that followed the earlier occurrence of
    /// `history`'s last n tokens for the longest n (from `min_ngram` to `max_ngram`) that
    /// occurs, the latest such occurrence; nothing if none does.
    pub fn propose(&self, history: &[u32], limit: usize) -> Lookup {
        let limit = limit.min(self.max_draft);
        let (longest, min) = (self.max_ngram, self.min_ngram.max(1));
        let len = history.len();
        if limit == 0 || len <= min {
            return Lookup::default();
        }
        // An earlier run ending at `end` (before the last token, so that something
        // followed it), compared backwards with the last tokens.
        let (mut best_end, mut matched) = (0, 0);
        for end in (min..len).rev() {
            let run = (1..=longest.min(end))
                .take_while(|&n| history[end - n] == history[len - n])
                .count();
            if run > matched {
                (best_end, matched) = (end, run);
                if run == longest {
                    break;
                }
            }
        }
        if matched < min {
            return Lookup::default();
        }
        Lookup {
            tokens: history[best_end..(best_end + limit).min(len)].to_vec(),
            matched,
        }
    }
}

/// Proposals from a draft model with the target's vocabulary, decoded greedily from a
/// KV cache of its own. The cache follows the text: what the target kept is reused, and
/// from the first token it rejected on, the draft computes again. Drafting stops at
/// the first token the draft is unsure of (its probability below `min_confidence`,
/// llama.cpp's `--draft-p-min`): tokens after it are seldom kept. That token itself is
/// still proposed: its draft step is paid, and checking it costs only a row of the
/// target's pass (`worth_a_row` decides). llama.cpp drops it. On the default model's
/// F16/Q4_0 pair such tokens (probability 0.2–0.75 mostly) were kept about half the
/// time; with them, and the acceptance counted over the sure proposals only, `bench
/// spec` went from 1.00× to 1.17× plain decoding (docs/benchmarks.md).
pub struct Drafter<'m, B: Backend> {
    session: Session<'m, B>,
    pub max_draft: usize,
    /// Fewest tokens asked of the draft each round, whatever the measured costs say
    /// (llama.cpp's `--draft-min`; 0 by default: the costs decide).
    pub min_draft: usize,
    pub min_confidence: f32,
    /// Seconds per drafted token (decayed average; 0: not measured yet).
    seconds_per_token: f64,
}

impl<'m, B: Backend> Drafter<'m, B> {
    /// A drafter for a target whose vocabulary has `target_vocab` tokens; `context`: the
    /// longest text it follows.
    pub fn new(
        draft: &'m Llama<B>,
        target_vocab: usize,
        context: usize,
        max_draft: usize,
        min_confidence: f32,
    ) -> Result<Self> {
        check_draft_vocabulary(draft.config.vocab_size, target_vocab)?;
        Ok(Drafter {
            session: Session::new(draft, context)?,
            max_draft,
            min_draft: 0,
            min_confidence,
            seconds_per_token: 0.0,
        })
    }

    /// Brings the draft's cache to `prompt` (at prompt time, so that the first proposals
    /// do not wait for it).
    pub fn read_prompt(&mut self, prompt: &[u32]) -> Result<()> {
        self.session.prefill(prompt).map(drop)
    }

    /// Up to `limit` (and `max_draft`) tokens the draft model expects after `history`.
    pub fn propose(&mut self, history: &[u32], limit: usize) -> Result<Drafted> {
        let limit = limit.min(self.max_draft);
        let mut proposed = Drafted::default();
        if limit == 0 || history.is_empty() {
            return Ok(proposed);
        }
        let started = Instant::now();
        let (mut logits, computed) = self.session.prefill(history)?;
        loop {
            let best = argmax(&logits);
            proposed.tokens.push(best);
            if self.min_confidence > 0.0 {
                let p = probability(&mut logits, best);
                if p < self.min_confidence {
                    proposed.unsure = Some(p);
                    break;
                }
            }
            let proposed = &proposed.tokens;
            if proposed.len() == limit {
                break;
            }
            logits = self
                .session
                .decode_at(best, history.len() + proposed.len() - 1)?;
        }
        // A catch-up over a whole prompt says nothing of the cost of drafting.
        let steps = computed + proposed.tokens.len().saturating_sub(1);
        if computed <= 2 && steps > 0 {
            let per_token = started.elapsed().as_secs_f64() / steps as f64;
            self.seconds_per_token = decayed_average(self.seconds_per_token, per_token);
        }
        Ok(proposed)
    }

    /// What drafting a token costs, as measured so far (0 before any measurement).
    pub fn seconds_per_token(&self) -> f64 {
        self.seconds_per_token
    }
}

/// What a draft model proposed: tokens each at least `min_confidence` likely under the
/// draft, the last of them possibly one it was unsure of (`unsure`: its probability).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drafted {
    pub tokens: Vec<u32>,
    pub unsure: Option<f32>,
}

impl Drafted {
    /// The proposals the draft was sure of.
    pub fn sure(&self) -> usize {
        self.tokens.len() - self.unsure.is_some() as usize
    }
}

/// Refuses a draft model whose vocabulary differs in size from the target's.
pub(crate) fn check_draft_vocabulary(draft_vocab: usize, target_vocab: usize) -> Result<()> {
    if draft_vocab == target_vocab {
        return Ok(());
    }
    Err(EngineError::Config(format!(
        "the draft model's vocabulary has {draft_vocab} tokens and the target's \
         {target_vocab}: a draft model must share the target's vocabulary"
    )))
}

/// The probability of token `id` under `logits`, which become the softmax's shares (in
/// place, with the vector unit: it runs once per drafted token, over the whole
/// vocabulary, on logits the draft no longer needs).
pub(crate) fn probability(logits: &mut [f32], id: u32) -> f32 {
    quant::softmax(logits);
    logits[id as usize]
}

/// How much of the past the tuners' averages keep at each update.
const DECAY: f64 = 0.8;

/// A time average updated with `new` (`old` 0: nothing measured yet, `new` it is).
pub(crate) fn decayed_average(old: f64, new: f64) -> f64 {
    match old {
        0.0 => new,
        old => DECAY * old + (1.0 - DECAY) * new,
    }
}

/// What a pass of so many rows costs on this machine, measured as generation goes.
/// Where a size has not been measured yet, it is taken to cost as much as the largest
/// measured smaller one, so that larger checks get tried when proposals are kept.
#[derive(Clone, Debug, Default)]
pub struct PassCosts {
    /// Seconds of a pass of r rows at index r (decayed average; 0: not measured).
    seconds: Vec<f64>,
}

impl PassCosts {
    /// A pass of `rows` rows took `seconds`.
    pub fn timed(&mut self, rows: usize, seconds: f64) {
        if self.seconds.len() <= rows {
            self.seconds.resize(rows + 1, 0.0);
        }
        let s = &mut self.seconds[rows];
        *s = decayed_average(*s, seconds);
    }

    /// The seconds a pass of `rows` rows is expected to take; `None` before a pass of
    /// that size or smaller was measured. Never more than a larger pass was measured to
    /// take: a size no longer run (one row, once every step checks proposals) keeps its
    /// last measure, which may be a cold first step's.
    pub fn seconds(&self, rows: usize) -> Option<f64> {
        let at_most = (rows + 1).min(self.seconds.len());
        let measured = self.seconds[..at_most]
            .iter()
            .rev()
            .copied()
            .find(|&s| s > 0.0)?;
        let larger = self.seconds[at_most..].iter().copied().filter(|&s| s > 0.0);
        Some(larger.fold(measured, f64::min))
    }

    /// The seconds a pass of exactly `rows` rows was measured to take, if it was.
    pub fn measured(&self, rows: usize) -> Option<f64> {
        self.seconds.get(rows).copied().filter(|&s| s > 0.0)
    }
}

/// How often one sequence's proposals are kept: decayed counts of proposals kept and of
/// proposals decided (kept or not), starting from even odds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acceptance {
    kept: f64,
    decided: f64,
}

impl Acceptance {
    /// Nine proposals in ten kept so far, for proposals that cost time to make (a draft
    /// model's): at even odds, drafting would seldom be tried, and its real acceptance
    /// hardly measured (`DraftTuner::expecting_agreement`).
    pub fn expecting_agreement() -> Acceptance {
        Acceptance {
            kept: 9.0,
            decided: 10.0,
        }
    }

    /// The chance a proposal is kept after its predecessors were.
    pub fn chance(&self) -> f64 {
        (self.kept + 1.0) / (self.decided + 2.0)
    }

    /// Of `checked` proposals, the first `kept` were kept.
    pub fn outcome(&mut self, checked: usize, kept: usize) {
        let decided = kept + (kept < checked) as usize;
        self.kept = DECAY * self.kept + kept as f64;
        self.decided = DECAY * self.decided + decided as f64;
    }
}

/// How often n-gram proposals are kept, by the length of the match that proposed them
/// (1, 2, 3–4, 5–8, 9 or more tokens; the last only with `max_ngram` above its default
/// 8): the longer the match, the likelier its continuation is the text's (on the spec
/// prompts, the first proposal of a 2-token match was kept 6 times in 10, of a match of
/// 9 or more 97 in 100). It outlives a generation: how often a match of so many tokens
/// is right depends on the model and the kind of text more than on one answer, which
/// is too short to measure it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchAcceptance {
    by_length: [Acceptance; 5],
}

impl MatchAcceptance {
    fn class(matched: usize) -> usize {
        match matched {
            0 | 1 => 0,
            m => ((m - 1).ilog2() + 1).min(4) as usize,
        }
    }

    /// The chance a proposal of a match of `matched` tokens is kept after its
    /// predecessors were.
    pub fn chance(&self, matched: usize) -> f64 {
        self.by_length[Self::class(matched)].chance()
    }

    /// Of `checked` proposals of a match of `matched` tokens, the first `kept` were kept.
    pub fn outcome(&mut self, matched: usize, checked: usize, kept: usize) {
        self.by_length[Self::class(matched)].outcome(checked, kept);
    }
}

/// Where the proposals a pass checks came from, for crediting the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposedBy {
    /// An n-gram lookup whose match was so many tokens long.
    Lookup {
        matched: usize,
    },
    DraftModel,
}

/// Chooses how many tokens to check for one sequence generating alone, from what a pass
/// of so many rows costs, what a proposal costs to make, and how often proposals are
/// kept: checking k proposals yields 1 + α + … + αᵏ tokens on average (α: the chance a
/// proposal is kept after its predecessors were), for the time of a (k + 1)-row pass
/// and of making k proposals. A session keeps it across generations: the costs are the
/// machine's and the model's.
#[derive(Clone, Debug, Default)]
pub struct DraftTuner {
    /// How often a draft model's proposals are kept.
    pub acceptance: Acceptance,
    /// How often n-gram proposals are kept.
    pub matches: MatchAcceptance,
    pub costs: PassCosts,
}

impl DraftTuner {
    /// A tuner that starts out expecting nine proposals in ten to be kept, for
    /// proposals that cost time to make (a draft model's): with the even odds `default`
    /// assumes, a draft costing a third of a target step is seldom tried (10 proposals
    /// in 97 tokens on the default model's F16/Q4_0 pair), and its real acceptance is
    /// hardly measured.
    pub fn expecting_agreement() -> DraftTuner {
        DraftTuner {
            acceptance: Acceptance::expecting_agreement(),
            ..DraftTuner::default()
        }
    }

    /// How many of the free proposals of `lookup` (n-gram lookup) to check (0: decode
    /// the sampled token alone).
    pub fn choose(&self, lookup: &Lookup) -> usize {
        let keep = self.matches.chance(lookup.matched);
        self.best_check(lookup.tokens.len(), keep, 0.0)
    }

    /// How many of `available` proposals to make and check when each costs
    /// `per_proposal` seconds to make (a draft model's step).
    pub fn choose_paying(&self, available: usize, per_proposal: f64) -> usize {
        self.best_check(available, self.acceptance.chance(), per_proposal)
    }

    fn best_check(&self, available: usize, keep: f64, per_proposal: f64) -> usize {
        let Some(one) = self.costs.seconds(1) else {
            return 0; // measure a plain step first
        };
        let (mut best, mut best_rate) = (0, 1.0 / one);
        let (mut expected, mut chance) = (1.0, 1.0);
        for k in 1..=available {
            chance *= keep;
            expected += chance;
            let cost = self.costs.seconds(k + 1).unwrap_or(one) + k as f64 * per_proposal;
            if expected / cost > best_rate {
                (best, best_rate) = (k, expected / cost);
            }
        }
        best
    }

    /// A pass of `rows` rows took `seconds`.
    pub fn timed(&mut self, rows: usize, seconds: f64) {
        self.costs.timed(rows, seconds);
    }

    /// Of `checked` proposals made by `by`, the first `kept` were kept.
    pub fn outcome(&mut self, by: ProposedBy, checked: usize, kept: usize) {
        match by {
            ProposedBy::Lookup { matched } => self.matches.outcome(matched, checked, kept),
            ProposedBy::DraftModel => self.acceptance.outcome(checked, kept),
        }
    }
}

/// How many proposals each of several decoding sequences checks in one pass of the
/// serving engine, to make the most tokens per second: `rows` rows are decoded anyway
/// (one per sequence), and candidate i can check up to `available[i]` proposals, each
/// kept with chance `chances[i]` after its predecessors were. A sequence's j-th proposal
/// yields `chance^j` tokens on average, fewer the further it looks, so the best use of R
/// more rows is the R largest such yields; R is chosen for the most expected tokens per
/// second of a pass of `rows + R` rows (and at most `max_rows` rows in all). Proposals
/// from a draft model cost its passes too (`drafting`: what a draft pass of so many
/// sequences costs): drafting j tokens for m sequences takes j passes, the i-th over
/// the sequences drafting at least i. Once the pass is large enough that every row
/// costs about as much as a token, speculation no longer pays and none is checked.
pub fn share_checks(
    costs: &PassCosts,
    rows: usize,
    chances: &[f64],
    available: &[usize],
    max_rows: usize,
    drafting: Option<&PassCosts>,
) -> Vec<usize> {
    let mut checks = vec![0; chances.len()];
    let Some(base) = costs.seconds(rows) else {
        return checks; // measure plain steps first
    };
    // (expected tokens, candidate) of every proposal, best first (ties: first candidate).
    let mut yields: Vec<(f64, usize)> = Vec::new();
    for (i, (&chance, &n)) in chances.iter().zip(available).enumerate() {
        let mut y = 1.0;
        for _ in 0..n {
            y *= chance;
            yields.push((y, i));
        }
    }
    yields.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    yields.truncate(max_rows.saturating_sub(rows));
    // A draft pass over m sequences (unmeasured: free, so that it gets tried).
    let draft_pass = |m: usize| match (m, drafting) {
        (0, _) | (_, None) => 0.0,
        (m, Some(d)) => d.seconds(m).unwrap_or(0.0),
    };
    // Sequences drafting at least i tokens, per i, as proposals are taken in turn.
    let mut drafting_at_least: Vec<usize> = Vec::new();
    let mut drafted = vec![0; chances.len()];
    let mut draft_seconds = 0.0;
    let (mut best, mut best_rate) = (0, rows as f64 / base);
    let mut expected = rows as f64;
    for (r, &(y, i)) in yields.iter().enumerate() {
        expected += y;
        drafted[i] += 1;
        if drafting_at_least.len() < drafted[i] {
            drafting_at_least.push(0);
        }
        let m = &mut drafting_at_least[drafted[i] - 1];
        *m += 1;
        draft_seconds += draft_pass(*m) - draft_pass(*m - 1);
        let pass = costs.seconds(rows + r + 1).unwrap_or(base);
        let rate = expected / (pass + draft_seconds);
        if rate > best_rate {
            (best, best_rate) = (r + 1, rate);
        }
    }
    for &(_, i) in &yields[..best] {
        checks[i] += 1;
    }
    checks
}

/// Whether one more proposal, kept with chance `chance`, is worth its row in a pass of
/// `rows` rows of which `decoding` are the sequences' decoding rows: whether the plain
/// decoding time it saves when kept (a token's share of a plain pass of `decoding`
/// rows), times that chance, outweighs what the row adds to the pass (a draft's
/// token it was unsure of: its draft step is paid already). Unmeasured: it is, so that
/// it gets tried.
pub fn worth_a_row(costs: &PassCosts, decoding: usize, rows: usize, chance: f64) -> bool {
    let (Some(plain), Some(pass)) = (costs.seconds(decoding), costs.seconds(rows)) else {
        return true;
    };
    let row = costs.seconds(rows + 1).unwrap_or(pass) - pass;
    chance * plain / decoding.max(1) as f64 >= row
}

/// Seconds each of several decoding sequences is expected to save per token it
/// generates when they check `checks[i]` proposals each in a step of `rows` decoding
/// rows (from a draft model whose passes cost `drafting`, or free ones): the time the
/// step saves against plain steps making as many tokens, shared among the sequences in
/// proportion to the extra tokens their proposals yield, over the tokens each makes per
/// step. Alone, that is the plain step's time less a check's time per token made.
/// Negative where speculating costs more than it yields; zeros before the plain step
/// was measured. Unlike `share_checks`, which tries unmeasured sizes as if their rows
/// were free, a check of a size not measured yet is taken to cost a plain step's share
/// per row, as much as the tokens it makes: what these savings decide (reading a prompt
/// into the draft) is paid for certain, and an optimistic guess had a server at eight
/// streams read every prompt for checks that never paid.
pub fn savings_per_token(
    costs: &PassCosts,
    drafting: Option<&PassCosts>,
    rows: usize,
    chances: &[f64],
    checks: &[usize],
) -> Vec<f64> {
    let Some(plain) = costs.seconds(rows) else {
        return vec![0.0; checks.len()];
    };
    let yields: Vec<f64> = chances
        .iter()
        .zip(checks)
        .map(|(&c, &k)| (1..=k as i32).map(|j| c.powi(j)).sum())
        .collect();
    let extra: f64 = yields.iter().sum();
    if extra == 0.0 {
        return vec![0.0; checks.len()];
    }
    let checked: usize = checks.iter().sum();
    // Drafting k tokens takes k passes, the j-th over the sequences drafting at least j.
    let longest = checks.iter().copied().max().unwrap_or(0);
    let draft: f64 = (1..=longest)
        .map(
            |j| match (checks.iter().filter(|&&k| k >= j).count(), drafting) {
                (m, Some(d)) => d.seconds(m).unwrap_or(0.0),
                (_, None) => 0.0,
            },
        )
        .sum();
    let per_row = plain / rows as f64;
    let check = costs.measured(rows + checked);
    let step = check.unwrap_or((rows + checked) as f64 * per_row) + draft;
    let saved_per_step = (rows as f64 + extra) * per_row - step;
    yields
        .iter()
        .map(|&y| saved_per_step * (y / extra) / (1.0 + y))
        .collect()
}

/// What speculation did over one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpeculationStats {
    /// Tokens proposed, and how many of them were kept.
    pub drafted: usize,
    pub accepted: usize,
    /// Passes that checked proposals (`drafted / checks`: the mean k chosen).
    pub checks: usize,
}

impl SpeculationStats {
    /// The share of proposed tokens that were kept.
    pub fn acceptance(&self) -> f64 {
        match self.drafted {
            0 => 0.0,
            d => self.accepted as f64 / d as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup of `n` proposals from a match of `matched` tokens.
    fn lookup(n: usize, matched: usize) -> Lookup {
        Lookup {
            tokens: vec![7; n],
            matched,
        }
    }

    #[test]
    fn the_tuner_checks_more_when_proposals_are_kept_and_cheap() {
        let by = ProposedBy::Lookup { matched: 2 };
        let mut tuner = DraftTuner::default();
        assert_eq!(
            tuner.choose(&lookup(8, 2)),
            0,
            "nothing measured: a plain step first"
        );
        tuner.timed(1, 0.010);
        // Nothing known of larger passes: they are assumed to cost a plain step's time.
        assert_eq!(tuner.choose(&lookup(8, 2)), 8);
        // Passes cost about 1 step per row, and proposals are seldom kept: not worth it.
        for r in 2..=9 {
            tuner.timed(r, 0.010 * r as f64);
        }
        for _ in 0..10 {
            tuner.outcome(by, 4, 0);
        }
        assert_eq!(tuner.choose(&lookup(8, 2)), 0);
        // Passes are cheap and proposals are kept: check them all.
        for _ in 0..20 {
            (2..=9).for_each(|r| tuner.timed(r, 0.011));
        }
        for _ in 0..20 {
            tuner.outcome(by, 8, 8);
        }
        assert_eq!(tuner.choose(&lookup(8, 2)), 8);
        // Half kept, and each row costs 30 % of a step: a few, not all.
        let mut tuner = DraftTuner::default();
        for r in 1..=9 {
            tuner.timed(r, 0.010 * (1.0 + 0.3 * (r - 1) as f64));
        }
        for _ in 0..30 {
            tuner.outcome(by, 2, 1);
        }
        let k = tuner.choose(&lookup(8, 2));
        assert!((1..8).contains(&k), "{k}");
    }

    #[test]
    fn n_gram_acceptance_is_counted_by_the_length_of_the_match() {
        let mut tuner = DraftTuner::default();
        for r in 1..=9 {
            tuner.timed(r, 0.010 * (1.0 + 0.3 * (r - 1) as f64));
        }
        // Two-token matches are seldom right, matches of nine or more nearly always.
        for _ in 0..30 {
            tuner.outcome(ProposedBy::Lookup { matched: 2 }, 4, 0);
            tuner.outcome(ProposedBy::Lookup { matched: 12 }, 8, 8);
        }
        assert_eq!(tuner.choose(&lookup(8, 2)), 0);
        assert_eq!(tuner.choose(&lookup(8, 9)), 8);
        // Matches of 1, 3–4 and 5–8 tokens have counts of their own: still even odds.
        assert_eq!(tuner.matches.chance(1), 0.5);
        assert_eq!(tuner.matches.chance(3), 0.5);
        assert_eq!(tuner.matches.chance(8), 0.5);
        assert_eq!(
            (1..=17).map(MatchAcceptance::class).collect::<Vec<_>>(),
            [0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4]
        );
        assert!(tuner.matches.chance(2) < 0.2 && tuner.matches.chance(40) > 0.9);
        // A draft model's outcomes are its own.
        assert_eq!(tuner.acceptance.chance(), 0.5);
        tuner.outcome(ProposedBy::DraftModel, 3, 0);
        assert!(tuner.acceptance.chance() < 0.5);
        assert!(tuner.matches.chance(40) > 0.9);
    }

    #[test]
    fn a_batch_checks_the_likeliest_proposals_while_rows_are_cheap() {
        let mut costs = PassCosts::default();
        // Nothing measured at this size: plain steps first.
        assert_eq!(
            share_checks(&costs, 2, &[0.9, 0.5], &[4, 4], 512, None),
            [0, 0]
        );
        // Up to eight rows cost about one pass, then every row costs a token's time.
        for r in 1..=8 {
            costs.timed(r, 0.010 + 0.0005 * r as f64);
        }
        for r in 9..=40 {
            costs.timed(r, 0.014 * r as f64 / 8.0);
        }
        // Two sequences: the one whose proposals are kept checks more, within 8 rows.
        let checks = share_checks(&costs, 2, &[0.9, 0.5], &[4, 4], 512, None);
        assert_eq!(checks.iter().sum::<usize>(), 6, "{checks:?}");
        assert!(checks[0] == 4 && checks[1] == 2, "{checks:?}");
        // Eight sequences already fill the cheap rows: speculation would cost more
        // than it yields.
        assert_eq!(
            share_checks(&costs, 8, &[0.8; 8], &[4; 8], 512, None),
            [0; 8]
        );
        // The step's row budget bounds the checks.
        assert_eq!(
            share_checks(&costs, 2, &[0.9, 0.9], &[4, 4], 4, None),
            [1, 1]
        );
        // Nothing to propose: nothing to check.
        assert_eq!(share_checks(&costs, 1, &[0.9], &[0], 512, None), [0]);
        // Drafting costs its passes: cheap ones leave the choice as it was, a pass
        // costing two steps makes proposals too dear, and unmeasured ones are tried.
        let mut draft = PassCosts::default();
        assert_eq!(
            share_checks(&costs, 1, &[0.9], &[4], 512, Some(&draft)),
            [4]
        );
        draft.timed(1, 0.0005);
        assert_eq!(
            share_checks(&costs, 1, &[0.9], &[4], 512, Some(&draft)),
            [4]
        );
        draft.timed(1, 0.02);
        (0..20).for_each(|_| draft.timed(1, 0.02));
        assert_eq!(
            share_checks(&costs, 1, &[0.9], &[4], 512, Some(&draft)),
            [0]
        );
    }

    #[test]
    fn drafting_saves_time_per_token_only_when_checks_are_cheap() {
        let (mut costs, mut draft) = (PassCosts::default(), PassCosts::default());
        let alone = |costs: &PassCosts, draft: &PassCosts| {
            savings_per_token(costs, Some(draft), 1, &[0.9], &[2])[0]
        };
        assert_eq!(alone(&costs, &draft), 0.0, "nothing measured");
        costs.timed(1, 0.010);
        costs.timed(3, 0.012);
        draft.timed(1, 0.002);
        // 1 + 0.9 + 0.81 tokens for 12 + 2 · 2 ms: 5.9 ms a token against 10.
        let saving = alone(&costs, &draft);
        assert!((saving - (0.010 - 0.016 / 2.71)).abs() < 1e-9, "{saving}");
        // Among eight decoding sequences, where a plain token costs 2 ms, the same two
        // proposals of one sequence save a little while their rows and drafting cost
        // little, and lose time when they cost what alone they were worth; the other
        // sequences save nothing.
        let mut checks = [0; 8];
        checks[0] = 2;
        let mut cheap_draft = PassCosts::default();
        cheap_draft.timed(1, 0.0005);
        costs.timed(8, 0.016);
        costs.timed(10, 0.0161);
        let among = savings_per_token(&costs, Some(&cheap_draft), 8, &[0.9; 8], &checks);
        assert!(among[0] > 0.0 && among[0] < saving / 4.0, "{among:?}");
        assert!(among[1..].iter().all(|&s| s == 0.0), "{among:?}");
        (0..30).for_each(|_| costs.timed(10, 0.0195));
        let among = savings_per_token(&costs, Some(&cheap_draft), 8, &[0.9; 8], &checks);
        assert!(among[0] < 0.0, "{among:?}");
        // A check of a size never measured saves nothing, drafting aside.
        let mut unmeasured = PassCosts::default();
        unmeasured.timed(1, 0.010);
        assert!(alone(&unmeasured, &draft) < 0.0);
        let free = savings_per_token(&unmeasured, None, 1, &[0.9], &[2])[0];
        assert!(free < 0.0, "{free}");
        // A check costing three steps loses time.
        let mut dear = PassCosts::default();
        dear.timed(1, 0.010);
        dear.timed(3, 0.030);
        assert!(alone(&dear, &draft) < 0.0);
    }

    #[test]
    fn a_pass_costs_no_more_than_a_larger_one_measured() {
        let mut costs = PassCosts::default();
        assert_eq!(costs.seconds(1), None);
        costs.timed(3, 0.020);
        assert_eq!(costs.seconds(1), None, "nothing this small measured");
        // A cold first one-row step, then only larger passes.
        costs.timed(1, 0.030);
        costs.timed(2, 0.016);
        assert_eq!(costs.seconds(1), Some(0.016));
        assert_eq!(costs.seconds(2), Some(0.016));
        assert_eq!(costs.seconds(3), Some(0.020));
        assert_eq!(
            costs.seconds(5),
            Some(0.020),
            "larger: the largest measured below"
        );
    }

    #[test]
    fn an_unsure_proposal_gets_a_row_where_its_chance_pays_for_it() {
        let mut costs = PassCosts::default();
        assert!(worth_a_row(&costs, 1, 2, 0.1), "nothing measured: tried");
        costs.timed(1, 0.010);
        costs.timed(2, 0.012);
        costs.timed(3, 0.015);
        // Alone: a second row adds 2 ms to a 10 ms step, paid for by a chance of 0.2.
        assert!(worth_a_row(&costs, 1, 1, 0.25));
        assert!(!worth_a_row(&costs, 1, 1, 0.15));
        // A third row adds 3 ms.
        assert!(!worth_a_row(&costs, 1, 2, 0.25));
        assert!(worth_a_row(&costs, 1, 2, 0.35));
        // Two sequences decoding: a plain token costs 6 ms, the third row 3 ms.
        assert!(worth_a_row(&costs, 2, 2, 0.6));
        assert!(!worth_a_row(&costs, 2, 2, 0.4));
        // Beyond the measured sizes a row is taken to cost nothing: tried.
        assert!(worth_a_row(&costs, 1, 3, 0.01));
    }

    #[test]
    fn a_drafts_sure_proposals_are_those_before_an_unsure_one() {
        let sure = Drafted {
            tokens: vec![4, 5],
            unsure: None,
        };
        assert_eq!(sure.sure(), 2);
        let unsure = Drafted {
            tokens: vec![4, 5, 6],
            unsure: Some(0.3),
        };
        assert_eq!(unsure.sure(), 2);
        assert_eq!(Drafted::default().sure(), 0);
    }

    #[test]
    fn a_token_probability_is_its_softmax_share() {
        let logits = [1.0f32, 3.0, -2.0, 0.5, 2.0, 2.5, -8.0, 0.0, 1.5, 3.0];
        let sum: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for id in [0u32, 1, 6, 9] {
            let exact = (logits[id as usize] as f64).exp() / sum;
            let p = probability(&mut logits.clone(), id) as f64;
            assert!((p - exact).abs() < 1e-6, "{id}: {p} vs {exact}");
        }
    }

    #[test]
    fn proposals_follow_the_latest_longest_match() {
        let spec = NgramSpeculation {
            max_draft: 3,
            max_ngram: 3,
            min_ngram: 1,
        };
        let tokens = |history: &[u32], limit| spec.propose(history, limit).tokens;
        // "1 2 3 4 5 ... 1 2 3 9 ... 2 3": the last "2 3" was last followed by 9.
        let history = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 2, 3];
        assert_eq!(
            spec.propose(&history, 10),
            Lookup {
                tokens: vec![9, 8, 2],
                matched: 2
            }
        );
        // Only 2 may be proposed here.
        assert_eq!(tokens(&history, 2), vec![9, 8]);
        // A longer match wins over a later, shorter one: "7 1 2" occurred once.
        let history = [7, 1, 2, 6, 6, 1, 2, 5, 7, 1, 2];
        assert_eq!(
            spec.propose(&history, 10),
            Lookup {
                tokens: vec![6, 6, 1],
                matched: 3
            }
        );
        // Matches count up to `max_ngram` tokens: then the latest wins.
        let history = [9, 1, 2, 3, 4, 5, 0, 8, 2, 3, 4, 6, 0, 1, 2, 3, 4];
        assert_eq!(tokens(&history, 10), vec![6, 0, 1]);
        let longer = NgramSpeculation {
            max_ngram: 4,
            ..spec
        };
        assert_eq!(longer.propose(&history, 10).tokens, vec![5, 0, 8]);
        assert_eq!(longer.propose(&history, 10).matched, 4);
        // A run of one token repeated matches itself, one token behind.
        assert_eq!(tokens(&[4, 4, 4, 4], 10), vec![4]);
        // Nothing repeats: nothing to propose.
        assert_eq!(spec.propose(&[1, 2, 3, 4], 10), Lookup::default());
        assert!(tokens(&[], 10).is_empty());
        let strict = NgramSpeculation {
            min_ngram: 2,
            ..spec
        };
        assert!(strict.propose(&[5, 1, 6, 1], 10).tokens.is_empty());
        assert_eq!(tokens(&[5, 1, 6, 1], 10), vec![6, 1]);
    }
}
