//! `gemba-manifest.json`: what a bundle archive must contain, signed as a whole.
//!
//! The manifest is the only thing the signature covers; the files are bound to it by size and
//! sha256. It is parsed strictly (unknown keys are errors, so an older gemba refuses a newer
//! format instead of ignoring what it does not understand) and validated before a byte of the
//! bundle is unpacked: every path relative, normalised and free of `..`, no duplicates, no file
//! that is also a directory of another.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The value of `format` this gemba reads and writes.
pub const FORMAT: &str = "gemba-bundle/1";
/// The manifest's name, in the archive and in an installed version directory.
pub const MANIFEST_NAME: &str = "gemba-manifest.json";
/// The signature's name, beside the manifest.
pub const SIGNATURE_NAME: &str = "gemba-manifest.json.minisig";
/// Read by `gemba model pack` from the bundle directory when no smoke flags are given.
pub const SMOKE_FILE: &str = "gemba-smoke.json";

/// Manifests and signatures larger than this are refused before they are read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const MAX_SIGNATURE_BYTES: u64 = 16 << 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The bundle's version: its directory name under `versions/` and its `bundle_id`.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The oldest gemba (semver) that can run this bundle.
    pub min_gemba: String,
    /// `model.type` of the bundle's genai_config.json.
    pub model_type: String,
    pub smoke: SmokeSpec,
    pub files: Vec<FileEntry>,
    /// Signed permission to install this bundle over a newer version (a fleet rolling back on
    /// purpose). Without it, a bundle whose version orders before the installed one is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// The smoke test: a prompt and a property of the reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmokeSpec {
    pub prompt: String,
    /// The reply must contain this text.
    pub expect_contains: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Generated-token limit for the smoke reply.
    #[serde(default = "default_smoke_tokens")]
    pub max_tokens: usize,
}

fn default_smoke_tokens() -> usize {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// Why a path cannot be part of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    Absolute,
    Traversal,
    NotNormal,
    BadChar,
    Reserved,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "empty path",
            PathProblem::Absolute => "absolute path",
            PathProblem::Traversal => "path traversal (`..`)",
            PathProblem::NotNormal => "not a normalised relative path (empty or `.` component)",
            PathProblem::BadChar => "NUL, backslash or control character in the path",
            PathProblem::Reserved => {
                "reserved name (gemba-manifest.json / .minisig / gemba-smoke.json)"
            }
        })
    }
}

/// Checks that `path` is a plain relative path inside the bundle.
pub fn check_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    if path.split('/').any(|c| c == "..") {
        return Err(PathProblem::Traversal);
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(PathProblem::BadChar);
    }
    if path.split('/').any(|c| c.is_empty() || c == ".") || path.len() > 4096 {
        return Err(PathProblem::NotNormal);
    }
    if [MANIFEST_NAME, SIGNATURE_NAME, SMOKE_FILE].contains(&path) {
        return Err(PathProblem::Reserved);
    }
    Ok(())
}

/// Version strings name directories: keep them to a safe alphabet.
pub fn check_version(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 {
        return Err(format!("version {v:?}: must be 1 to 64 characters"));
    }
    if v.starts_with('.') || v.starts_with('-') {
        return Err(format!("version {v:?}: must not start with '.' or '-'"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
    {
        return Err(format!(
            "version {v:?}: character {c:?} not allowed (use A-Z a-z 0-9 . _ - +)"
        ));
    }
    Ok(())
}

/// Orders bundle versions as people write them: runs of digits compare as numbers, other runs
/// as text (`2` < `10`, `1.9` < `1.10`, `2026.1.2` < `2026.12.1`, `1.0-rc1` < `1.0-rc2`).
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for ((da, xa), (db, xb)) in ra.iter().zip(rb.iter()) {
        let o = match (da, db) {
            (true, true) => {
                let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
                ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
            }
            _ => xa.cmp(xb),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

impl Manifest {
    /// Parses and validates manifest bytes; the error is one line naming the key or file.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            if at == "." || at.is_empty() {
                inner.to_string()
            } else {
                format!("{at}: {inner}")
            }
        })?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {:?} is not {FORMAT:?} (a newer gemba made it?)",
                self.format
            ));
        }
        check_version(&self.version)?;
        semver::Version::parse(&self.min_gemba)
            .map_err(|e| format!("min_gemba {:?}: {e}", self.min_gemba))?;
        if self.model_type.is_empty() {
            return Err("model_type is empty".into());
        }
        if self.smoke.prompt.trim().is_empty() || self.smoke.expect_contains.is_empty() {
            return Err("smoke: prompt and expect_contains must not be empty".into());
        }
        if self.smoke.max_tokens == 0 {
            return Err("smoke.max_tokens must be at least 1".into());
        }
        if self.files.is_empty() {
            return Err("files: empty".into());
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            check_path(&f.path).map_err(|p| format!("files: {:?}: {p}", f.path))?;
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "files: {:?}: sha256 {:?} is not 64 lower-case hex digits",
                    f.path, f.sha256
                ));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(format!("files: {:?} listed twice", f.path));
            }
        }
        // "a" and "a/b" cannot both be files.
        for f in &self.files {
            let mut prefix = String::new();
            for comp in f
                .path
                .split('/')
                .collect::<Vec<_>>()
                .iter()
                .rev()
                .skip(1)
                .rev()
            {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(comp);
                if seen.contains(prefix.as_str()) {
                    return Err(format!(
                        "files: {prefix:?} is a file and also the directory of {:?}",
                        f.path
                    ));
                }
            }
        }
        if !seen.contains("genai_config.json") {
            return Err("files: genai_config.json is not listed; a bundle needs it".into());
        }
        Ok(())
    }

    /// The entry for `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Whether `dir` (no trailing `/`) is a directory some listed file lives under.
    pub fn is_listed_dir(&self, dir: &str) -> bool {
        self.files.iter().any(|f| {
            f.path.len() > dir.len()
                && f.path.starts_with(dir)
                && f.path.as_bytes()[dir.len()] == b'/'
        })
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The canonical bytes written into archives: pretty JSON and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }
}

/// The bundle hash: sha256 of the exact manifest bytes (which bind every file's hash).
pub fn bundle_hash(manifest_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(manifest_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_people_write_them() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("1", "2", Less),
            ("2", "10", Less),
            ("1.9", "1.10", Less),
            ("2026.1.2", "2026.12.1", Less),
            ("1.0-rc1", "1.0-rc2", Less),
            ("1.0", "1.0.1", Less),
            ("007", "7", Equal),
            ("v2", "v1", Greater),
        ] {
            assert_eq!(version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn paths_table() {
        let cases: &[(&str, Result<(), PathProblem>)] = &[
            ("model.onnx", Ok(())),
            ("vision/model.onnx", Ok(())),
            ("", Err(PathProblem::Empty)),
            ("/etc/passwd", Err(PathProblem::Absolute)),
            ("../x", Err(PathProblem::Traversal)),
            ("a/../../x", Err(PathProblem::Traversal)),
            ("a/..", Err(PathProblem::Traversal)),
            ("./a", Err(PathProblem::NotNormal)),
            ("a//b", Err(PathProblem::NotNormal)),
            ("a/", Err(PathProblem::NotNormal)),
            ("a\\b", Err(PathProblem::BadChar)),
            ("a\nb", Err(PathProblem::BadChar)),
            ("gemba-manifest.json", Err(PathProblem::Reserved)),
            ("gemba-manifest.json.minisig", Err(PathProblem::Reserved)),
            ("sub/gemba-manifest.json", Ok(())),
        ];
        for (p, want) in cases {
            assert_eq!(&check_path(p), want, "{p:?}");
        }
    }

    #[test]
    fn versions_table() {
        for ok in ["1", "2026.11.2", "v1.2.3-rc1+build.5", "a_b"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "..",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    fn good() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: "2".into(),
            name: None,
            min_gemba: "0.1.0".into(),
            model_type: "qwen2".into(),
            smoke: SmokeSpec {
                prompt: "p".into(),
                expect_contains: "x".into(),
                system: None,
                max_tokens: 8,
            },
            files: vec![
                FileEntry {
                    path: "genai_config.json".into(),
                    size: 1,
                    sha256: "a".repeat(64),
                },
                FileEntry {
                    path: "vision/model.onnx".into(),
                    size: 2,
                    sha256: "b".repeat(64),
                },
            ],
            allow_downgrade: false,
        }
    }

    #[test]
    fn round_trip_and_hash_is_of_bytes() {
        let m = good();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        assert_eq!(bundle_hash(&bytes).len(), 64);
        assert_ne!(
            bundle_hash(&bytes),
            bundle_hash(&[bytes.as_slice(), b" "].concat())
        );
        assert!(m.is_listed_dir("vision"));
        assert!(!m.is_listed_dir("visio"));
        assert_eq!(m.total_bytes(), 3);
    }

    #[test]
    fn invalid_manifests_say_why() {
        type Edit = fn(&mut Manifest);
        let cases: &[(Edit, &str)] = &[
            (|m| m.format = "gemba-bundle/2".into(), "format"),
            (|m| m.version = "../x".into(), "version"),
            (|m| m.min_gemba = "one".into(), "min_gemba"),
            (|m| m.files[1].path = "../evil".into(), "path traversal"),
            (|m| m.files[1].path = "/abs".into(), "absolute path"),
            (|m| m.files[1].sha256 = "XYZ".into(), "sha256"),
            (
                |m| m.files[1].path = "genai_config.json".into(),
                "listed twice",
            ),
            (
                |m| m.files[0].path = "tokenizer.json".into(),
                "genai_config.json is not listed",
            ),
            (|m| m.smoke.expect_contains.clear(), "smoke"),
        ];
        for (edit, want) in cases {
            let mut m = good();
            edit(&mut m);
            let e = Manifest::parse(&m.to_bytes()).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        let mut v: serde_json::Value = serde_json::from_slice(&good().to_bytes()).unwrap();
        v["files"][0]["mode"] = 0o755.into();
        let e = Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            e.contains("files[0]") && e.contains("unknown field `mode`"),
            "{e}"
        );
        let mut m = good();
        m.files.push(FileEntry {
            path: "vision".into(),
            size: 0,
            sha256: "c".repeat(64),
        });
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .contains("also the directory"));
    }
}
