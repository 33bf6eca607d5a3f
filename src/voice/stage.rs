//! The voice stage of the daemon: microphone → listener thread → questions → the model → spoken
//! answers, with barge-in.
//!
//! ```text
//! mic (cpal callback / WAV thread) ─chunks, bounded, drop newest─▶ listener thread (VAD)
//!   ─Heard─▶ stage task ─Request (try_submit)─▶ dispatcher ─RequestEvents─▶ answer task
//!   answer task: each Sentence → synthesizer thread → output; at Done → FollowUp (answer audio
//!   and timings) to the report writer
//! ```
//! Barge-in: when speech is confirmed while an answer is generating or playing, that answer's
//! generation is cancelled (its report closes incomplete) and its playback stops; the new speech
//! becomes the next question. Push-to-talk presses come from a FIFO or from [`VoiceStage::talk`]
//! (the hook for the local API).
//!
//! Start-up failures (no microphone, no VAD model, a bad Piper voice) are returned to the daemon,
//! which reports "voice disabled: …" and runs on; an output device that cannot be opened only
//! silences the answers (they are still synthesized into the reports).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{MicSettings, MicSource, VoiceSettings};
use super::listen::{Heard, ListenConfig, Listener, TriggerMode, Utterance};
use super::output::{Output, OutputTarget};
use super::speak::{Stopper, Voice};
use super::vad::{resolve_model, SileroVad, SpeechDetector};
use super::VoiceError;
use crate::capture::mic::{open_microphone, open_wav_microphone, MicConfig, MicHandle, WavConfig};
use crate::capture::AudioClip;
use crate::daemon::{AppHandle, FollowUp, Request, RequestEvent};
use crate::model::{CancelToken, Event};
use crate::report::Trigger;

/// Counters the stage keeps.
#[derive(Debug, Default)]
pub struct VoiceStats {
    pub utterances: AtomicU64,
    pub capped: AtomicU64,
    pub submitted: AtomicU64,
    /// Questions dropped because the model's queue was full.
    pub dropped: AtomicU64,
    pub barge_ins: AtomicU64,
}

/// The running stage.
pub struct VoiceStage {
    stop: CancellationToken,
    mic: Option<MicHandle>,
    listener: Option<std::thread::JoinHandle<()>>,
    task: tokio::task::JoinHandle<()>,
    voice: Arc<Voice>,
    talk: std::sync::mpsc::Sender<bool>,
    pub stats: Arc<VoiceStats>,
    /// One line for status and logs.
    pub summary: String,
}

impl VoiceStage {
    /// Push-to-talk: press (`true`) or release (`false`).
    pub fn talk(&self, down: bool) {
        let _ = self.talk.send(down);
    }

    /// Stops the microphone first; the listener ends when its input closes, then the stage.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let mic = self.mic.take();
        let listener = self.listener.take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(m) = mic {
                m.stop();
            }
            if let Some(l) = listener {
                let _ = l.join();
            }
        })
        .await;
        let _ = (&mut self.task).await;
        let voice = Arc::clone(&self.voice);
        let _ = tokio::task::spawn_blocking(move || {
            voice.output().wait_drained(Duration::from_secs(5));
            voice.shutdown();
        })
        .await;
    }
}

fn open_mic(
    m: &MicSettings,
    tx: mpsc::Sender<AudioClip>,
    cancel: CancellationToken,
) -> Result<MicHandle, VoiceError> {
    Ok(match &m.source {
        MicSource::Cpal {
            device,
            format,
            rate,
            channels,
        } => open_microphone(
            &MicConfig {
                name: m.name.clone(),
                device: device.clone(),
                format: *format,
                sample_rate: *rate,
                channels: *channels,
                chunk: m.chunk.0,
            },
            tx,
            cancel,
        )?,
        MicSource::Wav { path, .. } => open_wav_microphone(
            &WavConfig {
                name: m.name.clone(),
                path: path.clone(),
                chunk: m.chunk.0,
                pace: m.pace(),
            },
            tx,
            cancel,
        )?,
    })
}

/// Makes the push-to-talk FIFO (if missing) and forwards its lines as presses and releases.
fn spawn_fifo(path: &Path, talk: std::sync::mpsc::Sender<bool>) -> Result<(), VoiceError> {
    let fifo_err = |e: std::io::Error| VoiceError::PushToTalk {
        path: path.into(),
        err: e.to_string(),
    };
    if !path.exists() {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| fifo_err(std::io::Error::other(e)))?;
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o660) } != 0 {
            return Err(fifo_err(std::io::Error::last_os_error()));
        }
    }
    // Read-write, so opening never waits for a writer and the FIFO never reports end-of-file.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(fifo_err)?;
    let path: PathBuf = path.into();
    std::thread::Builder::new()
        .name("voice-ptt".into())
        .spawn(move || {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { return };
                let down = match line.trim() {
                    "down" | "press" | "1" | "on" => true,
                    "up" | "release" | "0" | "off" => false,
                    "" => continue,
                    other => {
                        log::warn!(
                            "push-to-talk {}: ignoring {other:?} (write down/up)",
                            path.display()
                        );
                        continue;
                    }
                };
                if talk.send(down).is_err() {
                    return;
                }
            }
        })
        .map_err(fifo_err)?;
    Ok(())
}

/// Starts the stage. `rt`: the daemon's ONNX Runtime (for the VAD and a Piper voice).
pub fn start(
    app: AppHandle,
    voice: &VoiceSettings,
    mic: &MicSettings,
    rt: &'static crate::model::runtime::Runtime,
) -> Result<VoiceStage, VoiceError> {
    let detector: Option<Box<dyn SpeechDetector>> = match voice.trigger {
        TriggerMode::Vad => {
            let path = resolve_model(voice.vad.model.as_deref())?;
            Some(Box::new(SileroVad::load(rt, &path)?))
        }
        TriggerMode::PushToTalk => None,
    };
    let tts = super::tts::build(&voice.tts, Some(rt))?;
    let output = match Output::open(&voice.output, tts.sample_rate()) {
        Ok(o) => o,
        Err(e) => {
            log::warn!("voice: {e}; answers are synthesized into the reports but not played");
            Output::open(&OutputTarget::None, tts.sample_rate())
                .expect("the null output always opens")
        }
    };
    let out_desc = output.describe().to_string();
    let tts_name = tts.name();
    let voice_out = Arc::new(Voice::new(tts, output));

    let stop = CancellationToken::new();
    // ~3 s of 32 ms chunks: the VAD keeps up easily; if it ever stalls, new chunks are dropped
    // and counted by the microphone (never blocking its callback).
    let (atx, mut arx) = mpsc::channel::<AudioClip>(96);
    let mic_handle = open_mic(mic, atx, stop.child_token())?;
    let (talk_tx, talk_rx) = std::sync::mpsc::channel::<bool>();
    if let (TriggerMode::PushToTalk, Some(p)) = (voice.trigger, &voice.push_to_talk) {
        spawn_fifo(p, talk_tx.clone())?;
    }
    let (htx, hrx) = mpsc::unbounded_channel::<Heard>();
    let mut listener = Listener::new(
        ListenConfig {
            mode: voice.trigger,
            segment: voice.vad.segment(),
            pre_roll: voice.vad.pre_roll.0,
            source: mic.name.clone(),
        },
        detector,
    );
    let listener_thread = std::thread::Builder::new()
        .name("voice-listen".into())
        .spawn(move || {
            let mut heard = Vec::new();
            let mut failed = false;
            while let Some(clip) = arx.blocking_recv() {
                while let Ok(down) = talk_rx.try_recv() {
                    listener.talk(down, &mut heard);
                }
                if let Err(e) = listener.push(&clip, &mut heard) {
                    if !failed {
                        log::error!("voice: {e} (further VAD errors are not logged)");
                        failed = true;
                    }
                }
                for h in heard.drain(..) {
                    if htx.send(h).is_err() {
                        return;
                    }
                }
            }
            listener.finish(&mut heard);
            for h in heard.drain(..) {
                let _ = htx.send(h);
            }
        })
        .map_err(|e| VoiceError::Thread(e.to_string()))?;
    let stats = Arc::new(VoiceStats::default());
    let summary = format!(
        "voice: listening on {} ({}), {}, speaking with {} to {}",
        mic.name,
        match &mic.source {
            MicSource::Cpal { device, .. } => device.clone(),
            MicSource::Wav { path, .. } => path.display().to_string(),
        },
        match voice.trigger {
            TriggerMode::Vad => "Silero VAD".to_string(),
            TriggerMode::PushToTalk => format!(
                "push-to-talk {}",
                voice
                    .push_to_talk
                    .as_deref()
                    .unwrap_or(Path::new("-"))
                    .display()
            ),
        },
        tts_name,
        out_desc
    );
    let task = tokio::spawn(crate::stage::run(
        "voice",
        run(
            app,
            voice.clone(),
            Arc::clone(&voice_out),
            hrx,
            Arc::clone(&stats),
            stop.clone(),
        ),
    ));
    Ok(VoiceStage {
        stop,
        mic: Some(mic_handle),
        listener: Some(listener_thread),
        task,
        voice: voice_out,
        talk: talk_tx,
        stats,
        summary,
    })
}

/// The answer being generated or spoken, for barge-in.
#[derive(Clone)]
struct Active {
    cancel: CancelToken,
    stopper: Stopper,
    done: Arc<std::sync::atomic::AtomicBool>,
}

async fn run(
    app: AppHandle,
    settings: VoiceSettings,
    voice: Arc<Voice>,
    mut heard: mpsc::UnboundedReceiver<Heard>,
    stats: Arc<VoiceStats>,
    stop: CancellationToken,
) {
    let active: Arc<Mutex<Option<Active>>> = Arc::new(Mutex::new(None));
    let mut missing_logged = std::collections::HashSet::new();
    loop {
        let h = tokio::select! {
            _ = stop.cancelled() => break,
            h = heard.recv() => match h { Some(h) => h, None => break },
        };
        match h {
            Heard::SpeechStarted { .. } => {
                if !settings.barge_in {
                    continue;
                }
                let a = active.lock().expect("poisoned").clone();
                if let Some(a) = a {
                    let playing = !voice.output().wait_drained(Duration::ZERO);
                    if !a.done.load(Ordering::Relaxed) || playing {
                        log::info!("voice: barge-in: stopping the answer");
                        stats.barge_ins.fetch_add(1, Ordering::Relaxed);
                        a.cancel.cancel();
                        a.stopper.stop();
                    }
                }
            }
            Heard::Utterance(u) => {
                stats.utterances.fetch_add(1, Ordering::Relaxed);
                if u.capped {
                    stats.capped.fetch_add(1, Ordering::Relaxed);
                    log::warn!("voice: a question reached voice.vad.max_utterance ({:.0} s) and was cut there", u.speech_duration().as_secs_f64());
                }
                let mut frames = Vec::new();
                for c in &settings.cameras {
                    match app.latest_frame(c) {
                        Some(f) => frames.push(f),
                        None => {
                            if missing_logged.insert(c.clone()) {
                                log::warn!("voice: camera {c} has no frame yet; asking without it");
                            }
                        }
                    }
                }
                let prompt = settings.prompt.clone();
                let (tx, rx) = mpsc::unbounded_channel();
                let (ftx, frx) = std::sync::mpsc::channel();
                let mut req = Request::new(Trigger::Voice, prompt);
                req.reason = format!(
                    "utterance {:.1} s{}",
                    u.speech_duration().as_secs_f64(),
                    if u.capped { " (capped)" } else { "" }
                );
                req.frames = frames;
                req.audio = vec![u.clip.clone()];
                req.listener = Some(tx);
                req.follow_up = Some(frx);
                let answer = voice.answer(Some(u.decided_at));
                let a = Active {
                    cancel: req.cancel.clone(),
                    stopper: answer.stopper(),
                    done: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                };
                match app.try_submit(req) {
                    Ok(()) => {
                        stats.submitted.fetch_add(1, Ordering::Relaxed);
                        *active.lock().expect("poisoned") = Some(a.clone());
                        let queued = Instant::now();
                        tokio::spawn(follow(answer, u, queued, rx, ftx, a.done));
                    }
                    Err(_) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        log::warn!("voice: the model's queue is full; the question was dropped");
                    }
                }
            }
        }
    }
}

/// Follows one request: speaks its sentences, and when it is done hands the answer audio and the
/// timings to the report writer.
async fn follow(
    mut answer: super::speak::Answer,
    u: Utterance,
    queued: Instant,
    mut events: mpsc::UnboundedReceiver<RequestEvent>,
    follow_up: std::sync::mpsc::Sender<FollowUp>,
    done_flag: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut sent = false;
    while let Some(ev) = events.recv().await {
        match ev {
            RequestEvent::Event(e) => {
                let done = matches!(e, Event::Done(_));
                answer.on_event(&e);
                if done {
                    done_flag.store(true, Ordering::Relaxed);
                    let spoken =
                        tokio::task::spawn_blocking(move || answer.finish(Duration::from_secs(60)))
                            .await;
                    if let Ok(spoken) = spoken {
                        let mut t = spoken.timings;
                        t.speech_ms = u.speech_duration().as_secs_f64() * 1000.0;
                        t.end_silence_ms = u.end_silence.as_secs_f64() * 1000.0;
                        t.request_after_speech_ms = Some(
                            queued.saturating_duration_since(u.decided_at).as_secs_f64() * 1000.0,
                        );
                        t.capped = u.capped;
                        if let Some(e) = &spoken.error {
                            log::warn!("voice: part of the answer could not be spoken: {e}");
                        }
                        let audio = spoken
                            .clip
                            .map(|c| vec![(c, Some(spoken.text.clone()))])
                            .unwrap_or_default();
                        let _ = follow_up.send(FollowUp {
                            audio,
                            voice: Some(t),
                        });
                    }
                    sent = true;
                    break;
                }
            }
            RequestEvent::Started { .. } => {}
            RequestEvent::Closed { .. } => break,
        }
    }
    done_flag.store(true, Ordering::Relaxed);
    if !sent {
        drop(follow_up); // the writer stops waiting
    }
    // Drain to the end so the listener channel is not left full.
    while events.recv().await.is_some() {}
}
