//! The store's own file-system steps: directories whose creation is itself fsynced, free-space
//! and full-disk checks. Atomic writes, directory fsyncs and the store lock are the shared ones
//! of [`crate::sys::fs`]: after `write_atomic` returns Ok the file is on disk under its final
//! name with all its bytes; if the process dies before, at most a `.tmp-*` file is left, which
//! recovery removes.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Creates `root/rel` and any missing parents, fsyncing each parent whose entries changed, so a
/// file renamed into the new directory is reachable after a power cut.
pub fn create_dirs(root: &Path, rel: &str) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/') {
        let parent = dir.clone();
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => crate::sys::fs::sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an I/O error means the file system (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Bytes an unprivileged writer can still use on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = statvfs(path)?;
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Size of the file system holding `path` (or its nearest existing parent).
pub fn fs_bytes(path: &Path) -> io::Result<u64> {
    let mut p = path;
    while !p.exists() {
        p = p
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    let st = statvfs(p)?;
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are a value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter, both
    // alive across the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_created_with_their_parents() {
        let root = tempfile::tempdir().unwrap();
        create_dirs(root.path(), "media/2026/11/24/r1").unwrap();
        create_dirs(root.path(), "media/2026/11/24/r1").unwrap();
        assert!(root.path().join("media/2026/11/24/r1").is_dir());
    }
}
