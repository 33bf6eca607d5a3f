//! `gemba bench voice`: how long from the end of a spoken question to the first sentence and to
//! the first sample of the spoken answer, and what gemba adds over the model's own prefill and
//! first-sentence decoding.
//!
//! One run, two contenders on the same question (an espeak-ng recording at 16 kHz with noise
//! before and silence after) and the same camera frame:
//! - the peer: `Engine::ask` called directly with the utterance — its own
//!   wall time from the call to its first sentence (pre-processing, encoders, prefill, decoding)
//!   and, within it, the decoder's own prefill + decoding to the first sentence;
//! - gemba's voice path: the clip fed in 32 ms chunks through the listener (Silero VAD,
//!   segmenter), the utterance handed to the model worker thread, its events to the speaker
//!   (synthesizer thread, output queue). Timed from the moment the end of speech was decided
//!   (the `end_silence` wait before it is a setting, reported apart).
//!
//! The overhead is gemba's (end of speech → first sentence) minus the peer's (call → first
//! sentence), medians. Not included: the daemon's report store (`store.begin` before the question is asked,
//! visible as the gap in a voice report's timings) and a sound device's own buffer latency (the
//! output here is the null output, which picks samples up every 5 ms).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::listen::{Heard, ListenConfig, Listener, TriggerMode};
use super::output::{Output, OutputTarget};
use super::resample::Resampler;
use super::segment::SegmentConfig;
use super::speak::Voice;
use super::tts::{Synthesizer, TtsSettings};
use super::vad::{resolve_model, SileroVad};
use crate::capture::{AudioClip, Frame};
use crate::daemon::worker::{AskInput, AskSettings, Job, JobEvent, Worker};
use crate::model::providers::ProviderPolicy;
use crate::model::runtime::Runtime;
use crate::model::{CancelToken, Engine, Event};

#[derive(Debug, Clone, Serialize)]
pub struct VoiceBench {
    pub model: String,
    pub question: String,
    pub repeat: usize,
    pub end_silence_ms: f64,
    /// Peer: `Engine::ask` called → its first sentence (pre-processing, encoders, prefill,
    /// decoding), median.
    pub peer_first_sentence_ms: f64,
    /// Of which the decoder's own prefill and decoding to the first sentence.
    pub peer_decoder_first_sentence_ms: f64,
    pub peer_prefill_ms: f64,
    /// gemba: end of speech → first sentence, → first audio sample; medians.
    pub first_sentence_after_speech_ms: f64,
    pub first_audio_after_speech_ms: f64,
    /// What gemba's path adds before the first sentence: its median minus the peer's.
    pub overhead_ms: f64,
    /// First sentence → first audio sample (synthesis start-up + output pickup).
    pub speech_start_ms: f64,
    pub first_sentence: String,
}

impl std::fmt::Display for VoiceBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "voice bench: {} — {:?}, {} runs (medians)",
            self.model, self.question, self.repeat
        )?;
        writeln!(f, "  end-of-speech wait (voice.vad.end_silence)  {:>8.1} ms (a setting, not counted below)", self.end_silence_ms)?;
        writeln!(
            f,
            "  peer: decoder prefill                      {:>8.1} ms",
            self.peer_prefill_ms
        )?;
        writeln!(
            f,
            "  peer: decoder prefill + decode to sentence {:>8.1} ms",
            self.peer_decoder_first_sentence_ms
        )?;
        writeln!(
            f,
            "  peer: ask → first sentence (all of it)     {:>8.1} ms",
            self.peer_first_sentence_ms
        )?;
        writeln!(
            f,
            "  gemba: end of speech → first sentence      {:>8.1} ms",
            self.first_sentence_after_speech_ms
        )?;
        writeln!(
            f,
            "  gemba: end of speech → first audio sample  {:>8.1} ms",
            self.first_audio_after_speech_ms
        )?;
        writeln!(
            f,
            "  overhead over the peer (to first sentence) {:>8.1} ms",
            self.overhead_ms
        )?;
        writeln!(
            f,
            "  first sentence → first audio sample        {:>8.1} ms",
            self.speech_start_ms
        )?;
        writeln!(f, "  first sentence: {:?}", self.first_sentence)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// A 320×240 grey frame, or the first image of `frame` if given.
fn bench_frame(path: Option<&Path>) -> anyhow::Result<Frame> {
    let (w, h, rgb) = match path {
        Some(p) => {
            let img = image::open(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .to_rgb8();
            (img.width(), img.height(), img.into_raw())
        }
        None => (320, 240, vec![128u8; 320 * 240 * 3]),
    };
    Ok(Frame {
        camera: "press-2".into(),
        seq: 0,
        captured_at: SystemTime::now(),
        width: w,
        height: h,
        rgb: Arc::new(rgb),
    })
}

/// Runs the listener over the recording in 32 ms chunks until it decides the question is over.
fn listen(
    rt: &'static Runtime,
    clip: &[f32],
    end_silence: Duration,
) -> anyhow::Result<super::listen::Utterance> {
    let vad = SileroVad::load(rt, &resolve_model(None)?)?;
    let mut l = Listener::new(
        ListenConfig {
            mode: TriggerMode::Vad,
            segment: SegmentConfig {
                end_silence,
                ..SegmentConfig::default()
            },
            pre_roll: Duration::from_millis(300),
            source: "bench".into(),
        },
        Some(Box::new(vad)),
    );
    let mut heard = Vec::new();
    for c in clip.chunks(512) {
        let chunk = AudioClip {
            source: "bench".into(),
            started_at: SystemTime::now(),
            sample_rate: 16_000,
            samples: Arc::new(c.to_vec()),
        };
        l.push(&chunk, &mut heard)?;
        if let Some(u) = heard.drain(..).find_map(|h| {
            if let Heard::Utterance(u) = h {
                Some(u)
            } else {
                None
            }
        }) {
            return Ok(u);
        }
    }
    anyhow::bail!("the VAD found no question in the recording")
}

/// Runs the benchmark (`repeat` ≥ 1).
pub fn run(
    rt: &'static Runtime,
    model: &Path,
    question: &str,
    frame: Option<&Path>,
    repeat: usize,
) -> anyhow::Result<VoiceBench> {
    let end_silence = Duration::from_millis(600);
    // The question: 0.5 s of low noise, the speech, 1 s of silence.
    let mut es = super::tts::Espeak::new("en-us", 170)?;
    let mut raw = Vec::new();
    es.synthesize(
        question,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |s| raw.extend_from_slice(s),
    )?;
    let speech = Resampler::convert(es.sample_rate(), 16_000, &raw);
    let mut clip: Vec<f32> = (0..8_000)
        .map(|i| 0.002 * ((i * 7919 % 97) as f32 / 48.0 - 1.0))
        .collect();
    clip.extend(speech);
    clip.extend(std::iter::repeat_n(0.0, 16_000));
    let frame = bench_frame(frame)?;
    let policy = ProviderPolicy::default();

    // Peer first, alone on the machine.
    let mut engine = Engine::load(rt, model, &policy)?;
    let mut params = engine.default_params();
    params.max_new_tokens = Some(64);
    // The peer gets the same utterance the listener cuts.
    let utterance = listen(rt, &clip, end_silence)?.clip;
    let input = AskInput {
        text: String::new(),
        frames: vec![frame.clone()],
        audio: vec![utterance],
    };
    let (mut peer_fs, mut peer_dec, mut peer_prefill) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_sentence = String::new();
    for i in 0..repeat + 1 {
        let called = Instant::now();
        let mut first_at = None;
        let done = engine.ask(&input, None, &params, &CancelToken::new(), &mut |ev| {
            if let Event::Sentence(s) = &ev {
                if s.index == 0 {
                    first_sentence = s.text.clone();
                    first_at = Some(called.elapsed());
                }
            }
        })?;
        if i > 0 {
            // The first run warms up allocations and caches.
            peer_fs.push(first_at.unwrap_or(called.elapsed()).as_secs_f64() * 1000.0);
            peer_dec.push(done.time_to_first_sentence_ms.unwrap_or(done.total_ms));
            peer_prefill.push(done.prefill_ms);
        }
    }
    drop(engine);

    // gemba's path: listener → worker thread → speaker.
    let progress = crate::systemd::Progress::new();
    let worker = Worker::spawn(rt, model, &policy, progress.stage("worker"))
        .map_err(|e| anyhow::anyhow!(e))?;
    let tts = super::tts::build(&TtsSettings::default(), Some(rt))?;
    let output = Output::open(&OutputTarget::None, tts.sample_rate())?;
    let voice = Voice::new(tts, output);
    let (mut g_fs, mut g_fa, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..repeat + 1 {
        let u = listen(rt, &clip, end_silence)?;
        let mut answer = voice.answer(Some(u.decided_at));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        worker
            .submit(Job::Ask {
                input: AskInput {
                    text: String::new(),
                    frames: vec![frame.clone()],
                    audio: vec![u.clip.clone()],
                },
                settings: AskSettings {
                    system_prompt: None,
                    max_new_tokens: 64,
                    deadline: Duration::from_secs(120),
                    overrides: Default::default(),
                    speculate: false,
                    prefix_cache: Default::default(),
                },
                cancel: CancelToken::new(),
                events: tx,
            })
            .map_err(|e| anyhow::anyhow!(e))?;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                JobEvent::Event(e) => answer.on_event(&e),
                JobEvent::Failed(e) => anyhow::bail!("the model failed: {e}"),
            }
        }
        let spoken = answer.finish(Duration::from_secs(60));
        voice.output().wait_drained(Duration::from_secs(60));
        if i == 0 {
            continue;
        }
        let t = spoken.timings;
        if let (Some(fs), Some(fa)) = (
            t.first_sentence_after_speech_ms,
            t.first_audio_after_speech_ms,
        ) {
            g_fs.push(fs);
            g_fa.push(fa);
            start.push(fa - fs);
        }
    }
    voice.shutdown();
    if g_fs.is_empty() {
        anyhow::bail!("the model produced no sentence for {question:?}");
    }
    Ok(VoiceBench {
        model: model.display().to_string(),
        question: question.into(),
        repeat,
        end_silence_ms: end_silence.as_secs_f64() * 1000.0,
        overhead_ms: median(g_fs.clone()) - median(peer_fs.clone()),
        peer_first_sentence_ms: median(peer_fs),
        peer_decoder_first_sentence_ms: median(peer_dec),
        peer_prefill_ms: median(peer_prefill),
        first_sentence_after_speech_ms: median(g_fs),
        first_audio_after_speech_ms: median(g_fa),
        speech_start_ms: median(start),
        first_sentence,
    })
}
