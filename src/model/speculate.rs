//! Prompt-lookup (n-gram) drafts for speculative decoding.
//!
//! In: every token id so far (prompt + answer, the last one just sampled and not yet run through
//! the decoder). Out: up to `max_draft` ids that followed the most recent earlier occurrence of
//! the sequence's last n-gram (n from `ngram_max` down to `ngram_min`). Reports, captions and
//! follow-up answers repeat words of their prompt and of themselves; a draft that the decoder
//! confirms costs one decoder run for several tokens. `generate` verifies the draft in one run,
//! keeps the accepted prefix and rolls the KV cache back over the rest.
//!
//! No state, no channels: a pure function of the history.

/// How drafts are made; `max_draft == 0` turns speculation off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// At most this many drafted tokens per decoder run.
    pub max_draft: usize,
    /// The longest n-gram looked up (tried first).
    pub ngram_max: usize,
    /// The shortest n-gram looked up.
    pub ngram_min: usize,
}

impl Speculation {
    /// No drafts: one decoder run per token.
    pub const OFF: Speculation = Speculation {
        max_draft: 0,
        ngram_max: 3,
        ngram_min: 1,
    };

    pub fn is_on(&self) -> bool {
        self.max_draft > 0 && self.ngram_max >= self.ngram_min.max(1)
    }
}

impl Default for Speculation {
    /// On: up to 8 drafted tokens after a 3- to 1-gram match.
    fn default() -> Self {
        Speculation {
            max_draft: 8,
            ngram_max: 3,
            ngram_min: 1,
        }
    }
}

/// The draft for `history`: the tokens that followed the latest earlier occurrence of its last
/// n-gram (longest n first), at most `limit` of them. Empty when nothing matches.
pub fn draft<'a>(history: &'a [u32], spec: &Speculation, limit: usize) -> &'a [u32] {
    let limit = limit.min(spec.max_draft);
    if limit == 0 || !spec.is_on() {
        return &[];
    }
    let len = history.len();
    let lo = spec.ngram_min.max(1);
    for n in (lo..=spec.ngram_max).rev() {
        if n >= len {
            continue;
        }
        let tail = &history[len - n..];
        // Latest start `s` < len - n with history[s..s+n] == tail; the draft follows it.
        let mut s = len - n;
        while s > 0 {
            s -= 1;
            if history[s..s + n] == *tail {
                let from = s + n;
                let to = (from + limit).min(len);
                if to > from {
                    return &history[from..to];
                }
            }
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_latest_match_of_the_longest_ngram() {
        let spec = Speculation {
            max_draft: 3,
            ngram_max: 2,
            ngram_min: 1,
        };
        // "5 6" occurred at 1 (followed by 7 8 9) and at 6 (followed by 1 2): the latest wins.
        let h = [4, 5, 6, 7, 8, 9, 5, 6, 1, 2, 3, 5, 6];
        assert_eq!(draft(&h, &spec, 10), &[1, 2, 3]);
        assert_eq!(draft(&h, &spec, 2), &[1, 2]);
        // A 1-gram fallback when no 2-gram matches.
        let h = [1, 2, 3, 9, 2];
        assert_eq!(draft(&h, &spec, 10), &[3, 9, 2]);
        // Nothing matches: no draft.
        assert!(draft(&[1, 2, 3, 4], &spec, 10).is_empty());
        // Off.
        assert!(draft(&[1, 2, 1, 2], &Speculation::OFF, 10).is_empty());
        assert!(draft(&[1, 2, 1, 2], &spec, 0).is_empty());
    }

    #[test]
    fn a_match_at_the_end_drafts_up_to_the_end() {
        let spec = Speculation {
            max_draft: 8,
            ngram_max: 1,
            ngram_min: 1,
        };
        // The latest earlier 7 is at index 2; what follows it runs to the end.
        assert_eq!(draft(&[7, 7, 7], &spec, 8), &[7]);
        assert_eq!(draft(&[7, 1, 7], &spec, 8), &[1, 7]);
    }
}
