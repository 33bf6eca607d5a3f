//! Listening: microphone chunks → 16 kHz → speech detector → [`Segmenter`] → utterances.
//!
//! In: [`AudioClip`] chunks of any rate in stream order (cpal or WAV replay), and — in
//! push-to-talk mode — press / release. Out: [`Heard`] events: `SpeechStarted` (speech confirmed:
//! barge-in may act) and `Utterance` (the question's audio, 16 kHz mono, from `pre_roll` before
//! the first speech to a short pad after the last, with where it was and when it was decided).
//!
//! Audio is sanitised on the way in (NaN and infinities become silence, samples are clamped to
//! [-1, 1]), so clipped or broken input cannot upset the model or the report. Only what an
//! utterance may still need is kept: `pre_roll` while idle, the utterance so far while speaking
//! (bounded by `max_utterance`, after which the rest of that speech is dropped until silence).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::resample::Resampler;
use super::segment::{SegmentConfig, SegmentEvent, Segmenter, Span};
use super::vad::{SpeechDetector, VadError, RATE};
use crate::capture::AudioClip;

/// What starts and ends an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMode {
    /// Voice activity detection.
    Vad,
    /// A press / release (FIFO, API): the utterance is what was heard in between.
    PushToTalk,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    pub mode: TriggerMode,
    pub segment: SegmentConfig,
    pub pre_roll: Duration,
    /// Name for the utterance clips' `source`.
    pub source: String,
}

/// A finished question.
#[derive(Debug, Clone)]
pub struct Utterance {
    /// 16 kHz mono, padded by `pre_roll` before and a little after the speech.
    pub clip: AudioClip,
    /// Where the speech itself is, in 16 kHz samples from the start of the stream.
    pub span: Span,
    /// Cut at `max_utterance`.
    pub capped: bool,
    /// When the end of speech was decided (after `end_silence` of silence, or at release).
    pub decided_at: Instant,
    /// How long after the last speech the decision came.
    pub end_silence: Duration,
}

impl Utterance {
    pub fn speech_duration(&self) -> Duration {
        Duration::from_secs_f64((self.span.end - self.span.start) as f64 / f64::from(RATE))
    }
}

#[derive(Debug, Clone)]
pub enum Heard {
    /// Speech confirmed (`min_speech` long, or the talk button pressed) at this stream sample.
    SpeechStarted {
        start: u64,
        at: Instant,
    },
    Utterance(Utterance),
}

pub struct Listener {
    config: ListenConfig,
    detector: Option<Box<dyn SpeechDetector>>,
    window: usize,
    seg: Segmenter,
    resampler: Option<Resampler>,
    /// 16 kHz audio; `history[0]` is stream sample `base`.
    history: VecDeque<f32>,
    base: u64,
    /// Samples converted so far (the stream position of the next one).
    pos: u64,
    /// Samples not yet run through the detector (fewer than a window).
    pending: Vec<f32>,
    /// Wall-clock time of stream sample 0.
    t0: Option<SystemTime>,
    pre_roll: u64,
    /// Push-to-talk: pressed at this stream sample; `None` when released.
    pressed: Option<u64>,
    /// Push-to-talk: the press outlasted max_utterance and was already cut.
    ptt_capped: bool,
    max_samples: u64,
    scratch: Vec<f32>,
}

impl Listener {
    /// `detector` may be `None` only in push-to-talk mode.
    pub fn new(config: ListenConfig, detector: Option<Box<dyn SpeechDetector>>) -> Listener {
        let window = detector
            .as_ref()
            .map(|d| d.window())
            .unwrap_or(super::vad::WINDOW);
        let seg = Segmenter::new(&config.segment, window, RATE);
        let pre_roll = (config.pre_roll.as_secs_f64() * f64::from(RATE)) as u64;
        let max_samples = (config.segment.max_utterance.as_secs_f64() * f64::from(RATE)) as u64;
        Listener {
            config,
            detector,
            window,
            seg,
            resampler: None,
            history: VecDeque::new(),
            base: 0,
            pos: 0,
            pending: Vec::new(),
            t0: None,
            pre_roll,
            pressed: None,
            ptt_capped: false,
            max_samples,
            scratch: Vec::new(),
        }
    }

    pub fn mode(&self) -> TriggerMode {
        self.config.mode
    }

    /// Stream samples heard so far (16 kHz).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Takes one chunk; appends what it completes to `out`.
    pub fn push(&mut self, clip: &AudioClip, out: &mut Vec<Heard>) -> Result<(), VadError> {
        if clip.samples.is_empty() || clip.sample_rate == 0 {
            return Ok(());
        }
        if self.t0.is_none() {
            self.t0 = Some(clip.started_at);
        }
        let rate = clip.sample_rate;
        if rate != RATE && self.resampler.as_ref().map(|r| r.rates().0) != Some(rate) {
            self.resampler = Some(Resampler::new(rate, RATE));
        }
        let mut converted = std::mem::take(&mut self.scratch);
        converted.clear();
        let clean = clip.samples.iter().map(|&s| {
            if s.is_finite() {
                s.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        });
        match (&mut self.resampler, rate == RATE) {
            (_, true) => converted.extend(clean),
            (Some(r), false) => {
                let tmp: Vec<f32> = clean.collect();
                r.process(&tmp, &mut converted);
            }
            (None, false) => unreachable!("a resampler exists for every rate but 16 kHz"),
        }
        let result = self.take(&converted, out);
        self.scratch = converted;
        result
    }

    fn take(&mut self, samples: &[f32], out: &mut Vec<Heard>) -> Result<(), VadError> {
        for &s in samples {
            self.history.push_back(s);
            self.pos += 1;
            match self.config.mode {
                TriggerMode::PushToTalk => self.ptt_tick(out),
                TriggerMode::Vad => {
                    self.pending.push(s);
                    if self.pending.len() == self.window {
                        let det = self.detector.as_mut().expect("VAD mode has a detector");
                        let p = det.probability(&self.pending)?;
                        self.pending.clear();
                        if let Some(ev) = self.seg.push(p) {
                            self.on_segment(ev, out);
                        }
                    }
                }
            }
        }
        self.trim();
        Ok(())
    }

    fn on_segment(&mut self, ev: SegmentEvent, out: &mut Vec<Heard>) {
        match ev {
            SegmentEvent::Started { start } => out.push(Heard::SpeechStarted {
                start,
                at: Instant::now(),
            }),
            SegmentEvent::Ended { span } => {
                let span = Span {
                    start: span.start,
                    end: self.refine_end(span),
                };
                out.push(Heard::Utterance(self.cut(span, false)))
            }
            SegmentEvent::Capped { span } => out.push(Heard::Utterance(self.cut(span, true))),
            SegmentEvent::Discarded { .. } => {}
        }
    }

    /// The utterance's audio: pre-roll before, a pad after (up to what has been heard).
    fn cut(&self, span: Span, capped: bool) -> Utterance {
        let pad_after = self
            .pre_roll
            .min((self.config.segment.end_silence.as_secs_f64() * f64::from(RATE)) as u64);
        let from = span.start.saturating_sub(self.pre_roll).max(self.base);
        let to = (span.end + if capped { 0 } else { pad_after }).min(self.pos);
        let samples: Vec<f32> = self
            .history
            .range((from - self.base) as usize..(to - self.base) as usize)
            .copied()
            .collect();
        let started_at = self.t0.unwrap_or(SystemTime::now())
            + Duration::from_secs_f64(from as f64 / f64::from(RATE));
        Utterance {
            clip: AudioClip {
                source: self.config.source.clone(),
                started_at,
                sample_rate: RATE,
                samples: Arc::new(samples),
            },
            span,
            capped,
            decided_at: Instant::now(),
            end_silence: Duration::from_secs_f64(
                self.pos.saturating_sub(span.end) as f64 / f64::from(RATE),
            ),
        }
    }

    /// Moves the end of speech back to where the sound falls to the noise floor.
    ///
    /// Silero's recurrent state decays slowly in steady noise: its probability stays above the
    /// threshold for 100–200 ms after the last word. The floor is the median 10 ms level of the
    /// pre-roll (before the speech began); the end becomes the last 10 ms frame, at most 320 ms
    /// back, more than 6 dB above it. The end only ever moves earlier.
    fn refine_end(&self, span: Span) -> u64 {
        const FRAME: u64 = 160;
        let level = |from: u64| -> Option<f32> {
            if from < self.base || from + FRAME > self.pos {
                return None;
            }
            let i = (from - self.base) as usize;
            let sum: f32 = self
                .history
                .range(i..i + FRAME as usize)
                .map(|s| s * s)
                .sum();
            Some((sum / FRAME as f32).sqrt())
        };
        let pre_from = span.start.saturating_sub(self.pre_roll).max(self.base);
        let pre_to = span.start.saturating_sub(2 * self.window as u64);
        let mut floor: Vec<f32> = (pre_from..pre_to)
            .step_by(FRAME as usize)
            .filter_map(&level)
            .collect();
        if floor.len() < 5 {
            return span.end; // too little pre-roll to know the noise
        }
        floor.sort_by(|a, b| a.total_cmp(b));
        let gate = (floor[floor.len() / 2] * 2.0).max(1e-4);
        let earliest = span.end.saturating_sub(320 * 16).max(span.start + FRAME);
        let mut f = span.end.saturating_sub(FRAME);
        while f >= earliest {
            if level(f).is_some_and(|l| l > gate) {
                return (f + FRAME).min(span.end);
            }
            f -= FRAME;
        }
        span.end
    }

    /// Drops history no utterance can need any more.
    fn trim(&mut self) {
        let keep_from = match (self.config.mode, self.seg.speech_start(), self.pressed) {
            (TriggerMode::Vad, Some(start), _) => start.saturating_sub(self.pre_roll),
            (TriggerMode::PushToTalk, _, Some(p)) if !self.ptt_capped => {
                p.saturating_sub(self.pre_roll)
            }
            // Idle: keep the pre-roll plus a window the detector may still confirm.
            _ => self
                .pos
                .saturating_sub(self.pre_roll + 2 * self.window as u64),
        };
        if keep_from > self.base {
            let n = ((keep_from - self.base) as usize).min(self.history.len());
            self.history.drain(..n);
            self.base += n as u64;
        }
    }

    /// Push-to-talk: the button went down (`true`) or up (`false`).
    pub fn talk(&mut self, down: bool, out: &mut Vec<Heard>) {
        if self.config.mode != TriggerMode::PushToTalk {
            return;
        }
        match (down, self.pressed) {
            (true, None) => {
                self.pressed = Some(self.pos);
                self.ptt_capped = false;
                out.push(Heard::SpeechStarted {
                    start: self.pos,
                    at: Instant::now(),
                });
            }
            (false, Some(start)) => {
                self.pressed = None;
                if !self.ptt_capped && self.pos > start {
                    let mut u = self.cut(
                        Span {
                            start,
                            end: self.pos,
                        },
                        false,
                    );
                    u.end_silence = Duration::ZERO;
                    out.push(Heard::Utterance(u));
                }
                self.ptt_capped = false;
            }
            _ => {} // a repeated press or a release without a press
        }
    }

    fn ptt_tick(&mut self, out: &mut Vec<Heard>) {
        if let Some(start) = self.pressed {
            if !self.ptt_capped && self.pos - start >= self.max_samples {
                self.ptt_capped = true;
                out.push(Heard::Utterance(self.cut(
                    Span {
                        start,
                        end: self.pos,
                    },
                    true,
                )));
            }
        }
    }

    /// The stream ended: speech under way becomes an utterance.
    pub fn finish(&mut self, out: &mut Vec<Heard>) {
        if let Some(r) = &mut self.resampler {
            let mut tail = Vec::new();
            r.flush(&mut tail);
            let _ = self.take(&tail, out);
        }
        match self.config.mode {
            TriggerMode::Vad => {
                if let Some(ev) = self.seg.finish() {
                    self.on_segment(ev, out);
                }
            }
            TriggerMode::PushToTalk => self.talk(false, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detector that calls a window speech when its mean absolute level exceeds 0.05.
    struct Energy;
    impl SpeechDetector for Energy {
        fn window(&self) -> usize {
            512
        }
        fn probability(&mut self, w: &[f32]) -> Result<f32, VadError> {
            let level = w.iter().map(|s| s.abs()).sum::<f32>() / w.len() as f32;
            Ok(if level > 0.05 { 0.9 } else { 0.0 })
        }
        fn reset(&mut self) {}
    }

    fn config(mode: TriggerMode) -> ListenConfig {
        ListenConfig {
            mode,
            segment: SegmentConfig {
                threshold: 0.5,
                min_speech: Duration::from_millis(100),
                end_silence: Duration::from_millis(300),
                max_utterance: Duration::from_secs(5),
            },
            pre_roll: Duration::from_millis(200),
            source: "mic".into(),
        }
    }

    fn clip(rate: u32, samples: Vec<f32>) -> AudioClip {
        AudioClip {
            source: "m".into(),
            started_at: SystemTime::UNIX_EPOCH,
            sample_rate: rate,
            samples: Arc::new(samples),
        }
    }

    /// `secs` of silence, `speech` s of a loud tone, then silence, at `rate`.
    fn signal(rate: u32, before: f32, speech: f32, after: f32) -> Vec<f32> {
        let n = |s: f32| (s * rate as f32) as usize;
        let mut v = vec![0.0; n(before)];
        v.extend(
            (0..n(speech))
                .map(|i| 0.5 * (i as f32 * 300.0 * std::f32::consts::TAU / rate as f32).sin()),
        );
        v.extend(vec![0.0; n(after)]);
        v
    }

    fn listen(l: &mut Listener, rate: u32, x: &[f32], chunk: usize) -> Vec<Heard> {
        let mut out = Vec::new();
        for c in x.chunks(chunk) {
            l.push(&clip(rate, c.to_vec()), &mut out).unwrap();
        }
        l.finish(&mut out);
        out
    }

    #[test]
    fn an_utterance_with_pre_roll_and_pad_at_any_rate() {
        for rate in [16_000, 48_000, 22_050] {
            let mut l = Listener::new(config(TriggerMode::Vad), Some(Box::new(Energy)));
            let x = signal(rate, 1.0, 1.5, 1.0);
            let heard = listen(&mut l, rate, &x, rate as usize / 50);
            assert_eq!(heard.len(), 2, "{rate}: {heard:?}");
            assert!(matches!(heard[0], Heard::SpeechStarted { .. }));
            let Heard::Utterance(u) = &heard[1] else {
                panic!()
            };
            let (s, e) = (u.span.start as f64 / 16e3, u.span.end as f64 / 16e3);
            assert!(
                (s - 1.0).abs() < 0.04 && (e - 2.5).abs() < 0.04,
                "{rate}: speech {s}..{e}"
            );
            // pre-roll 200 ms before, pad min(200, 300) ms after.
            let len = u.clip.samples.len() as f64 / 16e3;
            assert!((len - (e - s + 0.4)).abs() < 0.01, "{rate}: clip {len} s");
            assert_eq!(u.clip.sample_rate, 16_000);
            assert!(!u.capped);
            assert!(
                (u.end_silence.as_secs_f64() - 0.3).abs() < 0.04,
                "{:?}",
                u.end_silence
            );
            let t = u
                .clip
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!((t - (s - 0.2)).abs() < 0.01, "clip starts at {t}");
        }
    }

    #[test]
    fn clipped_nan_and_silent_audio_do_not_crash() {
        let mut l = Listener::new(config(TriggerMode::Vad), Some(Box::new(Energy)));
        let mut x = vec![0.0f32; 16_000];
        x.extend((0..16_000).map(|i| if i % 2 == 0 { 7.0 } else { -9.0 })); // way past full scale
        x.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        x.extend(vec![0.0; 16_000]);
        let heard = listen(&mut l, 16_000, &x, 333);
        let Some(Heard::Utterance(u)) = heard.last() else {
            panic!("{heard:?}")
        };
        assert!(u
            .clip
            .samples
            .iter()
            .all(|s| s.is_finite() && (-1.0..=1.0).contains(s)));
        let mut quiet = Listener::new(config(TriggerMode::Vad), Some(Box::new(Energy)));
        assert!(listen(&mut quiet, 16_000, &vec![0.0; 160_000], 512).is_empty());
        assert!(
            quiet.history.len() <= 16_000,
            "idle history stays bounded: {}",
            quiet.history.len()
        );
    }

    #[test]
    fn a_long_utterance_is_capped_and_memory_stays_bounded() {
        let mut l = Listener::new(config(TriggerMode::Vad), Some(Box::new(Energy)));
        let x = signal(16_000, 0.5, 60.0, 0.5);
        let mut out = Vec::new();
        let mut most = 0;
        for c in x.chunks(1600) {
            l.push(&clip(16_000, c.to_vec()), &mut out).unwrap();
            most = most.max(l.history.len());
        }
        l.finish(&mut out);
        let utts: Vec<&Utterance> = out
            .iter()
            .filter_map(|h| {
                if let Heard::Utterance(u) = h {
                    Some(u)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(utts.len(), 1);
        assert!(utts[0].capped);
        assert!((utts[0].speech_duration().as_secs_f64() - 5.0).abs() < 0.05);
        assert!(most <= 16_000 * 6, "kept {most} samples for a 5 s cap");
    }

    #[test]
    fn push_to_talk_takes_what_was_heard_between_press_and_release() {
        let mut l = Listener::new(config(TriggerMode::PushToTalk), None);
        let mut out = Vec::new();
        l.push(&clip(16_000, vec![0.1; 16_000]), &mut out).unwrap();
        l.talk(true, &mut out);
        l.push(&clip(16_000, vec![0.2; 8_000]), &mut out).unwrap();
        l.talk(false, &mut out);
        l.talk(false, &mut out); // a stray release
        assert_eq!(out.len(), 2);
        let Heard::Utterance(u) = &out[1] else {
            panic!()
        };
        assert_eq!((u.span.start, u.span.end), (16_000, 24_000));
        // 200 ms of pre-roll from before the press.
        assert_eq!(u.clip.samples.len(), 3_200 + 8_000);
        assert_eq!(u.clip.samples[0], 0.1);
        assert_eq!(*u.clip.samples.last().unwrap(), 0.2);
        // Held past the cap: cut at 5 s, and the release adds nothing.
        l.talk(true, &mut out);
        l.push(&clip(16_000, vec![0.3; 16_000 * 7]), &mut out)
            .unwrap();
        l.talk(false, &mut out);
        let caps: Vec<_> = out[2..]
            .iter()
            .filter_map(|h| {
                if let Heard::Utterance(u) = h {
                    Some(u.capped)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(caps, vec![true]);
    }
}
