//! File system steps that survive a power cut: write-to-temp + fsync + rename + fsync(dir),
//! directories whose creation is itself fsynced, the store lock, free-space and full-disk checks.
//!
//! After [`write_atomic`] returns Ok the file is on disk under its final name with all its bytes;
//! if the process dies before, at most a `.tmp-*` file is left, which recovery removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::layout::TEMP_PREFIX;

/// Writes `bytes` to `path` so that a reader (or a restart) sees either nothing or the whole file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("store paths have a parent");
    let name = path.file_name().expect("store paths name a file");
    let mut tmp_name = std::ffi::OsString::from(TEMP_PREFIX);
    tmp_name.push(name);
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Give the space back now (a full disk is the usual cause); recovery would otherwise.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `root/rel` and any missing parents, fsyncing each parent whose entries changed, so a
/// file renamed into the new directory is reachable after a power cut.
pub fn create_dirs(root: &Path, rel: &str) -> io::Result<()> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/') {
        let parent = dir.clone();
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => sync_dir(&parent)?,
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
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

/// Takes an exclusive lock on `path` without waiting; `Ok(None)` if another process holds it.
/// The kernel drops the lock when the process dies, kill -9 included.
pub fn try_lock(path: &Path) -> io::Result<Option<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(f));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.bin")]);
    }

    #[test]
    fn failed_write_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The final name is a non-empty directory, so the rename fails after the temp is written.
        fs::create_dir_all(dir.path().join("x/inner")).unwrap();
        assert!(write_atomic(&dir.path().join("x"), b"data").is_err());
        assert!(!dir.path().join(".tmp-x").exists());
    }

    #[test]
    fn dirs_are_created_with_their_parents() {
        let root = tempfile::tempdir().unwrap();
        create_dirs(root.path(), "media/2026/11/24/r1").unwrap();
        create_dirs(root.path(), "media/2026/11/24/r1").unwrap();
        assert!(root.path().join("media/2026/11/24/r1").is_dir());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = try_lock(&p).unwrap();
        assert!(held.is_some());
        assert!(
            try_lock(&p).unwrap().is_none(),
            "second open file description must not lock"
        );
        drop(held);
        assert!(try_lock(&p).unwrap().is_some());
    }
}
