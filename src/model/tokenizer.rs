//! The bundle's tokenizer (`tokenizer.json`, Hugging Face format, through the `tokenizers`
//! crate) and its chat template (`tokenizer_config.json`'s Jinja `chat_template`, rendered with
//! `minijinja` the way Hugging Face renders it: `trim_blocks`, `lstrip_blocks`, Python string
//! methods, `raise_exception`).
//!
//! A template is code from the bundle, so its rendering is bounded: at most [`TEMPLATE_FUEL`]
//! instructions (minijinja's fuel) and an output of at most [`rendered_limit`] bytes, written
//! through a writer that refuses the first write past the limit — so
//! `{{ 'a' * 100000000 }}{{ 'b' * 100000000 }}` fails on its first expression with an error
//! naming the file, instead of building gigabytes of prompt.
//!
//! What flows in: a bundle directory. What flows out: token ids for a prompt (with or without the
//! chat template) and the shared `tokenizers::Tokenizer` the stream decoder needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: missing; a bundle needs tokenizer.json (Hugging Face format)")]
    Missing { path: PathBuf },
    #[error("{path}: cannot load the tokenizer: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: the tokenizer has an empty vocabulary")]
    Empty { path: PathBuf },
    #[error("{path}: {key}: {reason}")]
    Config {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: chat_template does not compile: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("rendering the chat template from {path} failed: {reason}")]
    Render { path: PathBuf, reason: String },
    #[error(
        "the chat template from {path} renders more than {limit} bytes for a {input}-byte \
         conversation; a chat template only wraps the messages in their markers (check its loops \
         and string repetitions)"
    )]
    RenderTooLarge {
        path: PathBuf,
        limit: usize,
        input: usize,
    },
    #[error("tokenizing the prompt failed: {0}")]
    Encode(String),
}

/// Instructions a chat template may execute per render (minijinja's fuel): real templates
/// take a few thousand for a conversation; this stops runaway loops within about a second.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// Most bytes a chat template may render for messages of `input` bytes in all: 1 MiB of
/// markers and system text, plus four times the messages themselves.
pub fn rendered_limit(input: usize) -> usize {
    (1 << 20) + input.saturating_mul(4)
}

/// A `String` writer that refuses any write that would take it past `limit` bytes (the
/// refused bytes are never copied).
struct LimitedWriter {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other(
                "the rendered template is over its size limit",
            ));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One chat message.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
}

pub struct TextTokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Every token's bytes, built once per bundle for the stream decoder.
    table: Arc<super::stream::DecodeTable>,
    template: Option<String>,
    config_path: PathBuf,
    bos_token: String,
    eos_token: String,
    /// The token trie for constrained decoding, built on first use (model/constrain.rs).
    constraint: std::sync::OnceLock<Arc<super::constrain::Vocabulary>>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("has_template", &self.template.is_some())
            .finish()
    }
}

/// `bos_token` etc. are strings or `{"content": "…"}` objects in tokenizer_config.json.
fn token_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<TextTokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TokenizerError::Missing { path });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if inner.get_vocab_size(true) == 0 {
            return Err(TokenizerError::Empty { path });
        }
        let config_path = dir.join("tokenizer_config.json");
        let (mut template, mut bos_token, mut eos_token) = (None, String::new(), String::new());
        if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| TokenizerError::Load {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TokenizerError::Config {
                    path: config_path.clone(),
                    key: "(file)".into(),
                    reason: e.to_string(),
                })?;
            bos_token = token_string(v.get("bos_token"));
            eos_token = token_string(v.get("eos_token"));
            template = match v.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default" (as transformers does).
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                Some(other) => {
                    return Err(TokenizerError::Config {
                        path: config_path,
                        key: "chat_template".into(),
                        reason: format!("expected a string, found {other}"),
                    })
                }
            };
        }
        let inner = Arc::new(inner);
        let table = Arc::new(super::stream::DecodeTable::new(Arc::clone(&inner)));
        // Newer Hugging Face exports keep the template beside the config, in chat_template.jinja.
        let jinja = dir.join("chat_template.jinja");
        if template.is_none() && jinja.is_file() {
            template = Some(
                std::fs::read_to_string(&jinja).map_err(|e| TokenizerError::Load {
                    path: jinja.clone(),
                    reason: e.to_string(),
                })?,
            );
        }
        let tok = TextTokenizer {
            inner,
            table,
            template,
            config_path,
            bos_token,
            eos_token,
            constraint: std::sync::OnceLock::new(),
        };
        if let Some(t) = &tok.template {
            tok.environment(t)?;
        }
        Ok(tok)
    }

    pub fn inner(&self) -> &Arc<tokenizers::Tokenizer> {
        &self.inner
    }

    /// The constrained-decoding vocabulary of this tokenizer: `build` runs on first use only.
    pub fn constraint_vocabulary(
        &self,
        build: impl FnOnce() -> Result<super::constrain::Vocabulary, super::constrain::ConstrainError>,
    ) -> Result<Arc<super::constrain::Vocabulary>, super::constrain::ConstrainError> {
        if let Some(v) = self.constraint.get() {
            return Ok(Arc::clone(v));
        }
        let v = Arc::new(build()?);
        Ok(Arc::clone(self.constraint.get_or_init(|| v)))
    }

    /// The per-bundle table the incremental decoder uses.
    pub fn decode_table(&self) -> Arc<super::stream::DecodeTable> {
        Arc::clone(&self.table)
    }

    /// Token ids of `text` as the tokenizer's post-processor defines them (e.g. a BOS for
    /// Llama-style tokenizers) — what ORT-GenAI's `Tokenizer.encode` gives.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    fn environment<'s>(
        &self,
        template: &'s str,
    ) -> Result<minijinja::Environment<'s>, TokenizerError> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
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
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date" in system prompts; UTC keeps renders reproducible.
            format_utc_now(&fmt)
        });
        env.add_template("chat", template)
            .map_err(|e| TokenizerError::Template {
                path: self.config_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(env)
    }

    /// Renders the chat template. Without a template the messages' contents are joined with
    /// newlines (what a raw prompt would be).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let Some(t) = &self.template else {
            return Ok(messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"));
        };
        let env = self.environment(t)?;
        let tmpl = env.get_template("chat").expect("added above");
        let input: usize = messages
            .iter()
            .map(|m| m.content.len() + m.role.len())
            .sum();
        let limit = rendered_limit(input);
        let mut w = LimitedWriter {
            out: Vec::new(),
            limit,
            exceeded: false,
        };
        let rendered = tmpl.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            },
            &mut w,
        );
        if w.exceeded {
            return Err(TokenizerError::RenderTooLarge {
                path: self.config_path.clone(),
                limit,
                input,
            });
        }
        rendered.map_err(|e| TokenizerError::Render {
            path: self.config_path.clone(),
            reason: e.to_string(),
        })?;
        String::from_utf8(w.out).map_err(|e| TokenizerError::Render {
            path: self.config_path.clone(),
            reason: format!("the output is not UTF-8: {e}"),
        })
    }

    /// Prompt ids for a user message: through the chat template unless `raw`. The rendered
    /// template already holds its special tokens as text, so it is tokenized without the
    /// post-processor's additions (as transformers does).
    pub fn prompt_ids(
        &self,
        messages: &[ChatMessage],
        raw: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        if raw || self.template.is_none() {
            let text = messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            return self.encode(&text);
        }
        let text = self.apply_chat_template(messages, true)?;
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// `strftime_now(fmt)` for templates, in UTC so renders are reproducible across boards.
fn format_utc_now(fmt: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // chrono reports an unknown specifier as a fmt error; fall back to the raw format string.
    match write!(out, "{}", chrono::Utc::now().format(fmt)) {
        Ok(()) => out,
        Err(_) => fmt.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_with_unbounded_output_fails_on_its_first_write_past_the_limit() {
        let mut w = LimitedWriter {
            out: Vec::new(),
            limit: 10,
            exceeded: false,
        };
        let tmpl = "{{ 'a' * 8 }}{{ 'b' * 100000000 }}{{ 'c' * 100000000 }}";
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template("t", tmpl).unwrap();
        assert!(env
            .get_template("t")
            .unwrap()
            .render_captured_to((), &mut w)
            .is_err());
        assert!(w.exceeded);
        assert_eq!(w.out, b"aaaaaaaa", "nothing of the refused write is kept");
        // A loop that never ends within the fuel fails too, without output limits.
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template(
            "t",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let e = env.get_template("t").unwrap().render(()).unwrap_err();
        assert_eq!(e.kind(), minijinja::ErrorKind::OutOfFuel);
    }

    #[test]
    fn strftime_now_formats() {
        let y = format_utc_now("%Y");
        assert!(y.len() == 4 && y.starts_with("20"), "{y}");
    }

    fn write_bundle(dir: &Path, template: Option<&str>) {
        // A word-level tokenizer is enough to test loading and templates.
        let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[
            {"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
          "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
          "model":{"type":"WordLevel","vocab":{"<s>":0,"hello":1,"world":2,"[UNK]":3,"<|user|>":4,"<|assistant|>":5},"unk_token":"[UNK]"}}"#;
        std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
        if let Some(t) = template {
            let cfg = serde_json::json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": t});
            std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        }
    }

    #[test]
    fn chat_template_renders_like_transformers() {
        let dir = tempfile::tempdir().unwrap();
        let t = "{{ bos_token }}{% for m in messages %}\n<|{{ m.role }}|> {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        write_bundle(dir.path(), Some(t));
        let tok = TextTokenizer::load(dir.path()).unwrap();
        let s = tok
            .apply_chat_template(&[ChatMessage::user("  hello world ")], true)
            .unwrap();
        assert_eq!(s, "<s><|user|> hello world\n<|assistant|>");
        assert_eq!(
            tok.prompt_ids(&[ChatMessage::user("hello world")], true)
                .unwrap(),
            vec![1, 2]
        );
    }

    #[test]
    fn template_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), Some("{% for m in messages %}"));
        let e = TextTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("chat_template"),
            "{e}"
        );
        write_bundle(dir.path(), Some("{{ raise_exception('only user turns') }}"));
        let tok = TextTokenizer::load(dir.path()).unwrap();
        let e = tok
            .apply_chat_template(&[ChatMessage::user("x")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only user turns"), "{e}");
    }

    #[test]
    fn missing_and_broken_tokenizers() {
        let dir = tempfile::tempdir().unwrap();
        let e = TextTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let e = TextTokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot load"), "{e}");
    }
}
