//! The one duration type of configs and command lines: [`HumanDuration`], written in human
//! units (`"500ms"`, `"30s"`, `"10m"`, `"7d"`, `"1h 30m"`), parsed by `humantime`, shown the same
//! way. Config sections use it as a field type (or, for a plain `Duration` field, through
//! [`serde_std`]); `clap` arguments through [`parse`]. A bad value is a [`DurationError`] that
//! quotes it and gives examples; the config loader adds the key it was under.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration in human units (`"500ms"`, `"30s"`, `"10m"`, `"30d"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// A string that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{input}\" is not a duration ({reason}); write e.g. \"500ms\", \"30s\", \"10m\", \"7d\"")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| DurationError {
                input: s.to_string(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses a command-line duration (`clap`'s `value_parser = parse`).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    s.parse::<HumanDuration>().map(|d| d.0)
}

/// `#[serde(with = "crate::sys::duration::serde_std")]` for a `std::time::Duration` field
/// written as a [`HumanDuration`].
pub mod serde_std {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::HumanDuration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        HumanDuration(*d).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        HumanDuration::deserialize(d).map(|h| h.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units_parse_and_print_back() {
        for (text, d, shown) in [
            ("500ms", Duration::from_millis(500), "500ms"),
            ("30s", Duration::from_secs(30), "30s"),
            ("10m", Duration::from_secs(600), "10m"),
            ("7d", Duration::from_secs(7 * 86_400), "7days"),
            ("1h 30m", Duration::from_secs(5_400), "1h 30m"),
            ("0s", Duration::ZERO, "0s"),
        ] {
            let h: HumanDuration = text.parse().unwrap();
            assert_eq!(h.0, d, "{text}");
            assert_eq!(h.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<HumanDuration>().unwrap(), h, "{shown}");
            assert_eq!(parse(text).unwrap(), d);
        }
    }

    #[test]
    fn a_bad_value_is_quoted_with_examples() {
        for bad in ["10", "ten seconds", "-5s", "5 parsecs", ""] {
            let e = bad.parse::<HumanDuration>().unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("\"{bad}\" is not a duration (")),
                "{msg}"
            );
            assert!(msg.ends_with("write e.g. \"500ms\", \"30s\", \"10m\", \"7d\""));
        }
    }

    #[test]
    fn serde_reads_and_writes_the_string_form() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct S {
            a: HumanDuration,
            #[serde(with = "serde_std")]
            b: Duration,
        }
        let s: S = toml::from_str("a = \"2m\"\nb = \"250ms\"").unwrap();
        assert_eq!(
            s,
            S {
                a: HumanDuration(Duration::from_secs(120)),
                b: Duration::from_millis(250)
            }
        );
        assert_eq!(toml::to_string(&s).unwrap(), "a = \"2m\"\nb = \"250ms\"\n");
        let e = toml::from_str::<S>("a = \"soon\"\nb = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
    }
}
