//! One request's generation state: the sequence so far, its text, counts and timings.
//!
//! In: each sampled token ([`RequestState::token`]) and the end of the reply
//! ([`RequestState::flush`], [`RequestState::finish`]). Out: [`Event`]s through the caller's
//! callback — the token with its final text, each sentence once final — and the [`Done`] summary.
//! Owns the request's [`TextStream`]; nothing here touches the decoder session.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::super::constrain::Constraint;
use super::super::stream::TextStream;
use super::{Done, Event, GenerateError, StopReason, TokenEvent};

pub(super) struct RequestState {
    start: Instant,
    prompt_len: usize,
    /// Prompt and generated ids (the sampler's repetition window, the prefix cache's key).
    pub history: Vec<u32>,
    pub generated: usize,
    stream: TextStream,
    text: String,
    sentences: usize,
    first_token: Option<Duration>,
    first_sentence: Option<Duration>,
    last_token_at: Option<Duration>,
    /// When the prefill's logits were ready (zero until then).
    pub prefill: Duration,
    /// Decoder runs after the prefill and the drafted tokens they confirmed.
    pub runs: usize,
    pub accepted_drafts: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub reused: usize,
    /// The format the answer is held to, advanced token by token.
    pub constraint: Option<Constraint>,
}

impl RequestState {
    pub fn new(
        start: Instant,
        prompt: &[u32],
        stream: TextStream,
        constraint: Option<Constraint>,
    ) -> RequestState {
        RequestState {
            start,
            prompt_len: prompt.len(),
            history: prompt.to_vec(),
            generated: 0,
            stream,
            text: String::new(),
            sentences: 0,
            first_token: None,
            first_sentence: None,
            last_token_at: None,
            prefill: Duration::ZERO,
            runs: 0,
            accepted_drafts: 0,
            reused: 0,
            constraint,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// A sampled token: appended to the sequence, its final text streamed out (token event,
    /// then any sentence it completed). Returns the stop string it completed, if any.
    pub fn token(
        &mut self,
        id: u32,
        is_eos: bool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Option<String>, GenerateError> {
        self.history.push(id);
        self.generated += 1;
        let at = self.elapsed();
        self.last_token_at = Some(at);
        self.first_token.get_or_insert(at);
        let (safe, hit) = self
            .stream
            .token(id, is_eos)
            .map_err(|e| GenerateError::Stream(e.to_string()))?;
        on_event(Event::Token(TokenEvent {
            index: self.generated - 1,
            id,
            text: safe.clone(),
            at,
        }));
        self.emit_text(&safe, self.generated - 1, at, on_event);
        Ok(hit)
    }

    fn emit_text(
        &mut self,
        piece: &str,
        index: usize,
        at: Duration,
        on_event: &mut dyn FnMut(Event),
    ) {
        self.text.push_str(piece);
        for s in self.stream.sentences(piece, index, at) {
            self.sentences += 1;
            self.first_sentence.get_or_insert(at);
            on_event(Event::Sentence(s));
        }
    }

    /// The reply ended: what the stream held back (unless a stop string ended it), then the
    /// last sentence.
    pub fn flush(
        &mut self,
        stop: &StopReason,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(), GenerateError> {
        if !matches!(stop, StopReason::StopString(_)) {
            let rest = self
                .stream
                .flush()
                .map_err(|e| GenerateError::Stream(e.to_string()))?;
            if !rest.is_empty() {
                let at = self.elapsed();
                self.emit_text(&rest, self.generated.saturating_sub(1), at, on_event);
            }
        }
        let at = self.elapsed();
        if let Some(s) = self.stream.last_sentence(self.generated, at) {
            self.sentences += 1;
            self.first_sentence.get_or_insert(at);
            on_event(Event::Sentence(s));
        }
        Ok(())
    }

    /// The summary, also sent as the last event. `providers`: component → provider that ran it.
    pub fn finish(
        self,
        stop: StopReason,
        providers: BTreeMap<String, String>,
        on_event: &mut dyn FnMut(Event),
    ) -> Done {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let prefill = self.prefill;
        let ft = self.first_token.unwrap_or(prefill);
        let last = self.last_token_at.unwrap_or_else(|| self.start.elapsed());
        let decode_secs = (last.saturating_sub(ft)).as_secs_f64();
        let (prompt_tokens, generated) = (self.prompt_len, self.generated);
        let structured = self
            .constraint
            .as_ref()
            .and_then(|c| c.format().structured(&self.text));
        let done = Done {
            prompt_tokens,
            generated_tokens: generated,
            stop,
            text: self.text,
            sentences: self.sentences,
            time_to_first_token_ms: ms(ft),
            time_to_first_sentence_ms: self.first_sentence.map(ms),
            prefill_ms: ms(prefill),
            prefill_tokens_per_s: if prefill.as_secs_f64() > 0.0 {
                prompt_tokens as f64 / prefill.as_secs_f64()
            } else {
                0.0
            },
            decode_tokens_per_s: if generated > 1 && decode_secs > 0.0 {
                (generated - 1) as f64 / decode_secs
            } else {
                0.0
            },
            total_ms: ms(self.start.elapsed()),
            decoder_runs: self.runs,
            accepted_drafts: self.accepted_drafts,
            reused_prefix_tokens: self.reused,
            providers,
            structured,
        };
        on_event(Event::Done(done.clone()));
        done
    }
}
