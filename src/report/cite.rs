//! Citations: the model cites a camera's frame with `[cam:NAME]` inside a sentence; the report
//! shows that frame at that point and the reader never sees the marker.
//!
//! What flows in: one streamed sentence and the names of the cameras in the query. What flows
//! out: the sentence without markers (spacing tidied), the cited cameras in order of first
//! mention, and the names that matched no camera (the caller counts them and logs once — a model
//! inventing a camera is not an error). Pure: no I/O, no state.

/// A sentence with its citations taken out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Citations {
    /// The sentence as the reader sees it.
    pub text: String,
    /// Cited cameras of the query (their configured spelling), first mention first, no repeats.
    pub cameras: Vec<String>,
    /// Cited names that are no camera of the query, as written, no repeats.
    pub unknown: Vec<String>,
}

/// Strips `[cam:NAME]` markers from `sentence`. Markers are matched leniently as models write
/// them: `cam` in any case, spaces around the colon and the name. A name matches a camera
/// exactly, or case-insensitively when that picks out exactly one camera. Anything that is not a
/// complete marker (`[cam:` without `]`, `[1]`) stays as text.
pub fn cite<S: AsRef<str>>(sentence: &str, cameras: &[S]) -> Citations {
    let mut out = Citations::default();
    let mut text = String::with_capacity(sentence.len());
    let mut rest = sentence;
    while let Some(open) = rest.find('[') {
        let Some((name, after)) = marker(&rest[open..]) else {
            text.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        text.push_str(&rest[..open]);
        match resolve(name, cameras) {
            Some(cam) => push_once(&mut out.cameras, cam),
            None => push_once(&mut out.unknown, name),
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

/// If `s` starts with a complete marker, its name and the text after it.
fn marker(s: &str) -> Option<(&str, &str)> {
    let inner_end = s.find(']')?;
    let inner = s[1..inner_end].trim();
    // `get` rather than indexing: the bracket may hold any text, a multi-byte char included.
    if !inner.get(..3)?.eq_ignore_ascii_case("cam") {
        return None;
    }
    let name = inner[3..].trim_start().strip_prefix(':')?.trim();
    if name.is_empty() || name.contains(['[', '\n']) {
        return None;
    }
    Some((name, &s[inner_end + 1..]))
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
}
