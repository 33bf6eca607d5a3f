//! V4L2 format negotiation as a pure function: what the device offers + what the configuration
//! asks for → the format to set, or an error that lists everything the device offers.
//!
//! Kept apart from the ioctl code (and compiled without the `v4l2` feature) so it is tested
//! exhaustively on tables here, with no camera. The V4L2 source fills [`OfferedFormat`]s from
//! `VIDIOC_ENUM_FMT` / `ENUM_FRAMESIZES` / `ENUM_FRAMEINTERVALS` and calls [`negotiate`].
//!
//! Policy: the size must be offered exactly (we never let the driver silently pick another),
//! the rate must be offered within 0.5 % (so 30000/1001 satisfies "30 fps"), and among the
//! formats that have both, the first in the request's preference order wins. The default order
//! prefers what needs no decoding (RGB24, then the exact YUV conversions) over MJPEG, which costs
//! a JPEG decode per frame; MJPEG still wins whenever it is the only way to get the size and rate
//! over USB bandwidth (typically 1080p30).

use std::fmt;

use thiserror::Error;

/// The pixel formats gemba can turn into RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
    Nv12,
    Rgb24,
}

impl PixelFormat {
    /// Preference when the configuration names none (see the module docs).
    pub const DEFAULT_PREFERENCE: [PixelFormat; 4] = [
        PixelFormat::Rgb24,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Mjpeg,
    ];

    /// The V4L2 fourcc code.
    pub const fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Rgb24 => *b"RGB3",
        }
    }

    /// Every format, in the order the config's error message lists them.
    pub const ALL: [PixelFormat; 4] = [
        PixelFormat::Mjpeg,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Rgb24,
    ];

    /// The name a config's `formats` list uses.
    pub const fn name(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Rgb24 => "rgb24",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        PixelFormat::ALL.into_iter().find(|f| f.fourcc() == code)
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(fourcc_str(self.fourcc()).as_str())
    }
}

impl std::str::FromStr for PixelFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PixelFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!("\"{s}\" is not a format gemba decodes (mjpeg, yuyv, nv12, rgb24)")
            })
    }
}

impl serde::Serialize for PixelFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for PixelFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A fourcc as text (non-printable bytes shown as `?`).
pub fn fourcc_str(code: [u8; 4]) -> String {
    code.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// A frame interval in seconds per frame, as V4L2 states it (`1/30` = 30 fps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub num: u32,
    pub den: u32,
}

impl Interval {
    pub fn fps(self) -> f64 {
        if self.num == 0 {
            0.0
        } else {
            f64::from(self.den) / f64::from(self.num)
        }
    }
}

/// Frame sizes a format offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeOffer {
    Discrete {
        width: u32,
        height: u32,
    },
    /// `V4L2_FRMSIZE_TYPE_STEPWISE` / `CONTINUOUS` (continuous = step 1).
    Stepwise {
        min_w: u32,
        max_w: u32,
        step_w: u32,
        min_h: u32,
        max_h: u32,
        step_h: u32,
    },
}

impl SizeOffer {
    fn contains(&self, w: u32, h: u32) -> bool {
        match *self {
            SizeOffer::Discrete { width, height } => width == w && height == h,
            SizeOffer::Stepwise {
                min_w,
                max_w,
                step_w,
                min_h,
                max_h,
                step_h,
            } => {
                let on = |v: u32, min: u32, max: u32, step: u32| {
                    v >= min && v <= max && (v - min) % step.max(1) == 0
                };
                on(w, min_w, max_w, step_w) && on(h, min_h, max_h, step_h)
            }
        }
    }
}

/// Frame intervals offered at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntervalOffer {
    Discrete(Interval),
    /// Any interval between `min` (fastest) and `max` (slowest).
    Stepwise {
        min: Interval,
        max: Interval,
    },
}

/// One size of one format, and the rates offered at it. For a stepwise size the V4L2 layer
/// queries the intervals at the requested size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMode {
    pub size: SizeOffer,
    pub intervals: Vec<IntervalOffer>,
}

/// One format as the device describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFormat {
    pub fourcc: [u8; 4],
    /// The driver's description (e.g. "Motion-JPEG").
    pub description: String,
    pub modes: Vec<OfferedMode>,
}

/// What the configuration asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatRequest {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Acceptable formats, most preferred first.
    pub formats: Vec<PixelFormat>,
}

/// What to set on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatChoice {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub interval: Interval,
}

#[derive(Debug, Error, PartialEq)]
pub enum NegotiateError {
    #[error("invalid camera request {width}x{height} @ {fps} fps: {what}")]
    InvalidRequest {
        width: u32,
        height: u32,
        fps: f64,
        what: &'static str,
    },
    #[error(
        "the device offers none of the formats gemba decodes ({wanted}); it offers: {offered}"
    )]
    NoUsableFormat { wanted: String, offered: String },
    #[error("the device offers no {wanted} at {width}x{height} @ {fps} fps; it offers: {offered}")]
    NoMatch {
        wanted: String,
        width: u32,
        height: u32,
        fps: f64,
        offered: String,
    },
}

/// Rates closer than this (relative) count as the same.
const RATE_TOLERANCE: f64 = 0.005;

fn rate_matches(offer: &IntervalOffer, fps: f64) -> Option<Interval> {
    let close = |a: f64| (a - fps).abs() <= fps * RATE_TOLERANCE;
    match *offer {
        IntervalOffer::Discrete(i) => close(i.fps()).then_some(i),
        IntervalOffer::Stepwise { min, max } => {
            // min interval = highest rate.
            let (lo, hi) = (max.fps(), min.fps());
            (fps >= lo * (1.0 - RATE_TOLERANCE) && fps <= hi * (1.0 + RATE_TOLERANCE))
                .then(|| exact_interval(fps))
        }
    }
}

/// `fps` as an interval fraction: whole rates as 1/fps, others to a thousandth.
fn exact_interval(fps: f64) -> Interval {
    if (fps - fps.round()).abs() < 1e-9 {
        Interval {
            num: 1,
            den: fps.round() as u32,
        }
    } else {
        Interval {
            num: 1000,
            den: (fps * 1000.0).round() as u32,
        }
    }
}

/// Choose the format to set. Pure: see the module docs for the policy.
pub fn negotiate(
    offered: &[OfferedFormat],
    req: &FormatRequest,
) -> Result<FormatChoice, NegotiateError> {
    let invalid = |what| NegotiateError::InvalidRequest {
        width: req.width,
        height: req.height,
        fps: req.fps,
        what,
    };
    if req.width == 0 || req.height == 0 {
        return Err(invalid("width and height must be positive"));
    }
    if !(req.fps.is_finite() && req.fps > 0.0) {
        return Err(invalid("fps must be a positive number"));
    }
    if req.formats.is_empty() {
        return Err(invalid("no acceptable pixel formats given"));
    }
    let wanted = req
        .formats
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if !offered
        .iter()
        .any(|o| PixelFormat::from_fourcc(o.fourcc).is_some_and(|f| req.formats.contains(&f)))
    {
        return Err(NegotiateError::NoUsableFormat {
            wanted,
            offered: describe_offers(offered),
        });
    }
    for &format in &req.formats {
        for offer in offered.iter().filter(|o| o.fourcc == format.fourcc()) {
            for mode in offer
                .modes
                .iter()
                .filter(|m| m.size.contains(req.width, req.height))
            {
                if let Some(interval) = mode.intervals.iter().find_map(|i| rate_matches(i, req.fps))
                {
                    return Ok(FormatChoice {
                        format,
                        width: req.width,
                        height: req.height,
                        interval,
                    });
                }
            }
        }
    }
    Err(NegotiateError::NoMatch {
        wanted,
        width: req.width,
        height: req.height,
        fps: req.fps,
        offered: describe_offers(offered),
    })
}

fn fmt_fps(fps: f64) -> String {
    if (fps - fps.round()).abs() < 0.005 {
        format!("{}", fps.round())
    } else {
        format!("{fps:.2}")
    }
}

/// A readable listing of everything offered, e.g.
/// `MJPG (Motion-JPEG) 1920x1080@30,15 1280x720@30; YUYV (YUYV 4:2:2) 640x480@30;
/// H264 (H.264, not decoded by gemba) 1920x1080@30`.
pub fn describe_offers(offered: &[OfferedFormat]) -> String {
    if offered.is_empty() {
        return "nothing (no capture formats enumerated)".into();
    }
    offered
        .iter()
        .map(|o| {
            let usable = PixelFormat::from_fourcc(o.fourcc).is_some();
            let mut s = format!(
                "{} ({}{})",
                fourcc_str(o.fourcc),
                o.description,
                if usable { "" } else { ", not decoded by gemba" }
            );
            for m in &o.modes {
                let size = match m.size {
                    SizeOffer::Discrete { width, height } => format!("{width}x{height}"),
                    SizeOffer::Stepwise {
                        min_w,
                        max_w,
                        step_w,
                        min_h,
                        max_h,
                        step_h,
                    } => {
                        format!("{min_w}x{min_h}..{max_w}x{max_h} step {step_w}/{step_h}")
                    }
                };
                let rates = m
                    .intervals
                    .iter()
                    .map(|i| match *i {
                        IntervalOffer::Discrete(i) => fmt_fps(i.fps()),
                        IntervalOffer::Stepwise { min, max } => {
                            format!("{}-{}", fmt_fps(max.fps()), fmt_fps(min.fps()))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                s.push_str(&format!(
                    " {size}@{}",
                    if rates.is_empty() { "?".into() } else { rates }
                ));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use PixelFormat::*;

    fn iv(fps: u32) -> IntervalOffer {
        IntervalOffer::Discrete(Interval { num: 1, den: fps })
    }

    fn mode(w: u32, h: u32, rates: &[u32]) -> OfferedMode {
        OfferedMode {
            size: SizeOffer::Discrete {
                width: w,
                height: h,
            },
            intervals: rates.iter().map(|&r| iv(r)).collect(),
        }
    }

    fn fmt(code: &[u8; 4], desc: &str, modes: Vec<OfferedMode>) -> OfferedFormat {
        OfferedFormat {
            fourcc: *code,
            description: desc.into(),
            modes,
        }
    }

    /// A typical UVC webcam: MJPEG everywhere at 30, YUYV only slow at high resolution, and an
    /// H.264 stream we do not decode.
    fn webcam() -> Vec<OfferedFormat> {
        vec![
            fmt(
                b"MJPG",
                "Motion-JPEG",
                vec![
                    mode(1920, 1080, &[30, 15]),
                    mode(1280, 720, &[30]),
                    mode(640, 480, &[30]),
                ],
            ),
            fmt(
                b"YUYV",
                "YUYV 4:2:2",
                vec![
                    mode(1920, 1080, &[5]),
                    mode(1280, 720, &[10]),
                    mode(640, 480, &[30, 15]),
                ],
            ),
            fmt(b"H264", "H.264", vec![mode(1920, 1080, &[30])]),
        ]
    }

    fn req(w: u32, h: u32, fps: f64, formats: &[PixelFormat]) -> FormatRequest {
        FormatRequest {
            width: w,
            height: h,
            fps,
            formats: formats.to_vec(),
        }
    }

    fn choice(
        format: PixelFormat,
        w: u32,
        h: u32,
        num: u32,
        den: u32,
    ) -> Result<FormatChoice, NegotiateError> {
        Ok(FormatChoice {
            format,
            width: w,
            height: h,
            interval: Interval { num, den },
        })
    }

    const DEF: &[PixelFormat] = &PixelFormat::DEFAULT_PREFERENCE;

    #[test]
    fn table_of_offers_and_requests() {
        let ntsc = vec![fmt(
            b"YUYV",
            "YUYV",
            vec![OfferedMode {
                size: SizeOffer::Discrete {
                    width: 640,
                    height: 480,
                },
                intervals: vec![IntervalOffer::Discrete(Interval {
                    num: 1001,
                    den: 30000,
                })],
            }],
        )];
        let stepwise = vec![fmt(
            b"NV12",
            "Y/CbCr 4:2:0",
            vec![OfferedMode {
                size: SizeOffer::Stepwise {
                    min_w: 64,
                    max_w: 4096,
                    step_w: 16,
                    min_h: 64,
                    max_h: 2160,
                    step_h: 8,
                },
                intervals: vec![IntervalOffer::Stepwise {
                    min: Interval { num: 1, den: 60 },
                    max: Interval { num: 1, den: 1 },
                }],
            }],
        )];
        let rgb_and_yuyv = vec![
            fmt(b"YUYV", "YUYV", vec![mode(320, 240, &[30])]),
            fmt(b"RGB3", "RGB3", vec![mode(320, 240, &[30])]),
        ];
        let webcam = webcam();
        type Case<'a> = (
            &'a str,
            &'a [OfferedFormat],
            FormatRequest,
            Result<FormatChoice, NegotiateError>,
        );
        let cases: Vec<Case> = vec![
            (
                "uncompressed preferred when it has the rate",
                &webcam,
                req(640, 480, 30.0, DEF),
                choice(Yuyv, 640, 480, 1, 30),
            ),
            (
                "MJPEG when YUYV is too slow at that size",
                &webcam,
                req(1920, 1080, 30.0, DEF),
                choice(Mjpeg, 1920, 1080, 1, 30),
            ),
            (
                "YUYV at its own slow rate",
                &webcam,
                req(1920, 1080, 5.0, DEF),
                choice(Yuyv, 1920, 1080, 1, 5),
            ),
            (
                "explicit preference wins",
                &webcam,
                req(640, 480, 30.0, &[Mjpeg, Yuyv]),
                choice(Mjpeg, 640, 480, 1, 30),
            ),
            (
                "a lower discrete rate",
                &webcam,
                req(1920, 1080, 15.0, DEF),
                choice(Mjpeg, 1920, 1080, 1, 15),
            ),
            (
                "29.97 satisfies 30",
                &ntsc,
                req(640, 480, 30.0, DEF),
                choice(Yuyv, 640, 480, 1001, 30000),
            ),
            (
                "stepwise size and rate",
                &stepwise,
                req(1280, 720, 25.0, DEF),
                choice(Nv12, 1280, 720, 1, 25),
            ),
            (
                "stepwise fractional rate",
                &stepwise,
                req(1280, 720, 7.5, DEF),
                choice(Nv12, 1280, 720, 1000, 7500),
            ),
            (
                "RGB24 first by default",
                &rgb_and_yuyv,
                req(320, 240, 30.0, DEF),
                choice(Rgb24, 320, 240, 1, 30),
            ),
            (
                "only YUYV wanted",
                &rgb_and_yuyv,
                req(320, 240, 30.0, &[Yuyv]),
                choice(Yuyv, 320, 240, 1, 30),
            ),
        ];
        for (name, offered, request, expected) in cases {
            assert_eq!(negotiate(offered, &request), expected, "{name}");
        }
    }

    #[test]
    fn no_match_lists_everything_the_device_offers() {
        let e = negotiate(&webcam(), &req(1280, 720, 60.0, DEF)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the device offers no RGB3, YUYV, NV12, MJPG at 1280x720 @ 60 fps; it offers: \
             MJPG (Motion-JPEG) 1920x1080@30,15 1280x720@30 640x480@30; \
             YUYV (YUYV 4:2:2) 1920x1080@5 1280x720@10 640x480@30,15; \
             H264 (H.264, not decoded by gemba) 1920x1080@30"
        );
        // Size not offered at all, only MJPEG wanted.
        let e = negotiate(&webcam(), &req(800, 600, 30.0, &[Mjpeg])).unwrap_err();
        assert!(
            matches!(
                e,
                NegotiateError::NoMatch {
                    width: 800,
                    height: 600,
                    ..
                }
            ),
            "{e}"
        );
        // Off the stepwise grid.
        let stepwise = vec![fmt(
            b"NV12",
            "NV12",
            vec![OfferedMode {
                size: SizeOffer::Stepwise {
                    min_w: 64,
                    max_w: 4096,
                    step_w: 16,
                    min_h: 64,
                    max_h: 2160,
                    step_h: 8,
                },
                intervals: vec![IntervalOffer::Stepwise {
                    min: Interval { num: 1, den: 30 },
                    max: Interval { num: 1, den: 1 },
                }],
            }],
        )];
        assert!(negotiate(&stepwise, &req(1000, 720, 30.0, DEF)).is_err());
        assert!(negotiate(&stepwise, &req(1280, 720, 31.0, DEF)).is_err());
        assert!(negotiate(&stepwise, &req(1280, 720, 0.5, DEF)).is_err());
    }

    #[test]
    fn device_with_nothing_we_decode() {
        let h264_only = vec![fmt(b"H264", "H.264", vec![mode(1920, 1080, &[30])])];
        let e = negotiate(&h264_only, &req(1920, 1080, 30.0, DEF)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the device offers none of the formats gemba decodes (RGB3, YUYV, NV12, MJPG); \
             it offers: H264 (H.264, not decoded by gemba) 1920x1080@30"
        );
        // MJPEG offered but only YUYV acceptable.
        let e = negotiate(&webcam()[..1], &req(640, 480, 30.0, &[Yuyv])).unwrap_err();
        assert!(matches!(e, NegotiateError::NoUsableFormat { .. }), "{e}");
        let e = negotiate(&[], &req(640, 480, 30.0, DEF)).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("it offers: nothing (no capture formats enumerated)"),
            "{e}"
        );
    }

    #[test]
    fn invalid_requests() {
        for (r, what) in [
            (req(0, 480, 30.0, DEF), "width and height"),
            (req(640, 480, 0.0, DEF), "fps"),
            (req(640, 480, f64::NAN, DEF), "fps"),
            (req(640, 480, 30.0, &[]), "no acceptable"),
        ] {
            let e = negotiate(&webcam(), &r).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn fourccs_round_trip() {
        for f in PixelFormat::DEFAULT_PREFERENCE {
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(*b"H264"), None);
        assert_eq!(fourcc_str([b'Y', b'1', b'6', b' ']), "Y16");
        assert_eq!(fourcc_str([0, b'A', b'B', b'C']), "?ABC");
    }
}
