//! How many prompt tokens a step may carry while other sequences are decoding: chunked
//! prefill bounds a long prompt's chunk by the step's token budget, but a chunk deep in a
//! long context costs far more per token than one near its start, so a fixed budget
//! cannot bound the decoding streams' inter-token latency. The cap is adapted from the
//! measured time of each step that mixed prompt and decode rows: shrunk in proportion
//! when a step overran the target, grown by a quarter when it finished well inside it,
//! starting small.

use std::time::Duration;

/// The smallest cap: a step always makes some progress on a waiting prompt.
const FLOOR: usize = 16;

/// The first cap, before any step was measured: small, since an overrun costs every
/// stream a slow token, and growing to fit takes only a few steps.
const START: usize = 64;

#[derive(Clone, Debug)]
pub(super) struct PrefillPacing {
    /// None: no target, prompt chunks take the whole budget.
    target: Option<Duration>,
    cap: usize,
    max: usize,
}

impl PrefillPacing {
    pub fn new(target: Option<Duration>, max_batch_tokens: usize) -> PrefillPacing {
        PrefillPacing {
            target: target.filter(|t| !t.is_zero()),
            cap: START.min(max_batch_tokens),
            max: max_batch_tokens,
        }
    }

    /// Prompt tokens this step may carry, given whether any sequence decodes in it.
    pub fn prompt_budget(&self, decoding: bool) -> usize {
        match (self.target, decoding) {
            (Some(_), true) => self.cap,
            _ => self.max,
        }
    }

    /// Learns from a step that took `elapsed` with `prompt_tokens` prompt rows beside
    /// decoding rows (steps without both say nothing about the trade-off).
    pub fn observe(&mut self, prompt_tokens: usize, decoding: bool, elapsed: Duration) {
        let Some(target) = self.target else { return };
        if !decoding || prompt_tokens == 0 {
            return;
        }
        let ratio = elapsed.as_secs_f64() / target.as_secs_f64();
        self.cap = if ratio > 1.0 {
            // Aim a little under the target: the next chunk sits deeper in the context.
            (prompt_tokens as f64 * 0.9 / ratio) as usize
        } else if ratio < 0.7 && prompt_tokens >= self.cap {
            self.cap + self.cap.div_ceil(4)
        } else {
            self.cap
        }
        .clamp(FLOOR.min(self.max), self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_a_target_prompts_take_the_whole_budget() {
        let mut p = PrefillPacing::new(None, 512);
        p.observe(512, true, 5000 * MS);
        assert_eq!(p.prompt_budget(true), 512);
    }

    #[test]
    fn an_overrun_shrinks_the_cap_in_proportion_and_headroom_grows_it_back() {
        let mut p = PrefillPacing::new(Some(100 * MS), 512);
        assert_eq!(p.prompt_budget(true), 64, "cautious before any measurement");
        p.observe(512, true, 400 * MS);
        assert_eq!(p.prompt_budget(true), 115); // 512 · 0.9 / 4
        assert_eq!(
            p.prompt_budget(false),
            512,
            "no stream waits: the whole budget"
        );
        p.observe(115, true, 50 * MS);
        assert_eq!(p.prompt_budget(true), 144);
        // A step whose prompt did not fill the cap says nothing about a larger one.
        p.observe(20, true, 10 * MS);
        assert_eq!(p.prompt_budget(true), 144);
        // Steps without decoding rows are not the trade-off being tuned.
        p.observe(144, false, 900 * MS);
        assert_eq!(p.prompt_budget(true), 144);
        p.observe(144, true, 10_000 * MS);
        assert_eq!(p.prompt_budget(true), 16, "never below the floor");
        for _ in 0..40 {
            let cap = p.prompt_budget(true);
            p.observe(cap, true, 10 * MS);
        }
        assert_eq!(p.prompt_budget(true), 512, "never above the step budget");
    }

    #[test]
    fn a_step_budget_below_the_floor_is_the_cap() {
        let mut p = PrefillPacing::new(Some(100 * MS), 5);
        assert_eq!(p.prompt_budget(true), 5);
        p.observe(5, true, 1000 * MS);
        assert_eq!(p.prompt_budget(true), 5);
    }
}
