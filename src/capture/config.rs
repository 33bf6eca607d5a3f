//! The capture sections of the config, validated here by the module that owns the sources:
//! `[[cameras]]` (V4L2 and replay cameras) and `[microphone]` (cpal and WAV microphones). Each
//! section's file schema (every field optional, unknown keys rejected) and its validation into
//! [`CameraSettings`] / [`MicSettings`] live together, so a source's keys, defaults and checks
//! are in one place.
//!
//! In: the raw sections `config.rs` parsed. Out: validated settings, or `(key, message)` for
//! `config.rs` to attach the file to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mic::{Pace, SampleFormat};
use super::negotiate::PixelFormat;
use crate::config::{HumanDuration, KeyError, Ranges, DAY};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCamera {
    pub name: String,
    /// `v4l2` or `replay`.
    pub kind: String,
    // v4l2
    pub device: Option<PathBuf>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Preference order (mjpeg, yuyv, nv12, rgb24); default: the capture module's own.
    pub formats: Option<Vec<PixelFormat>>,
    // replay
    pub source: Option<String>,
    #[serde(rename = "loop")]
    pub looped: Option<bool>,
    // both
    pub fps: Option<f64>,
    /// How often the monitor looks at the newest frame and runs the change gate (default: at
    /// each new frame, so a change is seen within one frame period and no frame is skipped
    /// while the model keeps up).
    pub interval: Option<HumanDuration>,
    /// Mean absolute difference of downscaled grey frames, in luma levels (0–255), that counts as
    /// a change (default 6).
    pub change_threshold: Option<f32>,
    /// Look again after this long even when nothing changed.
    pub max_interval: Option<HumanDuration>,
    pub prompt: Option<String>,
    /// Off: captured (for voice questions and the API) but never monitored.
    pub monitor: Option<bool>,
    /// Alert rules asked on each look (`[[cameras.alerts]]`, see src/alerts/).
    #[serde(default)]
    pub alerts: Vec<crate::alerts::rules::RawAlert>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CameraSource {
    V4l2 {
        device: PathBuf,
        width: u32,
        height: u32,
        formats: Vec<PixelFormat>,
    },
    Replay {
        source: String,
        looped: bool,
    },
}

/// `cameras[].interval` in the effective settings: the duration, or `"each new frame"`.
fn each_new_frame<S: serde::Serializer>(
    v: &Option<HumanDuration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => d.serialize(s),
        None => s.serialize_str("each new frame"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraSettings {
    pub name: String,
    pub source: CameraSource,
    pub fps: f64,
    /// `None`: at each new frame (shown as `"each new frame"`).
    #[serde(serialize_with = "each_new_frame")]
    pub interval: Option<HumanDuration>,
    pub change_threshold: f32,
    pub max_interval: HumanDuration,
    pub prompt: String,
    pub monitor: bool,
    pub alerts: Vec<crate::alerts::AlertRule>,
}

/// Validates `[[cameras]]`; `base` resolves relative replay sources (the config's directory).
/// A replay source that matches no image is refused here, before any model loads.
pub fn validate_cameras(raw: Vec<RawCamera>, base: &Path) -> Result<Vec<CameraSettings>, KeyError> {
    let bad = |key: &str, msg: String| -> KeyError { (key.to_string(), msg) };
    let range = Ranges { bad: &bad };
    let mut cameras: Vec<CameraSettings> = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("cameras[{i}].{k}");
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(bad(&key("name"), format!("\"{}\" must be letters, digits, '-' or '_' (it appears in prompts and [cam:NAME] citations)", c.name)));
        }
        if cameras.iter().any(|o| o.name == c.name) {
            return Err(bad(
                &key("name"),
                format!("\"{}\" is used by another camera", c.name),
            ));
        }
        for (k, v) in [("width", c.width), ("height", c.height)] {
            if let Some(v) = v {
                range.int(&key(k), v, 16, 16_384)?;
            }
        }
        let source = match c.kind.as_str() {
            "v4l2" => CameraSource::V4l2 {
                device: c.device.ok_or_else(|| {
                    bad(
                        &key("device"),
                        "a v4l2 camera needs a device (e.g. /dev/video0)".into(),
                    )
                })?,
                width: c.width.unwrap_or(1280),
                height: c.height.unwrap_or(720),
                // Empty: the capture module's own preference (cheapest to convert first).
                formats: c.formats.unwrap_or_default(),
            },
            "replay" => {
                CameraSource::Replay {
                    source: {
                        let s = c.source.ok_or_else(|| {
                            bad(
                                &key("source"),
                                "a replay camera needs a source (a directory or glob of images)"
                                    .into(),
                            )
                        })?;
                        let s = if Path::new(&s).is_absolute() {
                            s
                        } else {
                            base.join(s).display().to_string()
                        };
                        // A source that matches nothing would only fail once the model had loaded.
                        if let Err(e) = crate::capture::replay::list_images(&c.name, &s) {
                            return Err(bad(&key("source"), e.to_string()));
                        }
                        s
                    },
                    looped: c.looped.unwrap_or(true),
                }
            }
            other => {
                return Err(bad(
                    &key("kind"),
                    format!("\"{other}\" is not a camera kind (v4l2, replay)"),
                ))
            }
        };
        let fps = c.fps.unwrap_or(match source {
            CameraSource::V4l2 { .. } => 15.0,
            CameraSource::Replay { .. } => 1.0,
        });
        range.float(
            &key("fps"),
            fps,
            *crate::capture::FPS_RANGE.start(),
            *crate::capture::FPS_RANGE.end(),
            " frames per second",
        )?;
        let change_threshold = c.change_threshold.unwrap_or(6.0);
        range.float(
            &key("change_threshold"),
            f64::from(change_threshold),
            0.0,
            255.0,
            " (luma levels)",
        )?;
        let interval = match c.interval {
            Some(i) => Some(range.duration(&key("interval"), i, Duration::from_millis(10), DAY)?),
            None => None,
        };
        let max_interval = range.duration(
            &key("max_interval"),
            c.max_interval
                .unwrap_or(HumanDuration(Duration::from_secs(600))),
            Duration::from_secs(1),
            30 * DAY,
        )?;
        let alerts = crate::alerts::rules::validate(i, &c.name, c.alerts)?;
        cameras.push(CameraSettings {
            name: c.name,
            source,
            fps,
            interval,
            change_threshold,
            max_interval,
            prompt: c
                .prompt
                .unwrap_or_else(|| "Give me a status report.".into()),
            monitor: c.monitor.unwrap_or(true),
            alerts,
        });
    }
    Ok(cameras)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMicrophone {
    /// `cpal` (a sound device; default) or `wav` (a file replayed as a microphone).
    pub kind: Option<String>,
    /// Name used in reports (default `mic`).
    pub name: Option<String>,
    /// cpal: the ALSA PCM or device name (default `default`).
    pub device: Option<String>,
    /// cpal: `i16` (default) or `f32` — opened exactly so, never converted by ALSA.
    pub format: Option<String>,
    pub rate: Option<u32>,
    pub channels: Option<u16>,
    /// Length of each chunk handed on (default 32ms: one VAD window at 16 kHz).
    pub chunk: Option<HumanDuration>,
    /// wav: the file.
    pub path: Option<PathBuf>,
    /// wav: `realtime` (default) or `fast`.
    pub pace: Option<String>,
}

fn ser_format<S: serde::Serializer>(f: &SampleFormat, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match f {
        SampleFormat::I16 => "i16",
        SampleFormat::F32 => "f32",
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MicSource {
    Cpal {
        device: String,
        #[serde(serialize_with = "ser_format")]
        format: SampleFormat,
        rate: u32,
        channels: u16,
    },
    Wav {
        path: PathBuf,
        realtime: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MicSettings {
    pub name: String,
    pub source: MicSource,
    pub chunk: HumanDuration,
}

impl MicSettings {
    pub fn pace(&self) -> Pace {
        match self.source {
            MicSource::Wav {
                realtime: false, ..
            } => Pace::Fast,
            _ => Pace::RealTime,
        }
    }
}

pub(crate) fn format_of(key: &str, s: Option<&str>) -> Result<SampleFormat, KeyError> {
    match s.unwrap_or("i16") {
        "i16" | "s16" | "s16le" => Ok(SampleFormat::I16),
        "f32" | "float" => Ok(SampleFormat::F32),
        other => Err((
            key.into(),
            format!("\"{other}\" is not a sample format (i16, f32)"),
        )),
    }
}

/// Validates `[microphone]`; `abs` resolves relative paths against the config's directory.
pub fn validate_microphone(
    raw: RawMicrophone,
    abs: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<MicSettings, KeyError> {
    let name = raw.name.unwrap_or_else(|| "mic".into());
    if name.is_empty() {
        return Err(("microphone.name".into(), "must not be empty".into()));
    }
    let chunk = raw
        .chunk
        .unwrap_or(HumanDuration(Duration::from_millis(32)));
    if chunk.0 < Duration::from_millis(1) || chunk.0 > Duration::from_secs(1) {
        return Err((
            "microphone.chunk".into(),
            format!("{:?} is out of range 1ms–1s", chunk.0),
        ));
    }
    // Checked wherever they are written, even where the kind ignores them (a WAV has its own).
    let rate = raw.rate.unwrap_or(16_000);
    if !(8_000..=192_000).contains(&rate) {
        return Err((
            "microphone.rate".into(),
            format!("{rate} Hz is out of range 8000–192000"),
        ));
    }
    let channels = raw.channels.unwrap_or(1);
    if !(1..=32).contains(&channels) {
        return Err((
            "microphone.channels".into(),
            format!("{channels} is out of range 1–32"),
        ));
    }
    let source = match raw.kind.as_deref().unwrap_or("cpal") {
        "cpal" | "alsa" => MicSource::Cpal {
            device: raw.device.unwrap_or_else(|| "default".into()),
            format: format_of("microphone.format", raw.format.as_deref())?,
            rate,
            channels,
        },
        "wav" => MicSource::Wav {
            path: abs(raw.path.ok_or_else(|| {
                (
                    "microphone.path".to_string(),
                    "a wav microphone needs a path".to_string(),
                )
            })?),
            realtime: match raw.pace.as_deref().unwrap_or("realtime") {
                "realtime" => true,
                "fast" => false,
                other => {
                    return Err((
                        "microphone.pace".into(),
                        format!("\"{other}\" is not a pace (realtime, fast)"),
                    ))
                }
            },
        },
        other => {
            return Err((
                "microphone.kind".into(),
                format!("\"{other}\" is not a microphone kind (cpal, wav)"),
            ))
        }
    };
    Ok(MicSettings {
        name,
        source,
        chunk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            PathBuf::from("/etc/gemba").join(p)
        }
    }

    fn camera(extra: &str) -> Result<Vec<CameraSettings>, KeyError> {
        let raw: RawCamera = toml::from_str(&format!(
            "name = \"cam\"\nkind = \"v4l2\"\ndevice = \"/dev/video9\"\n{extra}"
        ))
        .map_err(|e| ("toml".to_string(), e.to_string()))?;
        validate_cameras(vec![raw], Path::new("/etc/gemba"))
    }

    #[test]
    fn pixel_formats_are_typed_in_the_order_written() {
        let c = camera("formats = [\"yuyv\", \"mjpeg\", \"rgb24\", \"nv12\"]").unwrap();
        match &c[0].source {
            CameraSource::V4l2 { formats, .. } => assert_eq!(
                formats,
                &[
                    PixelFormat::Yuyv,
                    PixelFormat::Mjpeg,
                    PixelFormat::Rgb24,
                    PixelFormat::Nv12
                ]
            ),
            other => panic!("{other:?}"),
        }
        // `config check` shows them as written.
        let shown = serde_json::to_string(&c[0].source).unwrap();
        assert!(
            shown.contains("\"formats\":[\"yuyv\",\"mjpeg\",\"rgb24\",\"nv12\"]"),
            "{shown}"
        );
        // None written: the capture module's own preference.
        match &camera("").unwrap()[0].source {
            CameraSource::V4l2 { formats, .. } => assert!(formats.is_empty()),
            other => panic!("{other:?}"),
        }
        let (_, msg) = camera("formats = [\"MJPG\"]").unwrap_err();
        assert!(
            msg.contains("\"MJPG\" is not a format gemba decodes (mjpeg, yuyv, nv12, rgb24)"),
            "{msg}"
        );
    }

    #[test]
    fn bad_camera_values_name_their_key() {
        for (extra, key) in [
            ("width = 8", "cameras[0].width"),
            ("fps = 0.0", "cameras[0].fps"),
            ("change_threshold = 300.0", "cameras[0].change_threshold"),
            ("max_interval = \"0s\"", "cameras[0].max_interval"),
        ] {
            assert_eq!(camera(extra).unwrap_err().0, key, "{extra}");
        }
    }

    #[test]
    fn microphone_defaults_and_paths() {
        let m = validate_microphone(RawMicrophone::default(), &id).unwrap();
        assert_eq!(
            m.source,
            MicSource::Cpal {
                device: "default".into(),
                format: SampleFormat::I16,
                rate: 16_000,
                channels: 1
            }
        );
        let w = validate_microphone(
            RawMicrophone {
                kind: Some("wav".into()),
                path: Some("q.wav".into()),
                pace: Some("fast".into()),
                ..Default::default()
            },
            &id,
        )
        .unwrap();
        assert_eq!(
            w.source,
            MicSource::Wav {
                path: "/etc/gemba/q.wav".into(),
                realtime: false
            }
        );
        assert_eq!(w.pace(), Pace::Fast);
    }

    #[test]
    fn bad_microphone_values_name_their_key() {
        for (raw, key) in [
            (
                RawMicrophone {
                    kind: Some("usb".into()),
                    ..Default::default()
                },
                "microphone.kind",
            ),
            (
                RawMicrophone {
                    kind: Some("wav".into()),
                    ..Default::default()
                },
                "microphone.path",
            ),
            (
                RawMicrophone {
                    format: Some("s24".into()),
                    ..Default::default()
                },
                "microphone.format",
            ),
            (
                RawMicrophone {
                    rate: Some(1000),
                    ..Default::default()
                },
                "microphone.rate",
            ),
            (
                RawMicrophone {
                    channels: Some(0),
                    ..Default::default()
                },
                "microphone.channels",
            ),
        ] {
            assert_eq!(validate_microphone(raw, &id).unwrap_err().0, key);
        }
    }
}
