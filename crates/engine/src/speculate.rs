//! Speculative decoding by n-gram lookup (vLLM's "prompt lookup", llama.cpp's
//! `lookup`): when the last few tokens occurred earlier in the prompt or the output, the
//! tokens that followed them then are proposed as the next ones. One forward pass scores
//! the sampled token and the proposals together; a proposal is kept while it equals the
//! token the sampler draws from the logits before it. Every logit is the one one-token
//! decoding would give (`Llama::verify`), and the sampler draws once per kept token as it
//! would without speculation, so the output is the same token for token — greedy or
//! seeded — only sooner when proposals are right.

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
            max_ngram: 3,
            min_ngram: 2,
        }
    }
}

impl NgramSpeculation {
    /// Up to `limit` (and `max_draft`) tokens that followed the latest earlier occurrence
    /// of `history`'s last n tokens, for the longest n that occurs; none if none does.
    pub fn propose(&self, history: &[u32], limit: usize) -> Vec<u32> {
        let limit = limit.min(self.max_draft);
        if limit == 0 {
            return Vec::new();
        }
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if history.len() <= n {
                continue;
            }
            let tail = &history[history.len() - n..];
            // The latest occurrence that ends before the tail itself.
            let found = (0..history.len() - n)
                .rev()
                .find(|&at| &history[at..at + n] == tail);
            if let Some(at) = found {
                let next = at + n;
                let end = (next + limit).min(history.len());
                return history[next..end].to_vec();
            }
        }
        Vec::new()
    }
}

/// Chooses how many of the proposed tokens to check, from what a pass of so many rows
/// costs on this machine and how often proposals are kept, both measured as generation
/// goes: checking k proposals yields 1 + α + … + αᵏ tokens on average (α: the chance a
/// proposal is kept after its predecessors were), for the time of a (k + 1)-row pass.
/// Where the cost of a pass has not been measured yet, it is taken as that of the
/// largest measured smaller one, so that larger checks get tried when proposals are kept.
#[derive(Clone, Debug, Default)]
pub struct DraftTuner {
    /// Decayed counts of proposals kept, and of proposals decided (kept or not).
    kept: f64,
    decided: f64,
    /// Seconds of a pass of r rows at index r (decayed average; 0: not measured).
    seconds: Vec<f64>,
}

/// How much of the past the tuner's averages keep at each update.
const DECAY: f64 = 0.8;

impl DraftTuner {
    /// How many of `available` proposals to check (0: decode the sampled token alone).
    pub fn choose(&self, available: usize) -> usize {
        let measured = |r: usize| self.seconds.get(r).copied().filter(|&s| s > 0.0);
        let Some(one) = measured(1) else {
            return 0; // measure a plain step first
        };
        let keep = (self.kept + 1.0) / (self.decided + 2.0);
        let (mut best, mut best_rate) = (0, 1.0 / one);
        let (mut expected, mut chance, mut cost) = (1.0, 1.0, one);
        for k in 1..=available {
            chance *= keep;
            expected += chance;
            cost = measured(k + 1).unwrap_or(cost);
            if expected / cost > best_rate {
                (best, best_rate) = (k, expected / cost);
            }
        }
        best
    }

    /// A pass of `rows` rows took `seconds`.
    pub fn timed(&mut self, rows: usize, seconds: f64) {
        if self.seconds.len() <= rows {
            self.seconds.resize(rows + 1, 0.0);
        }
        let s = &mut self.seconds[rows];
        *s = match *s {
            0.0 => seconds,
            old => DECAY * old + (1.0 - DECAY) * seconds,
        };
    }

    /// Of `checked` proposals, the first `kept` were kept.
    pub fn outcome(&mut self, checked: usize, kept: usize) {
        let decided = kept + (kept < checked) as usize;
        self.kept = DECAY * self.kept + kept as f64;
        self.decided = DECAY * self.decided + decided as f64;
    }
}

/// What speculation did over one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpeculationStats {
    /// Tokens proposed, and how many of them were kept.
    pub drafted: usize,
    pub accepted: usize,
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

    #[test]
    fn the_tuner_checks_more_when_proposals_are_kept_and_cheap() {
        let mut tuner = DraftTuner::default();
        assert_eq!(tuner.choose(8), 0, "nothing measured: a plain step first");
        tuner.timed(1, 0.010);
        // Nothing known of larger passes: they are assumed to cost a plain step's time.
        assert_eq!(tuner.choose(8), 8);
        // Passes cost about 1 step per row, and proposals are seldom kept: not worth it.
        for r in 2..=9 {
            tuner.timed(r, 0.010 * r as f64);
        }
        for _ in 0..10 {
            tuner.outcome(4, 0);
        }
        assert_eq!(tuner.choose(8), 0);
        // Passes are cheap and proposals are kept: check them all.
        for _ in 0..20 {
            (2..=9).for_each(|r| tuner.timed(r, 0.011));
        }
        for _ in 0..20 {
            tuner.outcome(8, 8);
        }
        assert_eq!(tuner.choose(8), 8);
        // Half kept, and each row costs 30 % of a step: a few, not all.
        let mut tuner = DraftTuner::default();
        for r in 1..=9 {
            tuner.timed(r, 0.010 * (1.0 + 0.3 * (r - 1) as f64));
        }
        for _ in 0..30 {
            tuner.outcome(2, 1);
        }
        let k = tuner.choose(8);
        assert!((1..8).contains(&k), "{k}");
    }

    #[test]
    fn proposals_follow_the_latest_longest_match() {
        let spec = NgramSpeculation {
            max_draft: 3,
            max_ngram: 3,
            min_ngram: 1,
        };
        // "1 2 3 4 5 ... 1 2 3 9 ... 2 3": the last "2 3" was last followed by 9.
        let history = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 2, 3];
        assert_eq!(spec.propose(&history, 10), vec![9, 8, 2]);
        // Only 2 may be proposed here.
        assert_eq!(spec.propose(&history, 2), vec![9, 8]);
        // A longer match wins over a later, shorter one: "7 1 2" occurred once.
        let history = [7, 1, 2, 6, 6, 1, 2, 5, 7, 1, 2];
        assert_eq!(spec.propose(&history, 10), vec![6, 6, 1]);
        // Nothing repeats: nothing to propose.
        assert!(spec.propose(&[1, 2, 3, 4], 10).is_empty());
        assert!(spec.propose(&[], 10).is_empty());
        let strict = NgramSpeculation {
            min_ngram: 2,
            ..spec
        };
        assert!(strict.propose(&[5, 1, 6, 1], 10).is_empty());
        assert_eq!(spec.propose(&[5, 1, 6, 1], 10), vec![6, 1]);
    }
}
