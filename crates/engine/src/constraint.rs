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
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(generation_schema(
                json!({"type": "object"}),
                true,
            )),
            Constraint::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(generation_schema(schema.clone(), !strict))
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

/// The schema the output is generated under: `schema` with its objects closed (below)
/// and JSON written as people write it on one line (`{"a": 1, "b": [2, 3]}`), with no
/// free whitespace, which small models can otherwise emit forever. A schema that sets
/// llguidance's own `x-guidance` options keeps them.
pub(crate) fn generation_schema(mut schema: Value, lenient: bool) -> Value {
    close_objects(&mut schema, false);
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

/// An object schema that lists its `properties` and says nothing of others gets only
/// those, as in llama.cpp's grammars and OpenAI's strict mode: JSON Schema would allow
/// any extra key, and small models fill that freedom with keys nobody asked for. A
/// member of `allOf` stays open, or two members that each list some properties would
/// contradict each other; so does a member of `anyOf`/`oneOf` under an object that lists
/// properties itself (it refines that object rather than being an alternative to it).
fn close_objects(schema: &mut Value, refines_parent: bool) {
    let Value::Object(fields) = schema else {
        return;
    };
    let open_by_word = [
        "additionalProperties",
        "patternProperties",
        "unevaluatedProperties",
    ]
    .iter()
    .any(|k| fields.contains_key(*k));
    let lists_properties = fields.contains_key("properties");
    if !refines_parent && lists_properties && !open_by_word {
        fields.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (keyword, value) in fields.iter_mut() {
        match keyword.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(named) = value {
                    named.values_mut().for_each(|s| close_objects(s, false));
                }
            }
            "anyOf" | "oneOf" | "prefixItems" | "allOf" => {
                if let Value::Array(members) = value {
                    let refines =
                        keyword == "allOf" || (keyword != "prefixItems" && lists_properties);
                    members.iter_mut().for_each(|s| close_objects(s, refines));
                }
            }
            "items" | "additionalProperties" | "not" | "if" | "then" | "else" | "contains" => {
                close_objects(value, false)
            }
            _ => {}
        }
    }
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

    /// How many of `tokens`, in order, the grammar would accept from here (none are
    /// consumed): speculative proposals are cut where they leave the grammar, since the
    /// masked sampler could never keep them. May over-count (a non-canonical
    /// tokenization of forced text), never under-count; an error counts none.
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> usize {
        self.matcher.validate_tokens(tokens).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_that_list_properties_are_closed_unless_the_schema_says_otherwise() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "tags": {"type": "array", "items": {"properties": {"k": {}}}},
                "properties": {"type": "object", "properties": {"x": {}}},
                "extra": {"type": "object", "properties": {"y": {}}, "additionalProperties": true},
                "both": {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
            },
            "$defs": {"point": {"properties": {"x": {}}}},
            "anyOf": [{"properties": {"name": {}}}]
        });
        let nullable =
            json!({"anyOf": [{"type": "object", "properties": {"a": {}}}, {"type": "null"}]});
        let closed = generation_schema(schema, true);
        let p = &closed["properties"];
        assert_eq!(closed["additionalProperties"], false);
        assert_eq!(p["tags"]["items"]["additionalProperties"], false);
        assert_eq!(p["properties"]["additionalProperties"], false);
        assert_eq!(p["extra"]["additionalProperties"], true);
        assert!(p["both"]["allOf"][0].get("additionalProperties").is_none());
        assert!(p["name"].get("additionalProperties").is_none());
        assert_eq!(closed["$defs"]["point"]["additionalProperties"], false);
        assert!(closed["anyOf"][0].get("additionalProperties").is_none());
        let nullable = generation_schema(nullable, true);
        assert_eq!(nullable["anyOf"][0]["additionalProperties"], false);
        assert_eq!(closed["x-guidance"]["whitespace_flexible"], false);
    }
}
