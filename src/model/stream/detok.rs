//! Incremental detokenization: token ids in, final text out — never half a character, never the
//! whole reply decoded again.
//!
//! In: one generated token id per [`TokenDecoder::push`]. Out: the text that became final with
//! it (often `""`). The concatenation of everything returned, [`TokenDecoder::finish`]
//! included, equals `tokenizer.decode(ids, skip_special_tokens = true)` of the whole reply.
//!
//! How: a [`DecodeTable`], built once per tokenizer (O(vocabulary)), holds every token's bytes as
//! the `tokenizer.json` decoder would produce them. A push appends one token's bytes to a small
//! buffer and hands out its longest complete UTF-8 prefix — O(token) work and no allocation but
//! the returned `String`. This covers the decoders our bundles use:
//!
//! - GPT-2 byte-level BPE (`ByteLevel`): tokens are bytes spelled in the GPT-2 alphabet; the
//!   stream is UTF-8-decoded lossily exactly as `from_utf8_lossy` does over the whole reply.
//! - SentencePiece style: per-token `Replace("▁", " ")` / `Metaspace` (whose prepend scheme drops
//!   the `▁` of the first token), `ByteFallback` (`<0xE2>` tokens are raw bytes), `Fuse`, and a
//!   final `Strip(" ", n, 0)` that drops the reply's leading space(s).
//!
//! Any other decoder (WordPiece, BPE suffixes, CTC, regex replaces, other orders) falls back to
//! decoding a sliding window of the last few tokens through the tokenizer and emitting the new
//! suffix (text-generation-inference's prefix/read offsets); still O(1) tokens per step, but it
//! allocates inside `tokenizers`.
//!
//! One deliberate difference from `tokenizers`' `ByteFallback`: a run of byte tokens that mixes
//! complete characters with invalid bytes (`<0xC3><0xA9><0xFF>`) decodes one-shot to a U+FFFD
//! per byte of the whole run, which a stream could only mirror by holding back every complete
//! character until the run ends; we emit `é` at once and replace only the invalid bytes. Valid
//! text — everything a sane model produces — decodes identically.

use std::borrow::Cow;
use std::sync::Arc;

use tokenizers::decoders::strip::Strip;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{DecoderWrapper, Tokenizer};

const REPLACEMENT: char = '\u{FFFD}';

/// Why a token could not be turned into text.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The id is not in the tokenizer (models often have more logits than tokens).
    #[error("token id {id} is not in the tokenizer's vocabulary ({vocab_size} ids)")]
    UnknownToken { id: u32, vocab_size: usize },
    /// The tokenizer's own decoder failed (fallback path only).
    #[error("tokenizer failed to decode token ids {ids:?}")]
    Decode {
        ids: Vec<u32>,
        #[source]
        source: tokenizers::Error,
    },
    /// The fallback path found that decoding more tokens changed text already emitted — the
    /// tokenizer's decoder is not prefix-stable, so it cannot be streamed.
    #[error(
        "incremental decode is inconsistent at token {id}: {expected_prefix:?} was emitted, \
         but the window now decodes to {actual:?}"
    )]
    Inconsistent {
        id: u32,
        expected_prefix: String,
        actual: String,
    },
}

/// How a [`DecodeTable`] turns tokens into text (for logs and `gemba doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeStrategy {
    /// GPT-2 byte-level BPE: per-token bytes, lossy UTF-8 over the stream.
    ByteLevel,
    /// SentencePiece style (`▁`, byte fallback, leading-space strip): per-token bytes.
    Pieces,
    /// Unrecognised decoder: a sliding window decoded through the tokenizer.
    Window,
}

// Per-id kinds in the table.
const TEXT: u8 = 0;
const BYTE: u8 = 1;
const SPECIAL: u8 = 2;
const MISSING: u8 = 3;

/// A per-token string step of a SentencePiece-style decoder.
#[derive(Debug, Clone)]
enum PieceStep {
    /// `Replace` with a plain string pattern.
    Replace { from: String, to: String },
    /// `Metaspace`: the replacement char becomes a space, except in the first token of the
    /// reply where (unless the prepend scheme is `never`) it is dropped.
    Metaspace { replacement: char, drop_first: bool },
}

#[derive(Debug, Clone)]
enum Plan {
    ByteLevel,
    Pieces {
        steps: Vec<PieceStep>,
        byte_fallback: bool,
        /// `Strip` after `Fuse`: drop up to `n` leading `char`s of the reply.
        strip: Option<(char, usize)>,
    },
    Window,
}

/// Every token's decoded bytes, built once per tokenizer and shared by the decoders of all
/// replies (`Arc`): building it walks the whole vocabulary.
#[derive(Debug)]
pub struct DecodeTable {
    tokenizer: Arc<Tokenizer>,
    plan: Plan,
    kinds: Vec<u8>,
    /// `bytes[offsets[id]..offsets[id + 1]]` are token `id`'s bytes (one byte for `BYTE`).
    offsets: Vec<u32>,
    bytes: Vec<u8>,
    /// Whether the first token of a reply decodes differently (a `Metaspace` prepend scheme).
    first_differs: bool,
}

impl DecodeTable {
    /// Reads the tokenizer's decoder and, when it is one we can stream byte-wise, walks the
    /// vocabulary once (tens of milliseconds for 150k tokens; share the result).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        let plan = tokenizer
            .get_decoder()
            .map(plan_for)
            .unwrap_or(Plan::Window);
        Self::with_plan(tokenizer, plan)
    }

    /// The sliding-window fallback, whatever the decoder (tests compare both paths).
    #[cfg(test)]
    pub(crate) fn window_only(tokenizer: Arc<Tokenizer>) -> Self {
        Self::with_plan(tokenizer, Plan::Window)
    }

    fn with_plan(tokenizer: Arc<Tokenizer>, plan: Plan) -> Self {
        let mut table = Self {
            tokenizer,
            first_differs: matches!(&plan, Plan::Pieces { steps, .. }
                if steps.iter().any(|s| matches!(s, PieceStep::Metaspace { drop_first: true, .. }))),
            plan,
            kinds: Vec::new(),
            offsets: vec![0],
            bytes: Vec::new(),
        };
        if matches!(table.plan, Plan::Window) {
            return table;
        }
        let added = table.tokenizer.get_added_tokens_decoder();
        let n = added
            .keys()
            .map(|&id| id as usize + 1)
            .chain([table.tokenizer.get_vocab_size(false)])
            .max()
            .unwrap_or(0);
        table.kinds.reserve(n);
        table.offsets.reserve(n);
        let mut bytes = std::mem::take(&mut table.bytes);
        for id in 0..n as u32 {
            let kind = match table.tokenizer.id_to_token(id) {
                None => MISSING,
                Some(content) => table.piece_into(&content, false, &mut bytes),
            };
            table.kinds.push(kind);
            table.offsets.push(bytes.len() as u32);
        }
        table.bytes = bytes;
        table.kinds.shrink_to_fit();
        table.bytes.shrink_to_fit();
        table
    }

    pub fn strategy(&self) -> DecodeStrategy {
        match self.plan {
            Plan::ByteLevel => DecodeStrategy::ByteLevel,
            Plan::Pieces { .. } => DecodeStrategy::Pieces,
            Plan::Window => DecodeStrategy::Window,
        }
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Appends what one token string decodes to under the byte-wise plans to `out` (one byte
    /// for a byte-fallback token) and returns its kind.
    fn piece_into(&self, content: &str, first: bool, out: &mut Vec<u8>) -> u8 {
        if self
            .tokenizer
            .get_added_vocabulary()
            .is_special_token(content)
        {
            return SPECIAL;
        }
        match &self.plan {
            Plan::ByteLevel => {
                push_byte_level(content, out);
                TEXT
            }
            Plan::Pieces {
                steps,
                byte_fallback,
                ..
            } => {
                let mut s = Cow::Borrowed(content);
                for step in steps {
                    s = apply_step(step, s, first);
                }
                match byte_token(&s) {
                    Some(b) if *byte_fallback => {
                        out.push(b);
                        BYTE
                    }
                    _ => {
                        out.extend_from_slice(s.as_bytes());
                        TEXT
                    }
                }
            }
            Plan::Window => unreachable!("the window plan has no per-token pieces"),
        }
    }

    /// Token `id`'s piece: from the table, or computed when it is the reply's first token under
    /// a `Metaspace` prepend scheme or lies outside the table (a sparse vocabulary).
    fn lookup(&self, id: u32, first: bool) -> Result<Piece<'_>, StreamError> {
        let i = id as usize;
        let kind = self.kinds.get(i).copied().unwrap_or(MISSING);
        if kind == SPECIAL {
            return Ok(Piece::Special);
        }
        if kind == MISSING || (first && self.first_differs) {
            let content = self
                .tokenizer
                .id_to_token(id)
                .ok_or(StreamError::UnknownToken {
                    id,
                    vocab_size: self.vocab_size(),
                })?;
            let mut bytes = Vec::new();
            return Ok(match self.piece_into(&content, first, &mut bytes) {
                SPECIAL => Piece::Special,
                BYTE => Piece::Byte(bytes[0]),
                _ => Piece::Text(Cow::Owned(bytes)),
            });
        }
        let bytes = &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize];
        Ok(if kind == BYTE {
            Piece::Byte(bytes[0])
        } else {
            Piece::Text(Cow::Borrowed(bytes))
        })
    }
}

enum Piece<'a> {
    Text(Cow<'a, [u8]>),
    /// A `<0xNN>` byte-fallback token.
    Byte(u8),
    Special,
}

/// Which byte-wise plan (if any) reproduces this decoder exactly.
fn plan_for(decoder: &DecoderWrapper) -> Plan {
    let steps: &[DecoderWrapper] = match decoder {
        DecoderWrapper::Sequence(seq) => seq.get_decoders(),
        single => std::slice::from_ref(single),
    };
    if let [DecoderWrapper::ByteLevel(_)] = steps {
        return Plan::ByteLevel;
    }
    // Grammar: (Replace | Metaspace)* ByteFallback? Fuse? Strip(stop = 0)?, where Strip needs
    // Fuse before it (otherwise it strips every token).
    let mut pieces = Vec::new();
    let mut rest = steps;
    while let Some((first, tail)) = rest.split_first() {
        let step = match first {
            DecoderWrapper::Replace(replace) => match string_replace(replace) {
                Some((from, to)) => PieceStep::Replace { from, to },
                None => return Plan::Window,
            },
            DecoderWrapper::Metaspace(m) => metaspace_step(m),
            _ => break,
        };
        pieces.push(step);
        rest = tail;
    }
    let mut byte_fallback = false;
    if let Some((DecoderWrapper::ByteFallback(_), tail)) = rest.split_first() {
        byte_fallback = true;
        rest = tail;
    }
    let mut fused = false;
    if let Some((DecoderWrapper::Fuse(_), tail)) = rest.split_first() {
        fused = true;
        rest = tail;
    }
    let mut strip = None;
    if let Some((DecoderWrapper::Strip(s), tail)) = rest.split_first() {
        match strip_rule(s) {
            Some(rule) if fused => strip = Some(rule),
            _ => return Plan::Window,
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Plan::Window;
    }
    Plan::Pieces {
        steps: pieces,
        byte_fallback,
        strip,
    }
}

/// `Replace`'s pattern is private; its serialized form is the tokenizer.json contract.
fn string_replace(replace: &tokenizers::normalizers::replace::Replace) -> Option<(String, String)> {
    let value = serde_json::to_value(replace).ok()?;
    let from = value.get("pattern")?.get("String")?.as_str()?.to_owned();
    let to = value.get("content")?.as_str()?.to_owned();
    (!from.is_empty()).then_some((from, to))
}

fn metaspace_step(m: &Metaspace) -> PieceStep {
    PieceStep::Metaspace {
        replacement: m.get_replacement(),
        drop_first: m.get_prepend_scheme() != PrependScheme::Never,
    }
}

fn strip_rule(s: &Strip) -> Option<(char, usize)> {
    (s.stop == 0).then_some((s.content, s.start))
}

fn apply_step<'a>(step: &PieceStep, s: Cow<'a, str>, first: bool) -> Cow<'a, str> {
    match step {
        PieceStep::Replace { from, to } => {
            if s.contains(from.as_str()) {
                Cow::Owned(s.replace(from.as_str(), to))
            } else {
                s
            }
        }
        PieceStep::Metaspace {
            replacement,
            drop_first,
        } => {
            if !s.contains(*replacement) {
                s
            } else if first && *drop_first {
                Cow::Owned(s.chars().filter(|c| c != replacement).collect())
            } else {
                Cow::Owned(s.replace(*replacement, " "))
            }
        }
    }
}

/// `<0xNN>` → `NN`, with `tokenizers`' own test (six bytes, two hex digits).
fn byte_token(s: &str) -> Option<u8> {
    if s.len() == 6 && s.starts_with("<0x") && s.ends_with('>') {
        u8::from_str_radix(s.get(3..5)?, 16).ok()
    } else {
        None
    }
}

/// GPT-2's byte ↔ unicode map, inverted: the byte a char of the byte-level alphabet stands for.
/// Printable bytes stand for themselves; the 68 others map to U+0100.. in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    const fn printable(b: u32) -> bool {
        matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
    }
    const INVERSE: [u8; 68] = {
        let mut out = [0u8; 68];
        let (mut b, mut n) = (0u32, 0usize);
        while b < 256 {
            if !printable(b) {
                out[n] = b as u8;
                n += 1;
            }
            b += 1;
        }
        out
    };
    let c = c as u32;
    match c {
        0..=255 if printable(c) => Some(c as u8),
        256..=323 => Some(INVERSE[(c - 256) as usize]),
        _ => None,
    }
}

/// Appends a byte-level token's bytes; a token with any char outside the alphabet (an added
/// token such as `<think>` with a space) is taken as its UTF-8, as the `ByteLevel` decoder does.
fn push_byte_level(content: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in content.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(content.as_bytes());
                return;
            }
        }
    }
}

/// Incremental, UTF-8-safe detokenizer for one reply at a time.
#[derive(Debug)]
pub struct TokenDecoder {
    table: Arc<DecodeTable>,
    /// Bytes of a character not yet complete (at most 3 of them with valid input).
    pending: Vec<u8>,
    /// A non-special token has been seen in this reply.
    started: bool,
    /// Leading `strip_char`s still to drop (`Strip` decoder), until the first other char.
    strip_left: usize,
    strip_char: char,
    /// Capacity for this push's output: at most 3 output bytes (a U+FFFD) per input byte, so
    /// the returned `String` is allocated exactly once.
    hint: usize,
    window: Window,
}

#[derive(Debug, Default)]
struct Window {
    ids: Vec<u32>,
    /// `ids[prefix..read]` decode to `prefix_text`, already emitted: the context that keeps the
    /// next token's leading space and merges right.
    prefix: usize,
    read: usize,
    prefix_text: String,
}

impl TokenDecoder {
    /// A decoder with its own [`DecodeTable`]: O(vocabulary). For one reply after another build
    /// the table once and use [`TokenDecoder::with_table`], or [`TokenDecoder::reset`].
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self::with_table(Arc::new(DecodeTable::new(tokenizer)))
    }

    /// A decoder sharing an existing table (cheap).
    pub fn with_table(table: Arc<DecodeTable>) -> Self {
        let (strip_char, strip_left) = table.strip().unwrap_or((' ', 0));
        Self {
            table,
            pending: Vec::with_capacity(16),
            started: false,
            strip_left,
            strip_char,
            hint: 0,
            window: Window::default(),
        }
    }

    pub fn table(&self) -> &Arc<DecodeTable> {
        &self.table
    }

    /// Forget the current reply (what [`TokenDecoder::finish`] does, without the flush).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.started = false;
        self.strip_left = self.table.strip().map_or(0, |(_, n)| n);
        self.window.ids.clear();
        self.window.prefix = 0;
        self.window.read = 0;
        self.window.prefix_text.clear();
    }

    /// Feed one generated token id; returns the text that became final with it (often `""`,
    /// never half a character). Special tokens are skipped.
    pub fn push(&mut self, id: u32) -> Result<String, StreamError> {
        if matches!(self.table.plan, Plan::Window) {
            return self.push_window(id);
        }
        let table = Arc::clone(&self.table);
        let first = !self.started;
        let piece = table.lookup(id, first)?;
        let mut out = String::new();
        match piece {
            Piece::Special => return Ok(out),
            Piece::Byte(b) => {
                self.hint = (self.pending.len() + 1) * 3;
                self.pending.push(b)
            }
            Piece::Text(bytes) => {
                self.hint = (self.pending.len() + bytes.len()) * 3;
                if table.byte_fallback() && !self.pending.is_empty() {
                    // `ByteFallback` turns an unfinished run of byte tokens into one U+FFFD
                    // per byte once a text token ends the run.
                    self.flush_pending_per_byte(&mut out);
                }
                self.pending.extend_from_slice(&bytes);
            }
        }
        self.started = true;
        self.drain_complete(&mut out);
        Ok(out)
    }

    /// End of the reply: whatever is still held back (an incomplete byte sequence becomes
    /// U+FFFD). The decoder is then ready for the next reply.
    pub fn finish(&mut self) -> Result<String, StreamError> {
        let mut out = String::new();
        self.hint = self.pending.len() * 3;
        if matches!(self.table.plan, Plan::Window) {
            out = self.finish_window()?;
        } else if !self.pending.is_empty() {
            if self.table.byte_fallback() {
                self.flush_pending_per_byte(&mut out);
            } else {
                // `from_utf8_lossy` ends an incomplete tail with a single U+FFFD.
                self.pending.clear();
                self.emit(&mut out, "\u{FFFD}");
            }
        }
        self.reset();
        Ok(out)
    }

    fn flush_pending_per_byte(&mut self, out: &mut String) {
        for _ in 0..self.pending.len() {
            self.emit(out, "\u{FFFD}");
        }
        self.pending.clear();
    }

    /// Moves every complete character out of `pending`; invalid bytes become U+FFFD (one per
    /// maximal invalid sequence for byte-level, as `from_utf8_lossy`; one per byte for byte
    /// fallback, as `ByteFallback`); an incomplete tail stays.
    fn drain_complete(&mut self, out: &mut String) {
        let mut pos = 0;
        let pending = std::mem::take(&mut self.pending);
        while pos < pending.len() {
            match std::str::from_utf8(&pending[pos..]) {
                Ok(s) => {
                    self.emit(out, s);
                    pos = pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Re-validating the prefix is cheap and cannot fail (no `unsafe` needed).
                    if let Ok(s) = std::str::from_utf8(&pending[pos..pos + valid]) {
                        self.emit(out, s);
                    }
                    pos += valid;
                    match e.error_len() {
                        Some(n) => {
                            let count = if self.table.byte_fallback() { n } else { 1 };
                            for _ in 0..count {
                                self.emit(out, "\u{FFFD}");
                            }
                            pos += n;
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending = pending;
        self.pending.drain(..pos);
    }

    /// Appends `s`, first dropping the reply's leading strip chars (`Strip` decoder).
    fn emit(&mut self, out: &mut String, mut s: &str) {
        while self.strip_left > 0 && !s.is_empty() {
            match s.strip_prefix(self.strip_char) {
                Some(rest) => {
                    s = rest;
                    self.strip_left -= 1;
                }
                None => self.strip_left = 0,
            }
        }
        if s.is_empty() {
            return;
        }
        if out.capacity() == 0 {
            out.reserve_exact(self.hint.max(s.len()));
        }
        out.push_str(s);
    }

    fn decode(&self, ids: &[u32]) -> Result<String, StreamError> {
        self.table
            .tokenizer
            .decode(ids, true)
            .map_err(|source| StreamError::Decode {
                ids: ids.to_vec(),
                source,
            })
    }

    fn push_window(&mut self, id: u32) -> Result<String, StreamError> {
        if self.table.tokenizer.id_to_token(id).is_none() {
            return Err(StreamError::UnknownToken {
                id,
                vocab_size: self.table.vocab_size(),
            });
        }
        self.window.ids.push(id);
        let text = self.decode(&self.window.ids[self.window.prefix..])?;
        let w = &mut self.window;
        if text.len() <= w.prefix_text.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        if !text.starts_with(&w.prefix_text) {
            return Err(StreamError::Inconsistent {
                id,
                expected_prefix: w.prefix_text.clone(),
                actual: text,
            });
        }
        let out = text[w.prefix_text.len()..].to_owned();
        w.prefix = w.read;
        w.read = w.ids.len();
        if w.prefix > 32 {
            w.ids.drain(..w.prefix);
            w.read -= w.prefix;
            w.prefix = 0;
        }
        self.window.prefix_text =
            self.decode(&self.window.ids[self.window.prefix..self.window.read])?;
        Ok(out)
    }

    fn finish_window(&mut self) -> Result<String, StreamError> {
        let text = self.decode(&self.window.ids[self.window.prefix..])?;
        let w = &self.window;
        if text.len() <= w.prefix_text.len() {
            return Ok(String::new());
        }
        match text.strip_prefix(w.prefix_text.as_str()) {
            Some(rest) => Ok(rest.to_owned()),
            None => Err(StreamError::Inconsistent {
                id: w.ids.last().copied().unwrap_or_default(),
                expected_prefix: w.prefix_text.clone(),
                actual: text,
            }),
        }
    }
}

impl DecodeTable {
    fn byte_fallback(&self) -> bool {
        matches!(
            self.plan,
            Plan::Pieces {
                byte_fallback: true,
                ..
            }
        )
    }

    fn strip(&self) -> Option<(char, usize)> {
        match self.plan {
            Plan::Pieces { strip, .. } => strip,
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "detok_tests.rs"]
mod tests;
