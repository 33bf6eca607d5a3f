//! phi4mm audio pre-processing: PCM at any rate and channel count → `audio_embeds`
//! `[frames, 80]` log-mel features, `audio_attention_mask`, `audio_sizes`, as onnxruntime-extensions'
//! `AudioDecoderEx` + `Phi4AudioEmbed` produce them for ORT-GenAI.
//!
//! The steps, per clip:
//! 1. **Decode** WAV ([`decode_wav`], via `hound`) to `f32` with dr_wav's scaling (`s16 / 32768`,
//!    …), and mix to mono (the two-channel average the reference computes; for more channels the
//!    mean of all).
//! 2. **Resample** ([`downsample`]) to the highest model rate not above the input's (16 kHz, or
//!    8 kHz for inputs below 16 kHz) with the reference's own resampler: a 4-pole Butterworth
//!    low-pass at half the target rate, then windowed-sinc interpolation (Kaiser β = 6). Using
//!    the reference's filter rather than a general-purpose resampler is what keeps the log-mel
//!    features within 1e-3: a different anti-alias filter changes the high bins by far more.
//!    Inputs below 8 kHz are refused (the reference only downsamples). The clip is cut at
//!    `max_samples` (30 s at 16 kHz by default), as the reference does.
//! 3. **Frames** of 400 samples every 160 (200 / 80 at 8 kHz); pre-emphasis 0.97 inside each
//!    frame (its first sample is its own predecessor), ×32768, Hamming window (all in `f32` as
//!    the reference), zero-padded FFT (512 / 256) and power spectrum in `f64`. The reference's
//!    FFT is `f32`; its rounding, not ours, dominates the remaining difference (≈ 5e-4 in quiet
//!    bands), so the more accurate transform is the one kept.
//! 4. **Mel**: 80 SpeechLib triangles in Mel space up to 7689 Hz over the 16 kHz 512-point grid
//!    (at 8 kHz the bins above 4 kHz are zero), `ln(max(x, 1))`.
//! 5. `audio_sizes = ceil(frames / 8)`: the clip's token count in the prompt.
//!
//! In: WAV bytes/files or interleaved `f32` PCM. Out: [`AudioInput`] per clip, [`AudioBatch`]
//! for a prompt.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Highest input rate accepted; above it the reference's O(rate) interpolation window grows
/// without bound and no real recording needs it.
pub const MAX_SAMPLE_RATE: u32 = 384_000;
/// Most channels accepted (the reference's own decoder refuses more than 16).
pub const MAX_CHANNELS: u16 = 16;

/// Errors of audio decoding and pre-processing; each names the clip it is about.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("reading audio {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("audio {input}: not a readable WAV file: {detail}")]
    Decode { input: String, detail: String },
    #[error("audio {input}: {detail}")]
    Unsupported { input: String, detail: String },
    #[error("audio {input}: {channels} channels (expected 1 to {MAX_CHANNELS})")]
    Channels { input: String, channels: u16 },
    #[error(
        "audio {input}: sample rate {rate} Hz is not supported (expected {min} to {MAX_SAMPLE_RATE} Hz; \
         the model's rates are {rates:?})"
    )]
    SampleRate {
        input: String,
        rate: u32,
        min: u32,
        rates: Vec<u32>,
    },
    #[error("audio {input}: no samples")]
    Empty { input: String },
    #[error(
        "audio {input}: {samples} samples at {rate} Hz is shorter than one {frame}-sample analysis frame"
    )]
    TooShort {
        input: String,
        samples: usize,
        rate: u32,
        frame: usize,
    },
    #[error("audio {input}: {len} interleaved samples is not a whole number of {channels}-channel frames")]
    Interleave {
        input: String,
        len: usize,
        channels: u16,
    },
}

/// Short-time Fourier transform parameters for one model rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StftSettings {
    pub n_fft: usize,
    pub frame_length: usize,
    pub hop_length: usize,
}

/// Audio pre-processing parameters (from the bundle's `speech_processor.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechSettings {
    /// Model rates, ascending (`target_sample_rates`, [8000, 16000]).
    pub target_rates: Vec<u32>,
    /// Mix multi-channel input to mono (the reference's default).
    pub stereo_to_mono: bool,
    /// Samples kept after resampling; 0 keeps all (`max_samples`, default 480000).
    pub max_samples: usize,
    /// Frames per audio token (`audio_compression_rate`, 8).
    pub compression_rate: usize,
    /// STFT at 16 kHz (`stft_normal/*`).
    pub stft: StftSettings,
    /// STFT at 8 kHz (`stft_normal_8k/*`).
    pub stft_8k: StftSettings,
    /// Mel bins (`logmel/n_mel`, 80).
    pub n_mel: usize,
    /// FFT size the Mel filterbank is laid on, at 16 kHz (`logmel/n_fft`, 512).
    pub mel_n_fft: usize,
}

impl Default for SpeechSettings {
    fn default() -> Self {
        SpeechSettings {
            target_rates: vec![8000, 16000],
            stereo_to_mono: true,
            max_samples: 480_000,
            compression_rate: 8,
            stft: StftSettings {
                n_fft: 512,
                frame_length: 400,
                hop_length: 160,
            },
            stft_8k: StftSettings {
                n_fft: 256,
                frame_length: 200,
                hop_length: 80,
            },
            n_mel: 80,
            mel_n_fft: 512,
        }
    }
}

/// Decoded audio: interleaved `f32` samples in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: u16,
}

/// Read and decode a WAV file.
pub fn load_wav(path: &Path) -> Result<Pcm, SpeechError> {
    load_wav_within(path, &|_| None)
}

/// Read and decode a WAV file as a stream, keeping at most `max_frames(sample_rate)` frames
/// (`None`: all): a clip far longer than the model hears costs no more memory than the part it
/// hears ([`SpeechProcessor::max_input_frames`]).
pub fn load_wav_within(
    path: &Path,
    max_frames: &dyn Fn(u32) -> Option<usize>,
) -> Result<Pcm, SpeechError> {
    let read_err = |err| SpeechError::Read {
        path: path.to_owned(),
        err,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let input = path.display().to_string();
    if file.metadata().map_err(read_err)?.len() == 0 {
        return Err(SpeechError::Decode {
            input,
            detail: "the file is empty".into(),
        });
    }
    decode_wav_from(std::io::BufReader::new(file), &input, max_frames)
}

/// Decode WAV bytes (PCM 8/16/24/32-bit or 32-bit float) to `f32` with dr_wav's scaling.
pub fn decode_wav(bytes: &[u8], input: &str) -> Result<Pcm, SpeechError> {
    decode_wav_within(bytes, input, &|_| None)
}

/// [`decode_wav`] keeping at most `max_frames(sample_rate)` frames (`None`: all).
pub fn decode_wav_within(
    bytes: &[u8],
    input: &str,
    max_frames: &dyn Fn(u32) -> Option<usize>,
) -> Result<Pcm, SpeechError> {
    if bytes.is_empty() {
        return Err(SpeechError::Decode {
            input: input.to_owned(),
            detail: "the file is empty".into(),
        });
    }
    decode_wav_from(std::io::Cursor::new(bytes), input, max_frames)
}

fn decode_wav_from<R: std::io::Read>(
    source: R,
    input: &str,
    max_frames: &dyn Fn(u32) -> Option<usize>,
) -> Result<Pcm, SpeechError> {
    let derr = |detail: String| SpeechError::Decode {
        input: input.to_owned(),
        detail,
    };
    let reader = hound::WavReader::new(source).map_err(|e| derr(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.channels > MAX_CHANNELS {
        return Err(SpeechError::Channels {
            input: input.to_owned(),
            channels: spec.channels,
        });
    }
    let declared = reader.len() as usize;
    // Samples kept: whole frames up to the caller's cap. The allocation follows what is kept,
    // never a length the header merely claims.
    let keep = max_frames(spec.sample_rate).map_or(declared, |f| {
        f.saturating_mul(usize::from(spec.channels)).min(declared)
    });
    let truncated = |e: hound::Error, read: usize| {
        let e = e.to_string();
        derr(format!(
            "{}: read {read} of {declared} samples, the data chunk is truncated",
            e.trim_end_matches('.')
        ))
    };
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            let mut out = Vec::with_capacity(keep);
            for s in reader.into_samples::<f32>().take(keep) {
                out.push(s.map_err(|e| truncated(e, out.len()))?);
            }
            out
        }
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let mut out = Vec::with_capacity(keep);
            for s in reader.into_samples::<i32>().take(keep) {
                let s = s.map_err(|e| truncated(e, out.len()))?;
                out.push(match bits {
                    // dr_wav: unsigned 8-bit, (u8 · 2/255) − 1.
                    8 => (s + 128) as f32 * (2.0f32 / 255.0) - 1.0,
                    16 => s as f32 * 0.000_030_517_578_f32,
                    24 => (f64::from(s) * 0.000_000_119_209_289_550_781_25) as f32,
                    _ => (f64::from(s) / 2_147_483_648.0) as f32,
                });
            }
            out
        }
        (format, bits) => {
            return Err(SpeechError::Unsupported {
                input: input.to_owned(),
                detail: format!("{bits}-bit {format:?} WAV samples are not supported"),
            })
        }
    };
    if samples.is_empty() {
        return Err(SpeechError::Empty {
            input: input.to_owned(),
        });
    }
    Ok(Pcm {
        samples,
        sample_rate: spec.sample_rate,
        channels: spec.channels,
    })
}

/// One clip's features.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInput {
    /// `[frames, n_mel]` log-mel features.
    pub features: Vec<f32>,
    pub frames: usize,
    pub n_mel: usize,
    /// Audio tokens this clip takes in the prompt (`ceil(frames / compression_rate)`).
    pub audio_size: i64,
    /// The model rate the clip was resampled to.
    pub model_rate: u32,
}

/// The clips of one prompt, zero-padded to the longest.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioBatch {
    /// `[clips, max_frames, n_mel]`.
    pub embeds: Vec<f32>,
    /// `[clips, max_frames]`, true for real frames.
    pub attention_mask: Vec<bool>,
    /// `[clips]`.
    pub sizes: Vec<i64>,
    pub clips: usize,
    pub max_frames: usize,
    pub n_mel: usize,
}

impl AudioBatch {
    pub fn stack(clips: &[AudioInput]) -> AudioBatch {
        let max_frames = clips.iter().map(|c| c.frames).max().unwrap_or(0);
        let n_mel = clips.first().map_or(0, |c| c.n_mel);
        let mut embeds = vec![0.0f32; clips.len() * max_frames * n_mel];
        let mut attention_mask = vec![false; clips.len() * max_frames];
        for (i, c) in clips.iter().enumerate() {
            embeds[i * max_frames * n_mel..][..c.features.len()].copy_from_slice(&c.features);
            attention_mask[i * max_frames..][..c.frames].fill(true);
        }
        AudioBatch {
            embeds,
            attention_mask,
            sizes: clips.iter().map(|c| c.audio_size).collect(),
            clips: clips.len(),
            max_frames,
            n_mel,
        }
    }
}

/// Turns PCM into features; holds the FFT plans, window and filterbank so repeated clips
/// (a microphone stream) reuse them.
pub struct SpeechProcessor {
    settings: SpeechSettings,
    fft_16k: Arc<dyn RealToComplex<f64>>,
    fft_8k: Arc<dyn RealToComplex<f64>>,
    window_16k: Vec<f32>,
    window_8k: Vec<f32>,
    /// Per Mel bin: first FFT bin and its weights.
    filterbank: Vec<(usize, Vec<f32>)>,
}

impl std::fmt::Debug for SpeechProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechProcessor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SpeechProcessor {
    pub fn new(settings: SpeechSettings) -> Self {
        let mut planner = RealFftPlanner::<f64>::new();
        SpeechProcessor {
            fft_16k: planner.plan_fft_forward(settings.stft.n_fft),
            fft_8k: planner.plan_fft_forward(settings.stft_8k.n_fft),
            window_16k: hamming(settings.stft.frame_length),
            window_8k: hamming(settings.stft_8k.frame_length),
            filterbank: speechlib_mel(settings.mel_n_fft, settings.n_mel, 16_000, 7689.0),
            settings,
        }
    }

    pub fn settings(&self) -> &SpeechSettings {
        &self.settings
    }

    /// Features of one clip of interleaved PCM.
    pub fn process(&self, pcm: &Pcm, input: &str) -> Result<AudioInput, SpeechError> {
        let (mono, rate) = self.to_model_rate(pcm, input)?;
        self.features(&mono, rate, input)
    }

    /// The model rate a clip at `rate` Hz is resampled to: the highest not above it.
    fn target_rate(&self, rate: u32) -> u32 {
        let rates = &self.settings.target_rates;
        let min = rates.first().copied().unwrap_or(1);
        rates
            .iter()
            .copied()
            .filter(|&r| r <= rate)
            .max()
            .unwrap_or(min)
    }

    /// Input frames at `rate` Hz that decide the first `max_samples` resampled samples (`None`
    /// when `max_samples` is 0, i.e. everything is kept): the span they cover plus the
    /// interpolation window's reach past it. Cutting the input there before resampling gives
    /// exactly the samples the cut after resampling would (the low-pass is causal and each
    /// output sample looks `±ceil(3 · rate / target)` inputs around its position), at a cost
    /// bounded by the model's window instead of the clip's length.
    pub fn max_input_frames(&self, rate: u32) -> Option<usize> {
        let max = self.settings.max_samples;
        if max == 0 || rate == 0 {
            return None;
        }
        let target = self.target_rate(rate).max(1);
        let span = (max as u64 * u64::from(rate)).div_ceil(u64::from(target));
        let reach = u64::from(rate.div_ceil(target)) * 3 + 16;
        Some((span + reach) as usize)
    }

    /// Mix to mono, resample to the model rate, cut at `max_samples` (the input is cut first,
    /// at [`Self::max_input_frames`], so only what the model hears is mixed and resampled).
    pub fn to_model_rate(&self, pcm: &Pcm, input: &str) -> Result<(Vec<f32>, u32), SpeechError> {
        let rates = &self.settings.target_rates;
        let min = rates.first().copied().unwrap_or(1);
        if pcm.sample_rate < min || pcm.sample_rate > MAX_SAMPLE_RATE {
            return Err(SpeechError::SampleRate {
                input: input.to_owned(),
                rate: pcm.sample_rate,
                min,
                rates: rates.clone(),
            });
        }
        if pcm.channels == 0 || pcm.channels > MAX_CHANNELS {
            return Err(SpeechError::Channels {
                input: input.to_owned(),
                channels: pcm.channels,
            });
        }
        let ch = usize::from(pcm.channels);
        if pcm.samples.len() % ch != 0 {
            return Err(SpeechError::Interleave {
                input: input.to_owned(),
                len: pcm.samples.len(),
                channels: pcm.channels,
            });
        }
        if pcm.samples.is_empty() {
            return Err(SpeechError::Empty {
                input: input.to_owned(),
            });
        }
        let heard = match self.max_input_frames(pcm.sample_rate) {
            Some(frames) => &pcm.samples[..pcm.samples.len().min(frames.saturating_mul(ch))],
            None => &pcm.samples[..],
        };
        let mono: Vec<f32> = match ch {
            1 => heard.to_vec(),
            _ if !self.settings.stereo_to_mono => heard.to_vec(),
            2 => heard.chunks_exact(2).map(|p| (p[0] + p[1]) / 2.0).collect(),
            _ => heard
                .chunks_exact(ch)
                .map(|f| f.iter().sum::<f32>() / ch as f32)
                .collect(),
        };
        let target = self.target_rate(pcm.sample_rate);
        let mut out = if target == pcm.sample_rate {
            mono
        } else {
            downsample(&mono, pcm.sample_rate, target)
        };
        if self.settings.max_samples > 0 && out.len() > self.settings.max_samples {
            out.truncate(self.settings.max_samples);
        }
        Ok((out, target))
    }

    /// Log-mel features of mono samples at a model rate (8 or 16 kHz).
    pub fn features(&self, x: &[f32], rate: u32, input: &str) -> Result<AudioInput, SpeechError> {
        let (stft, fft, window) = match rate {
            8000 => (&self.settings.stft_8k, &self.fft_8k, &self.window_8k),
            16000 => (&self.settings.stft, &self.fft_16k, &self.window_16k),
            _ => {
                return Err(SpeechError::SampleRate {
                    input: input.to_owned(),
                    rate,
                    min: 8000,
                    rates: vec![8000, 16000],
                })
            }
        };
        if x.len() < stft.frame_length {
            return Err(SpeechError::TooShort {
                input: input.to_owned(),
                samples: x.len(),
                rate,
                frame: stft.frame_length,
            });
        }
        let frames = (x.len() - stft.frame_length) / stft.hop_length + 1;
        let bins = stft.n_fft / 2 + 1;
        // At 8 kHz the spectrum is laid on the 16 kHz grid (same 31.25 Hz spacing); like the
        // reference, its last two bins are dropped and everything above is zero.
        let mel_bins = self.settings.mel_n_fft / 2 + 1;
        let usable_bins = if mel_bins > bins {
            (mel_bins - bins - 1).min(bins)
        } else {
            bins
        };
        let n_mel = self.settings.n_mel;
        let mut features = Vec::with_capacity(frames * n_mel);
        let mut frame = fft.make_input_vec();
        let mut spectrum = fft.make_output_vec();
        let mut scratch = fft.make_scratch_vec();
        let mut power = vec![0.0f64; bins];
        for t in 0..frames {
            let s = &x[t * stft.hop_length..t * stft.hop_length + stft.frame_length];
            frame.fill(0.0);
            for (c, (out, &w)) in frame.iter_mut().zip(window.iter()).enumerate() {
                let prev = if c == 0 { s[0] } else { s[c - 1] };
                *out = f64::from((s[c] - 0.97f32 * prev) * 32768.0f32 * w);
            }
            fft.process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .expect("FFT buffers are sized by their own plan");
            for (p, z) in power.iter_mut().zip(&spectrum) {
                *p = z.re * z.re + z.im * z.im;
            }
            for (first, weights) in &self.filterbank {
                let mut acc = 0.0f64;
                for (k, &w) in weights.iter().enumerate() {
                    let bin = first + k;
                    if bin < usable_bins {
                        acc += f64::from(w) * power[bin];
                    }
                }
                features.push(acc.max(1.0).ln() as f32);
            }
        }
        let compression = self.settings.compression_rate.max(1);
        Ok(AudioInput {
            features,
            frames,
            n_mel,
            audio_size: (frames as f32 / compression as f32).ceil() as i64,
            model_rate: rate,
        })
    }
}

/// Hamming window as the reference computes it: `0.08 + 0.92 · sin²(π n / (N − 1))`.
pub fn hamming(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let s = (PI * i as f64 / (n as f64 - 1.0)).sin();
            (0.08 + 0.92 * s * s) as f32
        })
        .collect()
}

/// SpeechLib's Mel filterbank: `n_mels` triangles evenly spaced in Mel (`1127 ln(1 + f/700)`)
/// from 0 to `fmax`, over FFT bins `1 ..= round(fmax · n_fft / sr) − 1`, peak 1. `f32`
/// arithmetic as in the reference. Returns, per Mel bin, its first FFT bin and weights.
pub fn speechlib_mel(n_fft: usize, n_mels: usize, sr: u32, fmax: f32) -> Vec<(usize, Vec<f32>)> {
    let mel = |f: f32| 1127.0f32 * (1.0f32 + f / 700.0f32).ln();
    let bin2mel = |bin: usize| mel(bin as f32 * sr as f32 / n_fft as f32);
    let f2bin = |f: f32| ((f * n_fft as f32) / sr as f32 + 0.5f32) as usize;
    let klo = f2bin(0.0) + 1;
    let khi = f2bin(fmax).max(klo).min(n_fft / 2 + 1);
    let mhi = mel(fmax);
    let step = mhi / (n_mels + 1) as f32;
    let centers: Vec<f32> = (0..n_mels + 2).map(|i| i as f32 * step).collect();
    (0..n_mels)
        .map(|m| {
            let (left, center, right) = (centers[m], centers[m + 1], centers[m + 2]);
            let row: Vec<(usize, f32)> = (klo..khi)
                .filter_map(|bin| {
                    let mbin = bin2mel(bin);
                    (mbin > left && mbin < right)
                        .then(|| (bin, (1.0f32 - (center - mbin).abs() / step).max(0.0)))
                })
                .collect();
            match (row.first(), row.last()) {
                (Some(&(first, _)), Some(&(last, _))) => {
                    let mut w = vec![0.0f32; last - first + 1];
                    for (bin, v) in row {
                        w[bin - first] = v;
                    }
                    (first, w)
                }
                _ => (0, Vec::new()),
            }
        })
        .collect()
}

/// Downsample mono audio from `from` Hz to `to` Hz the way onnxruntime-extensions does: a
/// 4-pole Butterworth low-pass at `to / 2`, then Kaiser-windowed sinc interpolation (β = 6)
/// over `±ceil(3 · from / to)` input samples, with the reference's `f32` index arithmetic.
pub fn downsample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    let filtered = Butterworth::lowpass(0.5 * f64::from(to), f64::from(from)).apply(input);
    kaiser_interpolate(&filtered, from as f32, to as f32)
}

/// A 4th-order low-pass IIR (two cascaded poles pairs, "The Scientist and Engineer's Guide to
/// DSP", ch. 33), coefficients in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Butterworth {
    /// Feed-forward coefficients b0..b4.
    pub b: [f64; 5],
    /// Feedback coefficients a0..a4 (a0 = 1).
    pub a: [f64; 5],
}

impl Butterworth {
    const POLES: usize = 4;

    /// Low-pass at `cutoff` Hz for audio sampled at `rate` Hz.
    pub fn lowpass(cutoff: f64, rate: f64) -> Self {
        let fc = cutoff / rate;
        let np = Self::POLES as f64;
        // Polynomials in delay, offset by 2 so the recurrences can look two terms back.
        let mut a = [0.0f64; Self::POLES + 3];
        let mut b = [0.0f64; Self::POLES + 3];
        a[2] = 1.0;
        b[2] = 1.0;
        for p in 1..=Self::POLES / 2 {
            let (pa, pb) = Self::pole_pair(p as f64, np, fc);
            let (ta, tb) = (a, b);
            for i in 2..=Self::POLES + 2 {
                a[i] = pa[0] * ta[i] + pa[1] * ta[i - 1] + pa[2] * ta[i - 2];
                b[i] = tb[i] - pb[1] * tb[i - 1] - pb[2] * tb[i - 2];
            }
        }
        b[2] = 0.0;
        for i in 0..=Self::POLES {
            a[i] = a[i + 2];
            b[i] = -b[i + 2];
        }
        let sa: f64 = a[..=Self::POLES].iter().sum();
        let sb: f64 = b[..=Self::POLES].iter().sum();
        let gain = sa / (1.0 - sb);
        let mut num = [0.0; 5];
        let mut den = [0.0; 5];
        for i in 0..=Self::POLES {
            num[i] = a[i] / gain;
            den[i] = -b[i];
        }
        den[0] = 1.0;
        Butterworth { b: num, a: den }
    }

    /// One pole pair's biquad (bilinear transform, then a low-pass → low-pass warp to `fc`).
    fn pole_pair(p: f64, np: f64, fc: f64) -> ([f64; 3], [f64; 3]) {
        let rp = -(PI / (np * 2.0) + (p - 1.0) * PI / np).cos();
        let ip = (PI / (np * 2.0) + (p - 1.0) * PI / np).sin();
        let t = 2.0 * 0.5f64.tan();
        let w = 2.0 * PI * fc;
        let m = rp * rp + ip * ip;
        let d = 4.0 - 4.0 * rp * t + m * t * t;
        let x0 = t * t / d;
        let x1 = 2.0 * t * t / d;
        let x2 = t * t / d;
        let y1 = (8.0 - 2.0 * m * t * t) / d;
        let y2 = (-4.0 - 4.0 * rp * t - m * t * t) / d;
        let k = (0.5 - w / 2.0).sin() / (0.5 + w / 2.0).sin();
        let d = 1.0 + y1 * k - y2 * k * k;
        let a = [
            (x0 - x1 * k + x2 * k * k) / d,
            (-2.0 * x0 * k + x1 + x1 * k * k - 2.0 * x2 * k) / d,
            (x0 * k * k - x1 * k + x2) / d,
        ];
        let b = [
            0.0,
            (2.0 * k + y1 + y1 * k * k - 2.0 * y2 * k) / d,
            (-k * k - y1 * k + y2) / d,
        ];
        (a, b)
    }

    /// Filter a signal from rest (direct form I, `f64` state, `f32` out).
    pub fn apply(&self, input: &[f32]) -> Vec<f32> {
        let (b, a) = (&self.b, &self.a);
        let mut xs = [0.0f64; 4];
        let mut ys = [0.0f64; 4];
        input
            .iter()
            .map(|&v| {
                let x = f64::from(v);
                let y = b[0] * x + b[1] * xs[0] + b[2] * xs[1] + b[3] * xs[2] + b[4] * xs[3]
                    - a[1] * ys[0]
                    - a[2] * ys[1]
                    - a[3] * ys[2]
                    - a[4] * ys[3];
                xs = [x, xs[0], xs[1], xs[2]];
                ys = [y, ys[0], ys[1], ys[2]];
                y as f32
            })
            .collect()
    }
}

const KAISER_BETA: f64 = 6.0;

/// Modified Bessel function of the first kind, order 0, by its power series (to 1e-8 relative).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    let mut n = 0u64;
    while term > 1e-8 * sum {
        sum += term;
        n += 1;
        term *= q / (n * n) as f64;
    }
    sum
}

fn kaiser_window(len: usize) -> Vec<f64> {
    let i0_beta = bessel_i0(KAISER_BETA);
    (0..len)
        .map(|i| {
            let x = 2.0 * i as f64 / (len as f64 - 1.0) - 1.0;
            bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / i0_beta
        })
        .collect()
}

fn kaiser_interpolate(input: &[f32], in_rate: f32, out_rate: f32) -> Vec<f32> {
    let factor = out_rate / in_rate;
    let out_len = (input.len() as f32 * factor).ceil() as usize;
    let range = (KAISER_BETA / (2.0 * f64::from(factor))).ceil() as i64;
    let last = input.len() as i64 - 1;
    // Windows depend only on their length (shorter at the clip's edges): compute each once.
    let mut windows: HashMap<usize, Vec<f64>> = HashMap::new();
    (0..out_len)
        .map(|i| {
            let index = i as f32 / factor;
            let whole = index as i64;
            let start = (whole - range).max(0);
            let end = (whole + range).min(last);
            if end < start {
                return 0.0;
            }
            let len = (end - start + 1) as usize;
            let window = windows.entry(len).or_insert_with(|| kaiser_window(len));
            let mut acc = 0.0f64;
            for (k, j) in (start..=end).enumerate() {
                let distance = (j as f64 - f64::from(index)).abs();
                let sinc = if distance < f64::from(1e-6f32) {
                    1.0
                } else {
                    (PI * distance).sin() / (PI * distance)
                };
                acc += f64::from(input[j as usize]) * (window[k] * sinc);
            }
            acc as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_filterbank_rows_match_speechlib() {
        let fb = speechlib_mel(512, 80, 16_000, 7689.0);
        assert_eq!(fb.len(), 80);
        // Rows of the reference's Python `speechlib_mel(16000, 512, 80, fmax=7689)` (float64
        // arithmetic, float32 storage), printed by numpy.
        let known: [(usize, usize, &[f32]); 3] = [
            (0, 1, &[0.575_581_6]),
            (
                40,
                54,
                &[
                    0.014_821_254,
                    0.438_936_4,
                    0.857_607_07,
                    0.729_028_76,
                    0.320_838_24,
                ],
            ),
            (
                79,
                231,
                &[
                    0.118_565_11,
                    0.247_017_41,
                    0.374_965_8,
                    0.502_414_17,
                    0.629_366_4,
                    0.755_826_4,
                    0.881_797_97,
                    0.992_715_1,
                    0.867_709_3,
                    0.743_180_7,
                    0.619_125_8,
                    0.495_540_95,
                    0.372_422_64,
                    0.249_767_38,
                    0.127_571_67,
                ],
            ),
        ];
        for (row, first, weights) in known {
            assert_eq!(fb[row].0, first, "row {row}");
            assert_eq!(fb[row].1.len(), weights.len(), "row {row}");
            for (got, want) in fb[row].1.iter().zip(weights) {
                // Our weights use the reference C++'s f32 arithmetic; Python's are f64.
                assert!((got - want).abs() < 2e-4, "row {row}: {got} vs {want}");
            }
        }
        // No weight reaches bin 246 (= round(7689 · 512 / 16000)) or beyond.
        assert!(fb.iter().all(|(first, w)| first + w.len() <= 246));
    }

    #[test]
    fn hamming_window_endpoints_and_peak() {
        let w = hamming(400);
        assert_eq!(w[0], 0.08);
        assert_eq!(w[399], 0.08);
        assert!((w[200] - 1.0).abs() < 1e-4);
    }

    #[test]
    fn butterworth_has_unit_dc_gain_and_attenuates_above_cutoff() {
        let f = Butterworth::lowpass(8000.0, 48000.0);
        assert!(((f.b.iter().sum::<f64>() / f.a.iter().sum::<f64>()) - 1.0).abs() < 1e-9);
        let tone = |hz: f64| -> f64 {
            let x: Vec<f32> = (0..48000)
                .map(|n| (2.0 * PI * hz * n as f64 / 48000.0).sin() as f32)
                .collect();
            let y = f.apply(&x);
            (y[24000..]
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                / 24000.0
                * 2.0)
                .sqrt()
        };
        assert!((tone(1000.0) - 1.0).abs() < 0.01);
        assert!(tone(16000.0) < 0.05);
    }

    #[test]
    fn integer_ratio_downsampling_keeps_a_low_tone() {
        let x: Vec<f32> = (0..48000)
            .map(|n| (2.0 * PI * 440.0 * n as f64 / 48000.0).sin() as f32 * 0.5)
            .collect();
        let y = downsample(&x, 48000, 16000);
        assert_eq!(y.len(), 16000);
        let expected: Vec<f32> = (0..16000)
            .map(|n| (2.0 * PI * 440.0 * n as f64 / 16000.0).sin() as f32 * 0.5)
            .collect();
        // Kaiser-windowed sinc without gain normalisation and the IIR's phase: compare energy.
        let e = |v: &[f32]| {
            v[2000..14000]
                .iter()
                .map(|s| f64::from(*s).powi(2))
                .sum::<f64>()
        };
        assert!(
            (e(&y) / e(&expected) - 1.0).abs() < 0.05,
            "{}",
            e(&y) / e(&expected)
        );
    }

    #[test]
    fn features_have_frame_count_and_token_count_of_the_reference() {
        let p = SpeechProcessor::new(SpeechSettings::default());
        let x: Vec<f32> = (0..16000)
            .map(|n| ((n * 7919) % 200) as f32 / 1000.0 - 0.1)
            .collect();
        let a = p.features(&x, 16000, "t").unwrap();
        assert_eq!(a.frames, (16000 - 400) / 160 + 1);
        assert_eq!(a.audio_size, 13);
        assert_eq!(a.features.len(), 98 * 80);
        let a8 = p.features(&x[..8000], 8000, "t").unwrap();
        assert_eq!(a8.frames, (8000 - 200) / 80 + 1);
        // Digital silence: every Mel energy clamps to 1 → ln 1 = 0.
        let s = p.features(&[0.0; 800], 16000, "s").unwrap();
        assert!(s.features.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn cutting_before_resampling_gives_exactly_the_samples_of_cutting_after() {
        let p = SpeechProcessor::new(SpeechSettings {
            max_samples: 4000,
            ..SpeechSettings::default()
        });
        for (rate, channels) in [
            (44_100u32, 2u16),
            (48_000, 1),
            (22_050, 1),
            (11_025, 3),
            (16_000, 1),
        ] {
            // Three times longer than what the model hears, with content up to the end.
            let frames = 3 * p.max_input_frames(rate).unwrap();
            let samples: Vec<f32> = (0..frames * usize::from(channels))
                .map(|i| ((i as f32 * 0.37).sin() * 0.5 + (i % 97) as f32 / 400.0).clamp(-1.0, 1.0))
                .collect();
            let pcm = Pcm {
                samples,
                sample_rate: rate,
                channels,
            };
            let (cut, target) = p.to_model_rate(&pcm, "t").unwrap();
            // The reference order: mix and resample everything, then cut.
            let ch = usize::from(channels);
            let mono: Vec<f32> = match ch {
                1 => pcm.samples.clone(),
                2 => pcm
                    .samples
                    .chunks_exact(2)
                    .map(|p| (p[0] + p[1]) / 2.0)
                    .collect(),
                _ => pcm
                    .samples
                    .chunks_exact(ch)
                    .map(|f| f.iter().sum::<f32>() / ch as f32)
                    .collect(),
            };
            let mut full = if target == rate {
                mono
            } else {
                downsample(&mono, rate, target)
            };
            full.truncate(4000);
            assert_eq!(cut.len(), 4000, "{rate} Hz");
            assert!(
                cut == full,
                "{rate} Hz x{channels}: the early cut changed samples"
            );
        }
        // Without a limit nothing is cut.
        let all = SpeechProcessor::new(SpeechSettings {
            max_samples: 0,
            ..SpeechSettings::default()
        });
        assert_eq!(all.max_input_frames(48_000), None);
    }

    #[test]
    fn a_long_file_is_read_only_as_far_as_the_model_hears() {
        let p = SpeechProcessor::new(SpeechSettings::default());
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        // 40 s of stereo: the model hears 30 s at 16 kHz, i.e. 30 s of the 48 kHz input.
        let bytes = wav(spec, &vec![1000; 48_000 * 40 * 2]);
        let pcm = decode_wav_within(&bytes, "long.wav", &|r| p.max_input_frames(r)).unwrap();
        let kept = p.max_input_frames(48_000).unwrap();
        assert_eq!(pcm.samples.len(), kept * 2);
        assert!(kept < 48_000 * 31, "{kept}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        std::fs::write(&path, &bytes).unwrap();
        let from_file = load_wav_within(&path, &|r| p.max_input_frames(r)).unwrap();
        assert_eq!(from_file, pcm);
        assert_eq!(
            decode_wav(&bytes, "long.wav").unwrap().samples.len(),
            48_000 * 40 * 2
        );
    }

    #[test]
    fn rates_channels_and_lengths_are_checked() {
        let p = SpeechProcessor::new(SpeechSettings::default());
        let pcm = |rate, channels, n| Pcm {
            samples: vec![0.1; n],
            sample_rate: rate,
            channels,
        };
        for (rate, ok) in [
            (8000, 8000),
            (11025, 8000),
            (16000, 16000),
            (44100, 16000),
            (48000, 16000),
        ] {
            assert_eq!(
                p.to_model_rate(&pcm(rate, 1, 4000), "a").unwrap().1,
                ok,
                "{rate}"
            );
        }
        assert!(matches!(
            p.to_model_rate(&pcm(4000, 1, 400), "a"),
            Err(SpeechError::SampleRate { .. })
        ));
        assert!(matches!(
            p.to_model_rate(&pcm(0, 1, 400), "a"),
            Err(SpeechError::SampleRate { .. })
        ));
        assert!(matches!(
            p.to_model_rate(&pcm(1_000_000_000, 1, 400), "a"),
            Err(SpeechError::SampleRate { .. })
        ));
        assert!(matches!(
            p.to_model_rate(&pcm(16000, 0, 400), "a"),
            Err(SpeechError::Channels { .. })
        ));
        assert!(matches!(
            p.to_model_rate(&pcm(16000, 2, 401), "a"),
            Err(SpeechError::Interleave { .. })
        ));
        assert!(matches!(
            p.process(&pcm(16000, 1, 399), "a"),
            Err(SpeechError::TooShort { .. })
        ));
        // Stereo mixes to the pair average; the clip is cut at max_samples.
        let st = Pcm {
            samples: vec![0.2, 0.4, 0.6, 0.0],
            sample_rate: 16000,
            channels: 2,
        };
        assert_eq!(p.to_model_rate(&st, "s").unwrap().0, vec![0.3f32, 0.3]);
        let long = pcm(16000, 1, 500_000);
        assert_eq!(p.to_model_rate(&long, "l").unwrap().0.len(), 480_000);
    }

    fn wav(spec: hound::WavSpec, samples: &[i32]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for &s in samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn wav_decoding_scales_like_dr_wav_and_rejects_bad_files() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let bytes = wav(spec, &[0, 16384, -32768, 32767]);
        let pcm = decode_wav(&bytes, "ok.wav").unwrap();
        assert_eq!(pcm.samples, vec![0.0, 0.5, -1.0, 32767.0 / 32768.0]);
        assert_eq!((pcm.sample_rate, pcm.channels), (16000, 1));

        let e = decode_wav(&bytes[..bytes.len() - 3], "cut.wav").unwrap_err();
        assert!(matches!(e, SpeechError::Decode { .. }), "{e}");
        assert!(e.to_string().contains("cut.wav"), "{e}");
        let e = decode_wav(&bytes[..20], "header.wav").unwrap_err();
        assert!(matches!(e, SpeechError::Decode { .. }), "{e}");
        let e = decode_wav(&[], "empty.wav").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = decode_wav(&wav(spec, &[]), "silent.wav").unwrap_err();
        assert!(matches!(e, SpeechError::Empty { .. }), "{e}");

        // Zero channels: patch the fmt chunk's channel count (offset 22).
        let mut zero = bytes.clone();
        zero[22..24].copy_from_slice(&0u16.to_le_bytes());
        assert!(decode_wav(&zero, "zero.wav").is_err());

        // An absurd rate decodes but is refused by the processor, naming the rate.
        let mut fast = bytes.clone();
        fast[24..28].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        fast[28..32].copy_from_slice(&2_000_000_000u32.to_le_bytes());
        let pcm = decode_wav(&fast, "fast.wav").unwrap();
        let e = SpeechProcessor::new(SpeechSettings::default())
            .process(&pcm, "fast.wav")
            .unwrap_err();
        assert!(e.to_string().contains("1000000000 Hz"), "{e}");

        let spec8 = hound::WavSpec {
            bits_per_sample: 8,
            ..spec
        };
        let pcm = decode_wav(&wav(spec8, &[-128, 0, 127]), "u8.wav").unwrap();
        assert_eq!(
            pcm.samples,
            vec![
                -1.0,
                128.0 * (2.0f32 / 255.0) - 1.0,
                255.0 * (2.0f32 / 255.0) - 1.0
            ]
        );
    }

    #[test]
    fn batch_pads_frames_and_masks() {
        let a = AudioInput {
            features: vec![1.0; 3 * 2],
            frames: 3,
            n_mel: 2,
            audio_size: 1,
            model_rate: 16000,
        };
        let b = AudioInput {
            features: vec![2.0; 2],
            frames: 1,
            n_mel: 2,
            audio_size: 1,
            model_rate: 16000,
        };
        let batch = AudioBatch::stack(&[a, b]);
        assert_eq!(batch.max_frames, 3);
        assert_eq!(
            batch.embeds,
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            batch.attention_mask,
            vec![true, true, true, true, false, false]
        );
    }
}
