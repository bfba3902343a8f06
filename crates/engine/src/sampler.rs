//! Choosing the next token from logits: penalties, logit bias, then llama.cpp's
//! default chain top-k → typical-p → top-p → min-p → temperature → draw.
//! Temperature 0 (or below) is greedy. A seed makes draws reproducible.

use crate::error::{EngineError, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables.
    pub typical_p: f32,
    /// 1 disables; divides positive logits (multiplies negative ones) of recent tokens,
    /// the prompt's included (llama.cpp's `--repeat-penalty`).
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at (0: none).
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token already generated (OpenAI's meaning:
    /// the generated text only, all of it).
    pub presence_penalty: f32,
    /// Subtracted from a generated token's logit once for each time it was generated.
    pub frequency_penalty: f32,
    /// Added to the logits of the given tokens (-inf bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Rejects NaN, negative and out-of-range values, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f32, want: &str| {
            Err(EngineError::Sampling(format!(
                "{name} is {v}, expected {want}"
            )))
        };
        let checks = [
            ("temperature", self.temperature, 0.0, f32::MAX),
            ("top_p", self.top_p, 0.0, 1.0),
            ("min_p", self.min_p, 0.0, 1.0),
            ("typical_p", self.typical_p, 0.0, 1.0),
            ("repeat_penalty", self.repeat_penalty, 0.0, f32::MAX),
            ("presence_penalty", self.presence_penalty, -2.0, 2.0),
            ("frequency_penalty", self.frequency_penalty, -2.0, 2.0),
        ];
        for (name, v, lo, hi) in checks {
            if !v.is_finite() || v < lo || v > hi {
                let range = if hi == f32::MAX {
                    format!("a finite number >= {lo}")
                } else {
                    format!("a number in [{lo}, {hi}]")
                };
                return bad(name, v, &range);
            }
        }
        if self.repeat_penalty == 0.0 {
            return bad("repeat_penalty", 0.0, "a number > 0");
        }
        for &(id, b) in &self.logit_bias {
            if b.is_nan() {
                return Err(EngineError::Sampling(format!(
                    "logit_bias for token {id} is NaN"
                )));
            }
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same sequence on every platform and version.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

/// (token, logit) pairs still in the running.
type Candidates = Vec<(u32, f32)>;

fn softmax(c: &Candidates) -> Vec<f64> {
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.1)) as f64;
    let exps: Vec<f64> = c.iter().map(|x| (x.1 as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// ln Σ exp(logits), computed around the maximum so it cannot overflow.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = Rng(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Restarts the random stream from `seed` (another sample of the same request).
    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = Rng(seed);
    }

    /// Applies logit bias and the penalties in place. `history` is the prompt and then
    /// the tokens generated, from `history[prompt_len]` on.
    pub fn apply_penalties(&self, logits: &mut [f32], history: &[u32], prompt_len: usize) {
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if p.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if let (true, Some(l)) = (seen.insert(t), logits.get_mut(t as usize)) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let generated = &history[prompt_len.min(history.len())..];
            let mut counts: std::collections::HashMap<u32, u32> = Default::default();
            for &t in generated {
                *counts.entry(t).or_default() += 1;
            }
            for (&t, &n) in &counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
    }

    /// Picks the next token given the logits and the tokens so far (the prompt's
    /// `prompt_len` first).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], prompt_len: usize) -> u32 {
        self.apply_penalties(logits, history, prompt_len);
        let p = self.params.clone();
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut c: Candidates = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        top_k(&mut c, p.top_k);
        typical(&mut c, p.typical_p);
        top_p(&mut c, p.top_p);
        min_p(&mut c, p.min_p);
        for x in c.iter_mut() {
            x.1 /= p.temperature;
        }
        let probs = softmax(&c);
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (x, &pr) in c.iter().zip(&probs) {
            acc += pr;
            if r < acc {
                return x.0;
            }
        }
        c.last().map_or(0, |x| x.0)
    }
}

fn top_k(c: &mut Candidates, k: usize) {
    if k > 0 && k < c.len() {
        c.truncate(k);
    }
}

/// Keeps the smallest prefix whose probability reaches `p` (at least one token).
fn top_p(c: &mut Candidates, p: f32) {
    if p >= 1.0 {
        return;
    }
    let probs = softmax(c);
    let mut acc = 0.0;
    for (i, pr) in probs.iter().enumerate() {
        acc += pr;
        if acc >= p as f64 {
            c.truncate(i + 1);
            return;
        }
    }
}

/// Keeps tokens at least `p` times as likely as the most likely one.
fn min_p(c: &mut Candidates, p: f32) {
    if p <= 0.0 || c.is_empty() {
        return;
    }
    let threshold = c[0].1 + (p as f64).ln() as f32;
    let keep = c.iter().take_while(|x| x.1 >= threshold).count().max(1);
    c.truncate(keep);
}

/// Locally typical sampling: keeps the tokens whose surprise is closest to the
/// distribution's entropy, up to total probability `p`.
fn typical(c: &mut Candidates, p: f32) {
    if p >= 1.0 || c.len() < 2 {
        return;
    }
    let probs = softmax(c);
    let entropy: f64 = probs
        .iter()
        .filter(|&&q| q > 0.0)
        .map(|q| -q * q.ln())
        .sum();
    let mut order: Vec<usize> = (0..c.len()).collect();
    let distance = |i: usize| (-(probs[i].max(f64::MIN_POSITIVE)).ln() - entropy).abs();
    order.sort_by(|&a, &b| distance(a).total_cmp(&distance(b)));
    let mut acc = 0.0;
    let mut keep = order.len();
    for (n, &i) in order.iter().enumerate() {
        acc += probs[i];
        if acc >= p as f64 {
            keep = n + 1;
            break;
        }
    }
    let mut kept: Vec<usize> = order[..keep].to_vec();
    kept.sort_unstable();
    *c = kept.into_iter().map(|i| c[i]).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Candidates {
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect()
    }

    fn ids(c: &Candidates) -> Vec<u32> {
        c.iter().map(|x| x.0).collect()
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[], 0), 1);
    }

    #[test]
    fn top_k_keeps_k_best() {
        let mut c = cands(&[5.0, 4.0, 3.0, 2.0]);
        top_k(&mut c, 2);
        assert_eq!(ids(&c), [0, 1]);
        top_k(&mut c, 0);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_prefix() {
        // probabilities ≈ 0.665, 0.245, 0.090
        let mut c = cands(&[2.0, 1.0, 0.0]);
        top_p(&mut c, 0.9);
        assert_eq!(ids(&c), [0, 1]);
        let mut c = cands(&[2.0, 1.0, 0.0]);
        top_p(&mut c, 0.5);
        assert_eq!(ids(&c), [0]);
    }

    #[test]
    fn min_p_is_relative_to_the_best() {
        let mut c = cands(&[0.0, -0.5, -3.0]);
        min_p(&mut c, 0.5); // keeps p >= 0.5·p_max: e^-0.5 = 0.61 stays, e^-3 goes
        assert_eq!(ids(&c), [0, 1]);
    }

    #[test]
    fn typical_drops_the_too_likely_and_the_too_unlikely() {
        let mut c = cands(&[3.0, 1.0, 1.0, 1.0, -5.0]);
        typical(&mut c, 0.5);
        assert!(!ids(&c).contains(&4));
        assert!(!c.is_empty());
    }

    #[test]
    fn penalties_and_bias() {
        let s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(3, -100.0)],
            ..SamplingParams::greedy()
        })
        .unwrap();
        let mut l = [4.0, -1.0, 1.0, 9.0, 2.0];
        // Token 4 is in the prompt: the repeat penalty sees it, the others do not.
        s.apply_penalties(&mut l, &[4, 0, 0, 1], 1);
        assert_eq!(
            l,
            [4.0 / 2.0 - 0.5 - 0.5, -2.0 - 0.5 - 0.25, 1.0, -91.0, 1.0]
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seeds_differ() {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params.clone()
            })
            .unwrap();
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[], 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        let a = draw(42);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 5);
    }

    #[test]
    fn temperature_sharpens() {
        let logits = [1.0f32, 0.0];
        let count = |t: f32| {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 7,
                ..Default::default()
            })
            .unwrap();
            (0..2000)
                .filter(|_| s.sample(&mut logits.clone(), &[], 0) == 0)
                .count()
        };
        assert!(count(0.2) > count(1.0) && count(1.0) > count(5.0));
    }

    #[test]
    fn invalid_values_are_rejected_by_name() {
        for bad in [
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
        ] {
            let e = Sampler::new(bad).unwrap_err().to_string();
            assert!(
                e.contains("temperature") || e.contains("top_p") || e.contains("min_p"),
                "{e}"
            );
        }
    }
}
