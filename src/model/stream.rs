//! Token stream → text → sentences.
//!
//! TEMPORARY stand-in with the agreed API so the generation loop can be exercised; the real
//! incremental decoder and splitter replace this file.

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(String);

pub struct TokenDecoder {
    tok: Arc<tokenizers::Tokenizer>,
    ids: Vec<u32>,
    emitted: usize,
}

impl TokenDecoder {
    pub fn new(tokenizer: Arc<tokenizers::Tokenizer>) -> Self {
        TokenDecoder { tok: tokenizer, ids: Vec::new(), emitted: 0 }
    }
    pub fn push(&mut self, id: u32) -> Result<String, StreamError> {
        self.ids.push(id);
        let s = self.tok.decode(&self.ids, true).map_err(|e| StreamError(e.to_string()))?;
        if s.ends_with('\u{FFFD}') || s.len() < self.emitted {
            return Ok(String::new());
        }
        let out = s[self.emitted..].to_string();
        self.emitted = s.len();
        Ok(out)
    }
    pub fn finish(&mut self) -> Result<String, StreamError> {
        let s = self.tok.decode(&self.ids, true).map_err(|e| StreamError(e.to_string()))?;
        let out = s.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = s.len();
        Ok(out)
    }
}

#[derive(Debug, Clone, Default)]
pub struct SplitterConfig {}

pub struct SentenceSplitter {
    buf: String,
    start_token: usize,
    index: usize,
}

impl SentenceSplitter {
    pub fn new(_config: SplitterConfig) -> Self {
        SentenceSplitter { buf: String::new(), start_token: 0, index: 0 }
    }
    pub fn push(&mut self, text: &str, token_index: usize, at: Duration) -> Vec<super::Sentence> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(i) = self.buf.find(". ") {
            let t = self.buf[..=i].trim().to_string();
            self.buf.drain(..i + 2);
            out.push(super::Sentence { index: self.index, text: t, token_span: (self.start_token, token_index + 1), at });
            self.index += 1;
            self.start_token = token_index + 1;
        }
        out
    }
    pub fn finish(&mut self, token_count: usize, at: Duration) -> Option<super::Sentence> {
        let t = std::mem::take(&mut self.buf).trim().to_string();
        (!t.is_empty()).then(|| super::Sentence { index: self.index, text: t, token_span: (self.start_token, token_count), at })
    }
}
