//! Verify-while-streaming: a bundle archive → a verified tree in a staging directory.
//!
//! One pass over the archive, in this order: the manifest (entry 0) and its signature (entry 1)
//! are read and the signature checked against the trusted keys before the manifest is parsed;
//! the caller's policy sees the verified manifest (model type, min gemba, version conflicts)
//! before any file is written; then every entry is checked — type (regular files only: no sym or
//! hard links, devices, FIFOs), path (relative, no `..`), listed in the manifest, not seen
//! before, header size equal to the listed size — before its bytes are copied, hashed on the way,
//! into the staging directory, and the hash compared after. Finally every listed file must have
//! been seen and the archive must have ended with tar's end-of-archive marker (a missing marker
//! or a short entry is reported as a truncated archive). Compression is recognised by content
//! (zstd's magic), not by name.
//!
//! Nothing here touches the live tree: the caller renames the staging directory into
//! `versions/` only after this returns `Ok`.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::keys::TrustedKeys;
use super::manifest::{
    bundle_hash, check_path, Manifest, MANIFEST_NAME, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
};
use super::{IoAt, UpdateError};

/// A manifest whose signature checked out.
#[derive(Debug, Clone)]
pub struct SignedManifest {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    pub signature: String,
    pub key_id: String,
    pub bundle_hash: String,
}

/// What a successful pass produced.
#[derive(Debug, Clone)]
pub struct Verified {
    pub signed: SignedManifest,
    /// sha256 of the archive file as stored (compressed or not).
    pub archive_sha256: String,
}

/// Counts and hashes the raw file; remembers whether it hit end of file.
struct RawReader {
    inner: File,
    hash: Sha256,
    bytes: u64,
}

impl Read for RawReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The stream tar reads; flags a read that found nothing left (tar-rs treats end of stream at a
/// header boundary as the end of the archive, so we check for the marker ourselves).
struct EofFlag<R> {
    inner: R,
    eof: Rc<Cell<bool>>,
}

impl<R: Read> Read for EofFlag<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.set(true);
        }
        Ok(n)
    }
}

/// Verifies `archive` and, if `dest` is given, unpacks its files there (`dest` must not exist).
/// `policy` is called with the verified manifest before any file is read.
pub fn verify_archive(
    archive: &Path,
    keys: &TrustedKeys,
    policy: &mut dyn FnMut(&SignedManifest) -> Result<(), UpdateError>,
    dest: Option<&Path>,
    progress: &indicatif::ProgressBar,
) -> Result<Verified, UpdateError> {
    let file = File::open(archive).at(archive)?;
    let mut raw = BufReader::with_capacity(
        1 << 16,
        RawReader {
            inner: file,
            hash: Sha256::new(),
            bytes: 0,
        },
    );
    let zstd = raw
        .fill_buf()
        .at(archive)?
        .starts_with(&[0x28, 0xB5, 0x2F, 0xFD]);
    let eof = Rc::new(Cell::new(false));
    let stream: Box<dyn Read + '_> = if zstd {
        Box::new(EofFlag {
            inner: zstd::Decoder::with_buffer(&mut raw).at(archive)?,
            eof: eof.clone(),
        })
    } else {
        Box::new(EofFlag {
            inner: &mut raw,
            eof: eof.clone(),
        })
    };
    let mut tar = tar::Archive::new(stream);
    let signed = read_entries(archive, &mut tar, keys, policy, dest, progress, &eof)
        .map_err(|e| classify(archive, e, &eof))?;
    drop(tar);
    // The rest of the raw file (tar's trailing zero blocks, zstd's frame end) for the archive hash.
    std::io::copy(&mut raw, &mut std::io::sink()).at(archive)?;
    let raw = raw.into_inner();
    Ok(Verified {
        signed,
        archive_sha256: hex::encode(raw.hash.finalize()),
    })
}

/// Errors while reading are either ours (already precise) or the stream's; a stream error at end
/// of input is a truncated archive.
enum ReadErr {
    Update(UpdateError),
    Stream(std::io::Error),
}

impl From<UpdateError> for ReadErr {
    fn from(e: UpdateError) -> Self {
        ReadErr::Update(e)
    }
}

fn classify(archive: &Path, e: ReadErr, eof: &Cell<bool>) -> UpdateError {
    match e {
        ReadErr::Update(u) => u,
        ReadErr::Stream(io) => {
            let detail = readable(&io.to_string());
            // zstd reports a cut frame as an error once its input is exhausted.
            if eof.get()
                || io.kind() == std::io::ErrorKind::UnexpectedEof
                || detail.contains("incomplete frame")
            {
                UpdateError::Truncated {
                    archive: archive.to_path_buf(),
                    detail,
                }
            } else {
                UpdateError::Corrupt {
                    archive: archive.to_path_buf(),
                    detail,
                }
            }
        }
    }
}

/// A reader's error as a person can read it. The tar crate quotes the header fields it could
/// not parse, raw: for a file that is not a tar archive that is binary garbage (control bytes,
/// invalid UTF-8) on the terminal. Such a message says what it means instead; any other keeps
/// its text with unprintable characters escaped, cut at 200 characters.
fn readable(detail: &str) -> String {
    let binary = detail
        .chars()
        .any(|c| c == char::REPLACEMENT_CHARACTER || (c.is_control() && c != ' '));
    if detail.starts_with("numeric field") && (binary || detail.contains("when getting")) {
        return "a header is not a tar header (a numeric field holds other bytes): this is not a tar archive, \
                or it is corrupt; bundles are the .tar or .tar.zst files `gemba model pack` makes"
            .into();
    }
    let mut out: String = detail
        .chars()
        .flat_map(char::escape_debug)
        .take(200)
        .collect();
    if out.len() < detail.escape_debug().map(char::len_utf8).sum::<usize>() {
        out.push('…');
    }
    out
}

fn describe(entry: &tar::Entry<impl Read>) -> String {
    let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    format!("{path:?} ({})", kind_name(entry.header().entry_type()))
}

fn kind_name(t: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match t {
        T::Regular | T::Continuous => "regular file",
        T::Directory => "directory",
        T::Symlink => "symlink",
        T::Link => "hard link",
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "FIFO",
        T::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

fn read_small(
    entry: &mut tar::Entry<impl Read>,
    limit: u64,
    what: &str,
    archive: &Path,
) -> Result<Vec<u8>, ReadErr> {
    let size = entry.header().size().map_err(ReadErr::Stream)?;
    if size > limit {
        return Err(UpdateError::Manifest {
            archive: archive.to_path_buf(),
            detail: format!("{what} is {size} bytes; the limit is {limit}"),
        }
        .into());
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(ReadErr::Stream)?;
    if (buf.len() as u64) < size {
        return Err(UpdateError::Truncated {
            archive: archive.to_path_buf(),
            detail: format!("{what} ends after {} of {size} bytes", buf.len()),
        }
        .into());
    }
    Ok(buf)
}

#[allow(clippy::too_many_arguments)]
fn read_entries(
    archive: &Path,
    tar: &mut tar::Archive<Box<dyn Read + '_>>,
    keys: &TrustedKeys,
    policy: &mut dyn FnMut(&SignedManifest) -> Result<(), UpdateError>,
    dest: Option<&Path>,
    progress: &indicatif::ProgressBar,
    eof: &Cell<bool>,
) -> Result<SignedManifest, ReadErr> {
    let a = || archive.to_path_buf();
    let mut entries = tar.entries().map_err(ReadErr::Stream)?;
    let end = |eof: &Cell<bool>, what: &str| -> ReadErr {
        if eof.get() {
            UpdateError::Truncated {
                archive: archive.to_path_buf(),
                detail: format!("the archive ends before {what}"),
            }
            .into()
        } else {
            UpdateError::Corrupt {
                archive: archive.to_path_buf(),
                detail: format!("empty archive (no {what})"),
            }
            .into()
        }
    };

    // Entry 0: the manifest.
    let mut e0 = entries
        .next()
        .ok_or_else(|| end(eof, "the manifest"))?
        .map_err(ReadErr::Stream)?;
    if !(is_regular(&e0) && &*e0.path_bytes() == MANIFEST_NAME.as_bytes()) {
        return Err(UpdateError::NoManifest {
            archive: a(),
            found: describe(&e0),
        }
        .into());
    }
    let bytes = read_small(&mut e0, MAX_MANIFEST_BYTES, MANIFEST_NAME, archive)?;
    drop(e0);

    // Entry 1: its signature, checked before the manifest is trusted for anything.
    let mut e1 = match entries.next() {
        None if eof.get() => return Err(end(eof, "the signature")),
        None => {
            return Err(UpdateError::NoSignature {
                archive: a(),
                found: "the end of the archive".into(),
            }
            .into())
        }
        Some(e) => e.map_err(ReadErr::Stream)?,
    };
    if !(is_regular(&e1) && &*e1.path_bytes() == SIGNATURE_NAME.as_bytes()) {
        return Err(UpdateError::NoSignature {
            archive: a(),
            found: describe(&e1),
        }
        .into());
    }
    let sig_bytes = read_small(&mut e1, MAX_SIGNATURE_BYTES, SIGNATURE_NAME, archive)?;
    drop(e1);
    let signature = String::from_utf8(sig_bytes).map_err(|_| UpdateError::BadSignature {
        archive: a(),
        key_id: "?".into(),
        detail: "the signature is not text".into(),
    })?;
    let key_id = keys.verify(archive, &bytes, &signature)?;
    let manifest = Manifest::parse(&bytes).map_err(|detail| UpdateError::Manifest {
        archive: a(),
        detail,
    })?;
    let signed = SignedManifest {
        bundle_hash: bundle_hash(&bytes),
        manifest,
        bytes,
        signature,
        key_id,
    };
    policy(&signed)?;
    let manifest = &signed.manifest;

    if let Some(d) = dest {
        std::fs::create_dir(d).at(d)?;
        write_file(&d.join(MANIFEST_NAME), &signed.bytes)?;
        write_file(&d.join(SIGNATURE_NAME), signed.signature.as_bytes())?;
    }
    progress.set_length(manifest.total_bytes());
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut made_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut first_file = true;
    for entry in entries {
        let mut entry = entry.map_err(ReadErr::Stream)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let ty = entry.header().entry_type();
        let unsafe_entry = |why: String| -> ReadErr {
            UpdateError::UnsafeEntry {
                archive: a(),
                path: shown.clone(),
                why,
            }
            .into()
        };
        // Type first: a link is refused as a link, whatever its name.
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                return Err(unsafe_entry(format!(
                    "{} to {target:?} (bundles hold regular files only)",
                    kind_name(ty)
                )));
            }
            other => {
                return Err(unsafe_entry(format!(
                    "{} (bundles hold regular files only)",
                    kind_name(other)
                )))
            }
        }
        let Ok(path) = std::str::from_utf8(&raw_path) else {
            return Err(unsafe_entry("path is not UTF-8".into()));
        };
        let path = if ty == tar::EntryType::Directory {
            path.trim_end_matches('/')
        } else {
            path
        };
        check_path(path).map_err(|p| unsafe_entry(p.to_string()))?;
        if ty == tar::EntryType::Directory {
            if !manifest.is_listed_dir(path) {
                return Err(UpdateError::Unlisted {
                    archive: a(),
                    path: format!("{path}/"),
                }
                .into());
            }
            continue;
        }
        let Some(listed) = manifest.file(path) else {
            return Err(UpdateError::Unlisted {
                archive: a(),
                path: path.to_string(),
            }
            .into());
        };
        if !seen.insert(path.to_string()) {
            return Err(UpdateError::Duplicate {
                archive: a(),
                path: path.to_string(),
            }
            .into());
        }
        let size = entry.header().size().map_err(ReadErr::Stream)?;
        if size != listed.size {
            return Err(UpdateError::SizeMismatch {
                archive: a(),
                path: path.into(),
                expected: listed.size,
                actual: size,
            }
            .into());
        }
        let mut out = match dest {
            Some(d) => {
                let target = d.join(path);
                if let Some(parent) = target.parent() {
                    if made_dirs.insert(parent.to_path_buf()) {
                        std::fs::create_dir_all(parent).at(parent)?;
                    }
                }
                Some((File::create(&target).at(&target)?, target))
            }
            None => None,
        };
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(ReadErr::Stream)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            if let Some((f, t)) = out.as_mut() {
                f.write_all(&buf[..n]).at(t)?;
            }
            got += n as u64;
            progress.inc(n as u64);
        }
        if got < size {
            return Err(UpdateError::Truncated {
                archive: a(),
                detail: format!("{path} ends after {got} of {size} bytes"),
            }
            .into());
        }
        let actual = hex::encode(hash.finalize());
        if actual != listed.sha256 {
            return Err(UpdateError::HashMismatch {
                archive: a(),
                path: path.into(),
                expected: listed.sha256.clone(),
                actual,
            }
            .into());
        }
        if let Some((f, t)) = out {
            f.sync_all().at(&t)?;
        }
        if first_file {
            super::state::pause_point("unpacking");
            first_file = false;
        }
    }
    if eof.get() {
        return Err(UpdateError::Truncated {
            archive: a(),
            detail: "no end-of-archive marker".into(),
        }
        .into());
    }
    let missing: Vec<String> = manifest
        .files
        .iter()
        .filter(|f| !seen.contains(&f.path))
        .map(|f| f.path.clone())
        .collect();
    if !missing.is_empty() {
        return Err(UpdateError::Missing {
            archive: a(),
            paths: missing,
        }
        .into());
    }
    if let Some(d) = dest {
        for dir in made_dirs
            .iter()
            .rev()
            .chain(std::iter::once(&d.to_path_buf()))
        {
            crate::sys::fs::sync_dir(dir).at(dir)?;
        }
    }
    Ok(signed)
}

fn is_regular(e: &tar::Entry<impl Read>) -> bool {
    matches!(
        e.header().entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    )
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let mut f = File::create(path).at(path)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_errors_never_carry_raw_binary() {
        let tar_err = "numeric field did not have utf-8 text: \u{fffd}\u{1}rMK when getting cksum for \t\u{fffd}x";
        let r = readable(tar_err);
        assert!(
            r.contains("not a tar archive") && !r.contains('\u{fffd}'),
            "{r}"
        );
        let r = readable("odd \u{7}bell and \u{1b}[31mcolour");
        assert!(!r.chars().any(|c| c.is_control()), "{r}");
        assert!(r.contains("\\u{7}"), "{r}");
        assert_eq!(
            readable("archive header checksum mismatch"),
            "archive header checksum mismatch"
        );
        assert!(readable(&"x".repeat(500)).ends_with('…'));
    }
}
