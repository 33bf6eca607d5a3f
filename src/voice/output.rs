//! Where spoken answers go: a sound device through cpal, a WAV file, or nowhere.
//!
//! In: mono f32 samples at the output's rate, tagged with the answer they belong to. Out: sound
//! (or a file), and for each answer the [`Instant`] its first sample left gemba — the "first
//! audio out" of the report's timings.
//!
//! One queue per output. The device callback never blocks: it `try_lock`s the queue, and if the
//! speaker holds it at that instant it plays silence for that period and counts an underrun
//! (the speaker holds it only to append). A file output is written by its own thread; in the
//! daemon it is paced like a device (a 20 ms block per 20 ms), so stopping an answer (barge-in)
//! cuts the file where a loudspeaker would have gone quiet; `gemba ask --speak-to` writes as fast
//! as it can. The WAV header is brought up to date after each answer, so the file is always
//! readable.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use crate::capture::mic::SampleFormat;

/// The WAV file the voice speaks into, shared with the writer thread.
type SharedWav = Arc<Mutex<Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>>>;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("no audio output device named {device:?}; available outputs: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoDevice {
        device: String,
        available: Vec<String>,
    },
    #[error("audio output {device:?} cannot play {wanted}; it offers: {offered}")]
    Unsupported {
        device: String,
        wanted: String,
        offered: String,
    },
    #[error("audio output {device:?}: {err}")]
    Open { device: String, err: String },
    #[error("speech output file {path}: {err}")]
    File { path: PathBuf, err: String },
}

/// Where the voice speaks, as configured (`voice.output`).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputTarget {
    /// Synthesize (for the report) but play nothing.
    None,
    /// A 16-bit mono WAV file; `paced`: at real-time speed, like a device.
    File {
        path: PathBuf,
        paced: bool,
        rate: Option<u32>,
    },
    /// A cpal (ALSA) output device, opened with exactly this format.
    Device {
        device: String,
        format: SampleFormat,
        rate: u32,
        channels: u16,
    },
}

impl OutputTarget {
    /// Parses `voice.output`: `none`, `file:/path.wav`, or a device name.
    pub fn parse(s: &str, format: SampleFormat, rate: Option<u32>, channels: u16) -> OutputTarget {
        if s == "none" {
            OutputTarget::None
        } else if let Some(p) = s.strip_prefix("file:") {
            OutputTarget::File {
                path: PathBuf::from(p),
                paced: true,
                rate,
            }
        } else {
            OutputTarget::Device {
                device: s.to_string(),
                format,
                rate: rate.unwrap_or(48_000),
                channels,
            }
        }
    }
}

struct Piece {
    answer: u64,
    samples: Vec<f32>,
    at: usize,
}

#[derive(Default)]
struct Queue {
    pieces: VecDeque<Piece>,
    /// First sample out, per answer (the last few answers).
    started: VecDeque<(u64, Instant)>,
    /// Answers stopped: late pieces of theirs are dropped.
    stopped: VecDeque<u64>,
}

impl Queue {
    fn mark_started(&mut self, answer: u64) {
        if !self.started.iter().any(|(a, _)| *a == answer) {
            self.started.push_back((answer, Instant::now()));
            if self.started.len() > 16 {
                self.started.pop_front();
            }
        }
    }

    /// Moves up to `out.len()` samples into `out` (silence after the end); returns how many.
    fn fill(&mut self, out: &mut [f32]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(p) = self.pieces.front_mut() else {
                break;
            };
            if p.at == 0 {
                let a = p.answer;
                self.mark_started(a);
            }
            let p = self.pieces.front_mut().expect("checked");
            let take = (p.samples.len() - p.at).min(out.len() - n);
            out[n..n + take].copy_from_slice(&p.samples[p.at..p.at + take]);
            p.at += take;
            n += take;
            if p.at == p.samples.len() {
                self.pieces.pop_front();
            }
        }
        out[n..].iter_mut().for_each(|s| *s = 0.0);
        n
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the queue empties.
    drained: Condvar,
    underruns: AtomicU64,
    played: AtomicU64,
}

pub struct Output {
    shared: Arc<Shared>,
    rate: u32,
    describe: String,
    stream: Option<cpal::Stream>,
    thread: Option<JoinHandle<Result<(), OutputError>>>,
    stop_thread: Arc<std::sync::atomic::AtomicBool>,
    /// The file writer: brought up to date after each answer.
    sync_file: Option<SharedWav>,
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

/// The output devices the host lists.
pub fn list_output_devices() -> Vec<String> {
    cpal::default_host()
        .output_devices()
        .map(|ds| ds.map(|d| device_label(&d)).collect())
        .unwrap_or_default()
}

fn find_output(host: &cpal::Host, wanted: &str) -> Result<cpal::Device, OutputError> {
    let devices: Vec<cpal::Device> = host
        .output_devices()
        .map_err(|e| OutputError::Open {
            device: wanted.into(),
            err: e.to_string(),
        })?
        .collect();
    let found = devices
        .iter()
        .find(|d| d.id().is_ok_and(|i| i.id() == wanted))
        .or_else(|| {
            devices
                .iter()
                .find(|d| d.description().is_ok_and(|desc| desc.name() == wanted))
        });
    match found {
        Some(d) => Ok(d.clone()),
        None if wanted == "default" => {
            host.default_output_device()
                .ok_or_else(|| OutputError::NoDevice {
                    device: wanted.into(),
                    available: Vec::new(),
                })
        }
        None => Err(OutputError::NoDevice {
            device: wanted.into(),
            available: devices.iter().map(device_label).collect(),
        }),
    }
}

impl Output {
    /// Opens the target; `natural_rate` (the synthesizer's) is used where the target names none.
    pub fn open(target: &OutputTarget, natural_rate: u32) -> Result<Output, OutputError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            drained: Condvar::new(),
            underruns: AtomicU64::new(0),
            played: AtomicU64::new(0),
        });
        let stop_thread = Arc::new(std::sync::atomic::AtomicBool::new(false));
        match target {
            OutputTarget::None => {
                let rate = natural_rate;
                let thread = Self::spawn_writer(
                    Arc::clone(&shared),
                    Arc::clone(&stop_thread),
                    rate,
                    false,
                    None,
                );
                Ok(Output {
                    shared,
                    rate,
                    describe: "none".into(),
                    stream: None,
                    thread: Some(thread),
                    stop_thread,
                    sync_file: None,
                })
            }
            OutputTarget::File { path, paced, rate } => {
                let rate = rate.unwrap_or(natural_rate);
                let spec = hound::WavSpec {
                    channels: 1,
                    sample_rate: rate,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| OutputError::File {
                        path: path.clone(),
                        err: e.to_string(),
                    })?;
                }
                let w = hound::WavWriter::create(path, spec).map_err(|e| OutputError::File {
                    path: path.clone(),
                    err: e.to_string(),
                })?;
                let writer = Arc::new(Mutex::new(Some(w)));
                let thread = Self::spawn_writer(
                    Arc::clone(&shared),
                    Arc::clone(&stop_thread),
                    rate,
                    *paced,
                    Some((path.clone(), Arc::clone(&writer))),
                );
                Ok(Output {
                    shared,
                    rate,
                    describe: format!("file:{}", path.display()),
                    stream: None,
                    thread: Some(thread),
                    stop_thread,
                    sync_file: Some(writer),
                })
            }
            OutputTarget::Device {
                device,
                format,
                rate,
                channels,
            } => {
                let stream =
                    Self::open_device(Arc::clone(&shared), device, *format, *rate, *channels)?;
                Ok(Output {
                    shared,
                    rate: *rate,
                    describe: device.clone(),
                    stream: Some(stream),
                    thread: None,
                    stop_thread,
                    sync_file: None,
                })
            }
        }
    }

    fn open_device(
        shared: Arc<Shared>,
        device: &str,
        format: SampleFormat,
        rate: u32,
        channels: u16,
    ) -> Result<cpal::Stream, OutputError> {
        let host = cpal::default_host();
        let dev = find_output(&host, device)?;
        let open_err = |e: cpal::Error| OutputError::Open {
            device: device.into(),
            err: e.to_string(),
        };
        let ranges: Vec<cpal::SupportedStreamConfigRange> =
            dev.supported_output_configs().map_err(open_err)?.collect();
        let want = match format {
            SampleFormat::I16 => cpal::SampleFormat::I16,
            SampleFormat::F32 => cpal::SampleFormat::F32,
        };
        let ok = ranges.iter().any(|r| {
            r.sample_format() == want
                && r.channels() == channels
                && (r.min_sample_rate()..=r.max_sample_rate()).contains(&rate)
        });
        if !ok {
            return Err(OutputError::Unsupported {
                device: device.into(),
                wanted: format!("{format:?} {rate} Hz {channels} ch"),
                offered: ranges
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
                    .join(", "),
            });
        }
        let config = cpal::StreamConfig {
            channels,
            sample_rate: rate,
            buffer_size: cpal::BufferSize::Default,
        };
        let ch = usize::from(channels);
        let on_error = {
            let device = device.to_string();
            let mut logged = false;
            move |e: cpal::Error| {
                if !logged {
                    log::warn!("audio output {device}: {e} (further errors are not logged)");
                    logged = true;
                }
            }
        };
        let stream = match format {
            SampleFormat::I16 => {
                let mut mono = Vec::new();
                dev.build_output_stream::<i16, _, _>(
                    config,
                    move |data: &mut [i16], _| {
                        mono.resize(data.len() / ch, 0.0);
                        play_into(&shared, &mut mono);
                        for (frame, s) in data.chunks_exact_mut(ch).zip(&mono) {
                            frame.fill((s.clamp(-1.0, 1.0) * 32767.0).round() as i16);
                        }
                    },
                    on_error,
                    None,
                )
            }
            SampleFormat::F32 => {
                let mut mono = Vec::new();
                dev.build_output_stream::<f32, _, _>(
                    config,
                    move |data: &mut [f32], _| {
                        mono.resize(data.len() / ch, 0.0);
                        play_into(&shared, &mut mono);
                        for (frame, s) in data.chunks_exact_mut(ch).zip(&mono) {
                            frame.fill(*s);
                        }
                    },
                    on_error,
                    None,
                )
            }
        }
        .map_err(open_err)?;
        stream.play().map_err(open_err)?;
        Ok(stream)
    }

    #[allow(clippy::type_complexity)]
    fn spawn_writer(
        shared: Arc<Shared>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        rate: u32,
        paced: bool,
        file: Option<(
            PathBuf,
            Arc<Mutex<Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>>>,
        )>,
    ) -> JoinHandle<Result<(), OutputError>> {
        std::thread::Builder::new()
            .name("voice-out".into())
            .spawn(move || {
                let block = (rate as usize / 50).max(1); // 20 ms
                let mut buf = vec![0.0f32; block];
                let mut next = Instant::now();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let n = {
                        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                        let n = q.fill(&mut buf);
                        if q.pieces.is_empty() {
                            shared.drained.notify_all();
                        }
                        n
                    };
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                        next = Instant::now();
                        continue;
                    }
                    shared.played.fetch_add(n as u64, Ordering::Relaxed);
                    if let Some((path, w)) = &file {
                        let mut guard = w.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(w) = guard.as_mut() {
                            for s in &buf[..n] {
                                w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
                                    .map_err(|e| OutputError::File {
                                        path: path.clone(),
                                        err: e.to_string(),
                                    })?;
                            }
                        }
                    }
                    if paced {
                        next += Duration::from_secs_f64(n as f64 / f64::from(rate));
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                if let Some((path, w)) = file {
                    if let Some(w) = w.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        w.finalize().map_err(|e| OutputError::File {
                            path,
                            err: e.to_string(),
                        })?;
                    }
                }
                Ok(())
            })
            .expect("spawning the speech output thread")
    }

    /// Samples per second the output takes.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Queues samples of `answer` (at [`Output::rate`]).
    pub fn play(&self, answer: u64, samples: Vec<f32>) {
        if samples.is_empty() {
            return;
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.stopped.contains(&answer) {
            return;
        }
        q.pieces.push_back(Piece {
            answer,
            samples,
            at: 0,
        });
    }

    /// Stops `answer` now: what is queued is dropped, and whatever of it comes later.
    pub fn stop(&self, answer: u64) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.pieces.retain(|p| p.answer != answer);
        q.stopped.push_back(answer);
        if q.stopped.len() > 16 {
            q.stopped.pop_front();
        }
        if q.pieces.is_empty() {
            self.shared.drained.notify_all();
        }
    }

    /// When the first sample of `answer` went out.
    pub fn first_sample_at(&self, answer: u64) -> Option<Instant> {
        let q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.started
            .iter()
            .find(|(a, _)| *a == answer)
            .map(|(_, t)| *t)
    }

    /// Waits until everything queued has been played; false on timeout.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        while !q.pieces.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            q = self
                .shared
                .drained
                .wait_timeout(q, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Brings a WAV file's header up to date (readable while the daemon runs).
    pub fn sync(&self) {
        if let Some(w) = &self.sync_file {
            if let Some(w) = w.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                if let Err(e) = w.flush() {
                    log::warn!("speech output {}: {e}", self.describe);
                }
            }
        }
    }

    /// Samples played so far, and device periods that found the queue busy.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.shared.played.load(Ordering::Relaxed),
            self.shared.underruns.load(Ordering::Relaxed),
        )
    }

    /// Stops the output; a file is finalized.
    pub fn close(mut self) -> Result<(), OutputError> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<(), OutputError> {
        self.stream.take();
        self.stop_thread.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Err(e) = self.close_inner() {
            log::warn!("speech output: {e}");
        }
    }
}

/// The device callback's side: never waits for the lock.
fn play_into(shared: &Shared, out: &mut [f32]) {
    match shared.queue.try_lock() {
        Ok(mut q) => {
            let n = q.fill(out);
            shared.played.fetch_add(n as u64, Ordering::Relaxed);
            if q.pieces.is_empty() {
                shared.drained.notify_all();
            }
        }
        Err(_) => {
            out.iter_mut().for_each(|s| *s = 0.0);
            shared.underruns.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads a 16-bit mono WAV written by a file output (tests, `gemba ask --speak-to`).
pub fn read_wav(path: &Path) -> Result<(u32, Vec<f32>), OutputError> {
    crate::capture::mic::read_wav_mono(path).map_err(|e| OutputError::File {
        path: path.into(),
        err: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_output_writes_what_was_played_and_stops_cut_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/answer.wav");
        let target = OutputTarget::File {
            path: path.clone(),
            paced: false,
            rate: None,
        };
        let out = Output::open(&target, 16_000).unwrap();
        assert_eq!(out.rate(), 16_000);
        out.play(1, vec![0.5; 8_000]);
        out.play(1, vec![-0.25; 8_000]);
        assert!(out.wait_drained(Duration::from_secs(5)));
        assert!(out.first_sample_at(1).is_some());
        assert!(out.first_sample_at(2).is_none());
        out.stop(2);
        out.play(2, vec![0.9; 8_000]); // stopped before it came: dropped
        out.play(3, vec![0.1; 1_000]);
        assert!(out.wait_drained(Duration::from_secs(5)));
        out.close().unwrap();
        let (rate, samples) = read_wav(&path).unwrap();
        assert_eq!(rate, 16_000);
        assert_eq!(samples.len(), 17_000);
        assert!(
            (samples[0] - 0.5).abs() < 1e-3
                && (samples[8_000] + 0.25).abs() < 1e-3
                && (samples[16_500] - 0.1).abs() < 1e-3
        );
    }

    #[test]
    fn a_paced_file_output_takes_real_time_and_a_stop_cuts_it_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paced.wav");
        let out = Output::open(
            &OutputTarget::File {
                path: path.clone(),
                paced: true,
                rate: Some(8_000),
            },
            22_050,
        )
        .unwrap();
        assert_eq!(out.rate(), 8_000);
        let t = Instant::now();
        out.play(7, vec![0.3; 8_000 * 2]); // two seconds
        std::thread::sleep(Duration::from_millis(500));
        out.stop(7);
        let took = t.elapsed();
        out.close().unwrap();
        let (_, samples) = read_wav(&path).unwrap();
        let secs = samples.len() as f64 / 8_000.0;
        assert!(
            secs > 0.2 && secs < 1.2,
            "{secs} s written in {took:?}: a stop at 0.5 s cuts a 2 s answer"
        );
    }

    #[test]
    fn output_targets_parse() {
        assert_eq!(
            OutputTarget::parse("none", SampleFormat::I16, None, 1),
            OutputTarget::None
        );
        assert_eq!(
            OutputTarget::parse("file:/tmp/a.wav", SampleFormat::I16, Some(16_000), 1),
            OutputTarget::File {
                path: "/tmp/a.wav".into(),
                paced: true,
                rate: Some(16_000)
            }
        );
        assert_eq!(
            OutputTarget::parse("hw:CARD=USB,DEV=0", SampleFormat::F32, None, 2),
            OutputTarget::Device {
                device: "hw:CARD=USB,DEV=0".into(),
                format: SampleFormat::F32,
                rate: 48_000,
                channels: 2
            }
        );
    }
}
