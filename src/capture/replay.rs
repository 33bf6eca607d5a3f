//! The replay camera: a directory or glob of JPEG/PNG images played at a fixed rate, looped,
//! behind the same [`CameraSource`] interface as a real camera. The demo daemon and the tests
//! see factory footage without a camera.
//!
//! In: a [`ReplayConfig`] (name, directory or glob, fps). Out: frames through the
//! [`FramePublisher`]. Images are decoded on first use and kept while their decoded total stays
//! within `cache_bytes` (a short clip loops with no decoding at all; a long one re-decodes the
//! images past the budget each loop). A file that fails to decode is counted as a bad frame
//! and skipped; only the first image is checked at start-up, so a wrong path fails early.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::camera::{sleep_until, CameraError, CameraSource, FramePublisher};
use super::pixel::{decode_image_file, PixelError, RgbImage};

/// Most pixels a replay file may have (8K UHD, 7680×4320: about 100 MB decoded), checked from
/// the file's header before it is decoded, so a decompression bomb in the directory costs
/// nothing but a counted bad frame.
pub const MAX_PIXELS: usize = 7680 * 4320;

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// Camera name used in frames and prompts.
    pub name: String,
    /// A directory (its `*.jpg`, `*.jpeg`, `*.png`, sorted by name) or a glob pattern.
    pub source: String,
    pub fps: f64,
    /// Start again after the last image (false: the camera ends after one pass).
    pub looped: bool,
    /// Decoded images kept in memory up to this many bytes.
    pub cache_bytes: usize,
}

impl ReplayConfig {
    pub fn new(name: impl Into<String>, source: impl Into<String>, fps: f64) -> Self {
        ReplayConfig {
            name: name.into(),
            source: source.into(),
            fps,
            looped: true,
            cache_bytes: 256 << 20,
        }
    }
}

/// Decoded frame pixels, shared with every published [`Frame`](super::Frame) that shows them.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Arc<Vec<u8>>,
}

pub struct ReplayCamera {
    config: ReplayConfig,
    files: Vec<PathBuf>,
    period: Duration,
    cache: Vec<Option<CachedImage>>,
    cached_bytes: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// The images a replay source names (a directory's `*.jpg`, `*.jpeg`, `*.png`, or a glob's
/// matches), sorted; none is an error (`config check` calls this too).
pub fn list_images(camera: &str, source_text: &str) -> Result<Vec<PathBuf>, CameraError> {
    let source = Path::new(source_text);
    let mut files: Vec<PathBuf> = if source.is_dir() {
        std::fs::read_dir(source)
            .map_err(|err| CameraError::Io {
                camera: camera.to_string(),
                path: source.to_path_buf(),
                err,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect()
    } else {
        glob::glob(source_text)
            .map_err(|e| CameraError::Glob {
                camera: camera.to_string(),
                pattern: source_text.to_string(),
                err: e.to_string(),
            })?
            .filter_map(Result::ok)
            .filter(|p| p.is_file() && is_image(p))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(CameraError::NoImages {
            camera: camera.to_string(),
            pattern: source_text.to_string(),
        });
    }
    Ok(files)
}

impl ReplayCamera {
    /// List the images and decode the first; errors name the camera and the file.
    pub fn open(config: ReplayConfig) -> Result<Self, CameraError> {
        let camera = config.name.clone();
        if !super::FPS_RANGE.contains(&config.fps) {
            return Err(CameraError::Config {
                camera,
                what: format!(
                    "fps must be in {}–{}, got {}",
                    super::FPS_RANGE.start(),
                    super::FPS_RANGE.end(),
                    config.fps
                ),
            });
        }
        let files = list_images(&camera, &config.source)?;
        let mut cam = ReplayCamera {
            period: Duration::from_secs_f64(1.0 / config.fps),
            cache: vec![None; files.len()],
            files,
            config,
            cached_bytes: 0,
        };
        cam.image(0).map_err(|e| match e {
            LoadError::Io(path, err) => CameraError::Io {
                camera: camera.clone(),
                path,
                err,
            },
            LoadError::Pixel(path, err) => CameraError::BadImage {
                camera: camera.clone(),
                path,
                err,
            },
        })?;
        Ok(cam)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Image `index` (decoded now, or from the cache).
    pub fn image(&mut self, index: usize) -> Result<CachedImage, LoadError> {
        if let Some(img) = &self.cache[index] {
            return Ok(img.clone());
        }
        let path = &self.files[index];
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io(path.clone(), e))?;
        let RgbImage { width, height, rgb } =
            decode_image_file(&bytes, &path.display().to_string(), MAX_PIXELS)
                .map_err(|e| LoadError::Pixel(path.clone(), e))?;
        let img = CachedImage {
            width,
            height,
            rgb: Arc::new(rgb),
        };
        if self.cached_bytes + img.rgb.len() <= self.config.cache_bytes {
            self.cached_bytes += img.rgb.len();
            self.cache[index] = Some(img.clone());
        }
        Ok(img)
    }
}

/// Why one replay image could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The pixel error names the file itself.
    #[error("{1}")]
    Pixel(PathBuf, PixelError),
}

impl LoadError {
    fn cause(&self) -> &'static str {
        match self {
            LoadError::Io(..) => "unreadable file",
            LoadError::Pixel(_, e) => e.cause(),
        }
    }
}

impl CameraSource for ReplayCamera {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn frame_interval(&self) -> Option<Duration> {
        Some(self.period)
    }

    fn run(mut self: Box<Self>, mut out: FramePublisher, cancel: CancellationToken) {
        // Frames are due at start + n·period. If decoding falls behind by more than a period,
        // the schedule restarts from now rather than bursting to catch up.
        let mut start = Instant::now();
        let mut n: u32 = 0;
        let mut index = 0;
        loop {
            let due = start + self.period * n;
            if !sleep_until(due, &cancel) {
                return;
            }
            match self.image(index) {
                Ok(img) => {
                    out.publish(img.width, img.height, img.rgb, 0);
                }
                Err(e) => out.bad_frame(e.cause(), &e),
            }
            n += 1;
            if Instant::now() > start + self.period * (n + 1) {
                start = Instant::now();
                n = 0;
            }
            index += 1;
            if index == self.files.len() {
                if !self.config.looped {
                    return;
                }
                index = 0;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::camera::spawn_camera;

    /// Write a solid-colour PNG (with a small marker square so images differ in structure too).
    pub(crate) fn write_png(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
        let mut pixels = Vec::new();
        for y in 0..h {
            for x in 0..w {
                if x < w / 4 && y < h / 4 {
                    pixels.extend_from_slice(&[255 - colour[0], 255 - colour[1], 255 - colour[2]]);
                } else {
                    pixels.extend_from_slice(&colour);
                }
            }
        }
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(&pixels)
            .unwrap();
    }

    fn colour_of(frame: &crate::capture::Frame) -> [u8; 3] {
        let last = frame.rgb.len() - 3;
        [frame.rgb[last], frame.rgb[last + 1], frame.rgb[last + 2]]
    }

    const COLOURS: [[u8; 3]; 3] = [[200, 0, 0], [0, 200, 0], [0, 0, 200]];

    fn three_images() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, c) in COLOURS.iter().enumerate() {
            write_png(&dir.path().join(format!("{i:02}.png")), 16, 12, *c);
        }
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        dir
    }

    #[tokio::test]
    async fn frames_arrive_at_about_the_configured_rate_and_loop() {
        let dir = three_images();
        let cam = ReplayCamera::open(ReplayConfig::new(
            "line-1",
            dir.path().to_str().unwrap(),
            40.0,
        ))
        .unwrap();
        assert_eq!(cam.files().len(), 3, "the .txt file is not an image");
        let cancel = CancellationToken::new();
        let camera = spawn_camera(Box::new(cam), cancel.clone()).unwrap();
        let mut rx = camera.subscribe();
        let mut colours = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1300) {
            let f = tokio::time::timeout(Duration::from_secs(2), rx.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((f.camera.as_str(), f.width, f.height), ("line-1", 16, 12));
            colours.push(colour_of(&f));
        }
        let elapsed = started.elapsed().as_secs_f64();
        cancel.cancel();
        let stats = camera.stats();
        // 40 fps over ~1.3 s (past the first 1 s fps window): generous bounds, not a timing test.
        let rate = stats.frames as f64 / elapsed;
        assert!(
            (20.0..=60.0).contains(&rate),
            "{} frames in {elapsed:.2} s",
            stats.frames
        );
        assert!(
            stats.fps > 20.0 && stats.fps < 60.0,
            "fps stat {}",
            stats.fps
        );
        // Every image shows, in order, and the sequence wraps around.
        let first = COLOURS.iter().position(|c| *c == colours[0]).unwrap();
        // A consumer may miss a frame under load; consecutive frames it does see follow the
        // file order (allowing one miss in ten).
        let order_ok = colours.windows(2).filter(|w| {
            let a = COLOURS.iter().position(|c| *c == w[0]).unwrap();
            let b = COLOURS.iter().position(|c| *c == w[1]).unwrap();
            b == (a + 1) % 3
        });
        assert!(
            order_ok.count() * 10 >= (colours.len() - 1) * 9,
            "frames out of file order: {colours:?}"
        );
        let first_again = colours
            .iter()
            .skip(1)
            .filter(|c| **c == COLOURS[first])
            .count();
        assert!(
            first_again >= 3,
            "the first image came back {first_again} times: {colours:?}"
        );
        tokio::task::spawn_blocking(move || camera.join())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_slow_consumer_sees_the_newest_frame_and_drops_are_counted() {
        let dir = three_images();
        let cam = ReplayCamera::open(ReplayConfig::new(
            "slow",
            dir.path().to_str().unwrap(),
            100.0,
        ))
        .unwrap();
        let cancel = CancellationToken::new();
        let camera = spawn_camera(Box::new(cam), cancel.clone()).unwrap();
        let mut rx = camera.subscribe();
        let first = rx.next().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = camera.stats().frames;
        let newest = rx.latest().unwrap();
        // Seqs start at 1 with no device gaps, and a frame is counted just before it becomes
        // visible: the newest frame is at least the one before the last counted.
        assert!(
            newest.seq + 1 >= before,
            "saw seq {} after {before} were published",
            newest.seq
        );
        assert!(newest.seq > first.seq + 10);
        let stats = camera.stats();
        // Everything published between the two takes, except the one taken, was dropped.
        assert!(
            stats.dropped >= newest.seq - first.seq - 1,
            "dropped {} of {}",
            stats.dropped,
            newest.seq - first.seq
        );
        cancel.cancel();
        // The camera ends: the receiver sees the channel close.
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            while rx.next().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "the receiver never saw the camera stop");
        tokio::task::spawn_blocking(move || camera.join())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_bad_image_is_counted_not_fatal() {
        let dir = three_images();
        std::fs::write(
            dir.path().join("01b.jpg"),
            b"\xFF\xD8 this is not really a JPEG",
        )
        .unwrap();
        let cam = ReplayCamera::open(ReplayConfig::new(
            "bad",
            dir.path().to_str().unwrap(),
            100.0,
        ))
        .unwrap();
        assert_eq!(cam.files().len(), 4);
        let cancel = CancellationToken::new();
        let camera = spawn_camera(Box::new(cam), cancel.clone()).unwrap();
        let mut rx = camera.subscribe();
        let mut seen = 0;
        while seen < 12 {
            tokio::time::timeout(Duration::from_secs(2), rx.next())
                .await
                .unwrap()
                .unwrap();
            seen += 1;
        }
        cancel.cancel();
        let stats = camera.stats();
        assert!(stats.decode_errors >= 3, "{stats:?}");
        assert!(
            stats.last_error.as_deref().unwrap().contains("01b.jpg"),
            "{stats:?}"
        );
        assert!(stats.frames >= 12);
    }

    #[test]
    fn a_non_looping_replay_ends_after_one_pass() {
        let dir = three_images();
        let mut cfg = ReplayConfig::new("once", format!("{}/*.png", dir.path().display()), 200.0);
        cfg.looped = false;
        let cam = ReplayCamera::open(cfg).unwrap();
        let camera = spawn_camera(Box::new(cam), CancellationToken::new()).unwrap();
        let stats = camera.shared_stats();
        camera.join();
        assert_eq!(stats.snapshot().frames, 3);
    }

    #[test]
    fn start_up_errors_name_the_camera_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().to_str().unwrap().to_string();
        let e = ReplayCamera::open(ReplayConfig::new("empty", &src, 10.0))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("camera empty: no JPEG or PNG images match {src}")
        );
        std::fs::write(dir.path().join("a.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
        let e = ReplayCamera::open(ReplayConfig::new("broken", &src, 10.0))
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with(&format!(
                "camera broken: image {src}/a.png: cannot decode PNG"
            )),
            "{e}"
        );
        let e = ReplayCamera::open(ReplayConfig::new("fast", &src, 0.0))
            .err()
            .unwrap();
        assert!(e.to_string().contains("fps must be in 0.001–1000"), "{e}");
        let e = ReplayCamera::open(ReplayConfig::new("glob", "[", 10.0))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("camera glob: invalid glob pattern ["),
            "{e}"
        );
    }

    #[test]
    fn small_clips_are_decoded_once() {
        let dir = three_images();
        let mut cfg = ReplayConfig::new("cache", dir.path().to_str().unwrap(), 10.0);
        cfg.cache_bytes = 2 * 16 * 12 * 3; // room for two of the three images
        let mut cam = ReplayCamera::open(cfg).unwrap();
        let a = cam.image(1).unwrap();
        let b = cam.image(1).unwrap();
        assert!(
            Arc::ptr_eq(&a.rgb, &b.rgb),
            "second use of a cached image decoded again"
        );
        let c = cam.image(2).unwrap();
        let d = cam.image(2).unwrap();
        assert!(
            !Arc::ptr_eq(&c.rgb, &d.rgb),
            "an image past the budget was cached"
        );
        assert_eq!(c.rgb, d.rgb);
    }
}
