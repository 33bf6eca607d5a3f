//! Constrained decoding: what an answer must look like.
//!
//! In: a [`ResponseFormat`] per request (`gemba ask --json-schema/--choice/--regex`, `POST /ask`'s
//! `response_format`, an alert rule's `schema`). Out: a token mask applied by the sampler over
//! the model's real vocabulary at every step, so the text generated is always a complete match
//! (a JSON document that validates, one of the choices, a match of the expression).
//!
//! How: [llguidance](https://github.com/guidance-ai/llguidance) (what ORT-GenAI, llama.cpp and
//! mistral.rs use) compiles the format into a grammar over the token trie of the bundle's
//! `tokenizer.json` ([`Vocabulary`], built once per tokenizer). A [`Constraint`] per request
//! then masks each step's logits the way ORT-GenAI's `GuidanceLogitsProcessor` does: a token
//! the grammar does not allow next gets the lowest float; special tokens are never allowed
//! inside the text; the end-of-sequence id (the bundle's first `eos_token_id`) only once the
//! grammar is complete, and only it once nothing else can follow.
//!
//! Checking a format without generating ([`ResponseFormat::check`], for `config check`):
//! compiles it against a vocabulary and computes the first mask, so an invalid schema, a bad
//! regular expression and a schema nothing can satisfy are errors before any question is asked.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

/// The shape an answer is held to (`{"type": "json_schema", "schema": …}` in the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// A JSON document valid under this JSON schema.
    JsonSchema { schema: serde_json::Value },
    /// Exactly one of these strings.
    Choice { choices: Vec<String> },
    /// A full match of this regular expression.
    Regex { pattern: String },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConstrainError {
    #[error("invalid JSON schema: {reason}")]
    InvalidSchema { reason: String },
    #[error("the JSON schema can never be satisfied: {reason}")]
    Unsatisfiable { reason: String },
    #[error("invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex { pattern: String, reason: String },
    #[error("the choice list is empty (give at least one non-empty choice)")]
    NoChoices,
    #[error("no answer of this format can be written with the tokens of {vocabulary}")]
    NoTokens { vocabulary: String },
    #[error("the vocabulary for constrained decoding, from {path}: {reason}")]
    Vocabulary { path: PathBuf, reason: String },
    #[error("the JSON schema file {path}: {reason}")]
    SchemaFile { path: PathBuf, reason: String },
    #[error("constrained decoding, generated token {index}: {reason}")]
    Step { index: usize, reason: String },
}

impl ResponseFormat {
    /// From the command line's `--json-schema FILE`, `--choice a,b,c`, `--regex R` (at most one;
    /// `None` when none is given). The file's errors name it; the format is not compiled here.
    pub fn from_cli(
        json_schema: Option<&Path>,
        choice: Option<Vec<String>>,
        regex: Option<String>,
    ) -> Result<Option<ResponseFormat>, ConstrainError> {
        Ok(match (json_schema, choice, regex) {
            (Some(path), _, _) => {
                let err = |reason: String| ConstrainError::SchemaFile {
                    path: path.to_path_buf(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                let schema =
                    serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
                Some(ResponseFormat::JsonSchema { schema })
            }
            (None, Some(choices), _) => Some(ResponseFormat::Choice { choices }),
            (None, None, Some(pattern)) => Some(ResponseFormat::Regex { pattern }),
            (None, None, None) => None,
        })
    }

    /// A JSON schema whose answer is written in one fixed form, Python's `json.dumps(obj)`:
    /// `{"lamp": "red", "count": 2}` — separators `", "` and `": "`, no other whitespace,
    /// properties in the schema's order (for alert rules and the models trained on that form).
    /// A plain [`ResponseFormat::JsonSchema`] leaves the whitespace to the model, as ORT-GenAI
    /// does. An `x-guidance` already in the schema is kept.
    pub fn json_schema_compact(mut schema: serde_json::Value) -> ResponseFormat {
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({
                    "whitespace_flexible": false,
                    "item_separator": ", ",
                    "key_separator": ": "
                })
            });
        }
        ResponseFormat::JsonSchema { schema }
    }

    /// Whether the answer is a JSON document (its parsed value is [`Done::structured`]).
    ///
    /// [`Done::structured`]: super::Done::structured
    pub fn is_json(&self) -> bool {
        matches!(self, ResponseFormat::JsonSchema { .. })
    }

    /// The parsed answer of a JSON format (`None` for the others, or for text that does not
    /// parse: a generation cut short by `max_new_tokens` or a deadline).
    pub fn structured(&self, text: &str) -> Option<serde_json::Value> {
        if self.is_json() {
            serde_json::from_str(text).ok()
        } else {
            None
        }
    }

    /// Checks the format against a vocabulary: it compiles (valid schema or expression), and
    /// something can be written with these tokens. Cost: a compile and one mask (milliseconds).
    pub fn check(&self, vocab: &Vocabulary) -> Result<(), ConstrainError> {
        Constraint::new(self, vocab).map(|_| ())
    }

    /// [`check`](Self::check) without a model: against a byte-level vocabulary (every byte a
    /// token), which any byte-level tokenizer can spell. For `config check` without a bundle.
    pub fn validate(&self) -> Result<(), ConstrainError> {
        static BYTES: OnceLock<Vocabulary> = OnceLock::new();
        let vocab = BYTES.get_or_init(|| {
            let words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).chain([vec![]]).collect();
            Vocabulary::from_token_bytes("bytes", words, 256, None)
                .expect("a byte vocabulary always builds")
        });
        self.check(vocab)
    }

    fn grammar(&self) -> Result<TopLevelGrammar, ConstrainError> {
        Ok(match self {
            ResponseFormat::JsonSchema { schema } => {
                if !(schema.is_object() || schema.is_boolean()) {
                    return Err(ConstrainError::InvalidSchema {
                        reason: format!("a schema is a JSON object (or true/false), not {schema}"),
                    });
                }
                TopLevelGrammar::from_json_schema(schema.clone())
            }
            ResponseFormat::Regex { pattern } => {
                // The grammar compiler reports syntax errors too, but without the pattern's
                // own words; regex-syntax (the `regex` crate's parser) says where.
                if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
                    return Err(ConstrainError::InvalidRegex {
                        pattern: pattern.clone(),
                        reason: e.to_string(),
                    });
                }
                TopLevelGrammar::from_regex(pattern)
            }
            ResponseFormat::Choice { choices } => {
                let alts: Vec<String> = choices
                    .iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| serde_json::Value::String(c.clone()).to_string())
                    .collect();
                if alts.is_empty() {
                    return Err(ConstrainError::NoChoices);
                }
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
        })
    }

    fn compile_error(&self, reason: String) -> ConstrainError {
        match self {
            ResponseFormat::JsonSchema { .. } if reason.contains("Unsatisfiable schema") => {
                ConstrainError::Unsatisfiable { reason }
            }
            ResponseFormat::JsonSchema { .. } => ConstrainError::InvalidSchema { reason },
            ResponseFormat::Regex { pattern } => ConstrainError::InvalidRegex {
                pattern: pattern.clone(),
                reason,
            },
            ResponseFormat::Choice { .. } => ConstrainError::InvalidSchema { reason },
        }
    }
}

/// A tokenizer's vocabulary as the grammar engine sees it: every token's bytes (special tokens
/// marked so they never match text), the size of the model's logits, the end-of-sequence id.
/// Built once per tokenizer (about a second for a 50k vocabulary in a debug build); shared.
pub struct Vocabulary {
    factory: ParserFactory,
    name: String,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("name", &self.name)
            .field("size", &self.size())
            .finish()
    }
}

/// Tokenizes grammar-forced text with the model's own tokenizer (canonical ids).
struct Env {
    trie: TokTrie,
    tokenizer: Option<Arc<tokenizers::Tokenizer>>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let text = String::from_utf8_lossy(s);
        match &self.tokenizer {
            Some(t) => match t.encode_fast(text.as_ref(), false) {
                Ok(enc) => enc.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            None => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.tokenizer.is_some()
    }
}

impl Vocabulary {
    /// From a `tokenizer.json`: `logits` is the model's vocabulary size (the length of a logits
    /// row, which may exceed the tokenizer's ids), `eos` the id that ends a complete answer.
    pub fn from_tokenizer_json(
        path: &Path,
        tokenizer: Option<Arc<tokenizers::Tokenizer>>,
        logits: usize,
        eos: u32,
    ) -> Result<Vocabulary, ConstrainError> {
        let err = |reason: String| ConstrainError::Vocabulary {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| err(e.to_string()))?;
        let mut v = Vocabulary::build(words, logits, eos, tokenizer).map_err(err)?;
        v.name = path.display().to_string();
        Ok(v)
    }

    /// From each token's bytes (a special token's start with 0xFF); for tests and tools.
    pub fn from_token_bytes(
        name: &str,
        words: Vec<Vec<u8>>,
        eos: u32,
        tokenizer: Option<Arc<tokenizers::Tokenizer>>,
    ) -> Result<Vocabulary, ConstrainError> {
        let n = words.len();
        let mut v = Vocabulary::build(words, n, eos, tokenizer).map_err(|reason| {
            ConstrainError::Vocabulary {
                path: PathBuf::from(name),
                reason,
            }
        })?;
        v.name = name.to_string();
        Ok(v)
    }

    fn build(
        mut words: Vec<Vec<u8>>,
        logits: usize,
        eos: u32,
        tokenizer: Option<Arc<tokenizers::Tokenizer>>,
    ) -> Result<Vocabulary, String> {
        // As ORT-GenAI: the trie spans the model's vocabulary; ids the tokenizer lacks (padding)
        // have no bytes and are never allowed.
        if words.len() < logits {
            words.resize(logits, Vec::new());
        }
        if eos as usize >= words.len() {
            return Err(format!(
                "the end-of-sequence id {eos} is outside the {} tokens",
                words.len()
            ));
        }
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, eos), &words);
        let env: TokEnv = Arc::new(Env { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Vocabulary {
            factory,
            name: String::new(),
        })
    }

    /// A bundle's vocabulary, built on first use and kept with its tokenizer.
    pub fn of_bundle(bundle: &super::bundle::Bundle) -> Result<Arc<Vocabulary>, ConstrainError> {
        let logits = (bundle.config.model.vocab_size.unwrap_or(0) as usize)
            .max(bundle.tokenizer.inner().get_vocab_size(true));
        let eos = bundle.eos_ids().first().copied().unwrap_or(0);
        bundle.tokenizer.constraint_vocabulary(|| {
            Vocabulary::from_tokenizer_json(
                &bundle.dir.join("tokenizer.json"),
                Some(Arc::clone(bundle.tokenizer.inner())),
                logits,
                eos,
            )
        })
    }

    /// Tokens in the trie (the model's logits row, padding included).
    pub fn size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    pub fn eos(&self) -> u32 {
        self.factory.tok_env().tok_trie().eos_token()
    }
}

/// One request's constraint: the mask for the next token, advanced by each token chosen.
pub struct Constraint {
    matcher: Matcher,
    format: ResponseFormat,
    committed: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("format", &self.format)
            .field("committed", &self.committed)
            .finish()
    }
}

impl Constraint {
    /// Compiles `format` for `vocab` and checks that its first token can be written.
    pub fn new(format: &ResponseFormat, vocab: &Vocabulary) -> Result<Constraint, ConstrainError> {
        let grammar = format.grammar()?;
        let parser = vocab
            .factory
            .create_parser(grammar)
            .map_err(|e| format.compile_error(e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        let first = matcher
            .compute_mask()
            .map_err(|e| format.compile_error(e.to_string()))?;
        if first.is_zero() {
            return Err(match format {
                ResponseFormat::JsonSchema { .. } => ConstrainError::Unsatisfiable {
                    reason: "no document can start".into(),
                },
                _ => ConstrainError::NoTokens {
                    vocabulary: vocab.name.clone(),
                },
            });
        }
        Ok(Constraint {
            matcher,
            format: format.clone(),
            committed: 0,
        })
    }

    pub fn format(&self) -> &ResponseFormat {
        &self.format
    }

    /// The tokens allowed next (only the end-of-sequence id once the answer is complete).
    pub fn allowed(&mut self) -> Result<SimpleVob, ConstrainError> {
        self.matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstrainError::Step {
                index: self.committed,
                reason: e.to_string(),
            })
    }

    /// Sets the logit of every token not allowed next to the lowest float (as ORT-GenAI).
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), ConstrainError> {
        let mask = self.allowed()?;
        apply_mask(&mask, logits);
        Ok(())
    }

    /// The token chosen: the grammar advances past it.
    pub fn commit(&mut self, id: u32) -> Result<(), ConstrainError> {
        self.matcher
            .consume_token(id)
            .map_err(|e| ConstrainError::Step {
                index: self.committed,
                reason: e.to_string(),
            })?;
        self.committed += 1;
        Ok(())
    }

    /// Whether the text so far is a complete answer.
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}

/// Logits of tokens the mask does not allow (and of ids past its end) → `f32::MIN`.
pub fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    let words = mask.as_slice();
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        if bits == 0 {
            chunk.fill(f32::MIN);
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::MIN;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const END: &[u8] = b"\xFF<|end|>";
    const START: &[u8] = b"\xFF<|im_start|>";

    /// Every byte, a few multi-byte tokens, two special tokens (the last one is eos), and two
    /// padding ids without text (a model's logits longer than its tokenizer).
    fn vocab() -> (Vocabulary, Vec<Vec<u8>>) {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for w in [
            &b"{\""[..],
            b"\":",
            b"red",
            b"green",
            b"amber",
            b"yes",
            b"no",
            b"  ",
            b"\"lamp",
            b"12",
            START,
            END,
        ] {
            words.push(w.to_vec());
        }
        let eos = words.len() as u32 - 1;
        words.push(Vec::new());
        words.push(Vec::new());
        let v = Vocabulary::from_token_bytes("test", words.clone(), eos, None).unwrap();
        (v, words)
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Greedy over random logits through the mask until eos: the text, checking on the way
    /// that no special token or padding id is ever allowed inside the text and that eos is
    /// allowed only when the answer is complete.
    fn walk(format: &ResponseFormat, seed: u64) -> String {
        let (v, words) = vocab();
        let eos = v.eos();
        let mut c = Constraint::new(format, &v).unwrap();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut text = Vec::new();
        for _ in 0..5000 {
            let mut row: Vec<f32> = (0..words.len()).map(|_| rng.next()).collect();
            c.apply(&mut row).unwrap();
            for (id, l) in row.iter().enumerate() {
                let w = &words[id];
                if *l > f32::MIN && id as u32 != eos {
                    assert!(!w.is_empty(), "padding id {id} allowed");
                    assert!(w[0] != 0xFF, "special token {id} allowed inside the text");
                }
            }
            let complete = c.is_complete();
            assert_eq!(
                row[eos as usize] > f32::MIN,
                complete,
                "eos allowed ⇔ complete"
            );
            let id = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert!(row[id] > f32::MIN, "nothing allowed after {text:?}");
            if id as u32 == eos {
                return String::from_utf8(text).unwrap();
            }
            c.commit(id as u32).unwrap();
            text.extend_from_slice(&words[id]);
        }
        panic!(
            "no end after 5000 tokens: {}",
            String::from_utf8_lossy(&text)
        );
    }

    #[test]
    fn json_answers_parse_and_validate_for_many_seeds() {
        let f = ResponseFormat::JsonSchema {
            schema: json!({
                "type": "object",
                "properties": {
                    "lamp": {"enum": ["green", "amber", "red"]},
                    "count": {"type": "integer", "minimum": 0, "maximum": 12},
                    "ok": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
                },
                "required": ["lamp", "count", "ok", "tags"],
                "additionalProperties": false
            }),
        };
        for seed in 0..40 {
            let text = walk(&f, seed);
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("seed {seed}: {text:?} is not JSON: {e}"));
            assert_eq!(f.structured(&text), Some(v.clone()));
            let o = v.as_object().unwrap();
            assert_eq!(o.len(), 4, "{text}");
            assert!(["green", "amber", "red"].contains(&o["lamp"].as_str().unwrap()));
            assert!((0..=12).contains(&o["count"].as_i64().unwrap()), "{text}");
            assert!(o["ok"].is_boolean());
            let tags = o["tags"].as_array().unwrap();
            assert!(tags.len() <= 3 && tags.iter().all(|t| t == "a" || t == "b"));
        }
    }

    #[test]
    fn the_compact_form_is_python_json_dumps() {
        let f = ResponseFormat::json_schema_compact(json!({
            "type": "object",
            "properties": {
                "lamp": {"enum": ["green", "amber", "red"]},
                "count": {"type": "integer", "minimum": 0, "maximum": 12},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
            },
            "required": ["lamp", "count", "tags"],
            "additionalProperties": false
        }));
        for seed in 0..20 {
            let text = walk(&f, seed);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            // json.dumps: ", " and ": " between items, keys in the schema's order.
            let o = v.as_object().unwrap();
            let tags: Vec<String> = o["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.to_string())
                .collect();
            let want = format!(
                "{{\"lamp\": {}, \"count\": {}, \"tags\": [{}]}}",
                o["lamp"],
                o["count"],
                tags.join(", ")
            );
            assert_eq!(text, want);
        }
    }

    #[test]
    fn choices_and_expressions_are_matched_exactly() {
        let f = ResponseFormat::Choice {
            choices: vec!["yes".into(), "no".into(), "say \"maybe\"".into()],
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..30 {
            let t = walk(&f, seed);
            assert!(
                ["yes", "no", "say \"maybe\""].contains(&t.as_str()),
                "{t:?}"
            );
            seen.insert(t);
        }
        assert!(
            seen.len() >= 2,
            "random logits should reach several choices: {seen:?}"
        );
        let f = ResponseFormat::Regex {
            pattern: "[0-9]{1,3} (box|boxes)".into(),
        };
        for seed in 0..30 {
            let t = walk(&f, seed);
            let (n, word) = t.split_once(' ').unwrap();
            assert!((1..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
            assert!(word == "box" || word == "boxes", "{t:?}");
        }
    }

    #[test]
    fn bad_formats_are_named() {
        let (v, _) = vocab();
        let e = ResponseFormat::JsonSchema {
            schema: json!({"type": "nope"}),
        }
        .check(&v)
        .unwrap_err();
        assert!(matches!(e, ConstrainError::InvalidSchema { .. }), "{e}");
        let e = ResponseFormat::JsonSchema { schema: json!(42) }
            .validate()
            .unwrap_err();
        assert!(matches!(e, ConstrainError::InvalidSchema { .. }), "{e}");
        let e = ResponseFormat::JsonSchema {
            schema: json!({"type": "integer", "minimum": 5, "maximum": 3}),
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, ConstrainError::Unsatisfiable { .. }), "{e}");
        let e = ResponseFormat::JsonSchema {
            schema: json!({"allOf": [{"type": "string"}, {"type": "integer"}]}),
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, ConstrainError::Unsatisfiable { .. }), "{e}");
        let e = ResponseFormat::Regex {
            pattern: "([a-z]+".into(),
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(&e, ConstrainError::InvalidRegex { pattern, .. } if pattern == "([a-z]+"),
            "{e}"
        );
        let e = ResponseFormat::Choice {
            choices: vec![String::new()],
        }
        .validate()
        .unwrap_err();
        assert!(matches!(e, ConstrainError::NoChoices), "{e}");
        // Good ones pass, with and without a model's vocabulary.
        let ok = ResponseFormat::JsonSchema {
            schema: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
        };
        ok.validate().unwrap();
        ok.check(&v).unwrap();
    }

    #[test]
    fn the_mask_blanks_exactly_the_disallowed_ids() {
        let mut m = SimpleVob::alloc(70);
        for id in [0u32, 31, 32, 40, 69] {
            m.allow_token(id);
        }
        let mut row = vec![1.0f32; 75];
        apply_mask(&m, &mut row);
        for (i, l) in row.iter().enumerate() {
            let allowed = [0, 31, 32, 40, 69].contains(&i);
            assert_eq!(*l == 1.0, allowed, "id {i}");
        }
    }
}
