//! File-system steps that must survive a power cut: atomic writes, atomic symlink switches,
//! directory fsyncs, removal that never leaves a half-deleted tree where it could be loaded, and
//! the update lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{IoAt, UpdateError};

/// fsync a directory, so that renames and new entries in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), UpdateError> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// Writes `bytes` to `path` so that a reader (or a reboot) sees either the old or the new
/// contents: a temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(&tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).at(path)?;
    fsync_dir(dir)
}

/// Points the symlink `root/name` at `target` (relative to root, e.g. `versions/2`) atomically:
/// a `name.tmp` link renamed over `name`. `None` removes the link. Does not fsync the root; the
/// caller does once after a group of switches.
pub fn point_link(root: &Path, name: &str, target: Option<&str>) -> Result<(), UpdateError> {
    let link = root.join(name);
    match target {
        Some(t) => {
            if std::fs::read_link(&link).ok().as_deref() == Some(Path::new(t)) {
                return Ok(());
            }
            let tmp = root.join(format!("{name}.tmp"));
            match std::fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(UpdateError::io(&tmp, e)),
            }
            std::os::unix::fs::symlink(t, &tmp).at(&tmp)?;
            super::state::pause_point(&format!("{name}-tmp-linked"));
            std::fs::rename(&tmp, &link).at(&link)
        }
        None => match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(UpdateError::io(&link, e)),
        },
    }
}

/// Removes `dir` by first renaming it into `trash` (same file system), so that a crash midway
/// never leaves a partly deleted tree under its old name. `trash` must be a real directory (a
/// link is refused) and the removal never follows a link (crate::sys::tree).
pub fn remove_tree(dir: &Path, trash: &Path) -> Result<(), UpdateError> {
    use crate::sys::tree::Tree;
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let layout = |e: crate::sys::tree::TreeError| UpdateError::Layout {
        path: trash.to_path_buf(),
        detail: e.to_string(),
    };
    let bin = Tree::open(trash, true).map_err(layout)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = format!("deleting-{name}-{}", std::process::id());
    bin.remove_tree(&doomed).map_err(layout)?;
    std::fs::rename(dir, trash.join(&doomed)).at(dir)?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    bin.remove_tree(&doomed).map_err(layout)?;
    Ok(())
}

/// Empties a directory (staging): everything in it is garbage when no update holds the lock.
/// Never follows a link: `dir` itself must be a real directory, and links inside are removed as
/// entries (see crate::sys::tree).
pub fn clear_dir(dir: &Path) -> Result<(), UpdateError> {
    use crate::sys::tree::{Tree, TreeError};
    match Tree::open(dir, false) {
        Ok(t) => t.clear(),
        Err(TreeError::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e),
    }
    .map_err(|e| UpdateError::Layout {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })
}

/// An exclusive `flock` on `<root>/.lock`, released when dropped or when the process dies
/// (kill -9 included), so a crash never leaves a stale lock.
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn acquire(path: &Path) -> Result<Lock, UpdateError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .at(path)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(UpdateError::Locked {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            return Err(UpdateError::io(path, err));
        }
        file.set_len(0).at(path)?;
        writeln!(file, "{}", std::process::id()).at(path)?;
        Ok(Lock { _file: file })
    }
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), UpdateError> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).at(path)?;
    Ok((hex::encode(h.finalize()), n))
}

/// Walks `dir` recursively: (relative path with `/`, absolute path, metadata without following
/// links), sorted by relative path.
pub fn walk(dir: &Path) -> Result<Vec<(String, PathBuf, std::fs::Metadata)>, UpdateError> {
    fn rec(
        base: &Path,
        dir: &Path,
        out: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
    ) -> Result<(), UpdateError> {
        for e in std::fs::read_dir(dir).at(dir)? {
            let p = e.at(dir)?.path();
            let meta = std::fs::symlink_metadata(&p).at(&p)?;
            let rel = p
                .strip_prefix(base)
                .expect("walk stays under base")
                .to_string_lossy()
                .replace('\\', "/");
            if meta.is_dir() {
                rec(base, &p, out)?;
            } else {
                out.push((rel, p, meta));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    rec(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
