//! Real microphone capture through ALSA with no sound card: ALSA's `file` plugin reads a raw
//! file we generate as if it were a capture device (recipe: shared/notes/hardware.md). cpal
//! opens it by name with an explicit format; the clips must carry the file's samples exactly.
//!
//! ALSA reads its configuration once per process, so every test here shares one config file,
//! written before the first ALSA call.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use gemba::capture::mic::{list_input_devices, open_microphone, MicConfig, MicError, SampleFormat};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    /// s16le, 16 kHz, mono.
    mono_i16: Vec<i16>,
    /// f32le, 16 kHz, stereo, interleaved.
    stereo_f32: Vec<f32>,
}

/// A 440 Hz tone with deterministic noise on top, hitting both i16 extremes: every bit of
/// every sample matters, and a silent or repeated buffer cannot pass.
fn test_signal(n: usize) -> Vec<i16> {
    let mut state = 0x2545_f491_u32;
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let tone = (i as f64 * 440.0 * std::f64::consts::TAU / 16000.0).sin() * 20000.0;
            let noise = f64::from((state >> 16) as i16) / 4.0;
            match i {
                100 => i16::MIN,
                101 => i16::MAX,
                _ => (tone + noise).round().clamp(-32768.0, 32767.0) as i16,
            }
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mono_i16 = test_signal(16000 * 4);
        let mono_path = dir.path().join("mono_s16le_16k.raw");
        std::fs::write(
            &mono_path,
            mono_i16
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        // Stereo f32: left and right chosen so their mean is exact in f32.
        let stereo_f32: Vec<f32> = mono_i16
            .iter()
            .flat_map(|&s| [f32::from(s) / 32768.0, f32::from(s / 2) / 32768.0])
            .collect();
        let stereo_path = dir.path().join("stereo_f32le_16k.raw");
        std::fs::write(
            &stereo_path,
            stereo_f32
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let conf = dir.path().join("asound.conf");
        std::fs::write(&conf, alsa_config(&mono_path, &stereo_path)).unwrap();
        // Set before any ALSA call in this process (the OnceLock guards the race).
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
        Fixture {
            _dir: dir,
            mono_i16,
            stereo_f32,
        }
    })
}

fn alsa_config(mono: &std::path::Path, stereo: &std::path::Path) -> String {
    let pcm = |name: &str, file: &PathBuf, what: &str| {
        format!(
            "pcm.{name} {{\n    type file\n    slave.pcm \"null\"\n    file \"/dev/null\"\n    infile \"{}\"\n    \
             format \"raw\"\n    hint {{ show on; description \"{what}\" }}\n}}\n",
            file.display()
        )
    };
    format!(
        "</usr/share/alsa/alsa.conf>\n{}{}pcm.!default {{ type asym; playback.pcm \"null\"; capture.pcm \"gemba_mic\" }}\n",
        pcm("gemba_mic", &mono.to_path_buf(), "gemba test mic s16 mono"),
        pcm("gemba_mic_f32", &stereo.to_path_buf(), "gemba test mic f32 stereo"),
    )
}

fn capture(device: &str, format: SampleFormat, channels: u16, want: usize) -> (Vec<f32>, u64) {
    let config = MicConfig {
        name: "floor-mic".into(),
        device: device.into(),
        format,
        sample_rate: 16000,
        channels,
        chunk: Duration::from_millis(100),
    };
    // The file plugin runs faster than real time: a deep channel so the first chunks all fit.
    let (tx, mut rx) = mpsc::channel(256);
    let cancel = CancellationToken::new();
    let mic = open_microphone(&config, tx, cancel.clone())
        .unwrap_or_else(|e| panic!("open {device}: {e}"));
    let mut got = Vec::new();
    while got.len() < want {
        let clip = rx.blocking_recv().expect("the microphone stopped early");
        assert_eq!(
            (clip.source.as_str(), clip.sample_rate),
            ("floor-mic", 16000)
        );
        assert_eq!(clip.samples.len(), 1600, "100 ms chunks at 16 kHz");
        got.extend_from_slice(&clip.samples);
    }
    cancel.cancel();
    // After the stop signal the callback closes its end of the channel.
    let closed = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    let stats = mic.stats();
    let overruns = stats.overruns;
    assert!(stats.samples >= want as u64, "{stats:?}");
    mic.stop();
    closed.join().unwrap();
    (got, overruns)
}

#[test]
fn captures_the_files_samples_bit_exactly() {
    let fx = fixture();
    let n = 16000 * 2; // two seconds, well inside the four-second file
    let (got, _) = capture("gemba_mic", SampleFormat::I16, 1, n);
    for (i, (g, want)) in got.iter().zip(&fx.mono_i16).take(n).enumerate() {
        let back = g * 32768.0;
        assert!(
            back == f32::from(*want),
            "sample {i}: got {back}, file has {want}"
        );
    }
}

#[test]
fn captures_stereo_f32_and_downmixes_exactly() {
    let fx = fixture();
    let n = 16000;
    let (got, _) = capture("gemba_mic_f32", SampleFormat::F32, 2, n);
    for (i, g) in got.iter().take(n).enumerate() {
        let (l, r) = (fx.stereo_f32[2 * i], fx.stereo_f32[2 * i + 1]);
        assert_eq!(*g, (l + r) * 0.5, "frame {i}");
    }
}

#[test]
fn a_missing_device_is_a_clear_error() {
    fixture();
    let config = MicConfig {
        name: "floor-mic".into(),
        device: "no-such-mic".into(),
        format: SampleFormat::I16,
        sample_rate: 16000,
        channels: 1,
        chunk: Duration::from_millis(100),
    };
    let (tx, _rx) = mpsc::channel(4);
    let err = open_microphone(&config, tx, CancellationToken::new())
        .err()
        .expect("opened a device that does not exist");
    assert!(
        matches!(&err, MicError::NoDevice { device, .. } if device == "no-such-mic"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("no audio input device named \"no-such-mic\"; available inputs: "),
        "{text}"
    );
    assert!(
        text.contains("gemba_mic"),
        "the error lists the inputs there are: {text}"
    );
    assert!(
        list_input_devices()
            .iter()
            .any(|d| d.starts_with("gemba_mic ")),
        "{:?}",
        list_input_devices()
    );
}

#[test]
fn invalid_settings_are_refused_before_opening() {
    fixture();
    let config = MicConfig {
        name: "floor-mic".into(),
        device: "gemba_mic".into(),
        format: SampleFormat::I16,
        sample_rate: 16000,
        channels: 0,
        chunk: Duration::from_millis(100),
    };
    let (tx, _rx) = mpsc::channel(4);
    let err = open_microphone(&config, tx, CancellationToken::new())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "microphone floor-mic: channels must be at least 1"
    );
}
