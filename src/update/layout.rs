//! The models root on disk: where versions, links, staging, caches and the state record live,
//! and how an installed bundle is identified and checked.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::fsutil;
use super::keys::TrustedKeys;
use super::manifest::{bundle_hash, Manifest, MANIFEST_NAME, SIGNATURE_NAME};
use super::{IoAt, UpdateError};
use crate::sys::tree::{Tree, TreeError};

pub const CURRENT: &str = "current";
pub const PREVIOUS: &str = "previous";
pub const VERSIONS: &str = "versions";
pub const STAGING: &str = "staging";
pub const CACHE: &str = "cache";

/// A tree that cannot be owned (a link, a file) as a layout error naming it.
fn tree_err(e: TreeError) -> UpdateError {
    match e {
        TreeError::Symlink { ref path, .. }
        | TreeError::NotADirectory { ref path }
        | TreeError::BadPath { ref path, .. } => UpdateError::Layout {
            path: path.clone(),
            detail: e.to_string(),
        },
        TreeError::Io { path, source, .. } => UpdateError::io(&path, source),
    }
}

/// Paths under a models root.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

impl Root {
    pub fn new(dir: &Path) -> Root {
        Root {
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the root and its directories (not the links). `versions/`, `staging/` and
    /// `cache/` are trees the updater deletes in (gc, recovery, a failed install): each must be a
    /// real directory, and a symbolic link in its place is refused before anything is removed.
    pub fn create(dir: &Path) -> Result<Root, UpdateError> {
        let r = Root::new(dir);
        let root = Tree::open(dir, true).map_err(tree_err)?;
        for d in [VERSIONS, STAGING, CACHE] {
            root.sub(d, true).map_err(tree_err)?;
        }
        Ok(r)
    }

    /// A tree under the root (`staging`, `cache`, `versions`), opened without following links.
    pub fn tree(&self, name: &str) -> Result<Tree, UpdateError> {
        Tree::open(&self.dir, false)
            .and_then(|t| t.sub(name, false))
            .map_err(tree_err)
    }

    pub fn versions(&self) -> PathBuf {
        self.dir.join(VERSIONS)
    }
    pub fn version_dir(&self, v: &str) -> PathBuf {
        self.versions().join(v)
    }
    pub fn staging(&self) -> PathBuf {
        self.dir.join(STAGING)
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.join(CACHE)
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("update-state.json")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(".lock")
    }
    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The version a link (`current`, `previous`) points at; `None` if the link is absent.
    /// A link that is not ours (not a symlink, or not into `versions/`) is an error.
    pub fn link_version(&self, name: &str) -> Result<Option<String>, UpdateError> {
        let link = self.link(name);
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UpdateError::io(&link, e)),
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(UpdateError::Layout {
                    path: link,
                    detail:
                        "not a symlink; gemba manages it as a link into versions/ (move it away)"
                            .into(),
                })
            }
            Ok(_) => {}
        }
        let target = std::fs::read_link(&link).at(&link)?;
        let t = target.to_string_lossy();
        match t.strip_prefix("versions/") {
            Some(v) if super::manifest::check_version(v).is_ok() => Ok(Some(v.to_string())),
            _ => Err(UpdateError::Layout {
                path: link,
                detail: format!("points at {t:?}, not into versions/"),
            }),
        }
    }

    /// Points a link at `versions/<v>` (or removes it for `None`), atomically.
    pub fn point(&self, name: &str, version: Option<&str>) -> Result<(), UpdateError> {
        fsutil::point_link(
            &self.dir,
            name,
            version.map(|v| format!("versions/{v}")).as_deref(),
        )
    }

    /// Installed version names, sorted.
    pub fn installed(&self) -> Result<Vec<String>, UpdateError> {
        let dir = self.versions();
        let mut out = Vec::new();
        match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UpdateError::io(&dir, e)),
            Ok(rd) => {
                for e in rd {
                    let e = e.at(&dir)?;
                    if e.file_type().at(&dir)?.is_dir() {
                        out.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The TensorRT engine cache directory of a bundle.
pub fn cache_dir(root: &Path, bundle_hash: &str) -> PathBuf {
    root.join("cache").join(bundle_hash)
}

/// Who a bundle directory is, as the daemon reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BundleIdentity {
    /// The manifest's version.
    pub id: String,
    /// sha256 of the manifest bytes.
    pub hash: String,
    pub model_type: String,
    pub manifest: Manifest,
}

/// Reads `<dir>/gemba-manifest.json` (following links, so `current` works). Cheap: no file is
/// hashed and the signature is not checked; use [`verify_installed`] for that.
pub fn identify(dir: &Path) -> Result<BundleIdentity, UpdateError> {
    let path = dir.join(MANIFEST_NAME);
    let bytes = std::fs::read(&path).at(&path)?;
    let manifest = Manifest::parse(&bytes).map_err(|detail| UpdateError::Installed {
        dir: dir.to_path_buf(),
        detail,
    })?;
    Ok(BundleIdentity {
        id: manifest.version.clone(),
        hash: bundle_hash(&bytes),
        model_type: manifest.model_type.clone(),
        manifest,
    })
}

/// How thoroughly to check an installed version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Manifest parses; every listed file exists with its size; nothing unlisted.
    Structure,
    /// Also the signature against the trusted keys and every file's sha256.
    Full,
}

/// Checks an installed version directory against its manifest.
pub fn verify_installed(
    dir: &Path,
    keys: Option<&TrustedKeys>,
    check: Check,
) -> Result<BundleIdentity, UpdateError> {
    let id = identify(dir)?;
    let bad = |detail: String| UpdateError::Installed {
        dir: dir.to_path_buf(),
        detail,
    };
    if check == Check::Full {
        let keys = keys.ok_or(UpdateError::NoTrustedKey)?;
        let sig_path = dir.join(SIGNATURE_NAME);
        let sig = std::fs::read_to_string(&sig_path).at(&sig_path)?;
        let bytes = std::fs::read(dir.join(MANIFEST_NAME)).at(&dir.join(MANIFEST_NAME))?;
        keys.verify(&dir.join(MANIFEST_NAME), &bytes, &sig)?;
    }
    let on_disk = fsutil::walk(dir)?;
    for crate::sys::fs::Entry {
        rel,
        path: abs,
        meta,
    } in &on_disk
    {
        if rel == MANIFEST_NAME || rel == SIGNATURE_NAME {
            continue;
        }
        let Some(entry) = id.manifest.file(rel) else {
            return Err(bad(format!("{rel}: not listed in the manifest")));
        };
        if !meta.file_type().is_file() {
            return Err(bad(format!("{rel}: not a regular file")));
        }
        if meta.len() != entry.size {
            return Err(bad(format!(
                "{rel}: size {} bytes, the manifest says {}",
                meta.len(),
                entry.size
            )));
        }
        if check == Check::Full {
            let (sha, _) = fsutil::sha256_file(abs)?;
            if sha != entry.sha256 {
                return Err(bad(format!(
                    "{rel}: sha256 {sha}, the manifest says {}",
                    entry.sha256
                )));
            }
        }
    }
    let missing: Vec<&str> = id
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| !on_disk.iter().any(|e| e.rel == *p))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("missing {}", missing.join(", "))));
    }
    Ok(id)
}
