//! espeak-ng through its command (`espeak-ng --stdout`), one process per sentence.
//!
//! Why the command and not libespeak-ng: the library keeps process-global state (one
//! `espeak_Initialize` per process, one synthesis at a time, not thread-safe), there is no
//! well-kept Rust binding, and linking it would add a `-dev` package to every board build. The
//! command is what `scripts/setup` installs anyway, a crash in it cannot take the daemon down, and
//! its cost — one spawn, ~10–40 ms before the first samples — is measured by `gemba bench voice`.
//! It streams: `--stdout` writes a WAV header with a placeholder length and then the samples as
//! they are synthesized, so the first words play while the rest of the sentence is made.
//!
//! The text goes in on stdin (never as an argument, so a sentence starting with `-` is text).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Synthesizer, TtsError};

pub struct Espeak {
    program: String,
    voice: String,
    speed: u32,
    rate: u32,
}

/// The fields of a canonical 44-byte WAV header gemba needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavHeader {
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
}

/// Parses the 44-byte header espeak-ng writes (PCM `fmt ` chunk followed by `data`).
pub fn parse_header(h: &[u8]) -> Result<WavHeader, String> {
    if h.len() < 44
        || &h[0..4] != b"RIFF"
        || &h[8..12] != b"WAVE"
        || &h[12..16] != b"fmt "
        || &h[36..40] != b"data"
    {
        return Err(format!(
            "not the expected 44-byte WAV header: {:02x?}",
            &h[..h.len().min(44)]
        ));
    }
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let header = WavHeader {
        channels: u16_at(22),
        rate: u32_at(24),
        bits: u16_at(34),
    };
    if u16_at(20) != 1 || header.bits != 16 || header.channels == 0 || header.rate == 0 {
        return Err(format!(
            "unsupported WAV format {header:?} (format tag {}); expected 16-bit PCM",
            u16_at(20)
        ));
    }
    Ok(header)
}

impl Espeak {
    /// Checks the command runs and learns its output rate.
    pub fn new(voice: &str, speed: u32) -> Result<Espeak, TtsError> {
        let program = std::env::var("GEMBA_ESPEAK").unwrap_or_else(|_| "espeak-ng".into());
        let mut e = Espeak {
            program,
            voice: voice.into(),
            speed,
            rate: 0,
        };
        // espeak-ng falls back to its default voice without a word: check the name ourselves.
        let list = Command::new(&e.program)
            .arg("--voices")
            .output()
            .map_err(|err| e.err(format!("cannot run it: {err}")))?;
        let list = String::from_utf8_lossy(&list.stdout);
        let base = voice.split('+').next().unwrap_or(voice);
        if !known_voice(&list, base) {
            return Err(e.err(format!("no voice {base:?} (see `espeak-ng --voices`)")));
        }
        // Synthesize a pause to read the header.
        let mut rate = 0;
        e.run(
            ".",
            &AtomicBool::new(false),
            &mut |h| rate = h.rate,
            &mut |_| {},
        )?;
        e.rate = rate;
        Ok(e)
    }

    fn err(&self, reason: impl Into<String>) -> TtsError {
        TtsError::Espeak {
            program: self.program.clone(),
            reason: reason.into(),
        }
    }

    fn run(
        &self,
        text: &str,
        cancel: &AtomicBool,
        on_header: &mut dyn FnMut(WavHeader),
        out: &mut dyn FnMut(&[f32]),
    ) -> Result<(), TtsError> {
        let mut child = Command::new(&self.program)
            .args(["--stdout", "-v", &self.voice, "-s", &self.speed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.err(format!("cannot run it: {e}")))?;
        {
            let mut stdin = child.stdin.take().expect("piped");
            // A closed pipe means espeak-ng already failed; its status says why.
            let _ = stdin.write_all(text.as_bytes());
        }
        let mut stdout = child.stdout.take().expect("piped");
        let mut header = [0u8; 44];
        let got_header = stdout.read_exact(&mut header).is_ok();
        let mut result = Ok(());
        if got_header {
            match parse_header(&header) {
                Ok(h) => {
                    on_header(h);
                    let ch = usize::from(h.channels);
                    let mut buf = vec![0u8; 4096 * ch];
                    let mut carry: Vec<u8> = Vec::new();
                    let mut mono = Vec::new();
                    loop {
                        if cancel.load(Ordering::Relaxed) {
                            let _ = child.kill();
                            break;
                        }
                        let n = match stdout.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) => {
                                result = Err(self.err(format!("reading its output: {e}")));
                                break;
                            }
                        };
                        carry.extend_from_slice(&buf[..n]);
                        let whole = carry.len() / (2 * ch) * (2 * ch);
                        mono.clear();
                        mono.extend(carry[..whole].chunks_exact(2 * ch).map(|f| {
                            f.chunks_exact(2)
                                .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                                .sum::<f32>()
                                / ch as f32
                        }));
                        carry.drain(..whole);
                        if !mono.is_empty() {
                            out(&mono);
                        }
                    }
                }
                Err(e) => result = Err(self.err(e)),
            }
        }
        let mut stderr = String::new();
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut stderr);
        }
        let status = child.wait().map_err(|e| self.err(e.to_string()))?;
        if cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !status.success() || !got_header {
            let why = stderr.trim();
            return Err(self.err(format!(
                "voice {:?}: {}{}",
                self.voice,
                if status.success() {
                    "no WAV output".to_string()
                } else {
                    format!("exited with {status}")
                },
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            )));
        }
        result
    }
}

/// Whether `espeak-ng --voices` lists `name` as a language, a voice name or a voice file.
fn known_voice(list: &str, name: &str) -> bool {
    list.lines().skip(1).any(|line| {
        line.split_whitespace().any(|tok| {
            let tok = tok.trim_start_matches('(');
            tok == name || tok.rsplit('/').next() == Some(name) || tok.eq_ignore_ascii_case(name)
        })
    })
}

impl Synthesizer for Espeak {
    fn name(&self) -> String {
        format!("espeak-ng:{}", self.voice)
    }

    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn synthesize(
        &mut self,
        text: &str,
        cancel: &AtomicBool,
        out: &mut dyn FnMut(&[f32]),
    ) -> Result<(), TtsError> {
        let rate = self.rate;
        let mut seen = 0;
        self.run(text, cancel, &mut |h| seen = h.rate, out)?;
        if seen != rate {
            return Err(self.err(format!("its output rate changed from {rate} to {seen} Hz")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        // What espeak-ng 1.51 writes: lengths are placeholders (0x7ffff0..).
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF\x24\xf0\xff\x7fWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00");
        h.extend_from_slice(&22050u32.to_le_bytes());
        h.extend_from_slice(&44100u32.to_le_bytes());
        h.extend_from_slice(b"\x02\x00\x10\x00data\x00\xf0\xff\x7f");
        assert_eq!(
            parse_header(&h),
            Ok(WavHeader {
                channels: 1,
                rate: 22050,
                bits: 16
            })
        );
        let mut float = h.clone();
        float[20] = 3;
        assert!(parse_header(&float).unwrap_err().contains("format tag 3"));
        assert!(parse_header(b"RIFF").is_err());
    }

    #[test]
    fn speaks_a_sentence_in_pieces_and_stops_when_cancelled() {
        let mut e = Espeak::new("en-us", 175).unwrap();
        assert_eq!(e.sample_rate(), 22050);
        let mut pieces = 0;
        let mut samples = Vec::new();
        e.synthesize(
            "The lamp is amber. Check the press before the next cycle.",
            &AtomicBool::new(false),
            &mut |s| {
                pieces += 1;
                samples.extend_from_slice(s);
            },
        )
        .unwrap();
        let secs = samples.len() as f32 / 22050.0;
        assert!((1.5..8.0).contains(&secs), "{secs} s of speech");
        assert!(pieces > 1, "streamed in pieces");
        let rms = (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt();
        assert!(rms > 0.01, "audible: rms {rms}");
        let cancel = AtomicBool::new(true);
        let mut after_cancel = 0;
        e.synthesize("This is never heard.", &cancel, &mut |s| {
            after_cancel += s.len()
        })
        .unwrap();
        assert_eq!(after_cancel, 0);
    }

    #[test]
    fn a_missing_program_or_voice_is_a_clear_error() {
        let e = Espeak::new("no-such-voice-xx", 175)
            .err()
            .expect("unknown voice accepted");
        assert!(e.to_string().contains("no-such-voice-xx"), "{e}");
    }
}
