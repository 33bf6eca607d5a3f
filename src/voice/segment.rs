//! Speech probabilities per window → utterances: the end-of-speech state machine.
//!
//! In: one speech probability per VAD window (Silero: 512 samples at 16 kHz, 32 ms), in order.
//! Out: [`SegmentEvent`]s with sample positions — `Started` once speech has lasted
//! `min_speech` (the moment barge-in may act), `Ended` once `end_silence` of silence followed it
//! (the moment the question is complete), `Capped` when an utterance reaches `max_utterance`
//! (it is cut there; the rest of that stretch of speech is ignored until silence), and
//! `Discarded` for a blip shorter than `min_speech`.
//!
//! Hysteresis as Silero's own iterator has it: speech begins at `p >= threshold` and only a
//! window below `threshold - 0.15` counts as silence; anything between keeps the current state.
//! Pure and synchronous, so the boundaries are table-tested without a model.

use std::time::Duration;

/// Tunables, in time; converted to windows by [`Segmenter::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentConfig {
    pub threshold: f32,
    pub min_speech: Duration,
    pub end_silence: Duration,
    pub max_utterance: Duration,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            threshold: 0.5,
            min_speech: Duration::from_millis(250),
            end_silence: Duration::from_millis(500),
            max_utterance: Duration::from_secs(30),
        }
    }
}

/// Where speech is, in samples from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First sample of the first speech window.
    pub start: u64,
    /// One past the last sample of the last speech window.
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEvent {
    /// Speech has lasted `min_speech` since `start`.
    Started { start: u64 },
    /// An utterance ended with `end_silence` of silence after `span.end`.
    Ended { span: Span },
    /// An utterance reached `max_utterance`; `span.end` is where it was cut.
    Capped { span: Span },
    /// Speech too short to count.
    Discarded { span: Span },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// Speech since window `start`: `voiced` is the last window at or above the threshold (where
    /// the utterance ends), `last` the last one above the lower threshold (silence counts from
    /// there); `confirmed` once min_speech passed.
    Speech {
        start: u64,
        last: u64,
        voiced: u64,
        confirmed: bool,
    },
    /// After a cap: ignore speech until silence.
    Draining {
        last: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Segmenter {
    window: u64,
    threshold: f32,
    neg_threshold: f32,
    min_speech: u64,
    end_silence: u64,
    max_windows: u64,
    state: State,
    /// Index of the next window.
    next: u64,
}

fn windows(d: Duration, window: u64, rate: u32) -> u64 {
    let samples = d.as_secs_f64() * rate as f64;
    (samples / window as f64).ceil().max(1.0) as u64
}

impl Segmenter {
    /// `window` samples per probability at `rate` Hz.
    pub fn new(config: &SegmentConfig, window: usize, rate: u32) -> Segmenter {
        let w = window as u64;
        Segmenter {
            window: w,
            threshold: config.threshold,
            neg_threshold: (config.threshold - 0.15).max(0.01),
            min_speech: windows(config.min_speech, w, rate),
            end_silence: windows(config.end_silence, w, rate),
            max_windows: windows(config.max_utterance, w, rate),
            state: State::Idle,
            next: 0,
        }
    }

    /// Samples per window.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether speech is under way (possibly not yet confirmed).
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speech { .. })
    }

    /// The first sample of the speech under way, if any.
    pub fn speech_start(&self) -> Option<u64> {
        match self.state {
            State::Speech { start, .. } => Some(start * self.window),
            _ => None,
        }
    }

    fn span(&self, start: u64, last: u64) -> Span {
        Span {
            start: start * self.window,
            end: (last + 1) * self.window,
        }
    }

    /// Feeds the next window's probability (NaN counts as silence).
    pub fn push(&mut self, p: f32) -> Option<SegmentEvent> {
        let i = self.next;
        self.next += 1;
        let speech = p >= self.threshold;
        // NaN → silence.
        let silence = !matches!(
            p.partial_cmp(&self.neg_threshold),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        );
        match self.state {
            State::Idle => {
                if speech {
                    self.state = State::Speech {
                        start: i,
                        last: i,
                        voiced: i,
                        confirmed: false,
                    };
                    return self.confirm(i);
                }
                None
            }
            State::Speech {
                start,
                last,
                voiced,
                confirmed,
            } => {
                if !silence {
                    let voiced = if speech { i } else { voiced };
                    self.state = State::Speech {
                        start,
                        last: i,
                        voiced,
                        confirmed,
                    };
                    if i + 1 - start >= self.max_windows {
                        self.state = State::Draining { last: i };
                        return Some(SegmentEvent::Capped {
                            span: self.span(start, i),
                        });
                    }
                    return if confirmed { None } else { self.confirm(i) };
                }
                if i - last >= self.end_silence {
                    self.state = State::Idle;
                    let span = self.span(start, voiced);
                    return Some(if voiced + 1 - start >= self.min_speech {
                        SegmentEvent::Ended { span }
                    } else {
                        SegmentEvent::Discarded { span }
                    });
                }
                None
            }
            State::Draining { last } => {
                if !silence {
                    self.state = State::Draining { last: i };
                } else if i - last >= self.end_silence {
                    self.state = State::Idle;
                }
                None
            }
        }
    }

    fn confirm(&mut self, i: u64) -> Option<SegmentEvent> {
        if let State::Speech {
            start,
            last,
            voiced,
            confirmed: false,
        } = self.state
        {
            if i + 1 - start >= self.min_speech {
                self.state = State::Speech {
                    start,
                    last,
                    voiced,
                    confirmed: true,
                };
                return Some(SegmentEvent::Started {
                    start: start * self.window,
                });
            }
        }
        None
    }

    /// Ends the stream: speech under way ends here (as if silence followed).
    pub fn finish(&mut self) -> Option<SegmentEvent> {
        let state = std::mem::replace(&mut self.state, State::Idle);
        match state {
            State::Speech { start, voiced, .. } => {
                let span = self.span(start, voiced);
                Some(if voiced + 1 - start >= self.min_speech {
                    SegmentEvent::Ended { span }
                } else {
                    SegmentEvent::Discarded { span }
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms windows at 1 kHz-equivalent units: window 100 samples at 1000 Hz.
    fn seg(min_speech_ms: u64, end_silence_ms: u64, max_ms: u64) -> Segmenter {
        let c = SegmentConfig {
            threshold: 0.5,
            min_speech: Duration::from_millis(min_speech_ms),
            end_silence: Duration::from_millis(end_silence_ms),
            max_utterance: Duration::from_millis(max_ms),
        };
        Segmenter::new(&c, 100, 1000)
    }

    fn run(s: &mut Segmenter, probs: &[f32]) -> Vec<(usize, SegmentEvent)> {
        let mut out: Vec<(usize, SegmentEvent)> = probs
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| s.push(p).map(|e| (i, e)))
            .collect();
        if let Some(e) = s.finish() {
            out.push((probs.len(), e));
        }
        out
    }

    #[test]
    fn table() {
        let span = |a: u64, b: u64| Span {
            start: a * 100,
            end: b * 100,
        };
        // (probabilities, min speech, end silence, max, expected (window index, event))
        type Case<'a> = (
            &'a str,
            Vec<f32>,
            (u64, u64, u64),
            Vec<(usize, SegmentEvent)>,
        );
        let cases: Vec<Case> = vec![
            ("silence", vec![0.0; 20], (200, 300, 10_000), vec![]),
            (
                "one utterance",
                vec![0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.0],
                (200, 300, 10_000),
                vec![
                    (3, SegmentEvent::Started { start: 200 }),
                    (8, SegmentEvent::Ended { span: span(2, 6) }),
                ],
            ),
            (
                "hysteresis: 0.4 keeps speech going, a short gap does not end it",
                vec![0.9, 0.9, 0.4, 0.4, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0],
                (200, 300, 10_000),
                vec![
                    (1, SegmentEvent::Started { start: 0 }),
                    (9, SegmentEvent::Ended { span: span(0, 7) }),
                ],
            ),
            (
                "an in-between tail keeps the utterance open but does not extend it",
                vec![0.9, 0.9, 0.9, 0.4, 0.4, 0.0, 0.0, 0.0, 0.0],
                (200, 300, 10_000),
                vec![
                    (1, SegmentEvent::Started { start: 0 }),
                    (7, SegmentEvent::Ended { span: span(0, 3) }),
                ],
            ),
            (
                "a blip shorter than min_speech is discarded",
                vec![0.0, 0.9, 0.0, 0.0, 0.0, 0.0],
                (300, 300, 10_000),
                vec![(4, SegmentEvent::Discarded { span: span(1, 2) })],
            ),
            (
                "NaN is silence",
                vec![0.9, 0.9, f32::NAN, f32::NAN, f32::NAN],
                (200, 300, 10_000),
                vec![
                    (1, SegmentEvent::Started { start: 0 }),
                    (4, SegmentEvent::Ended { span: span(0, 2) }),
                ],
            ),
            (
                "capped, then ignored until silence, then a new one",
                vec![
                    0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0, 0.9, 0.9, 0.0, 0.0, 0.0,
                ],
                (200, 300, 400),
                vec![
                    (1, SegmentEvent::Started { start: 0 }),
                    (3, SegmentEvent::Capped { span: span(0, 4) }),
                    (10, SegmentEvent::Started { start: 900 }),
                    (13, SegmentEvent::Ended { span: span(9, 11) }),
                ],
            ),
            (
                "the stream ends mid-utterance",
                vec![0.0, 0.9, 0.9, 0.9],
                (200, 300, 10_000),
                vec![
                    (2, SegmentEvent::Started { start: 100 }),
                    (4, SegmentEvent::Ended { span: span(1, 4) }),
                ],
            ),
        ];
        for (name, probs, (ms, es, mx), want) in cases {
            let mut s = seg(ms, es, mx);
            assert_eq!(run(&mut s, &probs), want, "{name}");
        }
    }

    #[test]
    fn ten_minutes_of_speech_is_cut_at_the_cap() {
        let c = SegmentConfig {
            max_utterance: Duration::from_secs(30),
            ..SegmentConfig::default()
        };
        let mut s = Segmenter::new(&c, 512, 16_000);
        let windows = 10 * 60 * 16_000 / 512;
        let mut capped = Vec::new();
        for _ in 0..windows {
            if let Some(SegmentEvent::Capped { span }) = s.push(0.99) {
                capped.push(span);
            }
        }
        assert_eq!(capped.len(), 1, "one cap, the rest drained");
        let len = (capped[0].end - capped[0].start) as f64 / 16_000.0;
        assert!((30.0..30.1).contains(&len), "{len} s");
        assert_eq!(s.finish(), None, "the drained rest is not an utterance");
    }
}
