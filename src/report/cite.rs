//! Citations: the model cites a camera's frame with `[cam:NAME]` inside a sentence, or a region
//! of it with `[cam:NAME box:x0,y0,x1,y1]`; the report shows that frame (and the region) at that
//! point and the reader never sees the marker.
//!
//! What flows in: one streamed sentence and the names of the cameras in the query. What flows
//! out: the sentence without markers (spacing tidied), the cited cameras in order of first
//! mention, the cited regions in order, the names that matched no camera (the caller counts them
//! and logs once — a model inventing a camera is not an error) and the region markers that were
//! dropped as malformed (the caller counts and logs them). Pure: no I/O, no state.
//!
//! Region boxes use the convention of Qwen2.5-VL's and Florence-2's location outputs: integers
//! 0–1000 of the frame's width and height, `x0,y0` the top-left and `x1,y1` the bottom-right
//! corner. A box that is not four integers, leaves 0–1000, or is empty (`x0 >= x1`,
//! `y0 >= y1`), or names no camera of the query, is dropped: its marker leaves the text.

use serde::{Deserialize, Serialize};

/// The marker's bounds live with the sentence splitter (model/ may not import report/), which
/// never cuts inside a marker; parsing them out of a finished sentence is this module's.
pub use crate::model::stream::{may_be_marker, MAX_MARKER_BYTES};

/// A sentence with its citations taken out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Citations {
    /// The sentence as the reader sees it.
    pub text: String,
    /// Cited cameras of the query (their configured spelling), first mention first, no repeats.
    /// A region's camera counts as cited.
    pub cameras: Vec<String>,
    /// Cited regions, in order of mention, no repeats.
    pub regions: Vec<Region>,
    /// Cited names that are no camera of the query, as written, no repeats.
    pub unknown: Vec<String>,
    /// Region markers dropped, each with why (the marker as written, the reason).
    pub dropped: Vec<DroppedRegion>,
}

/// A region of one camera's frame, in thousandths of its width and height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BoxK {
    pub x0: u16,
    pub y0: u16,
    pub x1: u16,
    pub y1: u16,
}

impl BoxK {
    /// The box in pixels of a `width`×`height` frame: `(x, y, w, h)`, at least 1×1, inside it.
    pub fn pixels(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let sx = |v: u16| (u64::from(v) * u64::from(width) / 1000) as u32;
        let sy = |v: u16| (u64::from(v) * u64::from(height) / 1000) as u32;
        let x = sx(self.x0).min(width.saturating_sub(1));
        let y = sy(self.y0).min(height.saturating_sub(1));
        let w = sx(self.x1).saturating_sub(x).max(1).min(width - x);
        let h = sy(self.y1).saturating_sub(y).max(1).min(height - y);
        (x, y, w, h)
    }
}

impl std::fmt::Display for BoxK {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{}", self.x0, self.y0, self.x1, self.y1)
    }
}

/// One cited region: a camera of the query and a box of its frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Region {
    pub camera: String,
    #[serde(rename = "box")]
    pub bbox: BoxK,
}

/// A region marker that was taken out of the text but not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRegion {
    /// The marker's inside, as written.
    pub marker: String,
    pub reason: &'static str,
}

/// What a complete marker holds.
enum Marker<'a> {
    Camera(&'a str),
    Region(&'a str, Result<BoxK, &'static str>),
}

/// Strips `[cam:NAME]` and `[cam:NAME box:x0,y0,x1,y1]` markers from `sentence`. Markers are
/// matched leniently as models write them: `cam` and `box` in any case, spaces around the colons,
/// the name and the numbers, the numbers optionally in parentheses. A name matches a camera
/// exactly, or case-insensitively when that picks out exactly one camera. Anything that is not a
/// complete marker (`[cam:` without `]`, `[1]`) stays as text.
pub fn cite<S: AsRef<str>>(sentence: &str, cameras: &[S]) -> Citations {
    let mut out = Citations::default();
    let mut text = String::with_capacity(sentence.len());
    let mut rest = sentence;
    while let Some(open) = rest.find('[') {
        let Some((found, inner, after)) = marker(&rest[open..]) else {
            text.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        text.push_str(&rest[..open]);
        match found {
            Marker::Camera(name) => match resolve(name, cameras) {
                Some(cam) => push_once(&mut out.cameras, cam),
                None => push_once(&mut out.unknown, name),
            },
            Marker::Region(name, bbox) => {
                let mut reject = |reason| {
                    out.dropped.push(DroppedRegion {
                        marker: inner.to_string(),
                        reason,
                    })
                };
                match (resolve(name, cameras), bbox) {
                    (Some(cam), Ok(bbox)) => {
                        push_once(&mut out.cameras, cam);
                        let region = Region {
                            camera: cam.to_string(),
                            bbox,
                        };
                        if !out.regions.contains(&region) {
                            out.regions.push(region);
                        }
                    }
                    (_, Err(reason)) => reject(reason),
                    (None, Ok(_)) => reject("unknown camera"),
                }
            }
        }
        // Close the gap the marker leaves: one space between words, none before punctuation.
        let had_text = {
            let trimmed = text.trim_end().len();
            text.truncate(trimmed);
            !text.is_empty()
        };
        rest = after.trim_start();
        match rest.chars().next() {
            Some(c) if had_text && !is_closing(c) => text.push(' '),
            _ => {}
        }
    }
    text.push_str(rest);
    out.text = text.trim().to_string();
    out
}

/// If `s` starts with a complete marker: what it holds, its inside and the text after it.
fn marker(s: &str) -> Option<(Marker<'_>, &str, &str)> {
    let inner_end = s.find(']')?;
    if inner_end - 1 > MAX_MARKER_BYTES {
        return None;
    }
    let raw = &s[1..inner_end];
    let inner = raw.trim();
    // `get` rather than indexing: the bracket may hold any text, a multi-byte char included.
    if !inner.get(..3)?.eq_ignore_ascii_case("cam") {
        return None;
    }
    let body = inner[3..].trim_start().strip_prefix(':')?.trim();
    if body.is_empty() || body.contains(['[', '\n']) {
        return None;
    }
    let after = &s[inner_end + 1..];
    // `NAME box:…`: the name ends at the first space; what follows must be the box.
    if let Some((name, tail)) = body.split_once(char::is_whitespace) {
        let tail = tail.trim_start();
        if tail.get(..3).is_some_and(|b| b.eq_ignore_ascii_case("box")) {
            if let Some(coords) = tail[3..].trim_start().strip_prefix(':') {
                return Some((Marker::Region(name, parse_box(coords)), inner, after));
            }
        }
    }
    Some((Marker::Camera(body), inner, after))
}

/// `x0,y0,x1,y1` (spaces and parentheses allowed) as a box, or why not.
pub fn parse_box(coords: &str) -> Result<BoxK, &'static str> {
    let coords = coords.trim().trim_start_matches('(').trim_end_matches(')');
    let mut v = [0u16; 4];
    let mut parts = coords.split(',');
    for slot in &mut v {
        let part = parts.next().ok_or("fewer than four numbers")?.trim();
        let n: u32 = part.parse().map_err(|_| "not a whole number")?;
        if n > 1000 {
            return Err("outside 0-1000");
        }
        *slot = n as u16;
    }
    if parts.next().is_some() {
        return Err("more than four numbers");
    }
    let [x0, y0, x1, y1] = v;
    if x0 >= x1 || y0 >= y1 {
        return Err("empty box (x0 >= x1 or y0 >= y1)");
    }
    Ok(BoxK { x0, y0, x1, y1 })
}

fn resolve<'a, S: AsRef<str>>(name: &str, cameras: &'a [S]) -> Option<&'a str> {
    let names = || cameras.iter().map(AsRef::as_ref);
    if let Some(exact) = names().find(|c| *c == name) {
        return Some(exact);
    }
    let mut folded = names().filter(|c| c.eq_ignore_ascii_case(name));
    match (folded.next(), folded.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

fn push_once(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

fn is_closing(c: char) -> bool {
    matches!(
        c,
        '.' | ',' | ';' | ':' | '!' | '?' | ')' | ']' | '}' | '…' | '。' | '，' | '！' | '？'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAMS: &[&str] = &["press-2", "belt", "Dock.A"];

    #[test]
    fn strips_markers_and_places_frames() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &[&str], &[&str])] = &[
            // sentence, clean text, cameras cited, unknown names
            ("The guard is open.", "The guard is open.", &[], &[]),
            ("The guard [cam:press-2] is open.", "The guard is open.", &["press-2"], &[]),
            ("Look at the belt [cam:belt].", "Look at the belt.", &["belt"], &[]),
            ("[cam:belt] The belt stopped.", "The belt stopped.", &["belt"], &[]),
            ("The belt[cam:belt] stopped.", "The belt stopped.", &["belt"], &[]),
            ("Both [cam:belt][cam:press-2] agree.", "Both agree.", &["belt", "press-2"], &[]),
            ("Both [cam:belt] [cam:belt] agree.", "Both agree.", &["belt"], &[]),
            ("Case [CAM : Press-2 ] differs.", "Case differs.", &["press-2"], &[]),
            ("Dots [cam:Dock.A], fine.", "Dots, fine.", &["Dock.A"], &[]),
            ("A ghost [cam:roof] appears.", "A ghost appears.", &[], &["roof"]),
            ("Mixed [cam:roof] and [cam:belt] [cam:roof].", "Mixed and.", &["belt"], &["roof"]),
            ("Only a marker [cam:belt]", "Only a marker", &["belt"], &[]),
            ("[cam:belt]", "", &["belt"], &[]),
            ("Not a marker [1] or [camera] here.", "Not a marker [1] or [camera] here.", &[], &[]),
            ("Unclosed [cam:belt stays.", "Unclosed [cam:belt stays.", &[], &[]),
            ("Empty [cam:] stays.", "Empty [cam:] stays.", &[], &[]),
            ("Nested [[cam:belt]] ok.", "Nested [] ok.", &["belt"], &[]),
            ("Tail [", "Tail [", &[], &[]),
            ("Unicode ✓ [cam:belt] ünd.", "Unicode ✓ ünd.", &["belt"], &[]),
            ("中文[cam:belt]。", "中文。", &["belt"], &[]),
            ("Bytes [ab€] and [€] stay.", "Bytes [ab€] and [€] stay.", &[], &[]),
        ];
        for (input, text, cams, unknown) in cases {
            let got = cite(input, CAMS);
            assert_eq!(got.text, *text, "text of {input:?}");
            assert_eq!(got.cameras, *cams, "cameras of {input:?}");
            assert_eq!(got.unknown, *unknown, "unknown of {input:?}");
        }
    }

    #[test]
    fn ambiguous_case_folding_is_unknown() {
        let got = cite("See [cam:Belt].", &["belt", "BELT"]);
        assert_eq!((got.text.as_str(), got.cameras.len()), ("See.", 0));
        assert_eq!(got.unknown, vec!["Belt".to_string()]);
        // An exact spelling still wins.
        assert_eq!(
            cite("See [cam:BELT].", &["belt", "BELT"]).cameras,
            vec!["BELT".to_string()]
        );
    }

    #[test]
    fn no_cameras_in_query() {
        let got = cite("See [cam:belt].", &[] as &[String]);
        assert_eq!(
            (got.text.as_str(), got.unknown),
            ("See.", vec!["belt".to_string()])
        );
    }

    fn bx(x0: u16, y0: u16, x1: u16, y1: u16) -> BoxK {
        BoxK { x0, y0, x1, y1 }
    }

    /// Sentence, clean text, regions, dropped markers.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, BoxK)], usize);

    #[test]
    fn regions_are_taken_out_and_checked() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // sentence, clean text, regions, dropped markers
            ("The lamp [cam:press-2 box:10,20,300,400] is amber.", "The lamp is amber.",
                &[("press-2", bx(10, 20, 300, 400))], 0),
            ("Gauge [CAM : belt  BOX : ( 0, 0 ,1000,1000 )].", "Gauge.",
                &[("belt", bx(0, 0, 1000, 1000))], 0),
            ("Two [cam:belt box:1,2,3,4][cam:Dock.A box:5,6,7,8] boxes.", "Two boxes.",
                &[("belt", bx(1, 2, 3, 4)), ("Dock.A", bx(5, 6, 7, 8))], 0),
            ("Same [cam:belt box:1,2,3,4] [cam:belt box:1,2,3,4] twice.", "Same twice.",
                &[("belt", bx(1, 2, 3, 4))], 0),
            ("Flipped [cam:belt box:300,20,10,400] x.", "Flipped x.", &[], 1),
            ("Flat [cam:belt box:10,20,300,20] y.", "Flat y.", &[], 1),
            ("Big [cam:belt box:0,0,1001,10] out.", "Big out.", &[], 1),
            ("Huge [cam:belt box:0,0,99999999999,10] out.", "Huge out.", &[], 1),
            ("Neg [cam:belt box:-1,0,10,10] out.", "Neg out.", &[], 1),
            ("Float [cam:belt box:0.1,0,10,10] out.", "Float out.", &[], 1),
            ("Words [cam:belt box:a,b,c,d] out.", "Words out.", &[], 1),
            ("Three [cam:belt box:1,2,3] out.", "Three out.", &[], 1),
            ("Five [cam:belt box:1,2,3,4,5] out.", "Five out.", &[], 1),
            ("Empty [cam:belt box:] out.", "Empty out.", &[], 1),
            ("Ghost [cam:roof box:1,2,3,4] out.", "Ghost out.", &[], 1),
            ("Unclosed [cam:belt box:1,2,3,4 stays.", "Unclosed [cam:belt box:1,2,3,4 stays.", &[], 0),
        ];
        for (input, text, regions, dropped) in cases {
            let got = cite(input, CAMS);
            assert_eq!(got.text, *text, "text of {input:?}");
            let want: Vec<Region> = regions
                .iter()
                .map(|(c, b)| Region {
                    camera: c.to_string(),
                    bbox: *b,
                })
                .collect();
            assert_eq!(got.regions, want, "regions of {input:?}");
            assert_eq!(
                got.dropped.len(),
                *dropped,
                "dropped of {input:?}: {:?}",
                got.dropped
            );
            for r in &got.regions {
                assert!(
                    got.cameras.contains(&r.camera),
                    "{input:?}: region camera is cited"
                );
            }
        }
        // A dropped region names its reason; a ghost's camera is not cited.
        let got = cite("Ghost [cam:roof box:1,2,3,4].", CAMS);
        assert_eq!(got.dropped[0].reason, "unknown camera");
        assert!(got.cameras.is_empty() && got.unknown.is_empty());
        assert_eq!(
            cite("[cam:belt box:5,1,2,3]", CAMS).dropped[0].marker,
            "cam:belt box:5,1,2,3"
        );
    }

    #[test]
    fn box_pixels_stay_inside_the_frame() {
        assert_eq!(bx(0, 0, 1000, 1000).pixels(640, 480), (0, 0, 640, 480));
        assert_eq!(
            bx(500, 500, 750, 1000).pixels(640, 480),
            (320, 240, 160, 240)
        );
        // A sliver narrower than a pixel still crops one pixel.
        assert_eq!(bx(999, 999, 1000, 1000).pixels(10, 10), (9, 9, 1, 1));
    }

    #[test]
    fn overlong_brackets_are_text() {
        let long = format!(
            "Long [cam:belt box:1,2,3,4{}] stays.",
            " ".repeat(MAX_MARKER_BYTES)
        );
        assert_eq!(cite(&long, CAMS).text, long);
        assert!(may_be_marker(" ca") && may_be_marker("CAM:belt box:1, 2"));
        assert!(!may_be_marker("cb") && !may_be_marker("cam:belt\n") && !may_be_marker(&long));
    }
}
