//! Chat prompts to token ids, with message text kept as text.
//!
//! A chat template renders one string, and tokenizing it with control tokens parsed
//! would let a user close their own turn by writing `<|im_end|>` in a message (role
//! injection). So by default only the template's own text may produce control tokens.
//! To find what came from the request without re-implementing the template, every
//! control-token spelling in the request's strings is replaced by a private-use
//! placeholder character before rendering; after rendering, the placeholders are put
//! back and their byte ranges are tokenized as plain text. Strings without such
//! spellings render and tokenize exactly as before.

use crate::chat::{ChatTemplate, Message};
use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;
use serde_json::{Map, Value};
use std::ops::Range;

/// Whether control tokens written inside message text count as control tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContentTokens {
    /// Message text is plain text: a control token's spelling in it gives the ordinary
    /// tokens of that spelling (the default; OpenAI's behaviour).
    #[default]
    Text,
    /// Control-token spellings in message text become control tokens (llama.cpp's and
    /// vLLM's behaviour, for trusted deployments).
    Special,
}

/// The two Unicode private-use planes; placeholders come from one the template does
/// not use itself, so every one found in the rendered text is ours.
const PLACEHOLDER_PLANES: [Range<u32>; 2] = [0xF0000..0xFFFFE, 0x100000..0x10FFFE];

/// The request's strings with control-token spellings swapped for placeholders, and
/// what each placeholder stands for.
struct Sheltered {
    plane: Range<u32>,
    originals: Vec<String>,
}

impl Sheltered {
    fn placeholder(&mut self, original: &str) -> Result<char> {
        let code = self.plane.start + self.originals.len() as u32;
        if code >= self.plane.end {
            return Err(EngineError::Template(format!(
                "the messages spell more than {} control tokens",
                self.plane.len()
            )));
        }
        self.originals.push(original.to_owned());
        Ok(char::from_u32(code).expect("private-use code points are chars"))
    }

    /// `text` with each control-token spelling, and each character of the placeholder
    /// plane, replaced by a placeholder.
    fn shelter(&mut self, text: &str, tokenizer: &Tokenizer) -> Result<String> {
        let mut spans: Vec<Range<usize>> = tokenizer
            .control_matches(text)?
            .into_iter()
            .map(|(_, span)| span)
            .collect();
        spans.extend(
            text.char_indices()
                .filter(|(_, c)| self.plane.contains(&(*c as u32)))
                .map(|(i, c)| i..i + c.len_utf8()),
        );
        spans.sort_by_key(|s| s.start);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in spans {
            out.push_str(&text[at..span.start]);
            out.push(self.placeholder(&text[span.clone()])?);
            at = span.end;
        }
        out.push_str(&text[at..]);
        Ok(out)
    }

    fn shelter_value(&mut self, value: &Value, tokenizer: &Tokenizer) -> Result<Value> {
        Ok(match value {
            Value::String(s) => Value::String(self.shelter(s, tokenizer)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.shelter_value(v, tokenizer))
                    .collect::<Result<_>>()?,
            ),
            Value::Object(fields) => Value::Object(self.shelter_map(fields, tokenizer)?),
            other => other.clone(),
        })
    }

    fn shelter_map(
        &mut self,
        fields: &Map<String, Value>,
        tokenizer: &Tokenizer,
    ) -> Result<Map<String, Value>> {
        fields
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.shelter_value(v, tokenizer)?)))
            .collect()
    }

    /// The rendered text with the originals put back, and their byte ranges in it.
    fn restore(&self, rendered: &str) -> (String, Vec<Range<usize>>) {
        let mut text = String::with_capacity(rendered.len());
        let mut literal = Vec::new();
        for c in rendered.chars() {
            let index = (c as u32).wrapping_sub(self.plane.start) as usize;
            match self.originals.get(index) {
                Some(original) if self.plane.contains(&(c as u32)) => {
                    literal.push(text.len()..text.len() + original.len());
                    text.push_str(original);
                }
                _ => text.push(c),
            }
        }
        (text, literal)
    }
}

impl ChatTemplate {
    /// The prompt's token ids (BOS as the model asks): `messages` rendered with the
    /// template, `extra` as template variables (the server's `chat_template_kwargs`).
    /// Under `ContentTokens::Text`, control tokens come only from the template's own
    /// text, never from a string of the messages or of `extra`.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
        rule: ContentTokens,
    ) -> Result<Vec<u32>> {
        if rule == ContentTokens::Special {
            let text = self.render_with(messages, add_generation_prompt, extra)?;
            return tokenizer.encode_prompt(self.without_bos(&text, tokenizer), true);
        }
        let plane = PLACEHOLDER_PLANES
            .into_iter()
            .find(|p| !self.uses_code_points(p))
            .ok_or_else(|| {
                EngineError::Template(
                    "the chat template uses both private-use planes, so message text cannot be kept apart from it"
                        .into(),
                )
            })?;
        let mut sheltered = Sheltered {
            plane,
            originals: Vec::new(),
        };
        let messages = messages
            .iter()
            .map(|m| {
                Ok(Message {
                    role: m.role.clone(),
                    content: sheltered.shelter(&m.content, tokenizer)?,
                    extra: sheltered.shelter_map(&m.extra, tokenizer)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let extra = sheltered.shelter_map(extra, tokenizer)?;
        let rendered = self.render_with(&messages, add_generation_prompt, &extra)?;
        let (text, literal) = sheltered.restore(self.without_bos(&rendered, tokenizer));
        tokenizer.encode_prompt_with_literals(&text, &literal)
    }

    /// A template that writes `bos_token` itself would double the BOS the tokenizer
    /// adds; like llama.cpp, keep the tokenizer's.
    fn without_bos<'a>(&self, text: &'a str, tokenizer: &Tokenizer) -> &'a str {
        match (tokenizer.add_bos, tokenizer.bos) {
            (true, Some(_)) if !self.bos_token().is_empty() => {
                text.strip_prefix(self.bos_token()).unwrap_or(text)
            }
            _ => text,
        }
    }
}
