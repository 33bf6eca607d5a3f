//! Token stream → text → sentences.
//!
//! What flows through: generated token ids go into a [`TokenDecoder`], which hands back text only
//! once it is final (whole characters, special tokens dropped); that text, tagged with the index
//! of the token that produced it and the time, goes into a [`SentenceSplitter`], which hands back
//! each [`Sentence`](super::Sentence) the moment the next one has visibly begun (or the stream
//! ended). Both are pure and synchronous: the generation loop owns them and forwards what they
//! return to every consumer at once.
//!
//! - `detok` ([`TokenDecoder`], [`DecodeTable`]): incremental, UTF-8-safe detokenization over
//!   a `tokenizer.json`.
//! - `split` ([`SentenceSplitter`]): sentence segmentation for speech and reports, with guards
//!   for decimals, abbreviations, list numbers, ellipses and CJK punctuation, and a fast first
//!   fragment.
//! - `text` ([`TextStream`]): both of them and the stop-string matcher, as one generation uses
//!   them.

mod detok;
mod split;
mod text;

pub use detok::{DecodeStrategy, DecodeTable, StreamError, TokenDecoder};
pub use split::{may_be_marker, SentenceSplitter, SplitterConfig, MAX_MARKER_BYTES};
pub use text::{StopMatcher, TextStream};
