//! Text ↔ token ids from a GGUF vocabulary, built on the `tokenizers` crate.
//!
//! GPT-2-style byte-level BPE (`tokenizer.ggml.model = gpt2`) gets the pre-tokenizer
//! named by `tokenizer.ggml.pre` (`pretokenizer`); SentencePiece-style vocabularies
//! (`llama`) become a byte-fallback BPE whose merges are derived from the token scores.
//! Decoding is done here from each token's bytes, so streaming can emit only complete
//! UTF-8.

use crate::error::{EngineError, Result};
use crate::pretokenizer::{known_names, pre_tokenizer, PreTokenizer};
use gguf::Metadata;
use std::ops::Range;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_BYTE: i32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    BytePairs,
    SentencePiece,
}

pub struct Tokenizer {
    kind: Kind,
    /// Parses control tokens such as `<|im_start|>` in the text.
    parsing_special: tokenizers::Tokenizer,
    /// Treats control tokens' text as plain text.
    plain: tokenizers::Tokenizer,
    /// What each token decodes to.
    pieces: Vec<Vec<u8>>,
    token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// SentencePiece's leading space: `encode` of a piece of text starts a new word.
    space_prefix: bool,
    /// Tokens that end a generation (EOS, EOT, `<|im_end|>`, ...).
    end_of_generation: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// GPT-2's reversible map from bytes to printable characters.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('\0')
        };
    }
    table
}

impl Tokenizer {
    pub fn from_metadata(m: &Metadata) -> Result<Tokenizer> {
        let model = m.get_str("tokenizer.ggml.model")?;
        let tokens = m.get_str_array("tokenizer.ggml.tokens")?;
        let token_types = m
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap_or_else(|_| vec![TOKEN_NORMAL; tokens.len()]);
        if token_types.len() != tokens.len() {
            return Err(tok_err(format!(
                "{} token types for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        let kind = match model {
            "gpt2" => Kind::BytePairs,
            "llama" => Kind::SentencePiece,
            other => {
                return Err(tok_err(format!(
                    "tokenizer model {other:?} is not supported (supported: gpt2, llama)"
                )))
            }
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let mut space_prefix = false;
        let mut add_bos_by_default = kind == Kind::SentencePiece;
        let mut base = match kind {
            Kind::BytePairs => {
                let merges = m
                    .get_str_array("tokenizer.ggml.merges")?
                    .iter()
                    .map(|line| {
                        line.split_once(' ')
                            .map(|(a, b)| (a.to_owned(), b.to_owned()))
                            .ok_or_else(|| tok_err(format!("malformed merge {line:?}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let pre = m.get_str("tokenizer.ggml.pre").unwrap_or("default");
                let (splits, rule) = byte_level_pre_tokenizer(pre)?;
                add_bos_by_default = rule.add_bos;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(rule.ignore_merges)
                    .build()
                    .map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(splits));
                t
            }
            Kind::SentencePiece => {
                let scores = m.get_f32_array("tokenizer.ggml.scores")?;
                let merges = merges_from_scores(&tokens, &scores, &token_types);
                let unk = m
                    .get_u32("tokenizer.ggml.unknown_token_id")
                    .ok()
                    .and_then(|id| tokens.get(id as usize))
                    .map(|s| s.to_string());
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true);
                if let Some(unk) = unk {
                    builder = builder.unk_token(unk);
                }
                let mut t = tokenizers::Tokenizer::new(builder.build().map_err(tok_err)?);
                let add_space = m
                    .get_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true);
                let mut normalizers = vec![];
                space_prefix = add_space;
                if add_space {
                    normalizers.push(Prepend::new("▁".into()).into());
                }
                normalizers.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
                t.with_normalizer(Some(NormSequence::new(normalizers)))
                    .map_err(tok_err)?;
                t
            }
        };
        let added = |wanted: i32| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&token_types)
                .filter(|(_, &ty)| ty == wanted)
                .map(|(t, _)| AddedToken::from(t.to_string(), wanted == TOKEN_CONTROL))
                .collect()
        };
        base.add_special_tokens(added(TOKEN_CONTROL))
            .map_err(tok_err)?;
        base.add_tokens(added(TOKEN_USER_DEFINED))
            .map_err(tok_err)?;
        let mut plain = base.clone();
        plain.set_encode_special_tokens(true);

        let table = byte_chars();
        let pieces = tokens
            .iter()
            .zip(&token_types)
            .map(|(t, &ty)| decode_piece(kind, t, ty, &table))
            .collect();

        let id = |k: &str| m.get_u32(&format!("tokenizer.ggml.{k}_token_id")).ok();
        let (bos, eos) = (id("bos"), id("eos"));
        let mut end_of_generation: Vec<u32> =
            [eos, id("eot"), id("eom")].into_iter().flatten().collect();
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|endoftext|>",
            "<end_of_turn>",
        ] {
            if let Some(i) = tokens.iter().position(|t| *t == name) {
                if token_types[i] == TOKEN_CONTROL {
                    end_of_generation.push(i as u32);
                }
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        Ok(Tokenizer {
            kind,
            parsing_special: base,
            plain,
            pieces,
            token_types,
            bos,
            eos,
            add_bos: m
                .get_bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(add_bos_by_default),
            space_prefix,
            end_of_generation,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Token ids of `text`, without BOS. Control tokens written in the text are
    /// recognised only when `parse_special` is set.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let t = if parse_special {
            &self.parsing_special
        } else {
            &self.plain
        };
        let encoding = t.encode(text, false).map_err(tok_err)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Like `encode`, with BOS prepended when the model asks for it.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend(self.encode(text, parse_special)?);
        Ok(ids)
    }

    /// Like `encode_prompt` with control tokens parsed, except that a control token's
    /// spelling overlapping one of the `literal` byte ranges of `text` stays plain text.
    /// The text between the control tokens that count is encoded piece by piece, as
    /// `encode` with parsing does, so with no literal ranges the ids equal
    /// `encode_prompt(text, true)`.
    pub fn encode_prompt_with_literals(
        &self,
        text: &str,
        literal: &[Range<usize>],
    ) -> Result<Vec<u32>> {
        let mut ids = self.encode_prompt("", false)?;
        let mut piece_start = 0;
        for (id, span) in self.control_matches(text)? {
            if literal
                .iter()
                .any(|l| l.start < span.end && span.start < l.end)
            {
                continue;
            }
            ids.extend(self.encode(&text[piece_start..span.start], false)?);
            ids.push(id);
            piece_start = span.end;
        }
        ids.extend(self.encode(&text[piece_start..], false)?);
        Ok(ids)
    }

    /// The control tokens that parsing finds in `text`, with their byte ranges.
    pub fn control_matches(&self, text: &str) -> Result<Vec<(u32, Range<usize>)>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let encoding = self.parsing_special.encode(text, false).map_err(tok_err)?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .filter(|(&id, _)| self.is_control(id))
            .map(|(&id, &(start, end))| (id, start..end))
            .collect())
    }

    /// The bytes token `id` stands for (control tokens: their text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.token_types.get(id as usize) == Some(&TOKEN_CONTROL)
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    pub fn end_of_generation_tokens(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The text of `ids`; invalid UTF-8 is replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).to_vec())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether `encode(text)` is the model's own tokenization of `text` wherever it
    /// stands (not so when SentencePiece prefixes a space).
    pub fn encodes_canonically(&self) -> bool {
        !self.space_prefix
    }

    pub fn is_sentencepiece(&self) -> bool {
        self.kind == Kind::SentencePiece
    }
}

/// The pre-tokenizer `tokenizer.ggml.pre = name` stands for: its splits, then GPT-2's
/// byte map.
fn byte_level_pre_tokenizer(name: &str) -> Result<(PreTokenizerWrapper, &'static PreTokenizer)> {
    let rule = pre_tokenizer(name).ok_or_else(|| {
        tok_err(format!(
            "pre-tokenizer {name:?} (tokenizer.ggml.pre) is not supported; known: {}",
            known_names().join(", ")
        ))
    })?;
    let mut steps: Vec<PreTokenizerWrapper> = rule
        .regexes
        .iter()
        .map(|r| {
            let pattern = SplitPattern::Regex((*r).into());
            Ok(Split::new(pattern, SplitDelimiterBehavior::Isolated, false)
                .map_err(tok_err)?
                .into())
        })
        .collect::<Result<_>>()?;
    steps.push(ByteLevel::new(false, true, false).into());
    Ok((Sequence::new(steps).into(), rule))
}

fn decode_piece(kind: Kind, text: &str, ty: i32, table: &[char; 256]) -> Vec<u8> {
    if ty == TOKEN_CONTROL {
        return text.as_bytes().to_vec();
    }
    match kind {
        Kind::BytePairs => text
            .chars()
            .flat_map(|c| match table.iter().position(|&t| t == c) {
                Some(b) => vec![b as u8],
                None => c.to_string().into_bytes(),
            })
            .collect(),
        Kind::SentencePiece => {
            if ty == TOKEN_BYTE {
                if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        return vec![b];
                    }
                }
            }
            text.replace('▁', " ").into_bytes()
        }
    }
}

/// SentencePiece vocabularies carry scores, not merges: every token that splits into
/// two tokens gives a merge, ranked by the merged token's score.
fn merges_from_scores(tokens: &[&str], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let index: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f32, usize, usize, String, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if types.get(i) != Some(&TOKEN_NORMAL) && types.get(i) != Some(&TOKEN_USER_DEFINED) {
            continue;
        }
        for (split, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(split);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((
                    scores.get(i).copied().unwrap_or(0.0),
                    ia,
                    ib,
                    a.into(),
                    b.into(),
                ));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges.into_iter().map(|(_, _, _, a, b)| (a, b)).collect()
}
