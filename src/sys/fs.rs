//! File-system steps every stage that owns files shares: atomic writes that survive a power cut,
//! directory fsyncs, the exclusive lock a writer holds, the sha256 of a file, and a directory
//! walk that never follows a link. The report store, the updater and the daemon's status.json
//! all use these; the tree sweeps that delete files are in [`super::tree`].
//!
//! Errors are plain [`io::Error`]s, as `std::fs` gives them (the full-disk check reads their OS
//! code); each caller wraps them in its own error enum with the path and what it was doing.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Names of temp files [`write_atomic`] leaves behind when the process dies mid-write; an
/// owner's recovery removes files so named (the store's does).
pub const TEMP_PREFIX: &str = ".tmp-";

/// fsyncs a directory, so that creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` so that a reader (or a restart) sees either the old contents or the
/// whole new file: a temp file beside it (`.tmp-NAME.PID-N`, unique per write, so two writers in
/// one process never share one), fsync, rename, fsync of the directory. A failed write removes
/// its temp file (a full disk is the usual cause); one cut short by a crash leaves at most the
/// temp file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(TEMP_PREFIX);
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// An exclusive `flock` on a lock file, held until dropped. The kernel releases it when the
/// process dies (kill -9 included), so a crash never leaves a stale lock. The file holds the
/// holder's pid, for messages.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock without waiting; `Ok(None)` when another open file description holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: flock only reads the descriptor, which `file` owns and keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Some(Lock { _file: file }))
    }

    /// The pid written by the process that holds (or last held) the lock at `path`.
    pub fn holder(path: &Path) -> Option<u32> {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Streams the file at `path` into `hasher` (any `Write`, e.g. `sha2::Sha256`); returns its
/// length.
pub fn hash_file(hasher: &mut impl Write, path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        hasher.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// Hex sha256 of the file at `path`, streamed, and its length.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let n = hash_file(&mut h, path)?;
    Ok((hex::encode(h.finalize()), n))
}

/// One entry of a [`walk`].
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path relative to the walked directory, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    /// Of the entry itself (a link is a link, not its target).
    pub meta: Metadata,
}

/// Every entry below `dir` that is not a directory (files, links, special files), sorted by
/// relative path. A link is listed, never followed, so a walk cannot leave `dir`. An error
/// names the path it happened at.
pub fn walk(dir: &Path) -> io::Result<Vec<Entry>> {
    fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
        move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    }
    fn rec(base: &Path, dir: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
        for e in std::fs::read_dir(dir).map_err(at(dir))? {
            let path = e.map_err(at(dir))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(at(&path))?;
            if meta.is_dir() {
                rec(base, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(base)
                    .expect("walk stays under base")
                    .to_string_lossy()
                    .into_owned();
                out.push(Entry { rel, path, meta });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    rec(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(names(dir.path()), vec!["a.bin"]);
    }

    #[test]
    fn a_failed_write_removes_its_temp_file_and_keeps_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        // The final name is a non-empty directory, so the rename fails after the temp is written.
        std::fs::create_dir_all(dir.path().join("x/inner")).unwrap();
        assert!(write_atomic(&dir.path().join("x"), b"data").is_err());
        assert_eq!(names(dir.path()), vec!["x"]);
        assert!(dir.path().join("x/inner").is_dir());
    }

    #[test]
    fn concurrent_writers_of_one_file_never_mix_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        let a = vec![b'a'; 1 << 16];
        let b = vec![b'b'; 1 << 16];
        std::thread::scope(|s| {
            for bytes in [&a, &b] {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(p, bytes).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert!(got == a || got == b, "a file mixed from two writes");
        assert_eq!(names(dir.path()), vec!["status.json"]);
    }

    #[test]
    fn the_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = Lock::try_acquire(&p).unwrap();
        assert!(held.is_some());
        assert!(
            Lock::try_acquire(&p).unwrap().is_none(),
            "a second open file description must not lock"
        );
        assert_eq!(Lock::holder(&p), Some(std::process::id()));
        drop(held);
        assert!(Lock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn sha256_of_a_file_is_that_of_its_bytes() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let (hex_sum, n) = sha256_file(&p).unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(hex_sum, hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn a_walk_lists_links_without_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::fs::write(root.join("b/c/f"), b"1").unwrap();
        std::fs::write(root.join("a"), b"2").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let rels: Vec<String> = walk(&root).unwrap().into_iter().map(|e| e.rel).collect();
        assert_eq!(rels, vec!["a", "b/c/f", "link"]);
        let err = walk(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
