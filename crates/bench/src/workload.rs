//! What the load generator sends: synthetic prompts of a chosen length (in words of a
//! fixed list, about one token each for BPE vocabularies), or prompts from a JSONL file.

use serde_json::Value;
use std::path::Path;

/// One request's input: a chat conversation or a plain prompt, and its output length.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub messages: Vec<(String, String)>,
    pub max_tokens: usize,
    /// The kind of task, where a dataset names it (`bench spec` groups by it).
    pub task: Option<String>,
}

const WORDS: &[&str] = &[
    "the", "river", "stone", "light", "market", "garden", "winter", "paper", "engine", "city",
    "music", "forest", "window", "story", "bridge", "morning", "silver", "ocean", "letter", "road",
    "table", "mountain", "friend", "summer", "cloud", "school", "train", "house", "field", "voice",
];

/// A small deterministic generator (SplitMix64), so a seed fixes the workload.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential interval of mean `1 / rate`.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }

    /// Uniform in [lo, hi].
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.unit() * (hi - lo + 1) as f64) as usize
    }
}

/// `n` prompts of about `input_len` words asking for `output_len` tokens; each length is
/// drawn uniformly from `len × [1 − range_ratio, 1 + range_ratio]`.
pub fn synthetic(
    n: usize,
    input_len: usize,
    output_len: usize,
    range_ratio: f64,
    seed: u64,
) -> Vec<Prompt> {
    let mut rng = Rng::new(seed);
    let span = |rng: &mut Rng, len: usize| {
        let lo = ((len as f64) * (1.0 - range_ratio)).round().max(1.0) as usize;
        let hi = ((len as f64) * (1.0 + range_ratio)).round().max(lo as f64) as usize;
        rng.between(lo, hi)
    };
    (0..n)
        .map(|_| {
            let words = span(&mut rng, input_len);
            let text: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.next_u64() as usize % WORDS.len()])
                .collect();
            Prompt {
                messages: vec![("user".into(), text.join(" "))],
                max_tokens: span(&mut rng, output_len),
                task: None,
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0} holds no prompts")]
    Empty(String),
}

/// A JSONL file: each line `{"prompt": "…"}` or `{"messages": [{"role", "content"}, …]}`,
/// with an optional `"max_tokens"` (default `output_len`) and `"task"`.
pub fn from_jsonl(path: &Path, output_len: usize) -> Result<Vec<Prompt>, DatasetError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Read {
        path: name.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |message: String| DatasetError::Line {
            path: name.clone(),
            line: i + 1,
            message,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let messages = if let Some(p) = v.get("prompt").and_then(Value::as_str) {
            vec![("user".to_string(), p.to_string())]
        } else if let Some(list) = v.get("messages").and_then(Value::as_array) {
            list.iter()
                .map(|m| {
                    match (
                        m.get("role").and_then(Value::as_str),
                        m.get("content").and_then(Value::as_str),
                    ) {
                        (Some(r), Some(c)) => Ok((r.to_string(), c.to_string())),
                        _ => Err(bad("every message needs a string role and content".into())),
                    }
                })
                .collect::<Result<_, _>>()?
        } else {
            return Err(bad("expected \"prompt\" or \"messages\"".into()));
        };
        let max_tokens = v
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map_or(output_len, |m| m as usize);
        out.push(Prompt {
            messages,
            max_tokens,
            task: v.get("task").and_then(Value::as_str).map(str::to_owned),
        });
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_prompts_are_reproducible_and_within_range() {
        let a = synthetic(20, 100, 50, 0.2, 1);
        assert_eq!(a, synthetic(20, 100, 50, 0.2, 1));
        assert_ne!(a, synthetic(20, 100, 50, 0.2, 2));
        for p in &a {
            let words = p.messages[0].1.split(' ').count();
            assert!((80..=120).contains(&words), "{words}");
            assert!((40..=60).contains(&p.max_tokens));
        }
        let fixed = synthetic(3, 10, 5, 0.0, 0);
        assert!(fixed
            .iter()
            .all(|p| p.messages[0].1.split(' ').count() == 10 && p.max_tokens == 5));
    }

    #[test]
    fn jsonl_prompts_and_conversations_load_and_bad_lines_name_their_number() {
        let dir = std::env::temp_dir().join(format!("bench-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(&good, "{\"prompt\": \"hi\", \"max_tokens\": 3}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}]}\n").unwrap();
        let p = from_jsonl(&good, 9).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].max_tokens, p[1].max_tokens), (3, 9));
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"prompt\": \"ok\"}\n{\"nothing\": 1}\n").unwrap();
        assert!(from_jsonl(&bad, 9)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
