//! Voice activity detection with the real Silero model through gemba's ONNX Runtime, on
//! synthetic recordings whose truth is known: espeak-ng questions placed at known offsets in
//! silence and in factory noise (mains hum and its harmonics + broadband noise). The utterance
//! boundaries the listener reports must be within 100 ms of where the speech really is.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gemba::capture::AudioClip;
use gemba::voice::listen::{Heard, ListenConfig, Listener, TriggerMode};
use gemba::voice::resample::Resampler;
use gemba::voice::segment::SegmentConfig;
use gemba::voice::tts::{Espeak, Synthesizer};
use gemba::voice::vad::{resolve_model, SileroVad, SpeechDetector};

const RATE: u32 = 16_000;

fn speech(text: &str, voice: &str) -> Vec<f32> {
    let mut e = Espeak::new(voice, 160).expect("espeak-ng (scripts/setup installs it)");
    let mut raw = Vec::new();
    e.synthesize(text, &std::sync::atomic::AtomicBool::new(false), &mut |s| {
        raw.extend_from_slice(s)
    })
    .unwrap();
    Resampler::convert(e.sample_rate(), RATE, &raw)
}

/// Where the voiced part of a clean clip is: first and last sample above -34 dBFS.
fn voiced(x: &[f32]) -> (usize, usize) {
    let first = x.iter().position(|s| s.abs() > 0.02).unwrap();
    let last = x.iter().rposition(|s| s.abs() > 0.02).unwrap();
    (first, last + 1)
}

/// Hum at 50 Hz with harmonics plus white noise (xorshift), at `level` RMS-ish.
fn factory_noise(n: usize, level: f32, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let white = (x % 20_001) as f32 / 10_000.0 - 1.0;
            let t = i as f32 / RATE as f32;
            let hum: f32 = [(50.0, 1.0), (100.0, 0.6), (150.0, 0.4), (300.0, 0.2)]
                .iter()
                .map(|(f, a)| a * (t * f * std::f32::consts::TAU).sin())
                .sum::<f32>()
                / 2.2;
            level * (0.6 * hum + 0.8 * white)
        })
        .collect()
}

struct Truth {
    start: usize,
    end: usize,
}

/// Silence/noise with the questions at the given offsets (seconds); returns the mix and truth.
fn recording(
    questions: &[(&str, &str, f32)],
    total_s: f32,
    noise: Option<f32>,
) -> (Vec<f32>, Vec<Truth>) {
    let n = (total_s * RATE as f32) as usize;
    let mut mix = match noise {
        Some(level) => factory_noise(n, level, 42),
        None => vec![0.0; n],
    };
    let mut truth = Vec::new();
    for (text, voice, at) in questions {
        let s = speech(text, voice);
        let off = (*at * RATE as f32) as usize;
        let (a, b) = voiced(&s);
        for (i, v) in s.iter().enumerate() {
            mix[off + i] += v;
        }
        truth.push(Truth {
            start: off + a,
            end: off + b,
        });
    }
    (mix, truth)
}

fn detect(mix: &[f32]) -> Vec<(u64, u64)> {
    let rt = gemba::model::runtime::init(None).expect("ONNX Runtime (scripts/setup)");
    let vad = SileroVad::load(rt, &resolve_model(None).unwrap()).unwrap();
    let config = ListenConfig {
        mode: TriggerMode::Vad,
        segment: SegmentConfig {
            end_silence: Duration::from_millis(500),
            ..SegmentConfig::default()
        },
        pre_roll: Duration::from_millis(300),
        source: "test".into(),
    };
    let mut l = Listener::new(config, Some(Box::new(vad) as Box<dyn SpeechDetector>));
    let mut heard = Vec::new();
    for c in mix.chunks(512) {
        let clip = AudioClip {
            source: "t".into(),
            started_at: SystemTime::UNIX_EPOCH,
            sample_rate: RATE,
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

fn check(name: &str, found: &[(u64, u64)], truth: &[Truth]) {
    let ms = |s: i64| s as f64 / 16.0;
    assert_eq!(
        found.len(),
        truth.len(),
        "{name}: found {found:?}, truth {:?}",
        truth.iter().map(|t| (t.start, t.end)).collect::<Vec<_>>()
    );
    for (i, ((s, e), t)) in found.iter().zip(truth).enumerate() {
        let ds = ms(*s as i64 - t.start as i64);
        let de = ms(*e as i64 - t.end as i64);
        eprintln!("{name} #{i}: start {ds:+.0} ms, end {de:+.0} ms");
        assert!(ds.abs() <= 100.0, "{name} #{i}: start off by {ds:.0} ms");
        assert!(de.abs() <= 100.0, "{name} #{i}: end off by {de:.0} ms");
    }
}

#[test]
fn boundaries_in_silence_are_within_100_ms() {
    let (mix, truth) = recording(
        &[
            ("What colour is the lamp?", "en-us", 1.0),
            ("How many boxes are on the belt?", "en-gb", 5.0),
        ],
        9.0,
        None,
    );
    check("silence", &detect(&mix), &truth);
}

#[test]
fn boundaries_in_factory_noise_are_within_100_ms() {
    let (mix, truth) = recording(
        &[
            ("Is the pressure normal?", "en-us", 1.5),
            ("Give me a status report.", "en-gb-x-rp", 5.5),
        ],
        9.5,
        Some(0.03),
    );
    check("noise", &detect(&mix), &truth);
}

#[test]
fn noise_alone_is_not_speech() {
    let mix = factory_noise(RATE as usize * 8, 0.05, 7);
    assert_eq!(
        detect(&mix),
        vec![],
        "factory noise alone made an utterance"
    );
}
