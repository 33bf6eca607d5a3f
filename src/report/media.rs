//! Encoding segment media in memory before it is written: camera frames → JPEG, audio clips →
//! 16-bit mono WAV. Encoding happens outside the store's lock; only the finished bytes are written.

use std::io::Cursor;
use std::time::Duration;

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;
use sha2::{Digest, Sha256};

use super::{ReportError, ReportId};
use crate::capture::{AudioClip, Frame};

/// Quality 85: text on control panels and gauge needles stay legible at a third of the size of
/// quality 95; below ~75 block artefacts blur the small print inspectors zoom into.
pub const JPEG_QUALITY: u8 = 85;

/// JPEG's own limit on each side.
const MAX_SIDE: u32 = 65_535;

pub fn encode_jpeg(id: &ReportId, index: u32, frame: &Frame) -> Result<Vec<u8>, ReportError> {
    let bad = |why: String| ReportError::BadFrame {
        id: id.clone(),
        camera: frame.camera.clone(),
        why,
    };
    if frame.width == 0 || frame.height == 0 || frame.width > MAX_SIDE || frame.height > MAX_SIDE {
        return Err(bad(format!(
            "size {}x{} (each side must be 1..={MAX_SIDE})",
            frame.width, frame.height
        )));
    }
    let expected = frame.width as usize * frame.height as usize * 3;
    if frame.rgb.len() != expected {
        return Err(bad(format!(
            "{} bytes of RGB for {}x{} (expected {expected})",
            frame.rgb.len(),
            frame.width,
            frame.height
        )));
    }
    let mut out = Vec::with_capacity(expected / 8);
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode(
            &frame.rgb,
            frame.width,
            frame.height,
            ExtendedColorType::Rgb8,
        )
        .map_err(|source| ReportError::Jpeg {
            id: id.clone(),
            index,
            source,
        })?;
    Ok(out)
}

/// Highest sample rate accepted; anything above is a unit mix-up, not audio.
const MAX_RATE: u32 = 384_000;

/// 16-bit PCM: every browser plays it, and it is half the size of float samples with no audible
/// difference for speech and machine sounds. Samples outside [-1, 1] are clipped, NaN is silence.
pub fn encode_wav(id: &ReportId, index: u32, clip: &AudioClip) -> Result<Vec<u8>, ReportError> {
    if clip.sample_rate == 0 || clip.sample_rate > MAX_RATE {
        return Err(ReportError::BadAudio {
            id: id.clone(),
            clip_source: clip.source.clone(),
            why: format!(
                "sample rate {} Hz (must be 1..={MAX_RATE})",
                clip.sample_rate
            ),
        });
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: clip.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let wav_err = |source| ReportError::Wav {
        id: id.clone(),
        index,
        source,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + clip.samples.len() * 2));
    let mut w = hound::WavWriter::new(&mut out, spec).map_err(wav_err)?;
    {
        let mut w16 = w.get_i16_writer(clip.samples.len() as u32);
        for &s in clip.samples.iter() {
            let s = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
            w16.write_sample((s * i16::MAX as f32).round() as i16);
        }
        w16.flush().map_err(wav_err)?;
    }
    w.finalize().map_err(wav_err)?;
    Ok(out.into_inner())
}

/// How long `samples` last at `rate` Hz, exactly (no float rounding).
pub fn samples_duration(samples: u64, rate: u32) -> Duration {
    Duration::from_nanos((samples as u128 * 1_000_000_000 / rate.max(1) as u128) as u64)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;

    fn id() -> ReportId {
        ReportId::parse("20261124T101530Z-3f2a").unwrap()
    }

    fn frame(w: u32, h: u32, len: usize) -> Frame {
        Frame {
            camera: "belt".into(),
            seq: 1,
            captured_at: SystemTime::UNIX_EPOCH,
            width: w,
            height: h,
            rgb: Arc::new((0..len).map(|i| (i * 7 % 251) as u8).collect()),
        }
    }

    #[test]
    fn jpeg_round_trips_dimensions() {
        let bytes = encode_jpeg(&id(), 0, &frame(32, 24, 32 * 24 * 3)).unwrap();
        assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "JPEG SOI marker");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (32, 24));
    }

    #[test]
    fn bad_frames_are_named() {
        for (f, want) in [
            (
                frame(32, 24, 10),
                "10 bytes of RGB for 32x24 (expected 2304)",
            ),
            (frame(0, 24, 0), "size 0x24 (each side must be 1..=65535)"),
        ] {
            match encode_jpeg(&id(), 3, &f) {
                Err(ReportError::BadFrame { camera, why, .. }) => {
                    assert_eq!((camera.as_str(), why.as_str()), ("belt", want))
                }
                other => panic!("expected BadFrame, got {other:?}"),
            }
        }
    }

    #[test]
    fn wav_is_16_bit_mono_and_clipped() {
        let clip = AudioClip {
            source: "mic".into(),
            started_at: SystemTime::UNIX_EPOCH,
            sample_rate: 16_000,
            samples: Arc::new(vec![0.0, 0.5, -1.0, 2.0, f32::NAN]),
        };
        let bytes = encode_wav(&id(), 1, &clip).unwrap();
        let mut r = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(
            (
                r.spec().channels,
                r.spec().sample_rate,
                r.spec().bits_per_sample
            ),
            (1, 16_000, 16)
        );
        let got: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(got, vec![0, 16384, -32767, 32767, 0]);
        assert_eq!(samples_duration(5, 16_000), Duration::from_nanos(312_500));
    }

    #[test]
    fn zero_rate_is_rejected() {
        let clip = AudioClip {
            source: "mic".into(),
            started_at: SystemTime::UNIX_EPOCH,
            sample_rate: 0,
            samples: Arc::new(vec![]),
        };
        assert!(matches!(
            encode_wav(&id(), 1, &clip),
            Err(ReportError::BadAudio { .. })
        ));
    }
}
