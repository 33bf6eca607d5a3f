//! Microphones: a real one through cpal (ALSA on Linux) and a WAV file replayed as one.
//!
//! In: a [`MicConfig`] (device by name, explicit sample format, rate and channels — never the
//! device's default, which on ALSA is often a `plug` conversion we did not ask for) or a
//! [`WavConfig`]; a bounded `tokio::sync::mpsc::Sender<AudioClip>`; the stop signal.
//! Out: mono f32 [`AudioClip`] chunks of a fixed length on that channel.
//!
//! Drop policy: the audio callback **never blocks** — it `try_send`s each finished chunk; when
//! the channel is full the chunk is dropped and counted in `overruns`. (Allocation of one chunk
//! buffer per chunk, ~10 per second, is the only non-trivial work in the callback.) The WAV
//! replay at real-time pace behaves the same; at `Fast` pace it waits for room instead, since
//! a file loses nothing by waiting.
//!
//! Downmix: the mean of the channels of each frame. i16 samples become `s / 32768` (exact in
//! f32, so the original samples can be recovered bit for bit).
//!
//! Stop: when the stop signal fires the callback sends its partial chunk and drops its sender,
//! so the consumer sees the channel close; dropping the [`MicHandle`] stops the stream.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::camera::sleep_until;
use super::AudioClip;

#[derive(Debug, Error)]
pub enum MicError {
    #[error("microphone {name}: {what}")]
    Config { name: String, what: String },
    #[error("no audio input device named {device:?}; available inputs: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoDevice {
        device: String,
        available: Vec<String>,
    },
    #[error("audio input {device:?} cannot capture {wanted}; it offers: {offered}")]
    Unsupported {
        device: String,
        wanted: String,
        offered: String,
    },
    #[error("audio input {device:?}: {err}")]
    Open { device: String, err: String },
    #[error("WAV file {path}: {err}")]
    Wav { path: PathBuf, err: String },
    #[error("cannot start the microphone thread for {name}: {err}")]
    Thread { name: String, err: std::io::Error },
}

/// The sample format the stream is opened with (the device must deliver it natively: ask for
/// what the hardware, or the ALSA plugin chain you configured, produces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    I16,
    F32,
}

impl SampleFormat {
    fn cpal(self) -> cpal::SampleFormat {
        match self {
            SampleFormat::I16 => cpal::SampleFormat::I16,
            SampleFormat::F32 => cpal::SampleFormat::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MicConfig {
    /// Name used as the clips' `source` (e.g. `floor-mic`).
    pub name: String,
    /// The ALSA PCM name (`default`, `hw:CARD=Device,DEV=0`, a name from asound.conf) or the
    /// device's description as listed by [`list_input_devices`].
    pub device: String,
    pub format: SampleFormat,
    pub sample_rate: u32,
    pub channels: u16,
    /// Length of each [`AudioClip`].
    pub chunk: Duration,
}

/// Counters a microphone keeps.
#[derive(Debug, Default)]
pub struct MicStats {
    chunks: AtomicU64,
    samples: AtomicU64,
    overruns: AtomicU64,
    stream_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicStatsSnapshot {
    /// Chunks delivered to the channel.
    pub chunks: u64,
    /// Mono samples captured (delivered or not).
    pub samples: u64,
    /// Chunks dropped because the channel was full.
    pub overruns: u64,
    pub stream_errors: u64,
    pub last_error: Option<String>,
}

impl MicStats {
    pub fn snapshot(&self) -> MicStatsSnapshot {
        MicStatsSnapshot {
            chunks: self.chunks.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
            stream_errors: self.stream_errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A running microphone (real or replayed). Dropping it stops capture.
pub struct MicHandle {
    name: String,
    sample_rate: u32,
    stats: Arc<MicStats>,
    stream: Option<cpal::Stream>,
    thread: Option<JoinHandle<()>>,
}

impl MicHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn stats(&self) -> MicStatsSnapshot {
        self.stats.snapshot()
    }

    pub fn shared_stats(&self) -> Arc<MicStats> {
        self.stats.clone()
    }

    /// Stop and wait: the stream is closed, a replay thread joined. Blocking.
    pub fn stop(mut self) {
        self.stream.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Wait for a replay to reach the end of its file (or its stop signal). Blocking.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Downmix interleaved frames to mono by averaging (sum × 1/channels, as the callback does).
pub fn downmix_into(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    if channels == 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() * scale),
    );
}

/// Collects mono samples into fixed-size chunks and hands them to the channel without ever
/// blocking.
struct Chunker {
    source: String,
    sample_rate: u32,
    chunk_len: usize,
    buf: Vec<f32>,
    started_at: SystemTime,
    tx: Option<mpsc::Sender<AudioClip>>,
    stats: Arc<MicStats>,
    scratch: Vec<f32>,
}

impl Chunker {
    fn new(
        source: String,
        sample_rate: u32,
        chunk_len: usize,
        tx: mpsc::Sender<AudioClip>,
        stats: Arc<MicStats>,
    ) -> Self {
        Chunker {
            source,
            sample_rate,
            chunk_len,
            buf: Vec::with_capacity(chunk_len),
            started_at: SystemTime::now(),
            tx: Some(tx),
            stats,
            scratch: Vec::new(),
        }
    }

    /// Add mono samples; returns false once the consumer has gone.
    fn push(
        &mut self,
        mut mono: &[f32],
        mut send: impl FnMut(&mpsc::Sender<AudioClip>, AudioClip) -> bool,
    ) -> bool {
        self.stats
            .samples
            .fetch_add(mono.len() as u64, Ordering::Relaxed);
        while !mono.is_empty() {
            if self.buf.is_empty() {
                self.started_at = SystemTime::now();
            }
            let take = (self.chunk_len - self.buf.len()).min(mono.len());
            self.buf.extend_from_slice(&mono[..take]);
            mono = &mono[take..];
            if self.buf.len() == self.chunk_len && !self.flush(&mut send) {
                return false;
            }
        }
        true
    }

    fn flush(
        &mut self,
        send: &mut impl FnMut(&mpsc::Sender<AudioClip>, AudioClip) -> bool,
    ) -> bool {
        let Some(tx) = &self.tx else { return false };
        if self.buf.is_empty() {
            return true;
        }
        let samples = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_len));
        let clip = AudioClip {
            source: self.source.clone(),
            started_at: self.started_at,
            sample_rate: self.sample_rate,
            samples: Arc::new(samples),
        };
        if tx.is_closed() {
            self.tx = None;
            return false;
        }
        if send(tx, clip) {
            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Send what is buffered and close our end of the channel.
    fn finish(&mut self, mut send: impl FnMut(&mpsc::Sender<AudioClip>, AudioClip) -> bool) {
        self.flush(&mut send);
        self.tx = None;
    }
}

/// The callback's send: never waits; a full channel drops the chunk and counts it.
fn try_send(stats: &MicStats) -> impl FnMut(&mpsc::Sender<AudioClip>, AudioClip) -> bool + '_ {
    move |tx, clip| match tx.try_send(clip) {
        Ok(()) => true,
        Err(_) => {
            stats.overruns.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

fn chunk_len(name: &str, rate: u32, chunk: Duration) -> Result<usize, MicError> {
    let n = (f64::from(rate) * chunk.as_secs_f64()).round() as usize;
    if n == 0 {
        return Err(MicError::Config {
            name: name.into(),
            what: format!("chunk {chunk:?} at {rate} Hz holds no samples"),
        });
    }
    Ok(n)
}

/// The input devices the host lists, as "PCM id (description)" where they differ.
pub fn list_input_devices() -> Vec<String> {
    let host = cpal::default_host();
    let Ok(devices) = host.input_devices() else {
        return Vec::new();
    };
    devices.map(|d| device_label(&d)).collect()
}

fn device_label(d: &cpal::Device) -> String {
    let id = d.id().map(|i| i.id().to_string()).unwrap_or_default();
    let name = d
        .description()
        .map(|desc| desc.name().to_string())
        .unwrap_or_default();
    if name.is_empty() || name == id {
        id
    } else {
        format!("{id} ({name})")
    }
}

fn find_device(host: &cpal::Host, wanted: &str) -> Result<cpal::Device, MicError> {
    let devices: Vec<cpal::Device> = host
        .input_devices()
        .map_err(|e| MicError::Open {
            device: wanted.into(),
            err: e.to_string(),
        })?
        .collect();
    let by_id = devices
        .iter()
        .find(|d| d.id().is_ok_and(|i| i.id() == wanted));
    let by_name = || {
        devices
            .iter()
            .find(|d| d.description().is_ok_and(|desc| desc.name() == wanted))
    };
    match by_id.or_else(by_name) {
        Some(d) => Ok(d.clone()),
        None if wanted == "default" => {
            host.default_input_device()
                .ok_or_else(|| MicError::NoDevice {
                    device: wanted.into(),
                    available: Vec::new(),
                })
        }
        None => Err(MicError::NoDevice {
            device: wanted.into(),
            available: devices.iter().map(device_label).collect(),
        }),
    }
}

/// The input stream with its callback: convert, downmix, chunk, `try_send` — nothing waits.
#[allow(clippy::too_many_arguments)]
fn build_stream<T, E>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut chunker: Chunker,
    channels: usize,
    cancel: CancellationToken,
    stats: Arc<MicStats>,
    to_f32: fn(T) -> f32,
    on_error: E,
) -> Result<cpal::Stream, cpal::Error>
where
    T: cpal::SizedSample + 'static,
    E: FnMut(cpal::Error) + Send + 'static,
{
    let scale = 1.0 / channels as f32;
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            if chunker.tx.is_none() {
                return;
            }
            if cancel.is_cancelled() {
                chunker.finish(try_send(&stats));
                return;
            }
            // Reuse one scratch buffer: no allocation per callback.
            let mut mono = std::mem::take(&mut chunker.scratch);
            mono.clear();
            mono.extend(
                data.chunks_exact(channels)
                    .map(|f| f.iter().map(|&s| to_f32(s)).sum::<f32>() * scale),
            );
            chunker.push(&mono, try_send(&stats));
            chunker.scratch = mono;
        },
        on_error,
        None,
    )
}

/// Whether the device offers exactly the requested format, rate and channels (no conversion
/// is ever asked of ALSA); the error lists what it does offer.
fn check_supported(
    config: &MicConfig,
    ranges: &[cpal::SupportedStreamConfigRange],
) -> Result<(), MicError> {
    let supported = ranges.iter().any(|r| {
        r.sample_format() == config.format.cpal()
            && r.channels() == config.channels
            && (r.min_sample_rate()..=r.max_sample_rate()).contains(&config.sample_rate)
    });
    if supported {
        return Ok(());
    }
    let offered = if ranges.is_empty() {
        "nothing".to_string()
    } else {
        ranges
            .iter()
            .map(|r| {
                format!(
                    "{:?} {}-{} Hz {} ch",
                    r.sample_format(),
                    r.min_sample_rate(),
                    r.max_sample_rate(),
                    r.channels()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(MicError::Unsupported {
        device: config.device.clone(),
        wanted: format!(
            "{:?} {} Hz {} ch",
            config.format, config.sample_rate, config.channels
        ),
        offered,
    })
}

/// Open the input device named in `config` and start capturing into `tx`.
pub fn open_microphone(
    config: &MicConfig,
    tx: mpsc::Sender<AudioClip>,
    cancel: CancellationToken,
) -> Result<MicHandle, MicError> {
    let chunk = chunk_len(&config.name, config.sample_rate, config.chunk)?;
    if config.channels == 0 {
        return Err(MicError::Config {
            name: config.name.clone(),
            what: "channels must be at least 1".into(),
        });
    }
    let host = cpal::default_host();
    let device = find_device(&host, &config.device)?;
    let ranges: Vec<cpal::SupportedStreamConfigRange> = device
        .supported_input_configs()
        .map_err(|e| MicError::Open {
            device: config.device.clone(),
            err: e.to_string(),
        })?
        .collect();
    check_supported(config, &ranges)?;
    let stream_config = cpal::StreamConfig {
        channels: config.channels,
        sample_rate: config.sample_rate,
        buffer_size: cpal::BufferSize::Default,
    };
    let stats = Arc::new(MicStats::default());
    let channels = usize::from(config.channels);
    let chunker = Chunker::new(
        config.name.clone(),
        config.sample_rate,
        chunk,
        tx,
        stats.clone(),
    );
    let err_stats = stats.clone();
    let mic_name = config.name.clone();
    let mut logged: HashSet<String> = HashSet::new();
    let on_error = move |e: cpal::Error| {
        err_stats.stream_errors.fetch_add(1, Ordering::Relaxed);
        let text = e.to_string();
        if logged.insert(format!("{:?}", e.kind())) {
            tracing::warn!(microphone = %mic_name, "{text} (further errors of this kind are counted, not logged)");
        }
        *err_stats
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(text);
    };
    let open_err = |e: cpal::Error| MicError::Open {
        device: config.device.clone(),
        err: e.to_string(),
    };
    let stream = match config.format {
        SampleFormat::I16 => build_stream(
            &device,
            stream_config,
            chunker,
            channels,
            cancel,
            stats.clone(),
            |s: i16| f32::from(s) / 32768.0,
            on_error,
        ),
        SampleFormat::F32 => build_stream(
            &device,
            stream_config,
            chunker,
            channels,
            cancel,
            stats.clone(),
            |s: f32| s,
            on_error,
        ),
    }
    .map_err(open_err)?;
    stream.play().map_err(open_err)?;
    Ok(MicHandle {
        name: config.name.clone(),
        sample_rate: config.sample_rate,
        stats,
        stream: Some(stream),
        thread: None,
    })
}

/// How fast a WAV replay delivers its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// One chunk per chunk length, like a microphone (full channel → dropped, counted).
    RealTime,
    /// As fast as the consumer takes them (waits for room; nothing dropped).
    Fast,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WavConfig {
    pub name: String,
    pub path: PathBuf,
    pub chunk: Duration,
    pub pace: Pace,
}

/// Read a WAV file into mono f32 (integer PCM of 8–32 bits or 32-bit float), with its rate.
pub fn read_wav_mono(path: &std::path::Path) -> Result<(u32, Vec<f32>), MicError> {
    let wav_err = |err: String| MicError::Wav {
        path: path.to_path_buf(),
        err,
    };
    let mut reader = hound::WavReader::open(path).map_err(|e| wav_err(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(wav_err(format!(
            "{} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float if spec.bits_per_sample == 32 => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|e| wav_err(e.to_string()))?,
        hound::SampleFormat::Int if (8..=32).contains(&spec.bits_per_sample) => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| wav_err(e.to_string()))?
        }
        f => {
            return Err(wav_err(format!(
                "unsupported sample format {f:?} with {} bits",
                spec.bits_per_sample
            )))
        }
    };
    let mut mono = Vec::with_capacity(interleaved.len() / usize::from(spec.channels));
    downmix_into(&interleaved, usize::from(spec.channels), &mut mono);
    Ok((spec.sample_rate, mono))
}

/// Replay a WAV file as a microphone on its own thread; the channel closes at the end of the
/// file (or on the stop signal).
pub fn open_wav_microphone(
    config: &WavConfig,
    tx: mpsc::Sender<AudioClip>,
    cancel: CancellationToken,
) -> Result<MicHandle, MicError> {
    let (rate, samples) = read_wav_mono(&config.path)?;
    let chunk = chunk_len(&config.name, rate, config.chunk)?;
    let stats = Arc::new(MicStats::default());
    let mut chunker = Chunker::new(config.name.clone(), rate, chunk, tx, stats.clone());
    let pace = config.pace;
    let period = Duration::from_secs_f64(chunk as f64 / f64::from(rate));
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name(format!("mic-{}", config.name))
        .spawn(move || {
            let stats = thread_stats;
            let start = Instant::now();
            for (i, piece) in samples.chunks(chunk).enumerate() {
                let alive = match pace {
                    Pace::RealTime => {
                        // A chunk is available once it has been "recorded".
                        if !sleep_until(start + period * (i as u32 + 1), &cancel) {
                            break;
                        }
                        chunker.push(piece, try_send(&stats))
                    }
                    Pace::Fast => {
                        if cancel.is_cancelled() {
                            break;
                        }
                        chunker.push(piece, |tx, clip| tx.blocking_send(clip).is_ok())
                    }
                };
                if !alive {
                    return;
                }
            }
            match pace {
                Pace::RealTime => chunker.finish(try_send(&stats)),
                Pace::Fast => chunker.finish(|tx, clip| tx.blocking_send(clip).is_ok()),
            }
        })
        .map_err(|err| MicError::Thread {
            name: config.name.clone(),
            err,
        })?;
    Ok(MicHandle {
        name: config.name.clone(),
        sample_rate: rate,
        stats,
        stream: None,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_device_lacks_are_refused_with_what_it_offers() {
        let config = MicConfig {
            name: "m".into(),
            device: "hw:CARD=USB,DEV=0".into(),
            format: SampleFormat::I16,
            sample_rate: 16000,
            channels: 1,
            chunk: Duration::from_millis(100),
        };
        let range = |ch, min, max, f| {
            cpal::SupportedStreamConfigRange::new(
                ch,
                min,
                max,
                cpal::SupportedBufferSize::Unknown,
                f,
            )
        };
        let usb = [
            range(2, 44100, 48000, cpal::SampleFormat::I16),
            range(2, 8000, 48000, cpal::SampleFormat::I32),
        ];
        let e = check_supported(&config, &usb).unwrap_err();
        assert_eq!(
            e.to_string(),
            "audio input \"hw:CARD=USB,DEV=0\" cannot capture I16 16000 Hz 1 ch; \
             it offers: I16 44100-48000 Hz 2 ch, I32 8000-48000 Hz 2 ch"
        );
        let ok = [range(1, 8000, 48000, cpal::SampleFormat::I16)];
        assert!(check_supported(&config, &ok).is_ok());
        let f32_cfg = MicConfig {
            format: SampleFormat::F32,
            ..config.clone()
        };
        assert!(check_supported(&f32_cfg, &ok).is_err());
        assert!(check_supported(&config, &[])
            .unwrap_err()
            .to_string()
            .ends_with("it offers: nothing"));
    }

    #[test]
    fn downmix_averages_frames() {
        let mut out = Vec::new();
        downmix_into(&[0.5, -0.5, 1.0, 0.0, 0.25, 0.25], 2, &mut out);
        assert_eq!(out, [0.0, 0.5, 0.25]);
        out.clear();
        downmix_into(&[0.1, 0.2, 0.3], 1, &mut out);
        assert_eq!(out, [0.1, 0.2, 0.3]);
    }

    #[test]
    fn chunker_never_blocks_and_counts_overruns() {
        let (tx, mut rx) = mpsc::channel(2);
        let stats = Arc::new(MicStats::default());
        let mut c = Chunker::new("m".into(), 10, 4, tx, stats.clone());
        let samples: Vec<f32> = (0..18).map(|i| i as f32).collect();
        assert!(c.push(&samples, try_send(&stats)));
        // 4 full chunks made, 2 fit the channel, 2 dropped; 2 samples wait in the buffer.
        let s = stats.snapshot();
        assert_eq!((s.chunks, s.overruns, s.samples), (2, 2, 18));
        assert_eq!(*rx.try_recv().unwrap().samples, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(*rx.try_recv().unwrap().samples, [4.0, 5.0, 6.0, 7.0]);
        c.finish(try_send(&stats));
        let last = rx.try_recv().unwrap();
        assert_eq!((*last.samples).clone(), vec![16.0, 17.0]);
        assert_eq!(last.sample_rate, 10);
        assert!(rx.try_recv().is_err());
        // Our sender is gone: the channel reports closed once drained.
        assert!(rx.blocking_recv().is_none());
    }

    fn write_wav(path: &std::path::Path, channels: u16, rate: u32, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn wav_replay_fast_delivers_every_sample_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        // Stereo: left = i, right = -i + 2 → mono mean = 1 (in units of 1/32768).
        let frames = 16000 + 123;
        let mut interleaved = Vec::new();
        for i in 0..frames {
            let l = (i % 30000) as i16;
            interleaved.extend_from_slice(&[l, 2 - l]);
        }
        write_wav(&path, 2, 16000, &interleaved);
        let (tx, mut rx) = mpsc::channel(1); // a tiny channel: Fast pace must wait, not drop
        let cfg = WavConfig {
            name: "wav".into(),
            path,
            chunk: Duration::from_millis(100),
            pace: Pace::Fast,
        };
        let mic = open_wav_microphone(&cfg, tx, CancellationToken::new()).unwrap();
        assert_eq!(mic.sample_rate(), 16000);
        let mut got = Vec::new();
        let mut clips = 0;
        while let Some(clip) = rx.blocking_recv() {
            assert_eq!(clip.sample_rate, 16000);
            got.extend_from_slice(&clip.samples);
            clips += 1;
        }
        assert_eq!(got.len(), frames);
        assert!(
            got.iter().all(|&s| s == 1.0 / 32768.0),
            "downmix of L and 2-L is not 1"
        );
        assert_eq!(clips, 11, "10 full chunks of 1600 and the 123-sample tail");
        let s = mic.stats();
        assert_eq!((s.chunks, s.overruns), (11, 0));
        mic.join();
    }

    #[test]
    fn wav_replay_in_real_time_paces_and_stops_on_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mono.wav");
        write_wav(&path, 1, 8000, &vec![1000i16; 8000 * 10]);
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let cfg = WavConfig {
            name: "wav".into(),
            path,
            chunk: Duration::from_millis(50),
            pace: Pace::RealTime,
        };
        let mic = open_wav_microphone(&cfg, tx, cancel.clone()).unwrap();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_millis(500) {
            if rx.try_recv().is_ok() {
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cancel.cancel();
        // 50 ms chunks over 0.5 s: about 10; a file read at full speed would give 200.
        assert!((4..=16).contains(&n), "{n} chunks in 0.5 s");
        while rx.blocking_recv().is_some() {}
        mic.join();
    }

    #[test]
    fn bad_wav_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.wav");
        let (tx, _rx) = mpsc::channel(1);
        let cfg = WavConfig {
            name: "wav".into(),
            path: missing.clone(),
            chunk: Duration::from_millis(100),
            pace: Pace::Fast,
        };
        let e = open_wav_microphone(&cfg, tx, CancellationToken::new())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with(&format!("WAV file {}: ", missing.display())),
            "{e}"
        );
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"RIFF\0\0\0\0WAVEnope").unwrap();
        assert!(matches!(read_wav_mono(&junk), Err(MicError::Wav { .. })));
    }
}
