//! Sentence segmentation of a streamed reply, for speech and reports.
//!
//! In: the text the detokenizer emitted for each generated token, with the token's index and the
//! time. Out: [`Sentence`]s — index, trimmed text, the span of tokens whose text makes it up, and
//! when it became final.
//!
//! A sentence is final when the next one has *visibly begun* — a boundary is judged only once the
//! character after it (past closing quotes/brackets and whitespace) has arrived — or when the
//! stream ends. Decisions look at most at that next visible character, so feeding the text char
//! by char or all at once yields the same sentences.
//!
//! Boundaries:
//! - `.` `!` `?` `…` (and runs such as `?!`, `...`), then closing quotes/brackets/markdown
//!   emphasis (`"` `”` `)` `]` `*` `」` …), then whitespace, then the next visible char. A stop
//!   followed directly by a CJK character also counts (`OK.你好`).
//! - CJK full-width `。` `！` `？` `｡` need no space: any following character confirms them.
//! - A newline ends a sentence (once a visible char follows it).
//! - Emoji right after a stop belong to the sentence they close (`Done! 🎉 Next` → `Done! 🎉`).
//!
//! Not boundaries (the first two rules hold for every non-CJK stop, the rest for a single dot):
//! - the next visible char is a lowercase letter (`Temp. is`, `approx. five`, `Wait... then`);
//! - no whitespace after the stop, unless CJK follows (`4.5 bar`, `v1.2.3`, `example.com`);
//! - the word before the dot is an abbreviation: titles and business words always (`Dr.`, `Mr.`,
//!   `St.`, `Inc.`, `vs.`, `approx.`, `ca.`, `z.B.`), number words before a digit (`No. 3`,
//!   `Fig. 2`, `Nr. 5`, `min. 4 bar`), or letters with inner dots (`e.g.`, `i.e.`, `U.S.`);
//! - the line so far is only a list marker (`1.`, `12.`, `a.`, `iv.`) — `1. Check the valve`;
//! - an ellipsis followed directly by CJK (`他说……我`);
//! - anything inside a citation marker (`[cam:belt box:10, 20, 30, 40]`, see
//!   [`cite`](crate::report::cite)), which always reaches one sentence whole.
//!
//! Lengths (in chars of the trimmed sentence, [`SplitterConfig`]):
//! - A boundary that would close a sentence shorter than `min_sentence_chars` is passed over, so
//!   short sentences merge with the next one (`Yes. The valve is open.` is one sentence). The last
//!   sentence at the end of the stream goes out whatever its length.
//! - The **first** sentence uses `first_fragment_min_chars` instead, and — for latency, so speech
//!   can start early — may also end at a clause boundary (`,` `;` `:` `—`, ` – `, CJK `，、；：`)
//!   once it has that many chars; optionally (`first_fragment_force_words`) at any space once it
//!   has that many words. Later sentences end only at sentence boundaries.
//!
//! Token spans: each push records which bytes of the reply its token produced; a sentence's span
//! runs from the token holding its first visible byte to the one holding its last, so when a
//! boundary falls inside one token's text (`". The"`) that token belongs to both sentences. Tokens
//! that produced no text (a character still incomplete) are counted with the next text.

use std::collections::VecDeque;
use std::time::Duration;

use super::super::Sentence;

/// Length rules of the splitter (chars of trimmed text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitterConfig {
    /// Later sentences shorter than this merge with the next one.
    pub min_sentence_chars: usize,
    /// The first sentence's minimum length, at a sentence or (if enabled) a clause boundary.
    pub first_fragment_min_chars: usize,
    /// The first sentence may end at a clause boundary (`,` `;` `:` `—` …).
    pub first_fragment_at_clauses: bool,
    /// If > 0, the first sentence may end at any whitespace once it has this many words.
    pub first_fragment_force_words: usize,
}

impl Default for SplitterConfig {
    /// 20 chars for sentences (LiveKit's `min_sentence_len`), a first fragment of 12 chars that
    /// may end at a clause, no forced cut.
    fn default() -> Self {
        Self {
            min_sentence_chars: 20,
            first_fragment_min_chars: 12,
            first_fragment_at_clauses: true,
            first_fragment_force_words: 0,
        }
    }
}

/// Which bytes of the reply one push produced.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Absolute byte offset in the reply where this token's text starts.
    start: usize,
    /// First token of the run that produced this text (earlier tokens may have produced "").
    first_token: usize,
    token: usize,
}

/// What a candidate position turned out to be.
enum Step {
    /// Not a boundary: scanning goes on at this byte offset.
    Skip(usize),
    /// Cannot tell until more text arrives.
    Wait,
    /// A sentence ends at byte `end` (exclusive); the next begins at byte `next`.
    Split { end: usize, next: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    Sentence,
    Clause,
    Forced,
}

/// The longest citation marker (between the brackets, in bytes) that counts as one; a longer
/// bracket is text. report::cite parses markers within the same bound.
pub const MAX_MARKER_BYTES: usize = 96;

/// Whether `inner` — what follows an unclosed `[` so far — may still become a citation marker
/// (`[cam:NAME]`, `[cam:NAME box:…]`): the splitter does not cut a sentence there. `inner`
/// excludes the bracket.
pub fn may_be_marker(inner: &str) -> bool {
    if inner.len() > MAX_MARKER_BYTES || inner.contains(['\n', '[', ']']) {
        return false;
    }
    let t = inner.trim_start().as_bytes();
    let n = t.len().min(3);
    t[..n].eq_ignore_ascii_case(&b"cam"[..n])
}

/// Turns a stream of text pieces into sentences; see the module docs for the rules.
#[derive(Debug)]
pub struct SentenceSplitter {
    config: SplitterConfig,
    /// Text not yet part of an emitted sentence.
    buf: String,
    /// Absolute byte offset of `buf[0]` in the reply.
    base: usize,
    /// Byte offset in `buf` where scanning resumes.
    scan: usize,
    marks: VecDeque<Mark>,
    /// First token of a run of pushes that produced no text yet.
    empty_since: Option<usize>,
    next_index: usize,
}

impl SentenceSplitter {
    pub fn new(config: SplitterConfig) -> Self {
        Self {
            config,
            buf: String::new(),
            base: 0,
            scan: 0,
            marks: VecDeque::new(),
            empty_since: None,
            next_index: 0,
        }
    }

    pub fn config(&self) -> &SplitterConfig {
        &self.config
    }

    /// `text`: what the decoder emitted for generated token number `token_index`; `at`: time
    /// since generation began. Returns the sentences that became final (usually none).
    pub fn push(&mut self, text: &str, token_index: usize, at: Duration) -> Vec<Sentence> {
        if text.is_empty() {
            self.empty_since.get_or_insert(token_index);
            return Vec::new();
        }
        let first_token = self.empty_since.take().unwrap_or(token_index);
        self.marks.push_back(Mark {
            start: self.base + self.buf.len(),
            first_token: first_token.min(token_index),
            token: token_index,
        });
        self.buf.push_str(text);
        let mut out = Vec::new();
        self.scan_boundaries(at, &mut out);
        out
    }

    /// End of stream: the rest as a last sentence, if any non-whitespace remains. `token_count`
    /// (tokens generated) ends its span: the last sentence owns the tail of the stream. The
    /// splitter is then empty and ready for another reply (indices start again at 0).
    pub fn finish(&mut self, token_count: usize, at: Duration) -> Option<Sentence> {
        let end = self.buf.len();
        let sentence = self.sentence(0, end, at).map(|mut s| {
            s.token_span.1 = s.token_span.1.max(token_count);
            s
        });
        // Clear, keeping the buffers' capacity for the next reply.
        self.buf.clear();
        self.base = 0;
        self.scan = 0;
        self.marks.clear();
        self.empty_since = None;
        self.next_index = 0;
        sentence
    }

    fn scan_boundaries(&mut self, at: Duration, out: &mut Vec<Sentence>) {
        while let Some(c) = self.buf[self.scan..].chars().next() {
            match self.candidate(self.scan, c) {
                Step::Skip(next) => self.scan = next,
                Step::Wait => break,
                Step::Split { end, next } => {
                    if let Some(s) = self.sentence(0, end, at) {
                        out.push(s);
                    }
                    self.buf.drain(..next);
                    self.base += next;
                    while self.marks.len() > 1 && self.marks[1].start <= self.base {
                        self.marks.pop_front();
                    }
                    self.scan = 0;
                }
            }
        }
    }

    /// The sentence made of `buf[from..to]`, trimmed; `None` if that is blank. Takes the next
    /// index.
    fn sentence(&mut self, from: usize, to: usize, at: Duration) -> Option<Sentence> {
        let raw = &self.buf[from..to];
        let text = raw.trim();
        if text.is_empty() {
            return None;
        }
        let lead = raw.len() - raw.trim_start().len();
        let first_byte = self.base + from + lead;
        let last_byte = first_byte + text.len() - 1;
        // Tokens that produced no text before this mark count with it if the sentence starts
        // at the mark's first visible byte (not after a boundary inside the mark's text).
        let start_mark = self.mark_at(first_byte);
        let starts_mark = start_mark.start >= self.base
            && self.buf[start_mark.start - self.base..first_byte - self.base]
                .trim()
                .is_empty();
        let start = if starts_mark {
            start_mark.first_token
        } else {
            start_mark.token
        };
        let end = self.mark_at(last_byte).token + 1;
        let index = self.next_index;
        self.next_index += 1;
        Some(Sentence {
            index,
            text: text.to_owned(),
            token_span: (start, end.max(start + 1)),
            at,
        })
    }

    /// The mark whose text holds absolute byte `pos` (the last one starting at or before it).
    fn mark_at(&self, pos: usize) -> Mark {
        let i = self.marks.partition_point(|m| m.start <= pos);
        self.marks[i.saturating_sub(1)]
    }

    fn first(&self) -> bool {
        self.next_index == 0
    }

    /// Judges the character `c` at byte `i` of `buf`.
    fn candidate(&self, i: usize, c: char) -> Step {
        let after = i + c.len_utf8();
        if c == '\n' {
            return match self.next_visible(after) {
                None => Step::Wait,
                Some(next) => self.decide(i, next, after, Cut::Sentence),
            };
        }
        if self.inside_marker(i) {
            return Step::Skip(after);
        }
        if is_stop(c) {
            return self.stop_candidate(i);
        }
        if self.first() && self.config.first_fragment_at_clauses {
            if let Some(step) = self.clause_candidate(i, c) {
                return step;
            }
        }
        if self.first() && self.config.first_fragment_force_words > 0 && c.is_whitespace() {
            let words = self.buf[..i].split_whitespace().count();
            if words >= self.config.first_fragment_force_words {
                return match self.next_visible(after) {
                    None => Step::Wait,
                    Some(next) => self.decide(i, next, after, Cut::Forced),
                };
            }
        }
        Step::Skip(after)
    }

    /// Whether byte `i` lies inside what may still be a citation marker (`[cam:belt box:1, 2`):
    /// no cut there, so a marker always reaches one sentence whole, however the tokens fell.
    /// Looks back at most [`MAX_MARKER_BYTES`].
    fn inside_marker(&self, i: usize) -> bool {
        let head = &self.buf[..i];
        let limit = MAX_MARKER_BYTES + 2;
        match head
            .char_indices()
            .rev()
            .take(limit)
            .find(|(_, c)| *c == '[' || *c == ']')
        {
            Some((open, '[')) => may_be_marker(&head[open + 1..]),
            _ => false,
        }
    }

    /// A run of stops starting at byte `i`.
    fn stop_candidate(&self, i: usize) -> Step {
        let s = &self.buf;
        let k = i + run_len(&s[i..], is_stop);
        if k == s.len() {
            return Step::Wait;
        }
        let m = k + run_len(&s[k..], is_closer);
        let Some(after_closers) = s[m..].chars().next() else {
            return Step::Wait;
        };
        let cluster = &s[i..k];
        let last_stop = cluster.chars().next_back().unwrap_or('.');
        let cjk_stop = is_cjk_stop(last_stop);
        let ellipsis = cluster.contains('…') || cluster.matches(['.', '．']).count() >= 2;
        let spaced = after_closers.is_whitespace();
        let next = if spaced {
            match self.next_visible(m) {
                Some(next) => next,
                None => return Step::Wait,
            }
        } else {
            m
        };
        let nv = s[next..].chars().next().unwrap_or(' ');
        if !cjk_stop {
            if !spaced && (!is_cjk(nv) || ellipsis) {
                return Step::Skip(k);
            }
            if nv.is_lowercase() {
                return Step::Skip(k);
            }
            let dotted_only = cluster.chars().all(|c| c == '.' || c == '．');
            if dotted_only && !ellipsis {
                if is_abbreviation(word_before(s, i), nv) {
                    return Step::Skip(k);
                }
                if is_list_marker(line_before(s, i)) {
                    return Step::Skip(k);
                }
            }
        }
        // Emoji after the stop close the sentence with it: `Done! 🎉 Next`.
        let (mut end, mut next) = (m, next);
        if spaced && is_emoji(nv) {
            let mut e = next;
            loop {
                e += run_len(&s[e..], is_emoji);
                match self.next_visible(e) {
                    None => return Step::Wait,
                    Some(j) if s[j..].chars().next().is_some_and(is_emoji) => e = j,
                    Some(j) => {
                        end = e;
                        next = j;
                        break;
                    }
                }
            }
        }
        self.decide(end, next, k, Cut::Sentence)
    }

    /// A clause boundary for the first fragment, if `c` is a clause mark.
    fn clause_candidate(&self, i: usize, c: char) -> Option<Step> {
        let s = &self.buf;
        let after = i + c.len_utf8();
        let needs_space_after = match c {
            ',' | ';' | ':' => true,
            // An en dash also writes ranges (3–5): only as a spaced clause dash.
            '–' => {
                if !s[..i].ends_with(char::is_whitespace) {
                    return None;
                }
                true
            }
            '—' | '，' | '、' | '；' | '：' => false,
            _ => return None,
        };
        let Some(following) = s[after..].chars().next() else {
            return Some(Step::Wait);
        };
        if needs_space_after && !following.is_whitespace() {
            return Some(Step::Skip(after));
        }
        Some(match self.next_visible(after) {
            None => Step::Wait,
            Some(next) => self.decide(after, next, after, Cut::Clause),
        })
    }

    /// Split at `end` (next sentence at `next`) if the sentence is long enough, else go on
    /// scanning at `resume`.
    fn decide(&self, end: usize, next: usize, resume: usize, cut: Cut) -> Step {
        let text = self.buf[..end].trim();
        let min = if self.first() {
            self.config.first_fragment_min_chars
        } else {
            debug_assert_eq!(cut, Cut::Sentence);
            self.config.min_sentence_chars
        };
        if text.is_empty() || text.chars().count() < min {
            Step::Skip(resume)
        } else {
            Step::Split { end, next }
        }
    }

    /// Byte offset of the first non-whitespace char at or after `from`, if it has arrived.
    fn next_visible(&self, from: usize) -> Option<usize> {
        self.buf[from..]
            .char_indices()
            .find(|(_, c)| !c.is_whitespace())
            .map(|(j, _)| from + j)
    }
}

/// Bytes of the leading run of chars matching `pred`.
fn run_len(s: &str, pred: fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !pred(c))
        .map_or(s.len(), |(j, _)| j)
}

fn is_stop(c: char) -> bool {
    matches!(
        c,
        '.' | '!' | '?' | '…' | '‼' | '⁇' | '⁈' | '⁉' | '。' | '！' | '？' | '｡' | '．'
    )
}

/// Full-width stops that need no space after them.
fn is_cjk_stop(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '｡')
}

/// What may close a sentence after its stop: quotes, brackets, markdown emphasis.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | '”'
            | '’'
            | '»'
            | '›'
            | ')'
            | ']'
            | '}'
            | '*'
            | '_'
            | '`'
            | '」'
            | '』'
            | '）'
            | '】'
            | '〕'
            | '〉'
            | '》'
            | '］'
            | '｝'
    )
}

/// Han, kana, hangul: scripts written without spaces between sentences.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x31F0..=0x31FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF
        | 0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F | 0x20000..=0x3FFFF)
}

/// Emoji and their joiners/modifiers (pictographs, dingbats, flags, ZWJ, VS16, keycaps, tags).
fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF | 0x200D | 0xFE0F
        | 0x20E3 | 0xE0020..=0xE007F | 0x3030 | 0x303D)
}

/// The word right before byte `i`: letters, digits and inner dots (`e.g`, `v1.2`, `Dr`).
fn word_before(s: &str, i: usize) -> &str {
    let head = &s[..i];
    let start = head
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '.'))
        .map_or(0, |(j, c)| j + c.len_utf8());
    head[start..].trim_start_matches('.')
}

/// The current line up to byte `i`.
fn line_before(s: &str, i: usize) -> &str {
    let head = &s[..i];
    head.rfind('\n').map_or(head, |j| &head[j + 1..])
}

/// Abbreviations a following capital never ends (titles, company and Latin/German shorthand).
const ALWAYS_ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "mt", "fr", "gen", "capt", "col", "lt",
    "sgt", "rev", "hon", "vs", "approx", "ca", "cf", "incl", "excl", "resp", "esp", "dept", "corp",
    "inc", "ltd", "co", "bzw", "ggf", "inkl", "evtl", "vgl", "sog", "bspw",
];
/// Abbreviations that a following number never ends (`No. 3`, `Fig. 2`, `min. 4 bar`).
const NUMBER_ABBREVIATIONS: &[&str] = &[
    "no", "nos", "nr", "fig", "figs", "vol", "p", "pp", "art", "sec", "ch", "tab", "eq", "ref",
    "min", "max", "temp", "op", "tel", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "abs", "abb", "kap", "s", "bd",
];

fn is_abbreviation(word: &str, next_visible: char) -> bool {
    if word.is_empty() {
        return false;
    }
    if word.contains('.') {
        // e.g, i.e, U.S, z.B, Ph.D: letters in short dot-separated groups.
        return word.split('.').all(|part| {
            (1..=2).contains(&part.chars().count()) && part.chars().all(char::is_alphabetic)
        });
    }
    let is = |list: &[&str]| list.iter().any(|a| a.eq_ignore_ascii_case(word));
    is(ALWAYS_ABBREVIATIONS) || (next_visible.is_ascii_digit() && is(NUMBER_ABBREVIATIONS))
}

/// `1`, `12`, `a`, `iv` (optionally after markdown bullets/emphasis): a list item's number.
fn is_list_marker(line: &str) -> bool {
    let t = line.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '*' | '#' | '>' | '-' | '_')
    });
    let n = t.chars().count();
    (1..=3).contains(&n) && t.chars().all(|c| c.is_ascii_digit())
        || n == 1 && t.chars().all(|c| c.is_ascii_alphabetic())
        || (1..=4).contains(&n)
            && t.chars()
                .all(|c| matches!(c, 'i' | 'v' | 'x' | 'I' | 'V' | 'X'))
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
