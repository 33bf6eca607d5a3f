//! One generation's text stream: detokenizer, stop-string matcher and sentence splitter in one.
//!
//! In: each sampled token id ([`TextStream::token`]), then the text it made final
//! ([`TextStream::sentences`]), and at the end [`TextStream::flush`] /
//! [`TextStream::last_sentence`]. Out: text that is final (whole characters, never the start of
//! a stop string that may still complete), the stop string that ended the reply, and each
//! sentence the moment it is final. Pure and synchronous; the generation loop owns one per
//! request and forwards what it returns.

use std::sync::Arc;
use std::time::Duration;

use super::super::Sentence;
use super::{DecodeTable, SentenceSplitter, SplitterConfig, StreamError, TokenDecoder};

/// Holds back text that may be the beginning of a stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops,
            pending: String::new(),
        }
    }

    /// Returns (text safe to emit now, the stop string if one completed).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        if self.stops.is_empty() {
            return (text.to_string(), None);
        }
        self.pending.push_str(text);
        // The earliest complete stop string wins.
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()).map(|i| (i, s.clone())))
            .min_by_key(|(i, _)| *i);
        if let Some((i, s)) = hit {
            let out = self.pending[..i].to_string();
            self.pending.clear();
            return (out, Some(s));
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > keep && self.pending.ends_with(&s[..k]) {
                    keep = k;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, None)
    }

    /// What was held back (the reply ended without completing a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Token ids → final text → sentences, with stop strings; one per generation.
#[derive(Debug)]
pub struct TextStream {
    detok: TokenDecoder,
    stops: StopMatcher,
    splitter: SentenceSplitter,
    warned_unknown: bool,
}

impl TextStream {
    pub fn new(table: Arc<DecodeTable>, stops: Vec<String>, splitter: SplitterConfig) -> Self {
        TextStream {
            detok: TokenDecoder::with_table(table),
            stops: StopMatcher::new(stops),
            splitter: SentenceSplitter::new(splitter),
            warned_unknown: false,
        }
    }

    /// A sampled token (an end-of-sequence id has no text): returns the text that became final
    /// with it and the stop string it completed, if any.
    pub fn token(
        &mut self,
        id: u32,
        is_eos: bool,
    ) -> Result<(String, Option<String>), StreamError> {
        let piece = if is_eos {
            String::new()
        } else {
            match self.detok.push(id) {
                Ok(p) => p,
                // Models often have more logits than the tokenizer has ids (padded
                // vocabularies); such a token has no text. Say so once, keep generating.
                Err(StreamError::UnknownToken { id, vocab_size }) => {
                    if !self.warned_unknown {
                        log::warn!(
                            "token {id} is outside the tokenizer's {vocab_size} ids; it has no text"
                        );
                        self.warned_unknown = true;
                    }
                    String::new()
                }
                Err(e) => return Err(e),
            }
        };
        Ok(self.stops.push(&piece))
    }

    /// Final text of generated token `index` (at `at` since the start) into the splitter:
    /// the sentences it completed.
    pub fn sentences(&mut self, text: &str, index: usize, at: Duration) -> Vec<Sentence> {
        self.splitter.push(text, index, at)
    }

    /// End of the reply without a stop string: what the decoder and the stop matcher held back.
    pub fn flush(&mut self) -> Result<String, StreamError> {
        let rest = self.detok.finish()?;
        let (safe, _) = self.stops.push(&rest);
        Ok(safe + &self.stops.finish())
    }

    /// The last sentence (the rest of the reply), once `generated` tokens are done.
    pub fn last_sentence(&mut self, generated: usize, at: Duration) -> Option<Sentence> {
        self.splitter.finish(generated, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_prefixes() {
        let mut m = StopMatcher::new(vec!["<END>".into()]);
        assert_eq!(m.push("Hello <E"), ("Hello ".into(), None));
        assert_eq!(m.push("N"), ("".into(), None));
        assert_eq!(m.push("X more"), ("<ENX more".into(), None));
        assert_eq!(m.push(" done<EN"), (" done".into(), None));
        assert_eq!(m.push("D>tail"), ("".into(), Some("<END>".into())));
    }

    #[test]
    fn stop_matcher_without_stops_passes_through() {
        let mut m = StopMatcher::default();
        assert_eq!(m.push("abc"), ("abc".into(), None));
        assert_eq!(m.finish(), "");
    }
}
