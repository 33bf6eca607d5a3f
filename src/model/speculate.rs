//! Prompt-lookup (n-gram) drafts for speculative decoding.
//!
//! In: every token id so far (prompt + answer, the last one just sampled and not yet run through
//! the decoder). Out: up to `max_draft` ids that followed the most recent earlier occurrence of
//! the sequence's last n-gram (n from `ngram_max` down to `ngram_min`). Reports, captions and
//! follow-up answers repeat words of their prompt and of themselves; a draft that the decoder
//! confirms costs one decoder run for several tokens. `generate` verifies the draft in one run,
//! keeps the accepted prefix and rolls the KV cache back over the rest.
//!
//! How many of the drafted tokens a run verifies is [`Tuner`]'s choice: a verify run costs more
//! per row than it saves when few drafts are accepted (on a 2-core CPU, SmolLM2 int4: one row
//! 5.1 ms, nine rows 20.7 ms), and less when most are. The tuner measures both — the time of a
//! decode iteration (the run, sampling its rows, emitting tokens) by its number of rows, and how
//! often drafts after an n-gram match of each length were accepted — and drafts the number of
//! tokens that makes the most tokens per second, none where a one-row run does best.
//!
//! A row's cost is not the same at every run length: ONNX Runtime's CPU kernels pick their
//! blocking by the number of rows, so on SmolLM2 int8 a decode iteration of two rows cost 1.22
//! one-row iterations, three rows 1.75 and four rows 1.92 (`gemba bench decode --workload
//! report` prints what the tuner measured). The tuner therefore keeps
//! each run length's own measured cost, and only for lengths not yet measured falls back on a
//! straight line (one row plus an average extra row) through what it has seen.

/// How drafts are made; `max_draft == 0` turns speculation off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// At most this many drafted tokens per decoder run.
    pub max_draft: usize,
    /// The longest n-gram looked up (tried first).
    pub ngram_max: usize,
    /// The shortest n-gram looked up.
    pub ngram_min: usize,
    /// Verify as many drafted tokens as [`Tuner`] finds worth it (else every draft whole).
    pub tuned: bool,
}

impl Speculation {
    /// No drafts: one decoder run per token.
    pub const OFF: Speculation = Speculation {
        max_draft: 0,
        ngram_max: 3,
        ngram_min: 1,
        tuned: true,
    };

    pub fn is_on(&self) -> bool {
        self.max_draft > 0 && self.ngram_max >= self.ngram_min.max(1)
    }
}

impl Default for Speculation {
    /// On: up to 8 drafted tokens after a 3- to 1-gram match, as many as the tuner finds worth
    /// verifying.
    fn default() -> Self {
        Speculation {
            max_draft: 8,
            ngram_max: 3,
            ngram_min: 1,
            tuned: true,
        }
    }
}

/// The draft for `history` into `out` (cleared first): the tokens that followed the latest
/// earlier occurrence of its last n-gram (longest n first), at most `limit` of them; returns that
/// n (0: nothing matched, `out` empty). Where the tokens that followed run up to the end of the
/// history — the text is repeating itself with a period shorter than the draft — the draft goes
/// on repeating that period.
pub fn draft(history: &[u32], spec: &Speculation, limit: usize, out: &mut Vec<u32>) -> usize {
    out.clear();
    let limit = limit.min(spec.max_draft);
    if limit == 0 || !spec.is_on() {
        return 0;
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
                out.extend_from_slice(&history[from..to]);
                // history[s..] repeats with period len - n - s: so does the draft.
                let period = len - n - s;
                while out.len() < limit {
                    let i = len + out.len() - period;
                    let t = if i < len { history[i] } else { out[i - len] };
                    out.push(t);
                }
                return n;
            }
        }
    }
    0
}

/// Matched n-gram lengths the tuner keeps apart (longer ones count as the last).
const MATCH_KINDS: usize = 3;

/// Chooses how many drafted tokens a run verifies, from what earlier runs cost and accepted.
///
/// Model: a run of `r` rows takes `cost(r)` — the moving average of measured runs of `r` rows,
/// or `one + (r - 1) * extra` for a length not measured yet — and after a match of length n each
/// drafted token is accepted with probability `p_n` once the ones before it were (so k drafts
/// yield `1 + p + … + p^k` tokens on average). The tuner picks the k with the most tokens per
/// unit of time. `one`, `extra` and the costs are moving averages of measured runs; `p_n`
/// counts verified positions, halved as they grow so that it follows the workload.
#[derive(Debug, Clone)]
pub struct Tuner {
    /// Each row after the first in a multi-row run, µs (averaged over all lengths).
    extra_us: Option<f64>,
    /// By number of rows: (moving average of a run's µs, runs measured). Index 0 unused; index
    /// 1 is the one-row run everything is priced against.
    by_rows: Vec<(f64, u32)>,
    /// Per match kind: (drafted positions verified, accepted).
    tried: [(f64, f64); MATCH_KINDS],
    /// Per match kind: drafts not verified since the last one that was.
    skipped: [u32; MATCH_KINDS],
}

/// Weight of a new measurement in the moving averages.
const EMA: f64 = 0.1;
/// The first this many runs of a length are averaged evenly (then the moving average, whose
/// weight is 1 / EVEN_RUNS, takes over).
const EVEN_RUNS: u32 = 10;
/// Before any multi-row run is measured, an extra row is assumed to cost this share of a
/// one-row run (the CPU figure above: (20.7 − 5.1) / 8 / 5.1 ≈ 0.38).
const PRIOR_EXTRA: f64 = 0.4;
/// Verified positions per match kind after which the counts are halved.
const WINDOW: f64 = 256.0;
/// Of the drafts a kind's acceptance makes not worth verifying, every this many-th still gets
/// its first token verified: acceptance changes along a text (an answer starts repeating its
/// prompt), and a kind that is never verified is never measured again.
const EXPLORE: u32 = 8;

impl Default for Tuner {
    fn default() -> Self {
        Tuner {
            extra_us: None,
            by_rows: Vec::new(),
            // Prior: one of two drafted positions accepted.
            tried: [(2.0, 1.0); MATCH_KINDS],
            skipped: [0; MATCH_KINDS],
        }
    }
}

impl Tuner {
    fn kind(n: usize) -> usize {
        n.clamp(1, MATCH_KINDS) - 1
    }

    /// The acceptance probability of a drafted position after a match of length `n`.
    pub fn acceptance(&self, n: usize) -> f64 {
        let (t, a) = self.tried[Self::kind(n)];
        a / t
    }

    /// A decode iteration whose decoder run had `rows` rows took `us` microseconds.
    pub fn record_run(&mut self, rows: usize, us: f64) {
        if !(us.is_finite() && us > 0.0) || rows == 0 {
            return;
        }
        if self.by_rows.len() <= rows {
            self.by_rows.resize(rows + 1, (0.0, 0));
        }
        // The first few runs of a length are averaged evenly, so that one slow first run (a
        // page fault, a thread waking) does not price the length out for long.
        let (avg, n) = &mut self.by_rows[rows];
        *n = n.saturating_add(1);
        *avg += (us - *avg) / f64::from((*n).min(EVEN_RUNS));
        if let (true, Some(one)) = (rows > 1, self.one_us()) {
            let per = ((us - one) / (rows - 1) as f64).max(0.0);
            self.extra_us = Some(self.extra_us.map_or(per, |o| o + EMA * (per - o)));
        }
    }

    /// A one-row run, µs (`None` until measured).
    fn one_us(&self) -> Option<f64> {
        self.by_rows
            .get(1)
            .filter(|(_, n)| *n > 0)
            .map(|&(us, _)| us)
    }

    /// The measured cost of each run length: (rows, cost in one-row runs, runs measured), for
    /// the lengths measured so far (the benchmark shows them).
    pub fn costs(&self) -> Vec<(usize, f64, u32)> {
        let Some(one) = self.one_us() else {
            return Vec::new();
        };
        self.by_rows
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(rows, &(us, n))| (rows, us / one, n))
            .collect()
    }

    /// `drafted` tokens after a match of length `n` were verified and the first `accepted`
    /// of them kept.
    pub fn record_draft(&mut self, n: usize, drafted: usize, accepted: usize) {
        if drafted == 0 || n == 0 {
            return;
        }
        let e = &mut self.tried[Self::kind(n)];
        // Positions verified: the accepted ones and the one that was not (if any).
        e.0 += (accepted + 1).min(drafted) as f64;
        e.1 += accepted as f64;
        if e.0 > WINDOW {
            e.0 /= 2.0;
            e.1 /= 2.0;
        }
    }

    /// How many of `available` drafted tokens (after a match of length `n`) to verify, at
    /// most `max`.
    pub fn length(&mut self, n: usize, available: usize, max: usize) -> usize {
        let limit = available.min(max);
        if limit == 0 || n == 0 {
            return 0;
        }
        let measured_one = self.one_us();
        let one = measured_one.unwrap_or(1.0).max(1e-9);
        let extra = self.extra_us.unwrap_or(one * PRIOR_EXTRA);
        // The cost of k drafts, in one-row runs: measured for the length, else the line.
        let cost = |k: usize| match self.by_rows.get(k + 1) {
            Some(&(us, n)) if n > 0 && measured_one.is_some() => us / one,
            _ => 1.0 + k as f64 * extra / one,
        };
        let k = best_length_by(self.acceptance(n), cost, limit);
        let skipped = &mut self.skipped[Self::kind(n)];
        if k > 0 {
            *skipped = 0;
            return k;
        }
        *skipped += 1;
        if *skipped >= EXPLORE {
            *skipped = 0;
            return 1;
        }
        0
    }
}

/// The k in 0..=limit with the most tokens per unit of time: `(1 + p + … + p^k) / (1 + k·c)`,
/// an extra row costing `c` one-row runs.
pub fn best_length(p: f64, c: f64, limit: usize) -> usize {
    best_length_by(p, |k| 1.0 + k as f64 * c, limit)
}

/// The k in 0..=limit with the most tokens per unit of time, `(1 + p + … + p^k) / cost(k)`,
/// where a run verifying k drafts costs `cost(k)` one-row runs.
pub fn best_length_by(p: f64, cost: impl Fn(usize) -> f64, limit: usize) -> usize {
    let (mut best, mut best_rate) = (0, 1.0);
    let (mut tokens, mut pk) = (1.0, 1.0);
    for k in 1..=limit {
        pk *= p;
        tokens += pk;
        let c = cost(k);
        if !(c.is_finite() && c > 0.0) {
            continue;
        }
        let rate = tokens / c;
        if rate > best_rate {
            (best, best_rate) = (k, rate);
        }
    }
    best
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
            tuned: false,
        };
        // "5 6" occurred at 1 (followed by 7 8 9) and at 6 (followed by 1 2): the latest wins.
        let h = [4, 5, 6, 7, 8, 9, 5, 6, 1, 2, 3, 5, 6, 0, 0, 0, 0, 5, 6];
        let mut out = Vec::new();
        assert_eq!(draft(&h, &spec, 10, &mut out), 2);
        assert_eq!(out, [0, 0, 0]);
        assert_eq!(draft(&h, &spec, 2, &mut out), 2);
        assert_eq!(out, [0, 0]);
        // A 1-gram fallback when no 2-gram matches.
        let h = [1, 2, 3, 4, 5, 6, 9, 2];
        assert_eq!(draft(&h, &spec, 3, &mut out), 1);
        assert_eq!(out, [3, 4, 5]);
        // Nothing matches: no draft.
        assert_eq!(draft(&[1, 2, 3, 4], &spec, 10, &mut out), 0);
        assert!(out.is_empty());
        // Off.
        assert_eq!(draft(&[1, 2, 1, 2], &Speculation::OFF, 10, &mut out), 0);
        assert!(out.is_empty());
        assert_eq!(draft(&[1, 2, 1, 2], &spec, 0, &mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn a_match_near_the_end_repeats_its_period() {
        let spec = Speculation {
            max_draft: 8,
            ngram_max: 2,
            ngram_min: 1,
            tuned: false,
        };
        let mut out = Vec::new();
        // The latest earlier 7 7 is at index 0: period 1.
        assert_eq!(draft(&[7, 7, 7], &spec, 4, &mut out), 2);
        assert_eq!(out, [7, 7, 7, 7]);
        // 7 1 7: the 1-gram 7 matched at 0, what followed (1 7) runs to the end: period 2.
        assert_eq!(draft(&[7, 1, 7], &spec, 5, &mut out), 1);
        assert_eq!(out, [1, 7, 1, 7, 1]);
        // A loop of three tokens after a prompt: the draft goes round it.
        let h = [9, 8, 1, 2, 3, 1, 2, 3, 1, 2];
        assert_eq!(draft(&h, &spec, 7, &mut out), 2);
        assert_eq!(out, [3, 1, 2, 3, 1, 2, 3]);
        // The capacity limit holds.
        assert_eq!(draft(&h, &spec, 2, &mut out), 2);
        assert_eq!(out, [3, 1]);
    }

    #[test]
    fn the_best_length_weighs_acceptance_against_the_cost_of_a_row() {
        // Free extra rows: draft as far as allowed, whatever the acceptance.
        assert_eq!(best_length(0.3, 0.0, 8), 8);
        // Rows as dear as whole runs: never worth it (at best break-even).
        assert_eq!(best_length(0.99, 1.0, 8), 0);
        // The CPU case (an extra row ≈ 0.38 of a run): few drafts when half are accepted,
        // more when nearly all are.
        assert_eq!(best_length(0.5, 0.38, 8), 1);
        let sure = best_length(0.95, 0.38, 8);
        assert!((3..=8).contains(&sure), "{sure}");
        assert!(best_length(0.2, 0.38, 8) == 0);
        // Never past the limit.
        assert_eq!(best_length(0.99, 0.01, 3), 3);
        assert_eq!(best_length(0.99, 0.01, 0), 0);
    }

    /// SmolLM2 int8's costs (two rows 1.11 one-row runs, four rows 1.85): a straight line
    /// through them prices every extra row at ~0.2 and drafts nothing at 17 % acceptance,
    /// where the measured two-row cost makes one draft worth it; and a length measured dear is
    /// not taken because the line through cheap ones says so.
    #[test]
    fn the_tuner_prices_each_run_length_by_its_own_measurements() {
        let mut t = Tuner::default();
        for _ in 0..40 {
            t.record_run(1, 5000.0);
            t.record_run(2, 5550.0);
            t.record_run(4, 9250.0);
            for _ in 0..5 {
                t.record_draft(2, 1, 0);
            }
            t.record_draft(2, 1, 1);
        }
        let p = t.acceptance(2);
        assert!((0.15..0.2).contains(&p), "{p}");
        let line = t.extra_us.unwrap() / t.one_us().unwrap();
        assert_eq!(best_length(p, line, 8), 0, "the line: {line}");
        assert_eq!(t.length(2, 8, 8), 1);
        let costs: Vec<(usize, String, u32)> = t
            .costs()
            .into_iter()
            .map(|(r, c, n)| (r, format!("{c:.2}"), n))
            .collect();
        assert_eq!(
            costs,
            [
                (1, "1.00".into(), 40),
                (2, "1.11".into(), 40),
                (4, "1.85".into(), 40)
            ]
        );
        // Nine rows measured once at 3.5 one-row runs, two rows often at 1.02: the line
        // (~0.02 per extra row) verifies all eight drafts at 90 % acceptance; the tuner stops
        // at seven, the longest run not measured dear.
        let mut t = Tuner::default();
        t.record_run(1, 5000.0);
        t.record_run(9, 17_500.0);
        for _ in 0..100 {
            t.record_run(1, 5000.0);
            t.record_run(2, 5100.0);
            for _ in 0..9 {
                t.record_draft(3, 1, 1);
            }
            t.record_draft(3, 1, 0);
        }
        let line = t.extra_us.unwrap() / t.one_us().unwrap();
        assert_eq!(best_length(t.acceptance(3), line, 8), 8, "the line: {line}");
        assert_eq!(t.length(3, 8, 8), 7);
    }

    #[test]
    fn the_tuner_learns_costs_and_acceptance_from_runs() {
        let mut t = Tuner::default();
        // Before anything is measured: the prior (half accepted, a row 0.4 of a run) drafts one.
        assert_eq!(t.length(2, 8, 8), 1);
        // Cheap rows measured: longer drafts.
        for _ in 0..50 {
            t.record_run(1, 5000.0);
            t.record_run(9, 5400.0);
        }
        assert!(t.length(2, 8, 8) >= 4, "{}", t.length(2, 8, 8));
        // Dear rows measured: 1-gram drafts that are always rejected stop being drafted,
        // 3-gram drafts that are always accepted go on.
        for _ in 0..200 {
            t.record_run(1, 5000.0);
            t.record_run(9, 20_000.0);
            t.record_draft(1, 4, 0);
            t.record_draft(3, 4, 4);
        }
        let lengths: Vec<usize> = (0..16).map(|_| t.length(1, 8, 8)).collect();
        // ... but every EXPLORE-th still has one token verified.
        let explored = lengths.iter().filter(|&&k| k == 1).count();
        assert_eq!(
            (explored, lengths.iter().sum::<usize>()),
            (2, 2),
            "{lengths:?}"
        );
        assert!(t.acceptance(1) < 0.05 && t.acceptance(3) > 0.95);
        assert!(t.length(3, 8, 8) >= 3, "{}", t.length(3, 8, 8));
        // Longer matches count with the longest kind; only what is available is drafted.
        assert_eq!(t.acceptance(7), t.acceptance(3));
        assert_eq!(t.length(3, 2, 8), 2);
        // Nonsense timings are ignored.
        let before = t.length(3, 8, 8);
        t.record_run(9, f64::NAN);
        t.record_run(0, 1.0);
        assert_eq!(t.length(3, 8, 8), before);
    }
}
