//! Speaking an answer sentence by sentence while the model keeps generating.
//!
//! In: a generation's [`Event`]s, in order (from a request listener in the daemon, from the
//! generation callback in `gemba ask`). Out: each sentence, the moment it is final, is handed to
//! the synthesizer thread, whose audio streams into the [`Output`]; when the answer ends, a
//! [`SpokenAnswer`]: the synthesized audio (for the report), the sentences spoken, and the
//! timings (first sentence, first audio out, done — from the end of the question when there was
//! one, and on the generation's clock).
//!
//! [`Voice`] is long-lived (one synthesizer, one output); each answer is an [`Answer`] on it.
//! Barge-in is [`Stopper::stop`]: synthesis stops between pieces and the output drops whatever of
//! the answer is queued. Channels: sentences go to the synthesizer thread unbounded — an answer
//! has a few sentences and each is small text; audio goes to the output queue, which drains at
//! playback speed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::output::Output;
use super::resample::Resampler;
use super::tts::{speakable, Synthesizer};
use crate::capture::AudioClip;
use crate::model::Event;
use crate::report::VoiceTimings;

/// One answer's shared state between its handle and the synthesizer thread.
struct AnswerState {
    id: u64,
    cancel: AtomicBool,
    /// Synthesized audio at the synthesizer's rate.
    audio: Mutex<Vec<f32>>,
    spoken: Mutex<Vec<String>>,
    error: Mutex<Option<String>>,
}

enum Job {
    Say {
        answer: Arc<AnswerState>,
        text: String,
    },
    Finish {
        answer: Arc<AnswerState>,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// A synthesizer and an output, shared by every answer.
pub struct Voice {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    output: Arc<Output>,
    tts_name: String,
    tts_rate: u32,
    next: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Voice {
    pub fn new(mut tts: Box<dyn Synthesizer>, output: Output) -> Voice {
        let output = Arc::new(output);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let tts_name = tts.name();
        let tts_rate = tts.sample_rate();
        let out = Arc::clone(&output);
        let thread = std::thread::Builder::new()
            .name("voice-tts".into())
            .spawn(move || {
                // One resampler per answer: a new answer starts from silence.
                let mut current: Option<(u64, Resampler)> = None;
                for job in rx {
                    match job {
                        Job::Say { answer, text } => {
                            if answer.cancel.load(Ordering::Relaxed) {
                                continue;
                            }
                            if current.as_ref().map(|c| c.0) != Some(answer.id) {
                                current = Some((answer.id, Resampler::new(tts_rate, out.rate())));
                            }
                            let (_, rs) = current.as_mut().expect("set above");
                            let mut converted = Vec::new();
                            let r = tts.synthesize(&text, &answer.cancel, &mut |piece| {
                                answer
                                    .audio
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .extend_from_slice(piece);
                                converted.clear();
                                rs.process(piece, &mut converted);
                                out.play(answer.id, std::mem::take(&mut converted));
                            });
                            match r {
                                Ok(()) => answer
                                    .spoken
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(text),
                                Err(e) => {
                                    log::warn!("speech: {e}");
                                    answer
                                        .error
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .get_or_insert(e.to_string());
                                }
                            }
                        }
                        Job::Finish { answer, done } => {
                            if let Some((id, rs)) = current.as_mut() {
                                if *id == answer.id && !answer.cancel.load(Ordering::Relaxed) {
                                    let mut tail = Vec::new();
                                    rs.flush(&mut tail);
                                    out.play(answer.id, tail);
                                }
                            }
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("spawning the speech thread");
        Voice {
            jobs: Mutex::new(Some(tx)),
            output,
            tts_name,
            tts_rate,
            next: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        }
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    pub fn tts_name(&self) -> &str {
        &self.tts_name
    }

    /// Starts an answer. `end_of_speech`: when the question was decided to be over, if spoken.
    pub fn answer(&self, end_of_speech: Option<Instant>) -> Answer {
        let state = Arc::new(AnswerState {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            cancel: AtomicBool::new(false),
            audio: Mutex::new(Vec::new()),
            spoken: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        });
        Answer {
            state,
            jobs: self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            output: Arc::clone(&self.output),
            tts_name: self.tts_name.clone(),
            tts_rate: self.tts_rate,
            origin: end_of_speech.unwrap_or_else(Instant::now),
            spoken_question: end_of_speech.is_some(),
            gen_origin: None,
            first_sentence: None,
            done: None,
            started_at: SystemTime::now(),
        }
    }

    /// Stops the synthesizer thread after the jobs queued so far.
    pub fn shutdown(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Stops one answer from anywhere (barge-in).
#[derive(Clone)]
pub struct Stopper {
    state: Arc<AnswerState>,
    output: Arc<Output>,
}

impl Stopper {
    pub fn stop(&self) {
        self.state.cancel.store(true, Ordering::Relaxed);
        self.output.stop(self.state.id);
    }

    pub fn is_stopped(&self) -> bool {
        self.state.cancel.load(Ordering::Relaxed)
    }
}

/// One answer being spoken.
pub struct Answer {
    state: Arc<AnswerState>,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    output: Arc<Output>,
    tts_name: String,
    tts_rate: u32,
    /// End of the question (or the start of the answer for a typed one).
    origin: Instant,
    spoken_question: bool,
    /// The generation's start, on this clock (from the first event's offset).
    gen_origin: Option<Instant>,
    first_sentence: Option<Instant>,
    done: Option<Instant>,
    started_at: SystemTime,
}

/// What was said, for the report and the command line.
#[derive(Debug, Clone)]
pub struct SpokenAnswer {
    /// The synthesized answer (the synthesizer's rate), if anything was said.
    pub clip: Option<AudioClip>,
    /// The sentences as spoken (citations removed).
    pub text: String,
    pub timings: VoiceTimings,
    pub stopped: bool,
    /// The first synthesis error, if any sentence failed.
    pub error: Option<String>,
}

impl Answer {
    pub fn stopper(&self) -> Stopper {
        Stopper {
            state: Arc::clone(&self.state),
            output: Arc::clone(&self.output),
        }
    }

    /// Takes the next generation event.
    pub fn on_event(&mut self, ev: &Event) {
        let now = Instant::now();
        let offset = match ev {
            Event::Token(t) => Some(t.at),
            Event::Sentence(s) => Some(s.at),
            Event::Done(_) => None,
        };
        if self.gen_origin.is_none() {
            if let Some(at) = offset {
                self.gen_origin = now.checked_sub(at);
            }
        }
        match ev {
            Event::Sentence(s) => {
                self.first_sentence.get_or_insert(now);
                let text = speakable(&s.text);
                if !text.is_empty() && !self.state.cancel.load(Ordering::Relaxed) {
                    if let Some(j) = &self.jobs {
                        let _ = j.send(Job::Say {
                            answer: Arc::clone(&self.state),
                            text,
                        });
                    }
                }
            }
            Event::Done(_) => {
                self.done.get_or_insert(now);
            }
            Event::Token(_) => {}
        }
    }

    /// Waits (up to `timeout`) until every sentence so far has been synthesized, and for the
    /// first sample to leave; playback itself may go on.
    pub fn finish(self, timeout: Duration) -> SpokenAnswer {
        if let Some(j) = &self.jobs {
            let (tx, rx) = std::sync::mpsc::channel();
            if j.send(Job::Finish {
                answer: Arc::clone(&self.state),
                done: tx,
            })
            .is_ok()
                && rx.recv_timeout(timeout).is_err()
            {
                log::warn!("speech: synthesis did not finish within {timeout:?}");
            }
        }
        let samples =
            std::mem::take(&mut *self.state.audio.lock().unwrap_or_else(|e| e.into_inner()));
        let stopped = self.state.cancel.load(Ordering::Relaxed);
        // The output picks queued audio up within one period.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut first_audio = self.output.first_sample_at(self.state.id);
        while first_audio.is_none() && !samples.is_empty() && !stopped && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
            first_audio = self.output.first_sample_at(self.state.id);
        }
        let ms = |t: Option<Instant>, from: Option<Instant>| match (t, from) {
            (Some(t), Some(f)) => Some(t.saturating_duration_since(f).as_secs_f64() * 1000.0),
            _ => None,
        };
        let origin = Some(self.origin);
        let spoken =
            std::mem::take(&mut *self.state.spoken.lock().unwrap_or_else(|e| e.into_inner()));
        let timings = VoiceTimings {
            first_sentence_after_speech_ms: ms(self.first_sentence, origin),
            first_audio_after_speech_ms: ms(first_audio, origin),
            done_after_speech_ms: ms(self.done, origin),
            first_audio_at_ms: ms(first_audio, self.gen_origin),
            tts: self.tts_name.clone(),
            output: self.output.describe().to_string(),
            sentences_spoken: spoken.len() as u32,
            barged_in: stopped,
            ..Default::default()
        };
        let timings = if self.spoken_question {
            timings
        } else {
            VoiceTimings {
                first_sentence_after_speech_ms: None,
                done_after_speech_ms: None,
                first_audio_after_speech_ms: None,
                ..timings
            }
        };
        self.output.sync();
        SpokenAnswer {
            clip: (!samples.is_empty()).then(|| AudioClip {
                source: self.tts_name.clone(),
                started_at: self.started_at,
                sample_rate: self.tts_rate,
                samples: Arc::new(samples),
            }),
            text: spoken.join(" "),
            timings,
            stopped,
            error: self
                .state
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Speech for one generation outside the daemon (`gemba ask --speak`, `--speak-to FILE.wav`):
/// feed it the generation's events, then [`Speech::finish`] waits for the answer to be spoken.
pub struct Speech {
    voice: Voice,
    answer: Answer,
}

impl Speech {
    pub fn open(
        target: &super::output::OutputTarget,
        tts: &super::tts::TtsSettings,
        rt: Option<&crate::model::runtime::Runtime>,
    ) -> Result<Speech, super::VoiceError> {
        let tts = super::tts::build(tts, rt)?;
        let output = Output::open(target, tts.sample_rate())?;
        let voice = Voice::new(tts, output);
        let answer = voice.answer(None);
        Ok(Speech { voice, answer })
    }

    pub fn on_event(&mut self, ev: &Event) {
        self.answer.on_event(ev);
    }

    /// Waits until everything has been synthesized and played; closes the output (a WAV file is
    /// finalized).
    pub fn finish(self) -> SpokenAnswer {
        let spoken = self.answer.finish(Duration::from_secs(300));
        if let Some(c) = &spoken.clip {
            let secs = c.samples.len() as u64 / u64::from(c.sample_rate.max(1));
            self.voice
                .output()
                .wait_drained(Duration::from_secs(secs + 10));
        }
        self.voice.shutdown();
        spoken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sentence;
    use crate::voice::output::OutputTarget;
    use crate::voice::tts::TtsError;

    /// Speaks each sentence as 0.1 s of a level that encodes its length, in two pieces, slowly.
    struct Fake;
    impl Synthesizer for Fake {
        fn name(&self) -> String {
            "fake".into()
        }
        fn sample_rate(&self) -> u32 {
            8_000
        }
        fn synthesize(
            &mut self,
            text: &str,
            cancel: &AtomicBool,
            out: &mut dyn FnMut(&[f32]),
        ) -> Result<(), TtsError> {
            for _ in 0..2 {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
                out(&vec![text.len() as f32 / 100.0; 400]);
            }
            Ok(())
        }
    }

    fn sentence(index: usize, text: &str, at_ms: u64) -> Event {
        Event::Sentence(Sentence {
            index,
            text: text.into(),
            token_span: (0, 1),
            at: Duration::from_millis(at_ms),
        })
    }

    #[test]
    fn sentences_are_spoken_in_order_without_citations_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let out = Output::open(
            &OutputTarget::File {
                path: path.clone(),
                paced: false,
                rate: None,
            },
            8_000,
        )
        .unwrap();
        let voice = Voice::new(Box::new(Fake), out);
        let eos = Instant::now();
        let mut a = voice.answer(Some(eos));
        a.on_event(&sentence(0, "[cam:press-2] Amber.", 5));
        a.on_event(&sentence(1, "Check the press.", 9));
        let spoken = a.finish(Duration::from_secs(5));
        assert_eq!(spoken.text, "Amber. Check the press.");
        let clip = spoken.clip.unwrap();
        assert_eq!((clip.sample_rate, clip.samples.len()), (8_000, 1_600));
        assert_eq!(clip.samples[0], 0.06);
        assert_eq!(clip.samples[800], 0.16);
        let t = &spoken.timings;
        assert_eq!(
            (t.sentences_spoken, t.tts.as_str(), t.barged_in),
            (2, "fake", false)
        );
        let (fs, fa) = (
            t.first_sentence_after_speech_ms.unwrap(),
            t.first_audio_after_speech_ms.unwrap(),
        );
        assert!(
            fa >= fs + 15.0,
            "audio {fa} ms comes after the sentence {fs} ms plus synthesis"
        );
        assert!(t.first_audio_at_ms.unwrap() > 5.0);
        voice.shutdown();
    }

    #[test]
    fn a_stopped_answer_goes_quiet() {
        let out = Output::open(&OutputTarget::None, 8_000).unwrap();
        let voice = Voice::new(Box::new(Fake), out);
        let mut a = voice.answer(None);
        a.on_event(&sentence(0, "One.", 1));
        a.stopper().stop();
        a.on_event(&sentence(1, "Two.", 2));
        let spoken = a.finish(Duration::from_secs(5));
        assert!(spoken.stopped && spoken.timings.barged_in);
        assert!(
            spoken.clip.map(|c| c.samples.len()).unwrap_or(0) <= 400,
            "at most the piece under way"
        );
        assert!(!spoken.text.contains("Two"));
        assert_eq!(
            spoken.timings.first_sentence_after_speech_ms, None,
            "a typed question has no end of speech"
        );
        voice.shutdown();
    }
}
