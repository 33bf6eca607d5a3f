//! Report ids: `YYYYMMDDTHHMMSSZ-xxxx` — the UTC second the report began, then 16 random bits.
//!
//! They sort by time as plain strings, name the dated media directory, and travel through URLs
//! and file names. So an id is only ever made here, or parsed and validated here: nothing that
//! did not pass [`ReportId::parse`] is used to build a path.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

use super::ReportError;

/// A validated report id, e.g. `20261124T101530Z-3f2a`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ReportId(String);

const LEN: usize = "20261124T101530Z-3f2a".len();

impl ReportId {
    /// The id for a report begun at `at` with the given suffix.
    pub fn new(at: Timestamp, suffix: u16) -> ReportId {
        ReportId(format!("{}-{suffix:04x}", at.strftime("%Y%m%dT%H%M%SZ")))
    }

    /// A fresh id for a report begun at `at`; the suffix is random so two reports begun in the
    /// same second (two cameras, a voice query) do not collide. The store retries on the rare
    /// collision.
    pub fn generate(at: Timestamp) -> ReportId {
        // std's RandomState is seeded from the OS per process and differs per instance; hashing
        // the clock through it is enough for a 16-bit tie-breaker (no crypto needed).
        let mut h = RandomState::new().build_hasher();
        h.write_i128(at.as_nanosecond());
        ReportId::new(at, h.finish() as u16)
    }

    /// Checks `s` character by character and as a calendar date; anything else is rejected with
    /// the reason, so user input never becomes a path.
    pub fn parse(s: &str) -> Result<ReportId, ReportError> {
        let bad = |why| {
            Err(ReportError::BadId {
                id: s.to_string(),
                why,
            })
        };
        if s.len() != LEN {
            return bad("wrong length");
        }
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if !digits(0..8) || b[8] != b'T' || !digits(9..15) || b[15] != b'Z' || b[16] != b'-' {
            return bad("not of the form YYYYMMDDTHHMMSSZ-xxxx");
        }
        if !b[17..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return bad("suffix is not 4 lowercase hex digits");
        }
        if time_of(s).is_none() {
            return bad("not a valid UTC date and time");
        }
        Ok(ReportId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTC second the report began.
    pub fn time(&self) -> Timestamp {
        time_of(&self.0).expect("validated at construction")
    }

    /// `YYYY/MM/DD` of the report's start (UTC): the directory its media and page live under.
    pub fn date_dir(&self) -> String {
        let s = &self.0;
        format!("{}/{}/{}", &s[0..4], &s[4..6], &s[6..8])
    }
}

fn time_of(s: &str) -> Option<Timestamp> {
    let num = |r: std::ops::Range<usize>| s[r].parse::<i16>().ok();
    let dt = DateTime::new(
        num(0..4)?,
        num(4..6)? as i8,
        num(6..8)? as i8,
        num(9..11)? as i8,
        num(11..13)? as i8,
        num(13..15)? as i8,
        0,
    )
    .ok()?;
    TimeZone::UTC.to_timestamp(dt).ok()
}

impl fmt::Display for ReportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ReportId {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<ReportId, ReportError> {
        ReportId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn formats_utc_second_and_hex_suffix() {
        let id = ReportId::new(ts("2026-11-24T10:15:30.987Z"), 0x3f2a);
        assert_eq!(id.as_str(), "20261124T101530Z-3f2a");
        assert_eq!(
            ReportId::new(ts("2026-01-02T03:04:05Z"), 7).as_str(),
            "20260102T030405Z-0007"
        );
        assert_eq!(id.time(), ts("2026-11-24T10:15:30Z"));
        assert_eq!(id.date_dir(), "2026/11/24");
    }

    #[test]
    fn parse_accepts_what_new_makes() {
        let id = ReportId::generate(ts("2026-11-24T10:15:30Z"));
        assert!(id.as_str().starts_with("20261124T101530Z-"));
        assert_eq!(ReportId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn parse_rejects_everything_else() {
        let cases = [
            ("", "wrong length"),
            ("20261124T101530Z-3f2", "wrong length"),
            (
                "../../etc/passwdxxxxx",
                "not of the form YYYYMMDDTHHMMSSZ-xxxx",
            ),
            (
                "20261124T101530Z/3f2a",
                "not of the form YYYYMMDDTHHMMSSZ-xxxx",
            ),
            (
                "2026112xT101530Z-3f2a",
                "not of the form YYYYMMDDTHHMMSSZ-xxxx",
            ),
            (
                "20261124 101530Z-3f2a",
                "not of the form YYYYMMDDTHHMMSSZ-xxxx",
            ),
            (
                "20261124T101530Z-3F2A",
                "suffix is not 4 lowercase hex digits",
            ),
            (
                "20261124T101530Z-../x",
                "suffix is not 4 lowercase hex digits",
            ),
            ("20261324T101530Z-3f2a", "not a valid UTC date and time"),
            ("20260230T101530Z-3f2a", "not a valid UTC date and time"),
            ("20261124T251530Z-3f2a", "not a valid UTC date and time"),
            ("20261124T106030Z-3f2a", "not a valid UTC date and time"),
        ];
        for (input, want) in cases {
            match ReportId::parse(input) {
                Err(ReportError::BadId { id, why }) => {
                    assert_eq!((id.as_str(), why), (input, want), "for {input:?}")
                }
                other => panic!("{input:?}: expected BadId, got {other:?}"),
            }
        }
    }

    #[test]
    fn ids_sort_by_time() {
        let a = ReportId::new(ts("2026-11-24T10:15:30Z"), 0xffff);
        let b = ReportId::new(ts("2026-11-24T10:15:31Z"), 0x0000);
        let c = ReportId::new(ts("2027-01-01T00:00:00Z"), 0x1234);
        let mut v = vec![c.clone(), a.clone(), b.clone()];
        v.sort();
        assert_eq!(v, vec![a, b, c]);
    }
}
