//! Counters and latency histograms the engine keeps about itself; the server exports
//! them. The engine thread updates them after every step; readers take a snapshot.

use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram over `LATENCY_BUCKETS`, as Prometheus expects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `counts[i]`: observations ≤ `LATENCY_BUCKETS[i]`.
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (c, &le) in self.counts.iter_mut().zip(&LATENCY_BUCKETS) {
            if s <= le {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Full blocks kept for prefix reuse (held or not).
    pub kv_blocks_cached: usize,
    /// The same for the windowed layers' pool (`kv_groups`), zeros without one.
    pub kv_window_blocks_used: usize,
    pub kv_window_blocks_total: usize,
    pub kv_window_blocks_cached: usize,
    /// The draft model's pool (serving with a draft model; zeros without one).
    pub draft_kv_blocks_used: usize,
    pub draft_kv_blocks_total: usize,
    /// Tokens run through the draft model (prompts and answers read, tokens drafted),
    /// and the seconds its passes took.
    pub draft_tokens: u64,
    pub draft_seconds: f64,
    /// Prompt tokens looked up in the prefix cache, and how many were found.
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub preemptions: u64,
    pub requests_finished: u64,
    pub requests_refused: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub steps: u64,
    /// Speculative decoding: tokens proposed and checked, and how many were kept.
    pub speculative_proposed_tokens: u64,
    pub speculative_accepted_tokens: u64,
    /// From submission to admission.
    pub queue_time: Histogram,
    /// From submission to the first token.
    pub time_to_first_token: Histogram,
    /// Between consecutive tokens of a sample.
    pub inter_token_latency: Histogram,
}

impl Metrics {
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queried_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_queried_tokens as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        assert_eq!(h.count, 2);
        assert_eq!(h.counts[0], 0); // ≤ 1 ms
        assert_eq!(h.counts[2], 1); // ≤ 5 ms
        assert_eq!(h.counts[10], 2); // ≤ 2.5 s
        assert!((h.sum - 2.003).abs() < 1e-9);
    }
}
