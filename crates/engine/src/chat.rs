//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`) rendered
//! with minijinja, or ChatML when the model has none.

use crate::error::{EngineError, Result};
use gguf::Metadata;
use serde::{Deserialize, Serialize};

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// Other fields templates read: `tool_calls` (arguments as JSON objects, as
    /// templates expect), `tool_call_id`, `name`.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
    source: String,
}

fn template_error(e: minijinja::Error) -> EngineError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    EngineError::Template(msg)
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The model's template (ChatML if it has none), with its BOS/EOS token texts.
    pub fn from_metadata(m: &Metadata) -> Result<ChatTemplate> {
        let tokens = m.get_str_array("tokenizer.ggml.tokens").unwrap_or_default();
        let text = |key: &str| {
            m.get_u32(key)
                .ok()
                .and_then(|id| tokens.get(id as usize))
                .map_or(String::new(), |s| s.to_string())
        };
        let source = m.get_str("tokenizer.chat_template").unwrap_or(CHATML);
        ChatTemplate::new(
            source,
            &text("tokenizer.ggml.bos_token_id"),
            &text("tokenizer.ggml.eos_token_id"),
        )
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Whether the text the template can write itself (its source, BOS and EOS) holds
    /// a code point of `range`.
    pub(crate) fn uses_code_points(&self, range: &std::ops::Range<u32>) -> bool {
        [&self.source, &self.bos_token, &self.eos_token]
            .iter()
            .flat_map(|s| s.chars())
            .any(|c| range.contains(&(c as u32)))
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// `render` with extra template variables (`tools`, and the server's
    /// `chat_template_kwargs` such as Qwen3's `enable_thinking`); they cannot replace the
    /// ones set here. `tools` is none unless given.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template = self.env.get_template("chat").map_err(template_error)?;
        template
            .render(minijinja::context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                ..minijinja::Value::from(minijinja::value::Serde(extra))
            })
            .map_err(template_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_variables_reach_the_template_but_cannot_replace_its_own() {
        let source =
            "{% if enable_thinking is false %}<think></think>{% endif %}{{ messages[0].content }}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let msgs = [Message::new("user", "hi")];
        assert_eq!(t.render(&msgs, true).unwrap(), "hi");
        let off = serde_json::json!({"enable_thinking": false, "messages": []});
        let off = off.as_object().unwrap();
        assert_eq!(
            t.render_with(&msgs, true, off).unwrap(),
            "<think></think>hi"
        );
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let s = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] == 'bad' %}{{ raise_exception('roles must alternate') }}{% endif %}{{ bos_token }}{{ messages[0]['content'].strip() }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  x ")], false).unwrap(),
            "<s>x"
        );
        let e = t.render(&[Message::new("bad", "")], false).unwrap_err();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }
}
