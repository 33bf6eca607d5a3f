//! `gemba ask --speak-to FILE.wav` and `gemba ask --speak` (the default sound output, here ALSA's
//! `file` plugin writing raw samples): the answer is spoken sentence by sentence, and what reached
//! the sound device is exactly what was written to the WAV file.

mod common;

use common::*;

fn ask(extra: &[&str], env: Option<(&str, &std::path::Path)>) -> std::process::Output {
    let mut cmd = gemba();
    cmd.args(["ask", "--model"])
        .arg(root().join("models/tiny-qwen2/fp32"))
        .args(extra)
        .arg("What is the pressure on press 1?");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    run_ok(cmd)
}

#[test]
fn the_answer_is_spoken_to_a_wav_file_and_to_the_sound_device() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("answer.wav");
    let out = ask(&["--speak-to", wav.to_str().unwrap()], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "The pressure on press 1 is 8.4 bar.\nThat is above the limit of 8.0 bar.\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[spoken: 2 sentence(s), "), "{stderr}");
    let mut r = hound::WavReader::open(&wav).unwrap();
    assert_eq!(
        (
            r.spec().channels,
            r.spec().sample_rate,
            r.spec().bits_per_sample
        ),
        (1, 22_050, 16)
    );
    let file: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let secs = file.len() as f64 / 22_050.0;
    assert!(
        (3.0..10.0).contains(&secs),
        "{secs} s of speech for two sentences"
    );

    // The same answer through cpal to ALSA's default output, a file plugin writing raw s16le.
    let raw = dir.path().join("device.raw");
    let conf = dir.path().join("asound.conf");
    std::fs::write(
        &conf,
        format!("</usr/share/alsa/alsa.conf>\npcm.!default {{\n type file\n slave.pcm \"null\"\n file \"{}\"\n format \"raw\"\n}}\n", raw.display()),
    )
    .unwrap();
    let out = ask(&["--speak"], Some(("ALSA_CONFIG_PATH", &conf)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to default;"));
    let bytes = std::fs::read(&raw).unwrap();
    let played: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    // The device ran dry between sentences (this ALSA sink takes samples faster than real
    // time) and played silence there; apart from silence it got exactly the file's samples.
    let sound = |x: &[i16]| x.iter().copied().filter(|s| *s != 0).collect::<Vec<i16>>();
    let (want, got) = (sound(&file), sound(&played));
    assert!(want.len() > 22_050, "{} non-silent samples", want.len());
    assert!(
        got.len() >= want.len(),
        "the device got {} non-silent samples, the file has {}",
        got.len(),
        want.len()
    );
    let same = got[..want.len()] == want[..];
    assert!(
        same,
        "the device played other samples than the file holds (first difference at {:?})",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
}
