//! A directory tree gemba owns — the report store's `media/` and `html/`, the updater's
//! `staging/`, `cache/` and `versions/` — opened, walked and cleaned so that nothing can leave it.
//!
//! Why: sweeps, evictions and gc delete files. A path-based walk follows a symbolic link put where
//! one of these directories should be (an admin moving `media/` to another disk), and then
//! deletes everything in the link's target that the index does not know. Here every directory is
//! opened with `O_NOFOLLOW` relative to its parent's handle (`openat`), and every removal is an
//! `unlinkat` in a handle so opened: a link anywhere in the tree is never followed, and a link in
//! place of the root is refused with [`TreeError::Symlink`].
//!
//! In: a root path (the one place a person chose; its own parents may be links). Out: walks that
//! report regular files only (links and special files are left alone and counted), and removals
//! of files or whole subtrees named relative to the root.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};

/// Why a tree could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "{path} is a symbolic link (to {target}); gemba deletes files under it (retention, \
         recovery, gc), so it must be a real directory, never a link to somewhere else. To put it \
         on another disk, move the whole directory gemba was given (the store's data_dir, or the \
         models root) and point the config there"
    )]
    Symlink { path: PathBuf, target: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {what} is not a plain path inside the tree")]
    BadPath { path: PathBuf, what: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl TreeError {
    /// The I/O error underneath, if this is one (full disk checks look at it).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            TreeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a walk's visitor decides for a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Remove,
}

/// What a walk saw besides the files it was shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Symbolic links, sockets, fifos, devices and names that are not UTF-8: never followed,
    /// never removed, listed here (relative paths, lossy) so the owner can say so once.
    pub foreign: Vec<String>,
}

/// A directory handle inside (or at the root of) an owned tree.
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> TreeError + 'a {
    move |e| TreeError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Tree {
    /// Opens `path` as the root of a tree, creating it (and its parents) when `create` and it is
    /// missing. `path` itself must be a real directory; a symbolic link is refused.
    pub fn open(path: &Path, create: bool) -> Result<Tree, TreeError> {
        if create {
            if let Err(e) = std::fs::create_dir_all(path) {
                // A dangling link or a file in the way: say what it is below.
                if std::fs::symlink_metadata(path).is_err() {
                    return Err(TreeError::Io {
                        op: "creating",
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        Self::open_at(CWD, path, path.to_path_buf())
    }

    fn open_at<Fd: AsFd>(dirfd: Fd, name: &Path, full: PathBuf) -> Result<Tree, TreeError> {
        match rfs::openat(dirfd.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Tree { fd, path: full }),
            // O_NOFOLLOW on a link: ELOOP; O_DIRECTORY on a non-directory: ENOTDIR.
            Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                match rfs::readlinkat(dirfd.as_fd(), name, Vec::new()) {
                    Ok(target) => Err(TreeError::Symlink {
                        path: full,
                        target: target.to_string_lossy().into_owned(),
                    }),
                    Err(_) => Err(TreeError::NotADirectory { path: full }),
                }
            }
            Err(e) => Err(io_at("opening", &full)(e)),
        }
    }

    /// The subdirectory `name` (one component), created when `create` and missing; a link in its
    /// place is refused like a link at the root.
    pub fn sub(&self, name: &str, create: bool) -> Result<Tree, TreeError> {
        check_component(&self.path, name)?;
        let full = self.path.join(name);
        if create {
            match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {
                    let _ = rfs::fsync(&self.fd);
                }
                Err(e) if e == rustix::io::Errno::EXIST => {}
                Err(e) => return Err(io_at("creating", &full)(e)),
            }
        }
        Self::open_at(&self.fd, Path::new(name), full)
    }

    /// Opens the directory `rel` (`/`-separated, relative, no `..`) one component at a time.
    fn descend(&self, parts: &[&str]) -> Result<Tree, TreeError> {
        let mut t = Tree {
            fd: self.fd.try_clone().map_err(|e| TreeError::Io {
                op: "duplicating",
                path: self.path.clone(),
                source: e,
            })?,
            path: self.path.clone(),
        };
        for p in parts {
            t = t.sub(p, false)?;
        }
        Ok(t)
    }

    /// Removes the file (or link: the link itself) at `rel`. `Ok(false)` if it was not there.
    /// A directory on the way that is a link or missing ends it with `Ok(false)` / an error.
    pub fn remove_file(&self, rel: &str) -> Result<bool, TreeError> {
        let parts = split_rel(&self.path, rel)?;
        let (name, dirs) = parts
            .split_last()
            .expect("split_rel returns at least one part");
        let dir = match self.descend(dirs) {
            Ok(d) => d,
            Err(TreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        match rfs::unlinkat(&dir.fd, *name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(false),
            Err(e) => Err(io_at("removing", &self.path.join(rel))(e)),
        }
    }

    /// Removes the directory `rel` and everything in it (links removed, never followed), then
    /// its parents that became empty, up to (not including) this tree's root. `Ok(false)` if it
    /// was not there.
    pub fn remove_tree(&self, rel: &str) -> Result<bool, TreeError> {
        let parts = split_rel(&self.path, rel)?;
        let (name, dirs) = parts
            .split_last()
            .expect("split_rel returns at least one part");
        let parent = match self.descend(dirs) {
            Ok(d) => d,
            Err(TreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        let found = match parent.sub(name, false) {
            Ok(sub) => {
                sub.clear()?;
                drop(sub);
                match rfs::unlinkat(&parent.fd, *name, AtFlags::REMOVEDIR) {
                    Ok(()) => true,
                    Err(e) if e == rustix::io::Errno::NOENT => true,
                    Err(e) => return Err(io_at("removing", &self.path.join(rel))(e)),
                }
            }
            Err(TreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => false,
            // A link or a file where a directory of ours should be: remove the entry itself.
            Err(TreeError::Symlink { .. }) | Err(TreeError::NotADirectory { .. }) => {
                rfs::unlinkat(&parent.fd, *name, AtFlags::empty())
                    .map_err(io_at("removing", &self.path.join(rel)))?;
                true
            }
            Err(e) => return Err(e),
        };
        self.remove_empty_parents(&parts[..parts.len() - 1]);
        Ok(found)
    }

    /// Removes the empty directories among `dirs` (a path below the root), deepest first.
    pub fn remove_empty_parents_of(&self, rel: &str) {
        if let Ok(parts) = split_rel(&self.path, rel) {
            self.remove_empty_parents(&parts[..parts.len() - 1]);
        }
    }

    fn remove_empty_parents(&self, dirs: &[&str]) {
        let mut n = dirs.len();
        while n > 0 {
            let Ok(parent) = self.descend(&dirs[..n - 1]) else {
                return;
            };
            // Fails on a non-empty directory, which is where we stop.
            if rfs::unlinkat(&parent.fd, dirs[n - 1], AtFlags::REMOVEDIR).is_err() {
                return;
            }
            n -= 1;
        }
    }

    /// Removes everything inside this directory (not the directory itself), never following a
    /// link: links are removed as entries.
    pub fn clear(&self) -> Result<(), TreeError> {
        for (name, ty) in self.entries()? {
            let name_str = OsStr::from_bytes(name.to_bytes());
            let full = self.path.join(name_str);
            if ty == FileType::Directory {
                match Self::open_at(&self.fd, Path::new(name_str), full.clone()) {
                    Ok(sub) => sub.clear()?,
                    Err(TreeError::Io { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
                match rfs::unlinkat(&self.fd, name.as_c_str(), AtFlags::REMOVEDIR) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::NOENT => {}
                    Err(e) => return Err(io_at("removing", &full)(e)),
                }
            } else {
                match rfs::unlinkat(&self.fd, name.as_c_str(), AtFlags::empty()) {
                    Ok(()) => {}
                    Err(e) if e == rustix::io::Errno::NOENT => {}
                    Err(e) => return Err(io_at("removing", &full)(e)),
                }
            }
        }
        Ok(())
    }

    /// The entries of this directory with their type, not following links (`.` and `..` left out).
    fn entries(&self) -> Result<Vec<(std::ffi::CString, FileType)>, TreeError> {
        let mut dir = rfs::Dir::read_from(&self.fd).map_err(io_at("listing", &self.path))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io_at("listing", &self.path))?;
            let name: &CStr = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let mut ty = entry.file_type();
            if ty == FileType::Unknown {
                // Some file systems leave d_type unset: ask, without following.
                ty = match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileType::from_raw_mode(st.st_mode),
                    Err(e) if e == rustix::io::Errno::NOENT => continue,
                    Err(e) => {
                        return Err(io_at(
                            "inspecting",
                            &self.path.join(OsStr::from_bytes(name.to_bytes())),
                        )(e))
                    }
                };
            }
            out.push((name.to_owned(), ty));
        }
        Ok(out)
    }

    /// Visits every regular file below this directory with its `/`-separated path relative to
    /// it (prefixed by `prefix`) and its size; removes those the visitor asks to, then the
    /// directories left empty. Links, special files and names that are not UTF-8 are neither
    /// visited, followed nor removed: they are listed in the returned [`WalkStats`].
    pub fn walk(
        &self,
        prefix: &str,
        visit: &mut dyn FnMut(&str, u64) -> Action,
    ) -> Result<WalkStats, TreeError> {
        let mut stats = WalkStats::default();
        self.walk_inner(prefix, visit, &mut stats)?;
        Ok(stats)
    }

    /// Returns whether the directory is empty afterwards.
    fn walk_inner(
        &self,
        rel: &str,
        visit: &mut dyn FnMut(&str, u64) -> Action,
        stats: &mut WalkStats,
    ) -> Result<bool, TreeError> {
        let mut empty = true;
        for (name, ty) in self.entries()? {
            let child_rel = |n: &str| {
                if rel.is_empty() {
                    n.to_string()
                } else {
                    format!("{rel}/{n}")
                }
            };
            let Ok(name_str) = name.to_str() else {
                stats
                    .foreign
                    .push(child_rel(&String::from_utf8_lossy(name.to_bytes())));
                empty = false;
                continue;
            };
            let crel = child_rel(name_str);
            match ty {
                FileType::Directory => {
                    let sub = match Self::open_at(
                        &self.fd,
                        Path::new(name_str),
                        self.path.join(name_str),
                    ) {
                        Ok(sub) => sub,
                        Err(TreeError::Io { source, .. })
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            continue
                        }
                        Err(e) => return Err(e),
                    };
                    if sub.walk_inner(&crel, visit, stats)? {
                        drop(sub);
                        if rfs::unlinkat(&self.fd, name.as_c_str(), AtFlags::REMOVEDIR).is_err() {
                            empty = false;
                        }
                    } else {
                        empty = false;
                    }
                }
                FileType::RegularFile => {
                    let size = rfs::statat(&self.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| st.st_size as u64)
                        .unwrap_or(0);
                    match visit(&crel, size) {
                        Action::Keep => empty = false,
                        Action::Remove => {
                            match rfs::unlinkat(&self.fd, name.as_c_str(), AtFlags::empty()) {
                                Ok(()) => {}
                                Err(e) if e == rustix::io::Errno::NOENT => {}
                                Err(e) => {
                                    return Err(io_at("removing", &self.path.join(name_str))(e))
                                }
                            }
                        }
                    }
                }
                _ => {
                    stats.foreign.push(crel);
                    empty = false;
                }
            }
        }
        Ok(empty)
    }

    /// Total size of the regular files below this directory (links not followed).
    pub fn bytes(&self) -> u64 {
        let mut total = 0;
        let _ = self.walk("", &mut |_, size| {
            total += size;
            Action::Keep
        });
        total
    }

    /// The names of the entries directly in this directory that are real directories.
    pub fn subdirs(&self) -> Result<Vec<String>, TreeError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, ty)| *ty == FileType::Directory)
            .filter_map(|(n, _)| n.into_string().ok())
            .collect())
    }
}

fn check_component(root: &Path, name: &str) -> Result<(), TreeError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(TreeError::BadPath {
            path: root.to_path_buf(),
            what: format!("{name:?}"),
        });
    }
    Ok(())
}

fn split_rel<'a>(root: &Path, rel: &'a str) -> Result<Vec<&'a str>, TreeError> {
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts {
        check_component(root, p).map_err(|_| TreeError::BadPath {
            path: root.to_path_buf(),
            what: format!("{rel:?}"),
        })?;
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A victim directory with files that must survive byte for byte, and a tree that links to it.
    fn victim(dir: &Path) -> PathBuf {
        let v = dir.join("victim");
        fs::create_dir_all(v.join("sub")).unwrap();
        fs::write(v.join("a.txt"), b"keep me").unwrap();
        fs::write(v.join("sub/b.txt"), b"me too").unwrap();
        v
    }

    fn assert_victim_intact(v: &Path) {
        assert_eq!(fs::read(v.join("a.txt")).unwrap(), b"keep me");
        assert_eq!(fs::read(v.join("sub/b.txt")).unwrap(), b"me too");
    }

    #[test]
    fn a_link_in_place_of_a_tree_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let v = victim(tmp.path());
        let root = tmp.path().join("store");
        fs::create_dir(&root).unwrap();
        symlink(&v, root.join("media")).unwrap();
        let t = Tree::open(&root, false).unwrap();
        let err = t.sub("media", true).unwrap_err();
        assert!(matches!(err, TreeError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(matches!(
            Tree::open(&root.join("media"), true),
            Err(TreeError::Symlink { .. })
        ));
        assert_victim_intact(&v);
    }

    #[test]
    fn walks_clears_and_removals_never_follow_links() {
        let tmp = tempfile::tempdir().unwrap();
        let v = victim(tmp.path());
        let root = tmp.path().join("tree");
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f.bin"), b"x").unwrap();
        symlink(&v, root.join("d/link-to-dir")).unwrap();
        symlink(v.join("a.txt"), root.join("d/link-to-file")).unwrap();
        let t = Tree::open(&root, false).unwrap();

        let mut seen = Vec::new();
        let stats = t
            .walk("", &mut |rel, size| {
                seen.push((rel.to_string(), size));
                Action::Remove
            })
            .unwrap();
        assert_eq!(seen, [("d/e/f.bin".to_string(), 1)]);
        let mut foreign = stats.foreign.clone();
        foreign.sort();
        assert_eq!(foreign, ["d/link-to-dir", "d/link-to-file"]);
        assert!(!root.join("d/e").exists(), "emptied directories go");
        assert_victim_intact(&v);

        // Paths through a link are not followed; the link itself can be removed.
        assert!(matches!(
            t.remove_file("d/link-to-dir/a.txt"),
            Err(TreeError::Symlink { .. })
        ));
        assert!(matches!(
            t.remove_tree("d/link-to-dir/sub"),
            Err(TreeError::Symlink { .. })
        ));
        assert!(t.remove_tree("d/link-to-dir").unwrap());
        assert!(t.remove_file("d/link-to-file").unwrap());
        assert!(matches!(
            t.remove_file("../victim/a.txt"),
            Err(TreeError::BadPath { .. })
        ));
        assert!(matches!(
            t.remove_file("/etc/passwd"),
            Err(TreeError::BadPath { .. })
        ));
        assert_victim_intact(&v);

        symlink(&v, root.join("d/again")).unwrap();
        t.clear().unwrap();
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        assert_victim_intact(&v);
    }

    #[test]
    fn remove_tree_takes_empty_parents_up_to_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("media");
        fs::create_dir_all(root.join("2026/12/05/r1")).unwrap();
        fs::create_dir_all(root.join("2026/12/04/r0")).unwrap();
        fs::write(root.join("2026/12/05/r1/0.jpg"), b"j").unwrap();
        let t = Tree::open(&root, false).unwrap();
        assert!(t.remove_tree("2026/12/05/r1").unwrap());
        assert!(!root.join("2026/12/05").exists());
        assert!(
            root.join("2026/12/04/r0").exists(),
            "a sibling with content stays"
        );
        assert!(!t.remove_tree("2026/12/05/r1").unwrap(), "gone already");
        assert!(root.exists());
    }
}
