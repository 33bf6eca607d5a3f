//! The voice stage end to end, in the real daemon (`gemba run`), through real ALSA capture: the
//! microphone is ALSA's `file` plugin reading a FIFO that this test feeds at real-time pace
//! (factory noise, then an espeak-ng question, then noise again), as in shared/notes/hardware.md.
//! The daemon must detect the question with the VAD, ask the model with the replay camera's
//! latest frame, speak the answer sentence by sentence into a WAV file, and write a report whose
//! segments are in order: the question's audio, the frame, the answer's sentences, the spoken
//! answer.
//!
//! Most tests here use the tiny text bundle (`models/tiny-qwen2`): it cannot hear, so the prompt
//! template carries the question's text and the answer is checked against what that model was
//! trained to say. One test runs the demo model (`models/demo`), which hears the question and
//! looks at the frame. `GEMBA_TEST_TOKEN_DELAY_MS` slows its decoding to a board's pace (it decodes
//! ~10k tokens/s here), so the report can show speech starting while generation goes on.

mod common;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use gemba::report::{ListFilter, Report, ReportStatus, RetentionPolicy, Segment, Store};
use gemba::voice::resample::Resampler;
use gemba::voice::tts::{Espeak, Synthesizer};

const RATE: usize = 16_000;

/// A spoken question at 16 kHz.
fn question(text: &str) -> Vec<f32> {
    let mut e = Espeak::new("en-us", 170).unwrap();
    let mut raw = Vec::new();
    e.synthesize(text, &AtomicBool::new(false), &mut |s| {
        raw.extend_from_slice(s)
    })
    .unwrap();
    Resampler::convert(e.sample_rate(), RATE as u32, &raw)
}

/// Low factory noise: hum and hiss.
fn noise(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let white = (*seed % 20_001) as f32 / 10_000.0 - 1.0;
            0.004 * (i as f32 * 50.0 * std::f32::consts::TAU / RATE as f32).sin() + 0.003 * white
        })
        .collect()
}

/// Feeds the FIFO at real-time pace: noise, and each queued question as soon as it is given.
struct Feeder {
    say: mpsc::Sender<Vec<f32>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    fn start(fifo: &Path) -> Feeder {
        // Read-write: opening never waits for the daemon, and a probe that opens and closes the
        // device cannot break the pipe.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fifo)
            .unwrap();
        let (say, rx) = mpsc::channel::<Vec<f32>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let block = RATE / 100; // 10 ms
            let mut seed = 0x1234_5678_9abc_def1u64;
            let mut pending: Vec<f32> = Vec::new();
            let t0 = Instant::now();
            let mut sent = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                while let Ok(q) = rx.try_recv() {
                    pending.extend(q);
                }
                let mut chunk = noise(block, &mut seed);
                let take = pending.len().min(block);
                for (c, q) in chunk.iter_mut().zip(pending.drain(..take)) {
                    *c += q;
                }
                let bytes: Vec<u8> = chunk
                    .iter()
                    .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                    .collect();
                if f.write_all(&bytes).is_err() {
                    return;
                }
                sent += block;
                let due = t0 + Duration::from_secs_f64(sent as f64 / RATE as f64);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
        });
        Feeder {
            say,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    alsa: PathBuf,
    fifo: PathBuf,
}

impl Setup {
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn spoken(&self) -> PathBuf {
        self.dir.path().join("spoken.wav")
    }
}

/// A config with one replay camera (not monitored), the FIFO microphone and `voice` extras, on
/// the tiny text bundle.
fn setup(mic_device: &str, monitor: bool, voice_extra: &str) -> Setup {
    let tiny = root().join("models/tiny-qwen2/fp32");
    setup_with(
        &tiny,
        None,
        Some("What is the pressure on press 1?"),
        mic_device,
        monitor,
        voice_extra,
    )
}

/// The same with any model, the replay camera showing `frame` (default: synthetic frames) and
/// `voice.prompt` (default: none, the question is the audio alone).
fn setup_with(
    model: &Path,
    frame: Option<&Path>,
    voice_prompt: Option<&str>,
    mic_device: &str,
    monitor: bool,
    voice_extra: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    match frame {
        Some(f) => {
            std::fs::create_dir_all(dir.path().join("frames")).unwrap();
            std::fs::copy(f, dir.path().join("frames").join(f.file_name().unwrap())).unwrap();
        }
        None => write_replay_frames(&dir.path().join("frames"), 2),
    }
    let fifo = dir.path().join("mic.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let alsa = dir.path().join("asound.conf");
    std::fs::write(
        &alsa,
        format!(
            "</usr/share/alsa/alsa.conf>\npcm.gemba_voice_mic {{\n    type file\n    slave.pcm \"null\"\n    file \"/dev/null\"\n    \
             infile \"{}\"\n    format \"raw\"\n    hint {{ show on; description \"voice test mic\" }}\n}}\n\
             pcm.!default {{ type asym; playback.pcm \"null\"; capture.pcm \"gemba_voice_mic\" }}\n",
            fifo.display()
        ),
    )
    .unwrap();
    // The demo model's answers cite regions (`[cam:NAME box:…]`, ~20 tokens each).
    let max_new_tokens = if model.ends_with("models/demo") {
        120
    } else {
        40
    };
    let config = dir.path().join("gemba.toml");
    std::fs::write(
        &config,
        format!(
            r#"board = "x86-dev"
data_dir = "store"
[model]
path = "{model}"
max_new_tokens = {max_new_tokens}
[providers]
order = ["cpu"]
# Any free port for the local API: tests run daemons side by side.
[api]
listen = "127.0.0.1:0"
[[cameras]]
name = "press-2"
kind = "replay"
source = "frames"
fps = 5.0
monitor = {monitor}
prompt = "What is the pressure on press 1?"
[microphone]
kind = "cpal"
name = "floor-mic"
device = "{mic_device}"
format = "i16"
rate = 16000
channels = 1
[voice]
cameras = ["press-2"]
{voice_prompt}
output = "file:spoken.wav"
{voice_extra}
[voice.vad]
end_silence = "500ms"
"#,
            model = model.display(),
            voice_prompt = voice_prompt
                .map(|p| format!("prompt = \"{p}\""))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    Setup {
        dir,
        config,
        alsa,
        fifo,
    }
}

/// The running daemon and its stderr lines.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// A test that fails before `stop` must not leave its daemon running (and busy) behind it.
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    fn start(s: &Setup, token_delay_ms: u64) -> Daemon {
        let mut child = gemba()
            .args(["run", "--config"])
            .arg(&s.config)
            .env("ALSA_CONFIG_PATH", &s.alsa)
            .env("GEMBA_TEST_TOKEN_DELAY_MS", token_delay_ms.to_string())
            .env("GEMBA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `what`.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no stderr line with {what:?} within {timeout:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    fn stop(mut self) -> Vec<String> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        assert!(
            status.success(),
            "the daemon exited with {status}; stderr:\n{}",
            self.seen.join("\n")
        );
        std::mem::take(&mut self.seen)
    }
}

/// Reports of `trigger`, oldest first, once `n` of them are closed (or panics after `timeout`).
fn wait_reports(store: &Path, trigger: &str, n: usize, timeout: Duration) -> Vec<Report> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(s) = Store::open_read_only(store) {
            let mut list = s
                .list(&ListFilter {
                    trigger: Some(trigger.into()),
                    ..Default::default()
                })
                .unwrap();
            list.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            let closed: Vec<_> = list
                .iter()
                .filter(|r| r.status != ReportStatus::Open)
                .collect();
            if closed.len() >= n {
                return closed.iter().map(|r| s.get(&r.id).unwrap()).collect();
            }
        }
        assert!(
            Instant::now() < end,
            "fewer than {n} closed {trigger} reports in {}",
            store.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn audio_secs(s: &Segment) -> f64 {
    match s {
        Segment::Audio(a) => a.duration.as_secs_f64(),
        _ => panic!("not audio: {s:?}"),
    }
}

#[test]
fn a_spoken_question_is_answered_aloud_sentence_by_sentence_and_reported() {
    let s = setup("gemba_voice_mic", false, "");
    let feeder = Feeder::start(&s.fifo);
    let mut d = Daemon::start(&s, 40);
    d.wait_for("gemba: voice: listening on floor-mic (gemba_voice_mic), Silero VAD, speaking with espeak-ng:en-us", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1)); // the camera's first frame, some noise before
    let q = question("What is the pressure on press one?");
    let q_secs = q.len() as f64 / RATE as f64;
    feeder.say.send(q).unwrap();
    let reports = wait_reports(&s.store(), "voice", 1, Duration::from_secs(60));
    // Let the spoken answer play out into the file before stopping.
    std::thread::sleep(Duration::from_secs(6));
    drop(feeder);
    let stderr = d.stop();
    let r = &reports[0];
    assert_eq!(
        r.status,
        ReportStatus::Complete,
        "{r:?}\n{}",
        stderr.join("\n")
    );
    assert_eq!(r.meta.cameras, vec!["press-2".to_string()]);
    let kinds: Vec<&str> = r.segments.iter().map(|s| s.kind()).collect();
    // The question, the frame (this model cannot see: before the answer), the sentences, the
    // spoken answer.
    assert_eq!(
        kinds,
        ["audio", "image", "text", "text", "audio"],
        "{:#?}",
        r.segments
    );
    let Segment::Audio(asked) = &r.segments[0] else {
        unreachable!()
    };
    assert_eq!(
        (asked.source.as_str(), asked.sample_rate),
        ("floor-mic", 16_000)
    );
    let asked_secs = audio_secs(&r.segments[0]);
    assert!(
        asked_secs > q_secs - 0.3 && asked_secs < q_secs + 1.2,
        "the question clip is {asked_secs:.2} s for {q_secs:.2} s of speech (plus pre-roll and pad)"
    );
    let Segment::Image(frame) = &r.segments[1] else {
        unreachable!()
    };
    assert_eq!(frame.camera, "press-2");
    let texts: Vec<&str> = r
        .segments
        .iter()
        .filter_map(|s| {
            if let Segment::Text(t) = s {
                Some(t.text.as_str())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        texts,
        [
            "The pressure on press 1 is 8.4 bar.",
            "That is above the limit of 8.0 bar."
        ]
    );
    let Segment::Audio(spoken) = &r.segments[4] else {
        unreachable!()
    };
    assert_eq!(spoken.source, "espeak-ng:en-us");
    assert_eq!(
        spoken.transcript.as_deref(),
        Some("The pressure on press 1 is 8.4 bar. That is above the limit of 8.0 bar.")
    );
    let spoken_secs = audio_secs(&r.segments[4]);
    assert!(
        spoken_secs > 3.0,
        "the spoken answer lasts {spoken_secs:.2} s"
    );

    // Timings: the first sentence's audio left gemba before generation had finished.
    let st = r.stats.as_ref().unwrap();
    let v = st.voice.as_ref().expect("voice timings in the report");
    let total = st.total_ms.unwrap();
    let first_audio = v.first_audio_at_ms.unwrap();
    let Segment::Text(first) = &r.segments[2] else {
        unreachable!()
    };
    eprintln!(
        "timings: {v:?}, total {total:.0} ms, first sentence at {:.0} ms",
        first.at.as_secs_f64() * 1000.0
    );
    assert!(
        first_audio > first.at.as_secs_f64() * 1000.0,
        "audio after its sentence"
    );
    assert!(
        first_audio < total,
        "first audio at {first_audio:.0} ms, generation ended at {total:.0} ms"
    );
    let (fs, fa, done) = (
        v.first_sentence_after_speech_ms.unwrap(),
        v.first_audio_after_speech_ms.unwrap(),
        v.done_after_speech_ms.unwrap(),
    );
    assert!(
        fs < fa && fa < done,
        "after end of speech: sentence {fs:.0}, audio {fa:.0}, done {done:.0} ms"
    );
    assert!(
        (v.speech_ms / 1000.0 - q_secs).abs() < 0.6,
        "speech {:.0} ms for a {q_secs:.2} s question",
        v.speech_ms
    );
    assert!(
        v.end_silence_ms >= 450.0 && v.end_silence_ms < 700.0,
        "{}",
        v.end_silence_ms
    );
    assert_eq!(
        (v.sentences_spoken, v.barged_in, v.capped),
        (2, false, false)
    );

    // The WAV the voice spoke into holds the same answer.
    let (rate, played) = gemba::voice::output::read_wav(&s.spoken()).unwrap();
    assert_eq!(rate, 22_050);
    let secs = played.len() as f64 / rate as f64;
    assert!(
        (secs - spoken_secs).abs() < 0.1,
        "played {secs:.2} s, reported {spoken_secs:.2} s"
    );
    let rms = (played.iter().map(|x| x * x).sum::<f32>() / played.len() as f32).sqrt();
    assert!(rms > 0.02, "audible: rms {rms}");
    // And the store is consistent.
    let store = Store::open(s.store(), RetentionPolicy::default()).unwrap();
    assert_eq!(store.integrity_check().unwrap(), vec!["ok".to_string()]);
}

/// The omni path: the demo model hears the question (no text prompt at all) and looks at the
/// replay camera's frame — press-2_00.jpg shows an amber lamp (models/demo/frames/facts.json).
#[test]
fn the_demo_model_hears_the_question_and_answers_about_the_cameras_frame() {
    let demo = root().join("models/demo");
    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("frames/facts.json")).unwrap())
            .unwrap();
    let scene = facts
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "press-2_00.jpg")
        .expect("facts.json lists press-2_00.jpg");
    let lamp = scene["lamp"]
        .as_str()
        .expect("press-2_00.jpg shows a lamp")
        .to_string();
    let s = setup_with(
        &demo,
        Some(&demo.join("frames/press-2_00.jpg")),
        None,
        "gemba_voice_mic",
        false,
        "",
    );
    let feeder = Feeder::start(&s.fifo);
    let mut d = Daemon::start(&s, 0);
    d.wait_for(
        "gemba: voice: listening on floor-mic",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(1));
    feeder
        .say
        .send(question("What colour is the lamp?"))
        .unwrap();
    let reports = wait_reports(&s.store(), "voice", 1, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(4));
    drop(feeder);
    let stderr = d.stop();
    let r = &reports[0];
    assert_eq!(
        r.status,
        ReportStatus::Complete,
        "{r:?}\n{}",
        stderr.join("\n")
    );
    let kinds: Vec<&str> = r.segments.iter().map(|s| s.kind()).collect();
    assert_eq!(
        kinds.first(),
        Some(&"audio"),
        "the question first: {kinds:?}"
    );
    assert_eq!(
        kinds.last(),
        Some(&"audio"),
        "the spoken answer last: {kinds:?}"
    );
    assert!(
        kinds.contains(&"image"),
        "the frame the model looked at: {kinds:?}"
    );
    let texts: Vec<&str> = r
        .segments
        .iter()
        .filter_map(|s| {
            if let Segment::Text(t) = s {
                Some(t.text.as_str())
            } else {
                None
            }
        })
        .collect();
    let answer = texts.join(" ");
    assert!(
        answer.contains(&format!("The lamp is {lamp}.")),
        "the lamp is {lamp}; the model said {answer:?}"
    );
    let Segment::Audio(spoken) = r.segments.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(spoken.transcript.as_deref(), Some(answer.as_str()));
    let (_, played) = gemba::voice::output::read_wav(&s.spoken()).unwrap();
    assert!(!played.is_empty(), "the answer was spoken into the WAV");
}

#[test]
fn new_speech_stops_the_answer_and_becomes_the_next_question() {
    let s = setup("gemba_voice_mic", false, "");
    let feeder = Feeder::start(&s.fifo);
    // Slow decoding (~7 tokens/s): the first answer is still being generated when the
    // technician speaks again.
    let mut d = Daemon::start(&s, 150);
    d.wait_for("gemba: voice: listening", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(700));
    feeder
        .say
        .send(question("What is the pressure on press one?"))
        .unwrap();
    d.wait_for("request voice", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    feeder
        .say
        .send(question("How warm is the oil in press one?"))
        .unwrap();
    let reports = wait_reports(&s.store(), "voice", 2, Duration::from_secs(60));
    drop(feeder);
    let stderr = d.stop();
    assert!(
        stderr.iter().any(|l| l.contains("barge-in")),
        "{}",
        stderr.join("\n")
    );
    let first = &reports[0];
    match &first.status {
        ReportStatus::Incomplete { reason } => assert!(reason.contains("Cancelled"), "{reason}"),
        other => panic!("the interrupted answer's report is {other:?}"),
    }
    // What had been said before the interruption is kept.
    assert_eq!(first.segments[0].kind(), "audio");
    let second = &reports[1];
    assert_eq!(
        second.segments[0].kind(),
        "audio",
        "the interruption is the next question"
    );
    assert!(audio_secs(&second.segments[0]) > 1.0);
}

#[test]
fn without_a_microphone_voice_is_disabled_and_the_daemon_runs_on() {
    let s = setup("no-such-mic", true, "");
    let mut d = Daemon::start(&s, 0);
    let line = d.wait_for("gemba: voice disabled", Duration::from_secs(60));
    assert!(line.contains("gemba: voice disabled: no audio input device named \"no-such-mic\"; available inputs: "), "{line}");
    assert!(
        line.contains("gemba_voice_mic"),
        "the line lists the inputs there are: {line}"
    );
    // The monitor keeps reporting.
    let reports = wait_reports(&s.store(), "monitor", 1, Duration::from_secs(60));
    assert_eq!(reports[0].status, ReportStatus::Complete);
    d.stop();
}

/// People before routine looks: four replay cameras change every frame and keep the model busy
/// with looks (one queued per camera: a newer look replaces its camera's older one). A question
/// through the API and one through the microphone are each answered next, ahead of the queued
/// looks — at most the look already being answered comes in between.
#[test]
fn a_person_is_answered_before_the_queued_looks() {
    let s = setup("gemba_voice_mic", false, "");
    let mut cams = String::new();
    for cam in ["cam-a", "cam-b", "cam-c", "cam-d"] {
        let dir = s.dir.path().join(cam);
        write_replay_frames(&dir, 8);
        cams.push_str(&format!(
            "\n[[cameras]]\nname = \"{cam}\"\nkind = \"replay\"\nsource = \"{}\"\nfps = 10.0\ninterval = \"100ms\"\n\
             change_threshold = 0.5\nprompt = \"What is the pressure on press 1?\"\n",
            dir.display()
        ));
    }
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&cams);
    std::fs::write(&s.config, text).unwrap();
    let feeder = Feeder::start(&s.fifo);
    // 40 ms a token: a look takes about a second and a half, so looks pile up.
    let mut d = Daemon::start(&s, 40);
    let line = d.wait_for("gemba: API listening on http://", Duration::from_secs(60));
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    d.wait_for(
        "gemba: voice: listening on floor-mic",
        Duration::from_secs(60),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let looks_waiting = || {
        let v: serde_json::Value = agent
            .get(format!("http://{addr}/status"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        v["queue"]["by_class"]["look"].as_u64().unwrap_or(0)
    };
    let wait_busy = || {
        let end = Instant::now() + Duration::from_secs(60);
        while looks_waiting() < 3 {
            assert!(Instant::now() < end, "the looks never queued up");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let created = |id: &str| -> i64 {
        let st = Store::open_read_only(s.store()).unwrap();
        let r = st
            .get(&gemba::report::ReportId::parse(id).unwrap())
            .unwrap();
        r.created_at.as_millisecond()
    };
    let looks_started_between = |from_ms: i64, to_ms: i64| -> usize {
        let st = Store::open_read_only(s.store()).unwrap();
        st.list(&ListFilter {
            trigger: Some("monitor".into()),
            limit: Some(500),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .filter(|r| (from_ms..to_ms).contains(&r.created_at.as_millisecond()))
        .count()
    };

    // The API's question.
    wait_busy();
    let asked = jiff::Timestamp::now().as_millisecond();
    let mut resp = agent
        .post(format!("http://{addr}/ask"))
        .send_json(serde_json::json!({"text": "What is the pressure on press 1?"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let v: serde_json::Value = resp.body_mut().read_json().unwrap();
    let api_start = created(v["report_id"].as_str().unwrap());
    let between = looks_started_between(asked, api_start);
    assert!(
        between <= 1,
        "{between} queued looks were answered before the API's question"
    );

    // The spoken question.
    wait_busy();
    let q = question("What is the pressure on press one?");
    let spoken_end = jiff::Timestamp::now().as_millisecond() + (q.len() * 1000 / RATE) as i64;
    feeder.say.send(q).unwrap();
    let voice = wait_reports(&s.store(), "voice", 1, Duration::from_secs(60));
    let voice_start = voice[0].created_at.as_millisecond();
    let between = looks_started_between(spoken_end, voice_start);
    assert!(
        between <= 1,
        "{between} queued looks were answered before the spoken question"
    );
    drop(feeder);
    let stderr = d.stop();
    assert!(
        looks_started_between(0, i64::MAX) >= 4,
        "the looks kept the model busy:\n{}",
        stderr.join("\n")
    );
}

/// Alerts spoken aloud: `voice.announce_alerts = "warning"` says each raise of a rule at or above
/// that severity through the voice output, and nothing for a rule below it. The rules' `when`
/// holds for every answer the schema allows, so the first alert look raises both (raise_after =
/// 1) whatever the tiny model answers.
#[test]
fn a_raised_alert_is_announced_through_the_voice_output() {
    let s = setup("gemba_voice_mic", true, "announce_alerts = \"warning\"");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    for (name, severity) in [("fence-open", "critical"), ("belt-idle", "info")] {
        text.push_str(&format!(
            "\n[[cameras.alerts]]\nname = \"{name}\"\nquestion = \"Is the fence open?\"\n\
             schema = {{ type = \"object\", properties = {{ seen = {{ enum = [\"a\", \"b\"] }} }}, required = [\"seen\"] }}\n\
             when = 'seen == \"a\" or seen == \"b\"'\nraise_after = 1\nseverity = \"{severity}\"\n"
        ));
    }
    std::fs::write(&s.config, text).unwrap();
    let feeder = Feeder::start(&s.fifo);
    let mut d = Daemon::start(&s, 0);
    let line = d.wait_for("voice: announcing", Duration::from_secs(120));
    assert!(
        line.contains("\"Critical alert on press-2: fence open.\""),
        "{line}"
    );
    // Both rules were raised on that look; only the critical one was said.
    let raised = wait_reports(&s.store(), "alert:belt-idle", 1, Duration::from_secs(60));
    assert_eq!(raised.len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    drop(feeder);
    let seen = d.stop();
    let said: Vec<&String> = seen
        .iter()
        .filter(|l| l.contains("voice: announcing"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    // Nobody asked anything: what the WAV holds is the announcement.
    let (rate, played) = gemba::voice::output::read_wav(&s.spoken()).unwrap();
    let secs = played.len() as f64 / rate as f64;
    assert!(secs > 0.8, "played {secs:.2} s");
    let rms = (played.iter().map(|x| x * x).sum::<f32>() / played.len() as f32).sqrt();
    assert!(rms > 0.02, "audible: rms {rms}");
}
