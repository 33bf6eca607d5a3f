//! The updater's file-system steps that must survive a power cut: atomic symlink switches and
//! removal that never leaves a half-deleted tree where it could be loaded. Atomic writes, the
//! lock, hashing and walks are the shared ones of [`crate::sys::fs`], their errors named here.

use std::path::Path;

use super::{IoAt, UpdateError};

/// [`crate::sys::fs::write_atomic`], its error naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    crate::sys::fs::write_atomic(path, bytes).at(path)
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
        crate::sys::fs::sync_dir(parent).at(parent)?;
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

/// The update lock: an exclusive [`crate::sys::fs::Lock`] on `<root>/.lock`, released when
/// dropped or when the process dies (kill -9 included), so a crash never leaves a stale lock.
pub fn lock(path: &Path) -> Result<crate::sys::fs::Lock, UpdateError> {
    crate::sys::fs::Lock::try_acquire(path)
        .at(path)?
        .ok_or_else(|| UpdateError::Locked {
            path: path.to_path_buf(),
            holder: crate::sys::fs::Lock::holder(path),
        })
}

/// Hex sha256 of a file, streamed, and its length.
pub fn sha256_file(path: &Path) -> Result<(String, u64), UpdateError> {
    crate::sys::fs::sha256_file(path).at(path)
}

/// Every file below `dir` (links listed, never followed), sorted by relative path
/// ([`crate::sys::fs::walk`]).
pub fn walk(dir: &Path) -> Result<Vec<crate::sys::fs::Entry>, UpdateError> {
    crate::sys::fs::walk(dir).at(dir)
}
