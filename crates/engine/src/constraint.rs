//! Constrained decoding: a request's JSON Schema, regex, Lark grammar or list of choices,
//! compiled by llguidance against the model's vocabulary. Each sample gets a matcher
//! that masks the logits before sampling and follows every token chosen, so the output
//! is valid by construction.

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON document valid under `schema`. Keywords llguidance cannot enforce are
    /// refused when `strict`, ignored otherwise.
    JsonSchema { schema: Value, strict: bool },
    /// A match of this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// A sentence of this grammar in llguidance's Lark dialect.
    Lark(String),
    /// A sentence of this grammar in llama.cpp's GBNF (translated to Lark).
    Gbnf(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

impl Constraint {
    fn grammar(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(with_json_style(json!({"type": "object"}), true))
            }
            Constraint::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(with_json_style(schema.clone(), !strict))
            }
            Constraint::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Constraint::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
            Constraint::Gbnf(grammar) => TopLevelGrammar::from_lark(
                crate::gbnf::gbnf_to_lark(grammar).map_err(EngineError::Constraint)?,
            ),
            Constraint::Choice(choices) => {
                if choices.is_empty() {
                    return Err(EngineError::Constraint(
                        "the list of choices is empty".into(),
                    ));
                }
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
        })
    }
}

/// JSON written as people write it on one line (`{"a": 1, "b": [2, 3]}`), with no
/// free whitespace, which small models can otherwise emit forever. A schema that sets
/// llguidance's own `x-guidance` options keeps them.
pub(crate) fn with_json_style(mut schema: Value, lenient: bool) -> Value {
    if let Value::Object(fields) = &mut schema {
        fields.entry("x-guidance").or_insert(json!({
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": lenient,
            "coerce_one_of": lenient,
        }));
    }
    schema
}

/// Compiles constraints for one model's vocabulary (built once; cheap to share).
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// The vocabulary as llguidance sees it: each id's bytes as our detokenizer gives
    /// them, control tokens marked special (`0xFF` then their text), and the
    /// end-of-generation tokens as EOS. Ids past the tokenizer's (padding) are empty:
    /// never allowed.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Grammars> {
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                if tokenizer.is_control(id) && !bytes.is_empty() {
                    [&[TokTrie::SPECIAL_TOKEN_MARKER], bytes].concat()
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let eos = tokenizer.end_of_generation_tokens();
        let first_eos = eos.first().copied().unwrap_or(0);
        let mut info = TokRxInfo::new(vocab_size as u32, first_eos);
        info.tok_bos = tokenizer.bos;
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(Vocabulary { tokenizer, trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(constraint_error)?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // A schema that needs more is refused at compile time, not in a step.
            max_grammar_size: 500_000,
            initial_lexer_fuel: 1_000_000,
            ..ParserLimits::default()
        };
        Ok(Grammars { factory })
    }

    /// A fresh matcher for `constraint`; an invalid or too large one is an error that
    /// names the problem.
    pub fn compile(&self, constraint: &Constraint) -> Result<GrammarState> {
        let parser = self
            .factory
            .create_parser(constraint.grammar()?)
            .map_err(constraint_error)?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(EngineError::Constraint(e)),
            None => Ok(GrammarState { matcher }),
        }
    }

    pub fn trie(&self) -> &TokTrie {
        self.factory.tok_env().tok_trie()
    }
}

fn constraint_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Constraint(e.to_string())
}

/// Where one sample is in its grammar.
pub struct GrammarState {
    matcher: Matcher,
}

impl std::fmt::Debug for GrammarState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarState")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl Clone for GrammarState {
    /// An independent copy (`n > 1` samples each follow their own tokens).
    fn clone(&self) -> Self {
        GrammarState {
            matcher: self.matcher.deep_clone(),
        }
    }
}

impl GrammarState {
    /// The tokens allowed next (EOS among them where the grammar may end).
    pub fn mask(&mut self) -> Result<TokenMask> {
        self.matcher
            .compute_mask_or_eos()
            .map(TokenMask)
            .map_err(constraint_error)
    }

    /// Follows a chosen token.
    pub fn consume(&mut self, id: u32) -> Result<()> {
        self.matcher.consume_token(id).map_err(constraint_error)
    }

    /// The grammar is complete and admits nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Tokens the grammar forces from here (the only ones it allows); not consumed.
    pub fn forced(&mut self) -> Vec<u32> {
        self.matcher.compute_ff_tokens()
    }
}

/// The set of tokens a grammar allows at one point.
#[derive(Clone)]
pub struct TokenMask(SimpleVob);

impl TokenMask {
    /// Sets every disallowed token's logit to -∞.
    pub fn apply(&self, logits: &mut [f32]) {
        for (id, l) in logits.iter_mut().enumerate() {
            if !self.allows(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    pub fn allows(&self, id: u32) -> bool {
        (id as usize) < self.0.len() && self.0.is_allowed(id)
    }

    /// The allowed ids, in order.
    pub fn allowed(&self) -> Vec<u32> {
        self.0.to_list()
    }
}

/// Our tokenizer behind llguidance's interface: it tokenizes the text a grammar forces.
struct Vocabulary {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(bytes)),
            Err(_) => self.trie.greedy_tokenize(bytes),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.tokenizer.encodes_canonically()
    }
}
